//! The order: what a client submits ([`NewOrder`]), the accepted
//! [`Order`] that travels on the log and lands in the store, its record,
//! and the other events of the orders topic (a cancel).
//!
//! An order is parsed once into types that cannot hold an invalid value
//! ([`super::field`]); each rule is written once, there, and the OpenAPI
//! schema is built from the same constants. The consumer decodes every record it reads
//! through the same types (a record produced by another writer can be bad;
//! it goes to the dead-letter topic).

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use super::field::{
    Account, Amount, Broken, CHANNELS, Channel, ClientOrderId, Currency, Description, Field,
    OrderType, Side, Symbol, TimeInForce,
};

/// Version of the JSON record of an order on the log. Bump on incompatible change.
pub const RECORD_VERSION: u32 = 1;

/// Version of the record of an order with terms other than a resting limit
/// order's (a market order, `ioc`, `fok`, `post_only`): the same fields, but
/// an oms from before order types would misread it (rest an `ioc` order, or
/// refuse a market order's missing price as a bad record), so it refuses the
/// version instead. A plain limit order keeps writing [`RECORD_VERSION`],
/// which every oms reads.
pub const TERMS_RECORD_VERSION: u32 = 3;

/// Version of the event envelope (`{"v": 2, "type": ...}`) that carries every
/// record that is not an order (a cancel). Orders keep writing version 1, so
/// every record written before events existed still decodes, and an older
/// oms dead-letters an event it cannot read instead of misreading it.
pub const EVENT_VERSION: u32 = 2;

/// Namespace of the name-based (v5) ids derived from a `client_order_id`, so a
/// retried request maps to the same order id on every oms instance.
const CLIENT_ORDER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f6d_735f_6f72_6465_725f_6964_5f6e_7331);

/// One rule broken by one field of a submitted order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The JSON field name, as the client sent it.
    pub field: String,
    /// A short, stable rule name clients can switch on (`pattern`, `range`, ...).
    pub rule: String,
    /// A sentence for humans.
    pub message: String,
}

impl FieldError {
    fn new(field: &str, broken: Broken) -> Self {
        Self {
            field: field.to_owned(),
            rule: broken.rule.to_owned(),
            message: broken.message.into_owned(),
        }
    }
}

/// Every rule a submitted order broke (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid order: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Fields named by the errors, in order.
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.field.as_str()).collect()
    }
}

/// An order to submit. Unknown fields are refused (a misspelt
/// `client_order_id` must not silently turn idempotency off). The API
/// documents it field by field (`api::orders::NewOrderSchema`, tied to
/// [`NewOrder::FIELDS`] by a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Currency given.
    pub src_currency: Currency,
    /// Currency received: a currency code, different from `src_currency`.
    pub dst_currency: Currency,
    pub side: Side,
    /// Limit price: an exact decimal greater than zero, as a string. A
    /// market order has none.
    pub price: Option<Amount>,
    pub quantity: Amount,
    pub channel: Channel,
    pub description: Description,
    pub client_order_id: Option<ClientOrderId>,
    pub terms: Terms,
}

/// How an order trades: its type, how long it may wait, and whether it
/// may only rest. Each rule between them and the price is stated once, in
/// [`Terms::check`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    #[serde(rename = "type", default, skip_serializing_if = "OrderType::is_limit")]
    pub order_type: OrderType,
    #[serde(default, skip_serializing_if = "TimeInForce::is_gtc")]
    pub time_in_force: TimeInForce,
    /// Add liquidity only: an order that would trade on arrival is rejected
    /// instead, and never trades.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_only: bool,
}

impl Terms {
    /// A limit order that rests until it fills or is cancelled (what every
    /// order was before order types).
    pub fn is_default(&self) -> bool {
        *self == Terms::default()
    }

    /// The rules between the terms and the price, each broken one named by
    /// its field: a limit order has a price, a market order has none, never
    /// rests (`ioc` or `fok`) and cannot be `post_only`.
    pub fn check(&self, price: Option<&Amount>) -> Result<(), ValidationErrors> {
        let mut errors = Vec::new();
        let mut broken = |field: &str, rule: &'static str, message: &'static str| {
            errors.push(FieldError::new(
                field,
                Broken {
                    rule,
                    message: message.into(),
                },
            ));
        };
        match (self.order_type, price) {
            (OrderType::Limit, None) => broken("price", "required", "is required"),
            (OrderType::Market, Some(_)) => broken(
                "price",
                "market_has_no_price",
                "a market order has no price: it takes what the book has",
            ),
            _ => {}
        }
        if self.order_type == OrderType::Market {
            if self.time_in_force == TimeInForce::Gtc {
                broken(
                    "time_in_force",
                    "market_never_rests",
                    "a market order never rests: ioc (the default) or fok",
                );
            }
            if self.post_only {
                broken(
                    "post_only",
                    "limit_only",
                    "only a limit order can be post_only",
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors))
        }
    }
}

