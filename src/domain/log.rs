//! Where things sit on the log: the next offset of each partition, a
//! record with its position, an order as stored with its position and fill.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::fill::Fill;
use super::order::{Event, Order};

/// An order as stored, with where it sits on the log and how far it filled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOrder {
    #[serde(flatten)]
    pub order: Order,
    pub partition: i32,
    pub offset: i64,
    /// Kept apart from the order (which is written once): an engine reads
    /// it from its fills and sets it here.
    #[serde(skip)]
    pub fill: Fill,
}

impl StoredOrder {
    pub fn new(order: Order, partition: i32, offset: i64) -> Self {
        Self {
            order,
            partition,
            offset,
            fill: Fill::default(),
        }
    }
}

/// Next offset to read, per partition of one topic.
pub type Offsets = BTreeMap<i32, i64>;

/// A record of the `orders` topic with its log position.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub partition: i32,
    pub offset: i64,
    pub event: Event,
}
