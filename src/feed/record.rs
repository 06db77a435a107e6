//! What the `trades` topic holds: every trade (a [`StoredTrade`], as it
//! always did) and, for every batch the consumer matched, one record per
//! symbol it touched ([`SymbolRecord`]: the orders' new states and the top
//! of the book after it). The live feed is read from these records, so it
//! is the same on every instance and across restarts.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Account, Reason, Status, StoredTrade};
use crate::matching::{Level, SymbolChange};

/// One batch's change to one symbol's book. Tagged `"event": "symbol"`,
/// which a trade record lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolRecord {
    pub event: SymbolTag,
    pub symbol: String,
    pub orders: Vec<OrderUpdate>,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// The tag of a [`SymbolRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SymbolTag {
    Symbol,
}

/// An order's state after a batch, as its owner's feed shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderUpdate {
    pub order_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,
    pub status: Status,
    #[serde(with = "rust_decimal::serde::str")]
    pub filled_quantity: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

impl From<&SymbolChange> for SymbolRecord {
    fn from(change: &SymbolChange) -> Self {
        Self {
            event: SymbolTag::Symbol,
            symbol: change.symbol.clone(),
            orders: change
                .orders
                .iter()
                .map(|t| OrderUpdate {
                    order_id: t.state.id,
                    account: t.account.clone(),
                    status: t.state.fill.status,
                    filled_quantity: t.state.fill.filled,
                    reason: t.state.fill.reason,
                })
                .collect(),
            bids: change.bids.clone(),
            asks: change.asks.clone(),
        }
    }
}

/// A record of the `trades` topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedRecord {
    Trade(StoredTrade),
    Symbol(SymbolRecord),
}

impl FeedRecord {
    /// Decodes a record value; `None` for what this oms does not know (a
    /// later one's record kinds are skipped, not fatal).
    pub fn decode(bytes: &[u8]) -> Option<FeedRecord> {
        #[derive(Deserialize)]
        struct Tag {
            event: Option<String>,
        }
        match serde_json::from_slice::<Tag>(bytes).ok()?.event.as_deref() {
            None => serde_json::from_slice(bytes).ok().map(FeedRecord::Trade),
            Some("symbol") => serde_json::from_slice(bytes).ok().map(FeedRecord::Symbol),
            Some(_) => None,
        }
    }
}
