//! The fields of an order, each a type that cannot hold an invalid value.
//!
//! Every rule is written once, here, as a constant or a pattern; the same
//! constant both checks a value ([`Field::from_json`], serde) and states the
//! rule the API publishes ([`Field::rule`], which `api::fields` turns into the
//! OpenAPI schema), so the contract and the server cannot disagree. The one
//! rule a JSON Schema cannot express — the two currencies differ — lives
//! with the order ([`super::order::NewOrder::accept`]).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One rule a field's value broke: a stable name clients can switch on
/// (`pattern`, `range`, `enum`, ...) and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub rule: &'static str,
    pub message: Cow<'static, str>,
}

impl Broken {
    fn new(rule: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            rule,
            message: message.into(),
        }
    }

    fn wrong_type(expected: &'static str) -> Self {
        Self::new("type", expected)
    }
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.rule)
    }
}

/// The rules of a field as a schema states them (JSON Schema's words):
/// what the API publishes is built from this, by the same constants that
/// check a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `string` or `integer`.
    pub kind: &'static str,
    pub description: Option<&'static str>,
    pub pattern: Option<String>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    /// The only values allowed (empty: any).
    pub one_of: Vec<Value>,
    pub example: Option<Value>,
}

impl Rule {
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            description: None,
            pattern: None,
            min_length: None,
            max_length: None,
            one_of: Vec::new(),
            example: None,
        }
    }
}

/// A field of an order: how its JSON value is read and the rules that
/// state it.
pub trait Field: Sized {
    /// The type's name in the API's schema.
    const NAME: &'static str;
    fn rule() -> Rule;
    fn from_json(value: &Value) -> Result<Self, Broken>;
    fn to_json(&self) -> Value;
}

fn string_of(value: &Value) -> Result<&str, Broken> {
    value
        .as_str()
        .ok_or_else(|| Broken::wrong_type("must be a string"))
}

/// Anchors a pattern: ECMA-262 (the spec), Python's `re` (the fuzzer) and
/// Rust's `regex` (the server) read `^…$` alike for these classes of
/// characters.
fn anchored(body: &str) -> String {
    format!("^{body}$")
}

// ---- currency ---------------------------------------------------------------

/// Shortest currency code.
pub const CURRENCY_MIN: usize = 3;
/// Longest currency code (room for crypto tickers, not only ISO 4217).
pub const CURRENCY_MAX: usize = 10;

static CURRENCY_PATTERN: LazyLock<String> =
    LazyLock::new(|| anchored(&format!("[A-Z]{{{CURRENCY_MIN},{CURRENCY_MAX}}}")));
static CURRENCY_RE: LazyLock<Regex> = LazyLock::new(|| compile(&CURRENCY_PATTERN));

static CURRENCY_DOC: LazyLock<String> = LazyLock::new(|| {
    format!("Currency code: {CURRENCY_MIN} to {CURRENCY_MAX} upper-case letters A-Z.")
});

/// A currency code: 3 to 10 upper-case letters A-Z.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Currency {
    type Err = Broken;
    fn from_str(s: &str) -> Result<Self, Broken> {
        if CURRENCY_RE.is_match(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(Broken::new(
                "pattern",
                format!("must be {CURRENCY_MIN} to {CURRENCY_MAX} upper-case letters A-Z"),
            ))
        }
    }
}

impl Field for Currency {
    const NAME: &'static str = "Currency";
    fn rule() -> Rule {
        Rule {
            description: Some(CURRENCY_DOC.as_str()),
            pattern: Some(CURRENCY_PATTERN.clone()),
            min_length: Some(CURRENCY_MIN),
            max_length: Some(CURRENCY_MAX),
            example: Some("USD".into()),
            ..Rule::new("string")
        }
    }
    fn from_json(value: &Value) -> Result<Self, Broken> {
        string_of(value)?.parse()
    }
    fn to_json(&self) -> Value {
        Value::String(self.0.clone())
    }
}

// ---- symbol -----------------------------------------------------------------

