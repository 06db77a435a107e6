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
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Open,
        Status::PartiallyFilled,
        Status::Filled,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::PartiallyFilled => "partially_filled",
            Status::Filled => "filled",
            Status::Cancelled => "cancelled",
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

/// How far an order got. An order the store has no fill for is open with
/// nothing filled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    pub status: Status,
    #[serde(with = "rust_decimal::serde::str")]
    pub filled: Decimal,
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
