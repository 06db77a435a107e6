//! The order domain: what a client submits ([`NewOrder`]), how it is validated,
//! and the accepted [`Order`] that travels on the log and lands in the store.
//!
//! Validation lives here, once, and is used twice: by the API before anything
//! reaches the producer, and by the consumer on every record it reads (a record
//! produced by another writer can be bad; it goes to the dead-letter topic).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the JSON record written to the log. Bump on incompatible change.
pub const RECORD_VERSION: u32 = 1;

/// Longest free-text description accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;

/// Longest idempotency key accepted, in characters.
pub const MAX_CLIENT_ORDER_ID_CHARS: usize = 64;

/// Sales channels of the redpanda101 order model.
pub const CHANNELS: [u16; 22] = [
    0, 1, 2, 3, 4, 11, 12, 13, 14, 21, 23, 31, 32, 33, 34, 41, 42, 51, 52, 53, 54, 61,
];

/// Namespace of the name-based (v5) ids derived from a `client_order_id`, so a
/// retried request maps to the same order id on every oms instance.
const CLIENT_ORDER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f6d_735f_6f72_6465_725f_6964_5f6e_7331);

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl FromStr for Side {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "buy" => Ok(Side::Buy),
            "sell" => Ok(Side::Sell),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        })
    }
}

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

#[derive(Default)]
struct Collector(Vec<FieldError>);

impl Collector {
    fn push(&mut self, field: &str, rule: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_owned(),
            rule: rule.to_owned(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// An order as a client submits it: nothing checked yet.
#[derive(Debug, Clone, Default)]
pub struct NewOrder {
    pub src_currency: String,
    pub dst_currency: String,
    pub side: String,
    pub price: String,
    pub quantity: String,
    pub channel: i64,
    pub description: String,
    pub client_order_id: Option<String>,
}

/// An accepted order: every field valid, identity and time assigned by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<String>,
    pub src_currency: String,
    pub dst_currency: String,
    pub side: Side,
    pub price: Decimal,
    pub quantity: Decimal,
    pub channel: u16,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

/// The JSON value of a record on the `orders` topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderRecord {
    /// Schema version ([`RECORD_VERSION`]).
    pub v: u32,
    #[serde(flatten)]
    pub order: Order,
}

/// Why a record read from the log is not a storable order.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is not a valid order JSON document: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("unsupported record schema version {found} (this oms reads version {RECORD_VERSION})")]
    Version { found: u32 },
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

fn is_currency(code: &str) -> bool {
    (3..=10).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_uppercase())
}

fn check_currency(c: &mut Collector, field: &str, code: &str) {
    if !is_currency(code) {
        c.push(field, "pattern", "must be 3 to 10 upper-case letters A-Z");
    }
}

fn check_positive(c: &mut Collector, field: &str, value: &Decimal) {
    if value.is_sign_negative() || value.is_zero() {
        c.push(field, "range", "must be greater than zero");
    }
}

fn parse_decimal(c: &mut Collector, field: &str, raw: &str) -> Option<Decimal> {
    // from_str_exact refuses silent rounding of over-long fractions.
    match Decimal::from_str_exact(raw.trim()) {
        Ok(v) if raw.trim() == raw => {
            check_positive(c, field, &v);
            Some(v)
        }
        _ => {
            c.push(
                field,
                "decimal",
                "must be a decimal number as a string, such as \"12.50\" (at most 28 significant digits)",
            );
            None
        }
    }
}

fn check_channel(c: &mut Collector, channel: i64) -> Option<u16> {
    match u16::try_from(channel) {
        Ok(ch) if CHANNELS.contains(&ch) => Some(ch),
        _ => {
            c.push("channel", "enum", format!("must be one of {CHANNELS:?}"));
            None
        }
    }
}

fn check_text(c: &mut Collector, description: &str, client_order_id: Option<&str>) {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        c.push(
            "description",
            "max_length",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        );
    }
    if let Some(cid) = client_order_id {
        if cid.is_empty() || cid.chars().count() > MAX_CLIENT_ORDER_ID_CHARS {
            c.push(
                "client_order_id",
                "length",
                format!("must be 1 to {MAX_CLIENT_ORDER_ID_CHARS} characters"),
            );
        } else if cid.chars().any(char::is_control) {
            c.push(
                "client_order_id",
                "pattern",
                "must not contain control characters",
            );
        }
    }
}

