//! The OpenAPI face of the domain's value types: each field's schema is
//! its [`Rule`] — built by the same constants that check a value — and
//! poem-openapi parses through the field's own `from_json`, so the
//! contract and the server cannot disagree. The status enum and the
//! `Symbol` parameter live here too: the domain knows no web framework.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde_json::Value;

use crate::domain::{
    Account, Amount, Broken, Channel, ClientOrderId, Currency, Description, Field, OrderType,
    Reason, Rule, Side, Status, Symbol, TimeInForce,
};

/// A rule as poem-openapi's schema.
pub fn schema(rule: Rule) -> MetaSchema {
    MetaSchema {
        description: rule.description,
        pattern: rule.pattern,
        min_length: rule.min_length,
        max_length: rule.max_length,
        enum_items: rule.one_of,
        example: rule.example,
        ..MetaSchema::new(rule.kind)
    }
}

/// Strings are inline: a field's own description then merges into its
/// schema instead of an `allOf` around a reference, which client
/// generators cannot take for a string. Enums are components, so generated
/// clients get one `Side` and one `Channel` type.
macro_rules! openapi_field {
    ($($ty:ty => $how:ident),* $(,)?) => {$(
        impl Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                Cow::Borrowed(<$ty as Field>::NAME)
            }
            fn schema_ref() -> MetaSchemaRef {
                openapi_field!(@ref $how, $ty)
            }
            fn register(registry: &mut Registry) {
                openapi_field!(@register $how, $ty, registry)
            }
            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }
            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(std::iter::once(self))
            }
        }
        impl ParseFromJSON for $ty {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                let value = value.unwrap_or_default();
                <$ty as Field>::from_json(&value).map_err(|b| ParseError::custom(b.message))
            }
        }
        impl ToJSON for $ty {
            fn to_json(&self) -> Option<Value> {
                Some(<$ty as Field>::to_json(self))
            }
        }
    )*};
    (@ref inline, $ty:ty) => { MetaSchemaRef::Inline(Box::new(schema(<$ty as Field>::rule()))) };
    (@ref component, $ty:ty) => { MetaSchemaRef::Reference(<$ty as Field>::NAME.to_owned()) };
    (@register inline, $ty:ty, $registry:ident) => { { let _ = $registry; } };
    (@register component, $ty:ty, $registry:ident) => {
        { $registry.create_schema::<Self, _>(<$ty as Field>::NAME.to_owned(), |_| schema(<$ty as Field>::rule())) }
    };
}
openapi_field!(
    Currency => inline,
    Amount => inline,
    Description => inline,
    ClientOrderId => inline,
    Account => inline,
    Side => component,
    Channel => component,
    OrderType => component,
    TimeInForce => component,
);

impl Type for Symbol {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Symbol")
    }
    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(schema(Symbol::rule())))
    }
    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }
    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl ParseFromParameter for Symbol {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        value
            .parse()
            .map_err(|b: Broken| ParseError::custom(b.message))
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename = "Status", rename_all = "snake_case")]
pub enum StatusView {
    /// In the book, nothing filled yet.
    Open,
    /// In the book, some of it filled.
    PartiallyFilled,
    /// All of it filled: out of the book.
    Filled,
    /// Taken out of the book before it filled.
    Cancelled,
    /// Never rested: what did not fill at once went (`ioc`, a market
    /// order's remainder, a `fok` order that could not fill whole).
    Expired,
    /// Refused by the book on arrival, nothing traded (`post_only`).
    Rejected,
}

/// The API's face of [`Status`] (same words, tied by a test).
impl From<Status> for StatusView {
    fn from(status: Status) -> Self {
        match status {
            Status::Open => StatusView::Open,
            Status::PartiallyFilled => StatusView::PartiallyFilled,
            Status::Filled => StatusView::Filled,
            Status::Cancelled => StatusView::Cancelled,
            Status::Expired => StatusView::Expired,
            Status::Rejected => StatusView::Rejected,
        }
    }
}

/// Why the book, not the owner, ended an order: set on an `expired` or
/// `rejected` order and on one `cancelled` by self-trade prevention;
/// absent otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename = "Reason", rename_all = "snake_case")]
pub enum ReasonView {
    /// `ioc`: the part that did not fill at once (`expired`).
    IocRemainder,
    /// A market order: the part the book could not fill (`expired`).
    MarketRemainder,
    /// `fok`: the book could not fill all of it at once, so none of it
    /// traded (`expired`).
    FokNotFillable,
    /// `post_only`: it would have traded on arrival (`rejected`).
    PostOnlyWouldTrade,
    /// Self-trade prevention: an order of the same account reached it
    /// (`cancelled`).
    SelfTrade,
}

/// The API's face of [`Reason`] (same words, tied by a test).
impl From<Reason> for ReasonView {
    fn from(reason: Reason) -> Self {
        match reason {
            Reason::IocRemainder => ReasonView::IocRemainder,
            Reason::MarketRemainder => ReasonView::MarketRemainder,
            Reason::FokNotFillable => ReasonView::FokNotFillable,
            Reason::PostOnlyWouldTrade => ReasonView::PostOnlyWouldTrade,
            Reason::SelfTrade => ReasonView::SelfTrade,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_names_every_status_as_the_domain_does() {
        for status in Status::ALL {
            let view = StatusView::from(status);
            assert_eq!(
                view.to_json(),
                Some(Value::String(status.as_str().to_owned())),
                "{status:?}"
            );
        }
        for reason in Reason::ALL {
            assert_eq!(
                ReasonView::from(reason).to_json(),
                Some(Value::String(reason.as_str().to_owned())),
                "{reason:?}"
            );
        }
    }
}