/// The one rule a schema cannot state: an order exchanges two currencies.
fn check_pair(src: &Currency, dst: &Currency) -> Result<(), ValidationErrors> {
    if src == dst {
        Err(ValidationErrors(vec![FieldError::new(
            "dst_currency",
            Broken {
                rule: "distinct",
                message: "must differ from src_currency".into(),
            },
        )]))
    } else {
        Ok(())
    }
}

/// Reads the fields of a JSON object one by one, collecting every problem.
struct Reader {
    map: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Reader {
    fn take<T: Field>(&mut self, field: &'static str) -> Option<Option<T>> {
        match self.map.remove(field) {
            None => Some(None),
            Some(value) => match T::from_json(&value) {
                Ok(v) => Some(Some(v)),
                Err(broken) => {
                    self.errors.push(FieldError::new(field, broken));
                    None
                }
            },
        }
    }

    fn required<T: Field>(&mut self, field: &'static str) -> Option<T> {
        let value = self.take(field)?;
        if value.is_none() {
            self.errors.push(FieldError::new(
                field,
                Broken {
                    rule: "required",
                    message: "is required".into(),
                },
            ));
        }
        value
    }

    fn optional<T: Field>(&mut self, field: &'static str) -> Option<T> {
        self.take(field).flatten()
    }
}

impl NewOrder {
    /// The JSON field names of a submitted order, as the schemas list them
    /// (a market order's has neither `price` nor `post_only`).
    pub const FIELDS: [&'static str; 11] = [
        "src_currency",
        "dst_currency",
        "side",
        "price",
        "quantity",
        "channel",
        "description",
        "client_order_id",
        "type",
        "time_in_force",
        "post_only",
    ];

    /// Parses a submitted JSON object, reporting every bad field at once
    /// (missing, wrong type, unknown, or breaking a rule) rather than the
    /// first one.
    pub fn from_json(map: Map<String, Value>) -> Result<NewOrder, ValidationErrors> {
        let mut r = Reader {
            map,
            errors: Vec::new(),
        };
        let src_currency = r.required("src_currency");
        let dst_currency = r.required("dst_currency");
        let side = r.required("side");
        let price = r.take::<Amount>("price");
        let quantity = r.required("quantity");
        let channel = r.required("channel");
        let description = r.optional("description");
        let client_order_id = r.optional("client_order_id");
        let order_type: Option<OrderType> = r.take("type").map(Option::unwrap_or_default);
        let time_in_force: Option<Option<TimeInForce>> = r.take("time_in_force");
        let post_only: Option<bool> = r.take("post_only").map(Option::unwrap_or_default);
        for unknown in r.map.keys() {
            r.errors.push(FieldError::new(
                unknown,
                Broken {
                    rule: "unknown_field",
                    message: "is not a field of NewOrder".into(),
                },
            ));
        }
        if let (Some(src), Some(dst)) = (&src_currency, &dst_currency) {
            if let Err(e) = check_pair(src, dst) {
                r.errors.extend(e.0);
            }
        }
        // Terms whose fields each read: a market order waits for nothing
        // unless told (`ioc`), every other order rests (`gtc`).
        let terms = match (order_type, time_in_force, post_only) {
            (Some(order_type), Some(time_in_force), Some(post_only)) => {
                let time_in_force = time_in_force.unwrap_or(match order_type {
                    OrderType::Limit => TimeInForce::Gtc,
                    OrderType::Market => TimeInForce::Ioc,
                });
                let terms = Terms {
                    order_type,
                    time_in_force,
                    post_only,
                };
                if let Some(price) = &price {
                    if let Err(e) = terms.check(price.as_ref()) {
                        r.errors.extend(e.0);
                    }
                }
                Some(terms)
            }
            _ => None,
        };
        match (
            src_currency,
            dst_currency,
            side,
            price,
            quantity,
            channel,
            terms,
        ) {
            (
                Some(src_currency),
                Some(dst_currency),
                Some(side),
                Some(price),
                Some(quantity),
                Some(channel),
                Some(terms),
            ) if r.errors.is_empty() => Ok(NewOrder {
                src_currency,
                dst_currency,
                side,
                price,
                quantity,
                channel,
                description: description.unwrap_or_default(),
                client_order_id,
                terms,
            }),
            _ => Err(ValidationErrors(r.errors)),
        }
    }