impl NewOrder {
    /// Validates every field (reporting all broken rules, not just the first)
    /// and assigns the order's identity and creation time.
    pub fn parse(self, now: DateTime<Utc>) -> Result<Order, ValidationErrors> {
        let mut c = Collector::default();
        check_currency(&mut c, "src_currency", &self.src_currency);
        check_currency(&mut c, "dst_currency", &self.dst_currency);
        if is_currency(&self.src_currency) && self.src_currency == self.dst_currency {
            c.push("dst_currency", "distinct", "must differ from src_currency");
        }
        let side = self.side.parse::<Side>().ok();
        if side.is_none() {
            c.push("side", "enum", "must be \"buy\" or \"sell\"");
        }
        let price = parse_decimal(&mut c, "price", &self.price);
        let quantity = parse_decimal(&mut c, "quantity", &self.quantity);
        let channel = check_channel(&mut c, self.channel);
        check_text(&mut c, &self.description, self.client_order_id.as_deref());
        c.finish()?;

        let (Some(side), Some(price), Some(quantity), Some(channel)) =
            (side, price, quantity, channel)
        else {
            unreachable!("every None above pushed a field error");
        };
        let id = match &self.client_order_id {
            Some(cid) => Uuid::new_v5(&CLIENT_ORDER_ID_NAMESPACE, cid.as_bytes()),
            None => Uuid::now_v7(),
        };
        Ok(Order {
            id,
            client_order_id: self.client_order_id,
            src_currency: self.src_currency,
            dst_currency: self.dst_currency,
            side,
            price,
            quantity,
            channel,
            description: self.description,
            // Microseconds: what every store (Postgres timestamptz) keeps.
            created_at: now.trunc_subsecs(6),
        })
    }
}

impl Order {
    /// The log key and listing key: `SRC-DST`.
    pub fn symbol(&self) -> String {
        format!("{}-{}", self.src_currency, self.dst_currency)
    }

