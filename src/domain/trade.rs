//! A trade: one execution between an incoming and a resting order, named
//! by the two so that a replay names it the same.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::field::Side;

/// Namespace of trade ids: a trade is named by its taker and its maker,
/// so a replay or a retry names it the same and cannot make a second one
/// (an order meets a given resting order at most once).
const TRADE_NAMESPACE: Uuid = Uuid::from_u128(0x6f6d_735f_7472_6164_655f_6964_5f6e_7331);

/// A trade as stored and published on the `trades` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTrade {
    #[serde(flatten)]
    pub trade: Trade,
    pub symbol: String,
    /// The log position of the taker order whose record made the trade.
    pub partition: i32,
    pub offset: i64,
}

/// One execution between an incoming (taker) and a resting (maker) order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub id: Uuid,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    pub buy_order_id: Uuid,
    pub sell_order_id: Uuid,
    pub taker_side: Side,
    /// When the taker order was accepted (from the log, so replays agree).
    pub executed_at: DateTime<Utc>,
}

impl Trade {
    pub fn id_for(taker: Uuid, maker: Uuid) -> Uuid {
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(taker.as_bytes());
        name[16..].copy_from_slice(maker.as_bytes());
        Uuid::new_v5(&TRADE_NAMESPACE, &name)
    }
}