    /// Parses a JSON value that must be an object (tests, tools, the bench).
    pub fn from_value(value: Value) -> Result<NewOrder, ValidationErrors> {
        match value {
            Value::Object(map) => Self::from_json(map),
            _ => Err(ValidationErrors(vec![FieldError::new(
                "",
                Broken {
                    rule: "type",
                    message: "must be a JSON object".into(),
                },
            )])),
        }
    }

    /// Accepts an order of no account (tools, tests, the bench): checks the
    /// rule between fields and assigns its identity and creation time.
    pub fn accept(self, now: DateTime<Utc>) -> Result<Order, ValidationErrors> {
        self.accept_for(None, now)
    }

    /// Accepts the order for `account` (the submitting key's): checks the
    /// rule between fields and assigns its identity and creation time. A
    /// `client_order_id` names an order within its account, so two accounts
    /// using the same key get two orders; without an account the id is
    /// derived as it was before accounts existed.
    pub fn accept_for(
        self,
        account: Option<Account>,
        now: DateTime<Utc>,
    ) -> Result<Order, ValidationErrors> {
        check_pair(&self.src_currency, &self.dst_currency)?;
        self.terms.check(self.price.as_ref())?;
        let id = match (&self.client_order_id, &account) {
            (Some(cid), None) => Uuid::new_v5(&CLIENT_ORDER_ID_NAMESPACE, cid.as_str().as_bytes()),
            // `/` cannot be part of an account name: the name is unambiguous.
            (Some(cid), Some(account)) => Uuid::new_v5(
                &CLIENT_ORDER_ID_NAMESPACE,
                format!("{account}/{}", cid.as_str()).as_bytes(),
            ),
            (None, _) => Uuid::now_v7(),
        };
        Ok(Order {
            id,
            client_order_id: self.client_order_id,
            account,
            src_currency: self.src_currency,
            dst_currency: self.dst_currency,
            side: self.side,
            price: self.price,
            quantity: self.quantity,
            channel: self.channel,
            description: self.description,
            terms: self.terms,
            // Microseconds: what every store (Postgres timestamptz) keeps.
            created_at: now.trunc_subsecs(6),
        })
    }
}

impl NewOrder {
    /// The order the API's documentation shows.
    pub fn example() -> Self {
        NewOrder::from_value(serde_json::json!({
            "src_currency": "USD",
            "dst_currency": "EUR",
            "side": "buy",
            "price": "1.0850",
            "quantity": "2500",
            "channel": 11,
            "description": "hedge Q4 invoices",
        }))
        .unwrap_or_else(|e| unreachable!("the example order is valid: {e}"))
    }
}

/// An accepted order: every field valid, identity and time assigned by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedOrder")]
pub struct Order {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
    /// The owner: the account of the key that submitted it. `None` for
    /// orders written before accounts existed (their records have no
    /// `account` field and decode unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,
    pub src_currency: Currency,
    pub dst_currency: Currency,
    pub side: Side,
    /// `None` for a market order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Amount>,
    pub quantity: Amount,
    pub channel: Channel,
    pub description: Description,
    /// Absent from the record of a limit order that rests (`gtc`), and from
    /// every record written before order types: those decode as such.
    #[serde(flatten)]
    pub terms: Terms,
    pub created_at: DateTime<Utc>,
}

/// An order as read back (from the log or a store): each field already
/// parsed by its type, the rule between fields not yet checked.
#[derive(Deserialize)]
struct UncheckedOrder {
    id: Uuid,
    #[serde(default)]
    client_order_id: Option<ClientOrderId>,
    #[serde(default)]
    account: Option<Account>,
    src_currency: Currency,
    dst_currency: Currency,
    side: Side,
    #[serde(default)]
    price: Option<Amount>,
    quantity: Amount,
    channel: Channel,
    description: Description,
    #[serde(flatten)]
    terms: Terms,
    created_at: DateTime<Utc>,
}

impl TryFrom<UncheckedOrder> for Order {
    type Error = ValidationErrors;
    fn try_from(o: UncheckedOrder) -> Result<Order, ValidationErrors> {
        check_pair(&o.src_currency, &o.dst_currency)?;
        o.terms.check(o.price.as_ref())?;
        Ok(Order {
            id: o.id,
            client_order_id: o.client_order_id,
            account: o.account,
            src_currency: o.src_currency,
            dst_currency: o.dst_currency,
            side: o.side,
            price: o.price,
            quantity: o.quantity,
            channel: o.channel,
            description: o.description,
            terms: o.terms,
            created_at: o.created_at,
        })
    }
}

/// The JSON value of a record on the `orders` topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderRecord {
    /// Schema version ([`RECORD_VERSION`]).
    pub v: u32,
    #[serde(flatten)]
    pub order: Order,
}