    /// Re-checks the rules on an order read back from the log.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector::default();
        check_currency(&mut c, "src_currency", &self.src_currency);
        check_currency(&mut c, "dst_currency", &self.dst_currency);
        if self.src_currency == self.dst_currency {
            c.push("dst_currency", "distinct", "must differ from src_currency");
        }
        check_positive(&mut c, "price", &self.price);
        check_positive(&mut c, "quantity", &self.quantity);
        check_channel(&mut c, i64::from(self.channel));
        check_text(&mut c, &self.description, self.client_order_id.as_deref());
        c.finish()
    }

    /// The record value written to the log.
    pub fn to_record(&self) -> Vec<u8> {
        let record = OrderRecord {
            v: RECORD_VERSION,
            order: self.clone(),
        };
        serde_json::to_vec(&record)
            .unwrap_or_else(|e| unreachable!("an Order always serialises: {e}"))
    }

    /// Decodes and re-validates a record value read from the log.
    pub fn from_record(bytes: &[u8]) -> Result<Order, RecordError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let Version { v } = serde_json::from_slice(bytes)?;
        if v != RECORD_VERSION {
            return Err(RecordError::Version { found: v });
        }
        let record: OrderRecord = serde_json::from_slice(bytes)?;
        record.order.validate()?;
        Ok(record.order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> NewOrder {
        NewOrder {
            src_currency: "USD".into(),
            dst_currency: "EUR".into(),
            side: "buy".into(),
            price: "1.25".into(),
            quantity: "100".into(),
            channel: 11,
            description: "test".into(),
            client_order_id: None,
        }
    }

    fn fields_of(order: NewOrder) -> Vec<String> {
        match order.parse(Utc::now()) {
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
        let order = valid().parse(Utc::now()).expect("valid");
        assert_eq!(order.id.get_version_num(), 7);
        assert_eq!(order.symbol(), "USD-EUR");
        assert_eq!(order.price.to_string(), "1.25");
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(NewOrder, &str)> = vec![
            (
                NewOrder {
                    src_currency: "usd".into(),
                    ..valid()
                },
                "src_currency:pattern",
            ),
            (
                NewOrder {
                    src_currency: "US".into(),
                    ..valid()
                },
                "src_currency:pattern",
            ),
            (
                NewOrder {
                    dst_currency: "EURO12".into(),
                    ..valid()
                },
                "dst_currency:pattern",
            ),
            (
                NewOrder {
                    dst_currency: "ABCDEFGHIJK".into(),
                    ..valid()
                },
                "dst_currency:pattern",
            ),
            (
                NewOrder {
                    dst_currency: "USD".into(),
                    ..valid()
                },
                "dst_currency:distinct",
            ),
            (
                NewOrder {
                    side: "hold".into(),
                    ..valid()
                },
                "side:enum",
            ),
            (
                NewOrder {
                    price: "0".into(),
                    ..valid()
                },
                "price:range",
            ),
            (
                NewOrder {
                    price: "-1.5".into(),
                    ..valid()
                },
                "price:range",
            ),
            (
                NewOrder {
                    price: "abc".into(),
                    ..valid()
                },
                "price:decimal",
            ),
            (
                NewOrder {
                    price: "1e400".into(),
                    ..valid()
                },
                "price:decimal",
            ),
            (
                NewOrder {
                    price: " 1".into(),
                    ..valid()
                },
                "price:decimal",
            ),
            (
                NewOrder {
                    quantity: "99999999999999999999999999999999".into(),
                    ..valid()
                },
                "quantity:decimal",
            ),
            (
                NewOrder {
                    quantity: "0.000".into(),
                    ..valid()
                },
                "quantity:range",
            ),
            (
                NewOrder {
                    channel: 5,
                    ..valid()
                },
                "channel:enum",
            ),
            (
                NewOrder {
                    channel: -1,
                    ..valid()
                },
                "channel:enum",
            ),
            (
                NewOrder {
                    channel: 70_000,
                    ..valid()
                },
                "channel:enum",
            ),
            (
                NewOrder {
                    description: "x".repeat(1025),
                    ..valid()
                },
                "description:max_length",
            ),
            (
                NewOrder {
                    client_order_id: Some(String::new()),
                    ..valid()
                },
                "client_order_id:length",
            ),
            (
                NewOrder {
                    client_order_id: Some("c".repeat(65)),
                    ..valid()
                },
                "client_order_id:length",
            ),
            (
                NewOrder {
                    client_order_id: Some("a\nb".into()),
                    ..valid()
                },
                "client_order_id:pattern",
            ),
        ];
        for (order, want) in cases {
            assert_eq!(fields_of(order), vec![want.to_string()]);
        }
    }

    #[test]
    fn every_broken_rule_is_reported_at_once() {
        let order = NewOrder {
            src_currency: "x".into(),
            side: "up".into(),
            price: "-1".into(),
            channel: 7,
            ..valid()
        };
        assert_eq!(
            fields_of(order),
            vec![
                "src_currency:pattern",
                "side:enum",
                "price:range",
                "channel:enum"
            ]
        );
    }

    #[test]
    fn descriptions_count_characters_not_bytes() {
        let order = NewOrder {
            description: "é".repeat(1024),
            ..valid()
        };
        assert!(order.parse(Utc::now()).is_ok());
    }

    #[test]
    fn client_order_id_maps_to_a_stable_id() {
        let a = NewOrder {
            client_order_id: Some("abc-1".into()),
            ..valid()
        };
        let first = a.clone().parse(Utc::now()).expect("valid");
        let again = a.parse(Utc::now()).expect("valid");
        assert_eq!(first.id, again.id);
        assert_eq!(first.id.get_version_num(), 5);
    }

    #[test]
    fn records_round_trip_and_are_revalidated() {
        let order = valid().parse(Utc::now()).expect("valid");
        let back = Order::from_record(&order.to_record()).expect("decodes");
        assert_eq!(back, order);

        let mut bad = order.clone();
        bad.price = Decimal::NEGATIVE_ONE;
        let err = Order::from_record(&bad.to_record()).expect_err("negative price");
        assert!(matches!(err, RecordError::Invalid(_)), "{err}");

        let mut doc: serde_json::Value = serde_json::from_slice(&order.to_record()).expect("json");
        doc["v"] = 2.into();
        let err = Order::from_record(doc.to_string().as_bytes()).expect_err("version");
        assert!(matches!(err, RecordError::Version { found: 2 }));
        let err = Order::from_record(b"{not json").expect_err("junk");
        assert!(matches!(err, RecordError::Decode(_)), "{err}");
    }
}