static SYMBOL_PATTERN: LazyLock<String> = LazyLock::new(|| {
    let currency = format!("[A-Z]{{{CURRENCY_MIN},{CURRENCY_MAX}}}");
    anchored(&format!("{currency}-{currency}"))
});

/// A market: the currency given and the currency received, `SRC-DST` (the
/// record key on the log and the key orders are listed by).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Symbol(String);

impl Symbol {
    pub fn new(src: &Currency, dst: &Currency) -> Self {
        Self(format!("{src}-{dst}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Symbol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|b: Broken| serde::de::Error::custom(b.message))
    }
}

impl FromStr for Symbol {
    type Err = Broken;
    fn from_str(s: &str) -> Result<Self, Broken> {
        match s.split_once('-') {
            Some((src, dst))
                if src.parse::<Currency>().is_ok() && dst.parse::<Currency>().is_ok() =>
            {
                Ok(Self(s.to_owned()))
            }
            _ => Err(Broken::new(
                "pattern",
                format!(
                    "must be SRC-DST, two currency codes of {CURRENCY_MIN} to {CURRENCY_MAX} upper-case letters A-Z"
                ),
            )),
        }
    }
}

impl From<Symbol> for String {
    fn from(symbol: Symbol) -> String {
        symbol.0
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Symbol {
    /// The rule of a symbol in a path or query parameter.
    pub fn rule() -> Rule {
        Rule {
            pattern: Some(SYMBOL_PATTERN.clone()),
            example: Some("USD-EUR".into()),
            ..Rule::new("string")
        }
    }
}

// ---- amount (price, quantity) -----------------------------------------------

/// Most digits before the decimal point of a price or quantity.
pub const AMOUNT_INTEGER_DIGITS: usize = 16;
/// Most digits after the decimal point of a price or quantity.
pub const AMOUNT_FRACTION_DIGITS: usize = 12;

/// A positive decimal written without sign, exponent or leading zeros, with at
/// most [`AMOUNT_INTEGER_DIGITS`] + [`AMOUNT_FRACTION_DIGITS`] digits (so it
/// always fits a 96-bit decimal exactly). "Greater than zero" is part of the
/// pattern: either a non-zero integer part, or `0.` followed by a fraction
/// with a non-zero digit — one alternative per position of that digit, since
/// a JSON Schema pattern has no look-ahead.
static AMOUNT_PATTERN: LazyLock<String> = LazyLock::new(|| {
    let (int, frac) = (AMOUNT_INTEGER_DIGITS, AMOUNT_FRACTION_DIGITS);
    let repeat = |class: &str, min: usize, max: usize| match (min, max) {
        (_, 0) => String::new(),
        (1, 1) => class.to_owned(),
        (min, max) if min == max => format!("{class}{{{max}}}"),
        (min, max) => format!("{class}{{{min},{max}}}"),
    };
    let below_one: Vec<String> = (0..frac)
        .map(|zeros| {
            let (lead, rest) = (
                repeat("0", zeros, zeros),
                repeat("[0-9]", 0, frac - zeros - 1),
            );
            format!("{lead}[1-9]{rest}")
        })
        .collect();
    anchored(&format!(
        "(?:[1-9][0-9]{{0,{}}}(?:\\.[0-9]{{1,{frac}}})?|0\\.(?:{}))",
        int - 1,
        below_one.join("|")
    ))
});
static AMOUNT_RE: LazyLock<Regex> = LazyLock::new(|| compile(&AMOUNT_PATTERN));
static AMOUNT_DOC: LazyLock<String> = LazyLock::new(|| {
    format!(
        "An exact decimal number greater than zero, as a string such as \"12.50\" (JSON \
         numbers lose precision): up to {AMOUNT_INTEGER_DIGITS} digits before the point and \
         {AMOUNT_FRACTION_DIGITS} after, no sign, exponent or leading zeros. Kept as written: \
         \"1.50\" stays \"1.50\"."
    )
});

/// A price or a quantity: an exact decimal greater than zero, kept with the
/// scale it was written with ("1.50" stays "1.50").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Amount(Decimal);

impl Amount {
    pub fn value(self) -> Decimal {
        self.0
    }

    /// An amount this process checked when it was accepted and kept where
    /// nothing changes it unnoticed (a snapshot section behind its CRC-32):
    /// taken back as it was, without printing and parsing it again.
    pub(crate) fn checked_before(value: Decimal) -> Self {
        Self(value)
    }
}

impl FromStr for Amount {
    type Err = Broken;
    fn from_str(s: &str) -> Result<Self, Broken> {
        if AMOUNT_RE.is_match(s) {
            // The pattern admits only values a 96-bit decimal holds exactly.
            return Decimal::from_str_exact(s)
                .map(Self)
                .map_err(|e| Broken::new("decimal", e.to_string()));
        }
        // Only to word the error: a well-formed number that is not positive.
        match Decimal::from_str_exact(s) {
            Ok(v) if v <= Decimal::ZERO && s.trim() == s => {
                Err(Broken::new("range", "must be greater than zero"))
            }
            _ => Err(Broken::new(
                "decimal",
                format!(
                    "must be a decimal number as a string, such as \"12.50\": up to \
                     {AMOUNT_INTEGER_DIGITS} digits before the point and {AMOUNT_FRACTION_DIGITS} \
                     after, no sign, exponent or leading zeros"
                ),
            )),
        }
    }
}

impl TryFrom<Decimal> for Amount {
    type Error = Broken;
    fn try_from(value: Decimal) -> Result<Self, Broken> {
        value.to_string().parse()
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Field for Amount {
    const NAME: &'static str = "Amount";
    fn rule() -> Rule {
        Rule {
            description: Some(AMOUNT_DOC.as_str()),
            pattern: Some(AMOUNT_PATTERN.clone()),
            max_length: Some(AMOUNT_INTEGER_DIGITS + 1 + AMOUNT_FRACTION_DIGITS),
            example: Some("12.50".into()),
            ..Rule::new("string")
        }
    }
    fn from_json(value: &Value) -> Result<Self, Broken> {
        value
            .as_str()
            .ok_or_else(|| {
                Broken::wrong_type(
                    "must be a string such as \"12.50\" (JSON numbers lose precision)",
                )
            })?
            .parse()
    }
    fn to_json(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

// ---- side -------------------------------------------------------------------

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    const ALL: [Side; 2] = [Side::Buy, Side::Sell];

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

impl FromStr for Side {
    type Err = Broken;
    fn from_str(s: &str) -> Result<Self, Broken> {
        Side::ALL
            .into_iter()
            .find(|side| side.as_str() == s)
            .ok_or_else(|| Broken::new("enum", "must be \"buy\" or \"sell\""))
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Field for Side {
    const NAME: &'static str = "Side";
    fn rule() -> Rule {
        Rule {
            description: Some("Buy or sell."),
            one_of: Side::ALL.iter().map(|s| s.as_str().into()).collect(),
            ..Rule::new("string")
        }
    }
    fn from_json(value: &Value) -> Result<Self, Broken> {
        string_of(value)?.parse()
    }
    fn to_json(&self) -> Value {
        self.as_str().into()
    }
}

// ---- order type, time in force, post-only ----------------------------------

/// A field whose value is one of a few words: its variants and words, the
/// `ALL` list, `as_str`, parsing (rule `enum`, with `expected` as the
/// message) and the [`Field`] that states them (`doc` as the schema's
/// description). The first variant is the default.
macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident, $doc:literal, $expected:literal, $is_default:ident,
     { $first:ident => $first_word:literal $(, $variant:ident => $word:literal)* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            #[default]
            $first,
            $($variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$name::$first $(, $name::$variant)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $name::$first => $first_word,
                    $($name::$variant => $word,)*
                }
            }

            /// The default (what a record without the field means).
            pub fn $is_default(&self) -> bool {
                *self == $name::$first
            }
        }

        impl FromStr for $name {
            type Err = Broken;
            fn from_str(s: &str) -> Result<Self, Broken> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| Broken::new("enum", $expected))
            }
        }

        impl Field for $name {
            const NAME: &'static str = stringify!($name);
            fn rule() -> Rule {
                Rule {
                    description: Some($doc),
                    one_of: $name::ALL.iter().map(|v| v.as_str().into()).collect(),
                    ..Rule::new("string")
                }
            }
            fn from_json(value: &Value) -> Result<Self, Broken> {
                string_of(value)?.parse()
            }
            fn to_json(&self) -> Value {
                self.as_str().into()
            }
        }
    };
}

word_enum!(
    /// How an order is priced: `limit` (at most its price, the rest may rest)
    /// or `market` (no price: it takes what the book has and never rests).
    OrderType,
    "limit (default) or market.",
    "must be \"limit\" or \"market\"",
    is_limit,
    { Limit => "limit", Market => "market" }
);

word_enum!(
    /// How long an order may wait for its fill: `gtc` (good till cancelled:
    /// what does not fill rests), `ioc` (immediate or cancel: what does not
    /// fill at once expires) or `fok` (fill or kill: all of it at once, or none).
    TimeInForce,
    "gtc (default): what does not fill rests; ioc: what does not fill at once expires; fok: all of it fills at once or none of it does.",
    "must be \"gtc\", \"ioc\" or \"fok\"",
    is_gtc,
    { Gtc => "gtc", Ioc => "ioc", Fok => "fok" }
);

/// A flag (`post_only`).
impl Field for bool {
    const NAME: &'static str = "boolean";
    fn rule() -> Rule {
        Rule::new("boolean")
    }
    fn from_json(value: &Value) -> Result<Self, Broken> {
        value
            .as_bool()
            .ok_or_else(|| Broken::wrong_type("must be true or false"))
    }
    fn to_json(&self) -> Value {
        Value::Bool(*self)
    }
}

// ---- channel ----------------------------------------------------------------

/// Sales channels of the redpanda101 order model.
pub const CHANNELS: [u16; 22] = [
    0, 1, 2, 3, 4, 11, 12, 13, 14, 21, 23, 31, 32, 33, 34, 41, 42, 51, 52, 53, 54, 61,
];

/// A sales channel code, one of [`CHANNELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct Channel(u16);

impl Channel {
    pub fn code(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for Channel {
    type Error = Broken;
    fn try_from(code: u16) -> Result<Self, Broken> {
        Self::try_from(i64::from(code))
    }
}

impl TryFrom<i64> for Channel {
    type Error = Broken;
    fn try_from(code: i64) -> Result<Self, Broken> {
        match u16::try_from(code) {
            Ok(c) if CHANNELS.contains(&c) => Ok(Self(c)),
            _ => Err(Broken::new("enum", format!("must be one of {CHANNELS:?}"))),
        }
    }
}

impl From<Channel> for u16 {
    fn from(c: Channel) -> u16 {
        c.0
    }
}

impl Field for Channel {
    const NAME: &'static str = "Channel";
    fn rule() -> Rule {
        Rule {
            description: Some("Sales channel code."),
            one_of: CHANNELS.iter().map(|&c| c.into()).collect(),
            ..Rule::new("integer")
        }
    }
    fn from_json(value: &Value) -> Result<Self, Broken> {
        match value {
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| Broken::new("enum", format!("must be one of {CHANNELS:?}")))
                .and_then(Self::try_from),
            _ => Err(Broken::wrong_type("must be an integer")),
        }
    }
    fn to_json(&self) -> Value {
        self.0.into()
    }
}

// ---- description ------------------------------------------------------------

/// Longest free-text description accepted, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 1024;

static DESCRIPTION_DOC: LazyLock<String> =
    LazyLock::new(|| format!("Free text, at most {DESCRIPTION_MAX_CHARS} characters."));

/// Free text of at most [`DESCRIPTION_MAX_CHARS`] characters (not bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Description(String);

impl Description {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Description {
    type Error = Broken;
    fn try_from(s: String) -> Result<Self, Broken> {
        if s.chars().count() <= DESCRIPTION_MAX_CHARS {
            Ok(Self(s))
        } else {
            Err(Broken::new(
                "max_length",
                format!("must be at most {DESCRIPTION_MAX_CHARS} characters"),
            ))
        }
    }
}

impl Field for Description {
    const NAME: &'static str = "Description";
    fn rule() -> Rule {
        Rule {
            description: Some(DESCRIPTION_DOC.as_str()),
            max_length: Some(DESCRIPTION_MAX_CHARS),
            ..Rule::new("string")
        }
    }
    fn from_json(value: &Value) -> Result<Self, Broken> {
        Self::try_from(string_of(value)?.to_owned())
    }
    fn to_json(&self) -> Value {
        Value::String(self.0.clone())
    }
}

// ---- client order id --------------------------------------------------------

/// Longest idempotency key accepted, in characters.
pub const CLIENT_ORDER_ID_MAX_CHARS: usize = 64;

/// No control characters (Unicode category Cc, what `char::is_control` means):
/// the key ends up in logs and headers.
static CLIENT_ORDER_ID_PATTERN: LazyLock<String> =
    LazyLock::new(|| anchored("[^\\u0000-\\u001F\\u007F-\\u009F]*"));
static CLIENT_ORDER_ID_RE: LazyLock<Regex> = LazyLock::new(|| compile(&CLIENT_ORDER_ID_PATTERN));

static CLIENT_ORDER_ID_DOC: LazyLock<String> = LazyLock::new(|| {
    format!(
        "Idempotency key: 1 to {CLIENT_ORDER_ID_MAX_CHARS} characters, no control characters. \
         Requests with the same key map to the same order id, and only the first one is \
         stored: retrying a request whose answer was lost can never create a second order."
    )
});

/// An idempotency key: 1 to 64 characters, none of them a control character.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientOrderId(String);

impl ClientOrderId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientOrderId {
    type Error = Broken;
    fn try_from(s: String) -> Result<Self, Broken> {
        bounded(
            s,
            CLIENT_ORDER_ID_MAX_CHARS,
            &CLIENT_ORDER_ID_RE,
            "must not contain control characters",
        )
        .map(Self)
    }
}

impl Field for ClientOrderId {
    const NAME: &'static str = "ClientOrderId";
    fn rule() -> Rule {
        Rule {
            description: Some(CLIENT_ORDER_ID_DOC.as_str()),
            pattern: Some(CLIENT_ORDER_ID_PATTERN.clone()),
            min_length: Some(1),
            max_length: Some(CLIENT_ORDER_ID_MAX_CHARS),
            example: Some("inv-2026-11-0042".into()),
            ..Rule::new("string")
        }
    }
    fn from_json(value: &Value) -> Result<Self, Broken> {
        Self::try_from(string_of(value)?.to_owned())
    }
    fn to_json(&self) -> Value {
        Value::String(self.0.clone())
    }
}

// ---- account ----------------------------------------------------------------

/// Longest account name, in characters.
pub const ACCOUNT_MAX_CHARS: usize = 64;

static ACCOUNT_PATTERN: LazyLock<String> = LazyLock::new(|| anchored("[A-Za-z0-9][A-Za-z0-9._-]*"));
static ACCOUNT_RE: LazyLock<Regex> = LazyLock::new(|| compile(&ACCOUNT_PATTERN));

static ACCOUNT_DOC: LazyLock<String> = LazyLock::new(|| {
    format!(
        "The account that owns the order: the account of the API key that submitted it. \
         1 to {ACCOUNT_MAX_CHARS} characters, letters, digits, `.`, `_` and `-`, starting \
         with a letter or digit."
    )
});

/// Who owns an order: the account of the API key that submitted it. Not
/// something a client sends — the server sets it from the key — so it
/// names no one but the caller. Orders written before accounts existed
/// carry none (`Option<Account>` = `None`, "no account"): no key owns them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Account(String);

impl Account {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Account {
    type Error = Broken;
    fn try_from(s: String) -> Result<Self, Broken> {
        bounded(
            s,
            ACCOUNT_MAX_CHARS,
            &ACCOUNT_RE,
            "letters, digits, `.`, `_` and `-` only, starting with a letter or digit",
        )
        .map(Self)
    }
}

impl std::str::FromStr for Account {
    type Err = Broken;
    fn from_str(s: &str) -> Result<Self, Broken> {
        Self::try_from(s.to_owned())
    }
}

impl From<Account> for String {
    fn from(a: Account) -> String {
        a.0
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Field for Account {
    const NAME: &'static str = "Account";
    fn rule() -> Rule {
        Rule {
            description: Some(ACCOUNT_DOC.as_str()),
            pattern: Some(ACCOUNT_PATTERN.clone()),
            min_length: Some(1),
            max_length: Some(ACCOUNT_MAX_CHARS),
            example: Some("acme-treasury".into()),
            ..Rule::new("string")
        }
    }
    fn from_json(value: &Value) -> Result<Self, Broken> {
        Self::try_from(string_of(value)?.to_owned())
    }
    fn to_json(&self) -> Value {
        Value::String(self.0.clone())
    }
}

// ---- plumbing ---------------------------------------------------------------

/// A string of 1 to `max` characters matching `re` (its rule broken:
/// `length`, then `pattern` with `pattern_message`).
fn bounded(
    s: String,
    max: usize,
    re: &Regex,
    pattern_message: &'static str,
) -> Result<String, Broken> {
    let chars = s.chars().count();
    if chars == 0 || chars > max {
        Err(Broken::new(
            "length",
            format!("must be 1 to {max} characters"),
        ))
    } else if !re.is_match(&s) {
        Err(Broken::new("pattern", pattern_message))
    } else {
        Ok(s)
    }
}

fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| unreachable!("a rule's own pattern compiles: {e}"))
}

macro_rules! string_conversions {
    ($($ty:ty),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = Broken;
            fn try_from(s: String) -> Result<Self, Broken> {
                s.parse()
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.to_string()
            }
        }
    )*};
}
string_conversions!(Currency, Amount);

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Description> for String {
    fn from(v: Description) -> String {
        v.0
    }
}

impl From<ClientOrderId> for String {
    fn from(v: ClientOrderId) -> String {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_their_pattern_exactly() {
        for ok in [
            "1",
            "12.50",
            "0.5",
            "0.000000000001",
            "9999999999999999.999999999999",
            "1.000",
        ] {
            assert_eq!(
                ok.parse::<Amount>().map(|a| a.to_string()),
                Ok(ok.to_owned()),
                "{ok}"
            );
        }
        for (bad, rule) in [
            ("0", "range"),
            ("0.000", "range"),
            ("-1.5", "range"),
            ("", "decimal"),
            ("abc", "decimal"),
            ("1e5", "decimal"),
            (" 1", "decimal"),
            ("01", "decimal"),
            (".5", "decimal"),
            ("1.", "decimal"),
            ("+1", "decimal"),
            ("0.0000000000001", "decimal"),
            ("10000000000000000", "decimal"),
            ("1.0000000000000", "decimal"),
        ] {
            assert_eq!(
                bad.parse::<Amount>().map_err(|b| b.rule),
                Err(rule),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_amount_pattern_reads_alike_in_every_engine() {
        // What the schema publishes is what the server compiles.
        assert_eq!(Amount::rule().pattern.as_deref(), Some(AMOUNT_RE.as_str()));
        assert_eq!(
            Currency::rule().pattern.as_deref(),
            Some(CURRENCY_RE.as_str())
        );
        let symbol = compile(&SYMBOL_PATTERN);
        for s in [
            "USD-EUR",
            "ABCDEFGHIJ-XYZ",
            "usd-EUR",
            "US-EUR",
            "USD_EUR",
            "USD-EUR-GBP",
            "",
        ] {
            assert_eq!(symbol.is_match(s), s.parse::<Symbol>().is_ok(), "{s:?}");
        }
        assert_eq!(
            ClientOrderId::rule().pattern.as_deref(),
            Some(CLIENT_ORDER_ID_RE.as_str())
        );
    }

    #[test]
    fn client_order_ids_refuse_control_characters_only() {
        assert!(ClientOrderId::try_from("inv-2026/11 #42 é".to_owned()).is_ok());
        for bad in ["a\nb", "\u{7f}", "x\u{85}"] {
            assert_eq!(
                ClientOrderId::try_from(bad.to_owned()).map_err(|b| b.rule),
                Err("pattern"),
                "{bad:?}"
            );
        }
    }
}