/// A request to cancel an order, appended to the order's partition (keyed
/// by its symbol) so it is matched in log order with the order itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub order_id: Uuid,
    /// The order's `SRC-DST`: the record's key and the book it rests in.
    pub symbol: Symbol,
    /// The order's side and limit price: the one price level of the book
    /// its order can rest at, so matching finds it there without an index
    /// of every resting order. Absent from cancels written before oms wrote
    /// them; the whole book is searched for those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Amount>,
    pub requested_at: DateTime<Utc>,
}

impl Cancel {
    /// The record value written to the log.
    pub fn to_record(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Record<'a> {
            v: u32,
            r#type: &'static str,
            #[serde(flatten)]
            cancel: &'a Cancel,
        }
        serde_json::to_vec(&Record {
            v: EVENT_VERSION,
            r#type: "cancel",
            cancel: self,
        })
        .unwrap_or_else(|e| unreachable!("a Cancel always serialises: {e}"))
    }
}

/// One record of the `orders` topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Order(Order),
    Cancel(Cancel),
}

/// The events of envelope version [`EVENT_VERSION`]. A field this oms does
/// not know is ignored, so a later one can add an optional field (as `side`
/// and `price` were added to cancels) without every reader upgrading first;
/// a change a reader must not ignore bumps the version.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Envelope {
    Cancel {
        #[allow(dead_code)]
        v: u32,
        #[serde(flatten)]
        cancel: Cancel,
    },
}

impl Event {
    /// Decodes a record value of the `orders` topic: an order (version 1)
    /// or an event (version 2).
    pub fn from_record(bytes: &[u8]) -> Result<Event, RecordError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        match serde_json::from_slice::<Version>(bytes) {
            Ok(Version { v: EVENT_VERSION }) => serde_json::from_slice::<Envelope>(bytes)
                .map(|Envelope::Cancel { cancel, .. }| Event::Cancel(cancel))
                .map_err(RecordError::Event),
            _ => Order::from_record(bytes).map(Event::Order),
        }
    }
}

/// Why a record read from the log is not a storable order.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is not a valid order JSON document")]
    Decode(#[source] serde_json::Error),
    #[error("record is not a valid event (version {EVENT_VERSION}: a cancel)")]
    Event(#[source] serde_json::Error),
    #[error(
        "unsupported record schema version {found} (this oms reads orders of versions {RECORD_VERSION} and {TERMS_RECORD_VERSION} and events of version {EVENT_VERSION})"
    )]
    Version { found: u32 },
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

impl Order {
    /// The log key and listing key: `SRC-DST`.
    pub fn symbol(&self) -> String {
        Symbol::new(&self.src_currency, &self.dst_currency).into()
    }

    /// The limit price, as the book reads it (`None`: a market order).
    pub fn limit(&self) -> Option<rust_decimal::Decimal> {
        self.price.as_ref().map(|p| p.value())
    }

