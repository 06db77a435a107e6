//! An order's lifecycle: where it stands and how much of it filled.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where an order stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In the book, nothing filled yet.
    #[default]
    Open,
    /// In the book, some of it filled.
    PartiallyFilled,
    /// All of it filled: out of the book.
    Filled,
    /// Taken out of the book before it filled.
    Cancelled,
    /// Never rested: what did not fill at once went (an `ioc` or market
    /// order's remainder, a `fok` order that could not fill whole). How
    /// much did fill is in the fill; why, in its reason.
    Expired,
    /// Refused by the book on arrival, nothing traded: a `post_only` order
    /// that would have traded.
    Rejected,
}

impl Status {
    /// Every status; a store may keep a status as its place here, so new
    /// ones are appended.
    pub const ALL: [Status; 6] = [
        Status::Open,
        Status::PartiallyFilled,
        Status::Filled,
        Status::Cancelled,
        Status::Expired,
        Status::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::PartiallyFilled => "partially_filled",
            Status::Filled => "filled",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
        }
    }

    /// The statuses of an order still in the book.
    pub const LIVE: [Status; 2] = [Status::Open, Status::PartiallyFilled];

    /// Still in the book (can trade, can be cancelled).
    pub fn is_live(self) -> bool {
        Status::LIVE.contains(&self)
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown order status {s:?}"))
    }
}

/// Why an order left the book, or never entered it, other than by filling
/// or by its owner's cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `ioc`: the part that did not fill at once (status `expired`).
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

impl Reason {
    /// Every reason; a store may keep a reason as its place here (plus one),
    /// so new ones are appended.
    pub const ALL: [Reason; 5] = [
        Reason::IocRemainder,
        Reason::MarketRemainder,
        Reason::FokNotFillable,
        Reason::PostOnlyWouldTrade,
        Reason::SelfTrade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::IocRemainder => "ioc_remainder",
            Reason::MarketRemainder => "market_remainder",
            Reason::FokNotFillable => "fok_not_fillable",
            Reason::PostOnlyWouldTrade => "post_only_would_trade",
            Reason::SelfTrade => "self_trade",
        }
    }
}

impl std::str::FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| format!("unknown order status reason {s:?}"))
    }
}

/// How far an order got. An order the store has no fill for is open with
/// nothing filled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    pub status: Status,
    #[serde(with = "rust_decimal::serde::str")]
    pub filled: Decimal,
    /// Why it expired, was rejected or was cancelled by the book; absent
    /// for what its own events decided (a fill, its owner's cancel) and in
    /// fills stored before reasons existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

impl Fill {
    /// Open with nothing filled: what an order without a stored fill reads
    /// as. Fills only grow, so an untouched fill belongs to an order new in
    /// its batch, which has no stored fill to replace: the engines skip
    /// writing it (one random write less per order that rests).
    pub fn is_untouched(&self) -> bool {
        self.status == Status::Open && self.filled.is_zero()
    }

    /// What can still trade: nothing once filled or cancelled.
    pub fn remaining(&self, quantity: Decimal) -> Decimal {
        if self.status.is_live() {
            quantity - self.filled
        } else {
            Decimal::ZERO
        }
    }
}

/// An order's fill after a batch, and the partition whose book holds it
/// (the store keeps an index of the orders still resting, per partition,
/// to rebuild the books from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderState {
    pub id: Uuid,
    pub partition: i32,
    pub fill: Fill,
}