    /// The record value written to the log.
    pub fn to_record(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Record<'a> {
            v: u32,
            #[serde(flatten)]
            order: &'a Order,
        }
        let v = if self.terms.is_default() {
            RECORD_VERSION
        } else {
            TERMS_RECORD_VERSION
        };
        serde_json::to_vec(&Record { v, order: self })
            .unwrap_or_else(|e| unreachable!("an Order always serialises: {e}"))
    }

    /// Decodes a record value read from the log: one parse through the
    /// field types, so a record that decodes is a valid order.
    pub fn from_record(bytes: &[u8]) -> Result<Order, RecordError> {
        match serde_json::from_slice::<OrderRecord>(bytes) {
            Ok(record) if record.v == RECORD_VERSION || record.v == TERMS_RECORD_VERSION => {
                Ok(record.order)
            }
            Ok(record) => Err(RecordError::Version { found: record.v }),
            Err(err) => Err(Self::explain(bytes, err)),
        }
    }

    /// Why a record did not decode, in the terms the dead-letter topic uses
    /// (cold path): another schema version, an order breaking the rules
    /// (every broken field named, as the API would), or not an order at all.
    fn explain(bytes: &[u8], err: serde_json::Error) -> RecordError {
        let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(bytes) else {
            return RecordError::Decode(err);
        };
        match map.remove("v").map(|v| v.as_u64()) {
            Some(Some(v))
                if v == u64::from(RECORD_VERSION) || v == u64::from(TERMS_RECORD_VERSION) => {}
            Some(Some(v)) => {
                return RecordError::Version {
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                };
            }
            _ => return RecordError::Decode(err),
        }
        // Identity, time and owner are the writer's, not fields a client
        // sends; the owner still has its rule.
        map.remove("id");
        map.remove("created_at");
        let account = match map.remove("account") {
            None | Some(Value::Null) => Ok(()),
            Some(value) => Account::from_json(&value).map(drop),
        };
        let checked: Result<(), ValidationErrors> = match (NewOrder::from_json(map), account) {
            (Ok(_), Ok(())) => return RecordError::Decode(err),
            (Ok(_), Err(broken)) => Err(ValidationErrors(vec![FieldError::new("account", broken)])),
            (Err(mut invalid), Err(broken)) => {
                invalid.0.push(FieldError::new("account", broken));
                Err(invalid)
            }
            (Err(invalid), Ok(())) => Err(invalid),
        };
        match checked {
            Err(invalid)
                if invalid
                    .0
                    .iter()
                    .all(|e| !matches!(e.rule.as_str(), "required" | "type" | "unknown_field")) =>
            {
                RecordError::Invalid(invalid)
            }
            _ => RecordError::Decode(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "src_currency": "USD",
            "dst_currency": "EUR",
            "side": "buy",
            "price": "1.25",
            "quantity": "100",
            "channel": 11,
            "description": "test",
        })
    }

    fn with(field: &str, value: Value) -> Value {
        let mut v = valid();
        v[field] = value;
        v
    }

    fn errors_of(body: Value) -> Vec<String> {
        match NewOrder::from_value(body).and_then(|o| o.accept(Utc::now())) {
            Ok(_) => vec![],
            Err(e) => {
                e.0.into_iter()
                    .map(|e| format!("{}:{}", e.field, e.rule))
                    .collect()
            }
        }
    }

    #[test]
    fn a_valid_order_is_accepted_with_a_time_ordered_id() {
        let order = NewOrder::from_value(valid())
            .and_then(|o| o.accept(Utc::now()))
            .expect("valid");
        assert_eq!(order.id.get_version_num(), 7);
        assert_eq!(order.symbol(), "USD-EUR");
        assert_eq!(order.price.expect("a limit price").to_string(), "1.25");
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(Value, &str)> = vec![
            (with("src_currency", "usd".into()), "src_currency:pattern"),
            (with("src_currency", "US".into()), "src_currency:pattern"),
            (
                with("dst_currency", "EURO12".into()),
                "dst_currency:pattern",
            ),
            (
                with("dst_currency", "ABCDEFGHIJK".into()),
                "dst_currency:pattern",
            ),
            (with("dst_currency", "USD".into()), "dst_currency:distinct"),
            (with("side", "hold".into()), "side:enum"),
            (with("price", "0".into()), "price:range"),
            (with("price", "-1.5".into()), "price:range"),
            (with("price", "abc".into()), "price:decimal"),
            (with("price", "1e400".into()), "price:decimal"),
            (with("price", " 1".into()), "price:decimal"),
            (with("price", 1.5.into()), "price:type"),
            (
                with("quantity", "99999999999999999999999999999999".into()),
                "quantity:decimal",
            ),
            (with("quantity", "0.000".into()), "quantity:range"),
            (with("channel", 5.into()), "channel:enum"),
            (with("channel", (-1).into()), "channel:enum"),
            (with("channel", 70_000.into()), "channel:enum"),
            (with("channel", 1.5.into()), "channel:enum"),
            (with("channel", "11".into()), "channel:type"),
            (
                with("description", "x".repeat(1025).into()),
                "description:max_length",
            ),
            (with("description", Value::Null), "description:type"),
            (with("client_order_id", "".into()), "client_order_id:length"),
            (
                with("client_order_id", "c".repeat(65).into()),
                "client_order_id:length",
            ),
            (
                with("client_order_id", "a\nb".into()),
                "client_order_id:pattern",
            ),
            (with("client_order_id", Value::Null), "client_order_id:type"),
            (
                with("client_oder_id", "x".into()),
                "client_oder_id:unknown_field",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(errors_of(body.clone()), vec![want.to_string()], "{body}");
        }
    }

    #[test]
    fn every_broken_rule_is_reported_at_once() {
        let mut body = valid();
        body["src_currency"] = "x".into();
        body["side"] = "up".into();
        body["price"] = "-1".into();
        body["channel"] = 7.into();
        body.as_object_mut().map(|m| m.remove("quantity"));
        assert_eq!(
            errors_of(body),
            vec![
                "src_currency:pattern",
                "side:enum",
                "price:range",
                "quantity:required",
                "channel:enum"
            ]
        );
    }

    #[test]
    fn descriptions_count_characters_not_bytes() {
        assert_eq!(
            errors_of(with("description", "é".repeat(1024).into())),
            Vec::<String>::new()
        );
    }

    #[test]
    fn client_order_id_maps_to_a_stable_id() {
        let body = with("client_order_id", "abc-1".into());
        let first = NewOrder::from_value(body.clone()).and_then(|o| o.accept(Utc::now()));
        let again = NewOrder::from_value(body).and_then(|o| o.accept(Utc::now()));
        let (first, again) = (first.expect("valid"), again.expect("valid"));
        assert_eq!(first.id, again.id);
        assert_eq!(first.id.get_version_num(), 5);
    }

    #[test]
    fn the_parser_reads_exactly_its_fields() {
        // (The API's schema lists the same: `api::orders` tests it.)
        let mut body = valid();
        body["client_order_id"] = "k".into();
        body["type"] = "limit".into();
        body["time_in_force"] = "ioc".into();
        body["post_only"] = true.into();
        let map = body.as_object().expect("object");
        assert_eq!(map.len(), NewOrder::FIELDS.len());
        assert!(NewOrder::FIELDS.iter().all(|f| map.contains_key(*f)));
        assert!(NewOrder::from_value(body).is_ok());
    }

    #[test]
    fn orders_and_cancels_decode_as_events_and_bad_events_are_named() {
        let order = NewOrder::from_value(valid())
            .and_then(|o| o.accept(Utc::now()))
            .expect("valid");
        // Orders stay version 1: every record written before events existed decodes.
        assert_eq!(
            Event::from_record(&order.to_record()).expect("an order"),
            Event::Order(order.clone())
        );
        let cancel = Cancel {
            order_id: order.id,
            symbol: "USD-EUR".parse().expect("symbol"),
            side: Some(order.side),
            price: order.price,
            requested_at: Utc::now().trunc_subsecs(6),
        };
        let record = cancel.to_record();
        let doc: Value = serde_json::from_slice(&record).expect("json");
        assert_eq!(
            (&doc["v"], &doc["type"], &doc["side"], &doc["price"]),
            (
                &json!(EVENT_VERSION),
                &json!("cancel"),
                &json!("buy"),
                &json!("1.25")
            )
        );
        assert_eq!(
            Event::from_record(&record).expect("a cancel"),
            Event::Cancel(cancel.clone())
        );
        // A cancel written before cancels named side and price still
        // decodes (matching then searches the whole book), and a field this
        // oms does not know yet is ignored.
        let mut older = doc.clone();
        older.as_object_mut().map(|m| {
            m.remove("side");
            m.remove("price")
        });
        assert_eq!(
            Event::from_record(older.to_string().as_bytes()).expect("an older cancel"),
            Event::Cancel(Cancel {
                side: None,
                price: None,
                ..cancel.clone()
            })
        );
        let mut newer = doc.clone();
        newer["reason"] = "a later field".into();
        assert_eq!(
            Event::from_record(newer.to_string().as_bytes()).expect("a newer cancel"),
            Event::Cancel(cancel)
        );
        // An order reader (an older oms) refuses an event by its version.
        assert!(matches!(
            Order::from_record(&record),
            Err(RecordError::Version { found: 2 })
        ));
        for bad in [
            json!({"v": 2, "type": "amend", "order_id": order.id}),
            json!({"v": 2, "type": "cancel", "order_id": "nope", "symbol": "USD-EUR", "requested_at": "2026-11-30T00:00:00Z"}),
            json!({"v": 2, "type": "cancel", "order_id": order.id, "symbol": "usd", "requested_at": "2026-11-30T00:00:00Z"}),
            json!({"v": 2, "order_id": order.id}),
        ] {
            let err = Event::from_record(bad.to_string().as_bytes()).expect_err("bad event");
            assert!(matches!(err, RecordError::Event(_)), "{bad}: {err}");
        }
        assert!(matches!(
            Event::from_record(br#"{"v": 4}"#),
            Err(RecordError::Version { found: 4 })
        ));
    }

    fn market() -> Value {
        let mut body = with("type", "market".into());
        body.as_object_mut().expect("object").remove("price");
        body
    }

    #[test]
    fn the_terms_default_to_a_resting_limit_order_and_a_market_order_to_ioc() {
        let limit = NewOrder::from_value(valid()).expect("valid");
        assert_eq!(limit.terms, Terms::default());
        assert_eq!(limit.terms.time_in_force, TimeInForce::Gtc);
        let m = NewOrder::from_value(market()).expect("a market order");
        assert_eq!(m.price, None);
        assert_eq!(
            m.terms,
            Terms {
                order_type: OrderType::Market,
                time_in_force: TimeInForce::Ioc,
                post_only: false
            }
        );
        let mut fok = market();
        fok["time_in_force"] = "fok".into();
        assert_eq!(
            NewOrder::from_value(fok)
                .expect("valid")
                .terms
                .time_in_force,
            TimeInForce::Fok
        );
        let post = NewOrder::from_value(with("post_only", true.into())).expect("valid");
        assert!(post.terms.post_only);
    }

    #[test]
    fn every_rule_between_the_terms_and_the_price_is_named() {
        let mut priced = market();
        priced["price"] = "1.25".into();
        assert_eq!(errors_of(priced), ["price:market_has_no_price"]);
        let mut resting = market();
        resting["time_in_force"] = "gtc".into();
        assert_eq!(errors_of(resting), ["time_in_force:market_never_rests"]);
        let mut post = market();
        post["post_only"] = true.into();
        assert_eq!(errors_of(post), ["post_only:limit_only"]);
        let mut no_price = valid();
        no_price.as_object_mut().expect("object").remove("price");
        assert_eq!(errors_of(no_price), ["price:required"]);
        assert_eq!(errors_of(with("type", "stop".into())), ["type:enum"]);
        assert_eq!(
            errors_of(with("time_in_force", "day".into())),
            ["time_in_force:enum"]
        );
        assert_eq!(
            errors_of(with("post_only", "yes".into())),
            ["post_only:type"]
        );
    }

    #[test]
    fn orders_with_terms_are_a_version_of_their_own_and_old_records_read_as_limit_gtc() {
        let plain = NewOrder::from_value(valid())
            .and_then(|o| o.accept(Utc::now()))
            .expect("valid");
        let record: Value = serde_json::from_slice(&plain.to_record()).expect("json");
        assert_eq!(record["v"], RECORD_VERSION);
        for field in ["type", "time_in_force", "post_only"] {
            assert!(
                record.get(field).is_none(),
                "{field} written for a plain order"
            );
        }
        let m = NewOrder::from_value(market())
            .and_then(|o| o.accept(Utc::now()))
            .expect("valid");
        let record: Value = serde_json::from_slice(&m.to_record()).expect("json");
        assert_eq!(record["v"], TERMS_RECORD_VERSION);
        assert_eq!(record["type"], "market");
        assert_eq!(record["time_in_force"], "ioc");
        assert!(record.get("price").is_none());
        assert_eq!(Order::from_record(&m.to_record()).expect("decodes"), m);
        // A record that breaks a rule between terms is named as such.
        let mut bad = record.clone();
        bad["price"] = "1".into();
        assert!(matches!(
            Order::from_record(bad.to_string().as_bytes()),
            Err(RecordError::Invalid(_))
        ));
    }

    #[test]
    fn records_round_trip_and_are_checked_on_the_way_in() {
        let order = NewOrder::from_value(valid())
            .and_then(|o| o.accept(Utc::now()))
            .expect("valid");
        let back = Order::from_record(&order.to_record()).expect("decodes");
        assert_eq!(back, order);

        let mut doc: Value = serde_json::from_slice(&order.to_record()).expect("json");
        doc["price"] = "-1".into();
        let err = Order::from_record(doc.to_string().as_bytes()).expect_err("negative price");
        assert!(
            matches!(&err, RecordError::Invalid(e) if e.fields() == ["price"]),
            "{err}"
        );

        let mut doc: Value = serde_json::from_slice(&order.to_record()).expect("json");
        doc["dst_currency"] = "USD".into();
        let err = Order::from_record(doc.to_string().as_bytes()).expect_err("same currency");
        assert!(
            matches!(&err, RecordError::Invalid(e) if e.fields() == ["dst_currency"]),
            "{err}"
        );
        doc.as_object_mut().map(|m| m.remove("quantity"));
        let err = Order::from_record(doc.to_string().as_bytes()).expect_err("no quantity");
        assert!(matches!(err, RecordError::Decode(_)), "{err}");

        let mut doc: Value = serde_json::from_slice(&order.to_record()).expect("json");
        doc["v"] = 2.into();
        let err = Order::from_record(doc.to_string().as_bytes()).expect_err("version");
        assert!(matches!(err, RecordError::Version { found: 2 }));
        doc.as_object_mut().map(|m| m.remove("price"));
        let err = Order::from_record(doc.to_string().as_bytes()).expect_err("version");
        assert!(matches!(err, RecordError::Version { found: 2 }));
        let err = Order::from_record(b"{not json").expect_err("junk");
        assert!(matches!(err, RecordError::Decode(_)), "{err}");
    }
}

#[cfg(test)]
mod account_tests {
    use super::*;
    use serde_json::json;

    fn new_order(cid: Option<&str>) -> NewOrder {
        let mut body = json!({
            "src_currency": "USD", "dst_currency": "EUR", "side": "buy",
            "price": "1.25", "quantity": "100", "channel": 11,
        });
        if let Some(cid) = cid {
            body["client_order_id"] = json!(cid);
        }
        NewOrder::from_value(body).expect("a valid order")
    }

    #[test]
    fn a_record_written_before_accounts_decodes_as_an_order_of_no_account() {
        let before = br#"{"v":1,"id":"019a0000-0000-7000-8000-000000000001","src_currency":"USD","dst_currency":"EUR","side":"buy","price":"1.25","quantity":"100","channel":11,"description":"","created_at":"2026-11-01T00:00:00Z"}"#;
        let order = Order::from_record(before).expect("an old record decodes");
        assert_eq!(order.account, None);
        // And an order of no account writes no `account` field.
        let again = String::from_utf8(order.to_record()).expect("utf-8");
        assert!(!again.contains("account"), "{again}");
    }

    #[test]
    fn an_account_travels_in_the_record() {
        let alice: Account = "alice".parse().expect("account");
        let order = new_order(None)
            .accept_for(Some(alice.clone()), Utc::now())
            .expect("accepted");
        let back = Order::from_record(&order.to_record()).expect("decodes");
        assert_eq!(back.account, Some(alice));
        assert_eq!(back, order);
        let bad = String::from_utf8(order.to_record())
            .expect("utf-8")
            .replace("\"alice\"", "\"al ice\"");
        assert!(
            Order::from_record(bad.as_bytes()).is_err(),
            "an account is checked on read"
        );
    }

    #[test]
    fn a_client_order_id_names_an_order_within_its_account() {
        let now = Utc::now();
        let (a, b): (Account, Account) = ("a".parse().expect("a"), "b".parse().expect("b"));
        let of = |account: Option<Account>| {
            new_order(Some("inv-1"))
                .accept_for(account, now)
                .expect("accepted")
                .id
        };
        assert_eq!(
            of(Some(a.clone())),
            of(Some(a.clone())),
            "a retry is the same order"
        );
        assert_ne!(of(Some(a)), of(Some(b)), "two accounts, two orders");
        // No account: the id as derived before accounts existed.
        assert_eq!(
            of(None),
            new_order(Some("inv-1")).accept(now).expect("ok").id
        );
    }

    #[test]
    fn an_account_name_follows_its_rule() {
        for good in ["a", "acme-treasury", "desk_7.eu", &"x".repeat(64)] {
            assert!(good.parse::<Account>().is_ok(), "{good}");
        }
        for bad in ["", "-lead", "has space", "slash/no", &"x".repeat(65), "ünï"] {
            assert!(bad.parse::<Account>().is_err(), "{bad:?}");
        }
    }
}
