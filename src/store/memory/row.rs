//! An order and a trade as a snapshot holds them: positional (no field
//! names), each value in its binary form — ids and decimals as 128-bit
//! integers, times as seconds and nanoseconds, strings borrowed from the
//! mapped file — so a restart files 1 M orders without parsing a number, a
//! date or a field name from text.
//!
//! A snapshot is written by this process from values it checked when they
//! were accepted, and its sections pass a CRC-32 before a row is read: the
//! numbers are taken back as they were written. The strings are checked
//! again by their types (cheap, and each currency pair once per run of
//! orders, since orders come symbol by symbol).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{
    Account, Amount, Broken, Channel, ClientOrderId, Currency, Description, Fill, Order, Side,
    Status, StoredOrder, StoredTrade, Trade,
};

fn decimal(value: Decimal) -> u128 {
    u128::from_le_bytes(value.serialize())
}

fn from_decimal(bits: u128) -> Decimal {
    Decimal::deserialize(bits.to_le_bytes())
}

fn time(at: DateTime<Utc>) -> (i64, u32) {
    (at.timestamp(), at.timestamp_subsec_nanos())
}

fn from_time((secs, nanos): (i64, u32)) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp(secs, nanos).ok_or_else(|| format!("no such time: {secs}.{nanos:09}"))
}

fn side(buy: bool) -> Side {
    if buy { Side::Buy } else { Side::Sell }
}

/// An order with where it sits and its fill.
#[derive(Serialize, Deserialize)]
pub(super) struct OrderRow<'a> {
    id: u128,
    #[serde(borrow)]
    client_order_id: Option<&'a str>,
    src: &'a str,
    dst: &'a str,
    buy: bool,
    price: u128,
    quantity: u128,
    channel: u16,
    description: &'a str,
    created_at: (i64, u32),
    partition: i32,
    offset: i64,
    /// The status' place in [`Status::ALL`].
    status: u8,
    filled: u128,
    /// Last, and defaulted: a row of a snapshot written before accounts
    /// (`OMSMEM03`) ends before it and reads as an order of no account.
    #[serde(borrow, default)]
    account: Option<&'a str>,
}

impl<'a> OrderRow<'a> {
    pub(super) fn of(stored: &'a StoredOrder) -> Self {
        let o = &stored.order;
        Self {
            id: o.id.as_u128(),
            client_order_id: o.client_order_id.as_ref().map(ClientOrderId::as_str),
            src: o.src_currency.as_str(),
            dst: o.dst_currency.as_str(),
            buy: o.side == Side::Buy,
            price: decimal(o.price.value()),
            quantity: decimal(o.quantity.value()),
            channel: o.channel.code(),
            description: o.description.as_str(),
            created_at: time(o.created_at),
            partition: stored.partition,
            offset: stored.offset,
            status: Status::ALL
                .iter()
                .position(|s| *s == stored.fill.status)
                .expect("every status is in Status::ALL") as u8,
            filled: decimal(stored.fill.filled),
            account: o.account.as_ref().map(Account::as_str),
        }
    }

    pub(super) fn id(&self) -> u128 {
        self.id
    }
}

/// Turns rows back into orders, reusing the last row's currencies while the
/// pair stays the same.
#[derive(Default)]
pub(super) struct Orders {
    pair: Option<(Currency, Currency)>,
}

impl Orders {
    pub(super) fn stored(&mut self, row: OrderRow<'_>) -> Result<StoredOrder, String> {
        let checked = |field: &str, broken: Broken| {
            format!("order {}: {field} {broken}", Uuid::from_u128(row.id))
        };
        let (src, dst) = match &self.pair {
            Some((src, dst)) if src.as_str() == row.src && dst.as_str() == row.dst => {
                (src.clone(), dst.clone())
            }
            _ => {
                let src: Currency = row.src.parse().map_err(|e| checked("src_currency", e))?;
                let dst: Currency = row.dst.parse().map_err(|e| checked("dst_currency", e))?;
                self.pair = Some((src.clone(), dst.clone()));
                (src, dst)
            }
        };
        let order = Order {
            id: Uuid::from_u128(row.id),
            client_order_id: row
                .client_order_id
                .map(|c| ClientOrderId::try_from(c.to_owned()))
                .transpose()
                .map_err(|e| checked("client_order_id", e))?,
            account: row
                .account
                .map(str::parse)
                .transpose()
                .map_err(|e| checked("account", e))?,
            src_currency: src,
            dst_currency: dst,
            side: side(row.buy),
            price: Amount::checked_before(from_decimal(row.price)),
            quantity: Amount::checked_before(from_decimal(row.quantity)),
            channel: Channel::try_from(row.channel).map_err(|e| checked("channel", e))?,
            description: Description::try_from(row.description.to_owned())
                .map_err(|e| checked("description", e))?,
            created_at: from_time(row.created_at)?,
        };
        let mut stored = StoredOrder::new(order, row.partition, row.offset);
        stored.fill = Fill {
            status: *Status::ALL
                .get(usize::from(row.status))
                .ok_or_else(|| format!("no such order status: {}", row.status))?,
            filled: from_decimal(row.filled),
        };
        Ok(stored)
    }
}

/// A trade with its symbol and its taker's log position.
#[derive(Serialize, Deserialize)]
pub(super) struct TradeRow<'a> {
    id: u128,
    price: u128,
    quantity: u128,
    buy_order_id: u128,
    sell_order_id: u128,
    taker_buys: bool,
    executed_at: (i64, u32),
    symbol: &'a str,
    partition: i32,
    offset: i64,
}

impl<'a> TradeRow<'a> {
    pub(super) fn of(stored: &'a StoredTrade) -> Self {
        let t = &stored.trade;
        Self {
            id: t.id.as_u128(),
            price: decimal(t.price),
            quantity: decimal(t.quantity),
            buy_order_id: t.buy_order_id.as_u128(),
            sell_order_id: t.sell_order_id.as_u128(),
            taker_buys: t.taker_side == Side::Buy,
            executed_at: time(t.executed_at),
            symbol: &stored.symbol,
            partition: stored.partition,
            offset: stored.offset,
        }
    }

    pub(super) fn id(&self) -> u128 {
        self.id
    }

    pub(super) fn symbol(&self) -> &'a str {
        self.symbol
    }

    pub(super) fn stored(self) -> Result<StoredTrade, String> {
        Ok(StoredTrade {
            trade: Trade {
                id: Uuid::from_u128(self.id),
                price: from_decimal(self.price),
                quantity: from_decimal(self.quantity),
                buy_order_id: Uuid::from_u128(self.buy_order_id),
                sell_order_id: Uuid::from_u128(self.sell_order_id),
                taker_side: side(self.taker_buys),
                executed_at: from_time(self.executed_at)?,
            },
            symbol: self.symbol.to_owned(),
            partition: self.partition,
            offset: self.offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row as `OMSMEM03` wrote it: every field of [`OrderRow`] but the account.
    #[derive(Serialize)]
    struct RowBeforeAccounts<'a> {
        id: u128,
        client_order_id: Option<&'a str>,
        src: &'a str,
        dst: &'a str,
        buy: bool,
        price: u128,
        quantity: u128,
        channel: u16,
        description: &'a str,
        created_at: (i64, u32),
        partition: i32,
        offset: i64,
        status: u8,
        filled: u128,
    }

    #[test]
    fn a_row_round_trips_and_one_written_before_accounts_reads_as_no_account() {
        let mut stored = crate::store::contract::order(("USD", "EUR"), 7);
        stored.order.account = Some("alice".parse().expect("account"));
        let bytes = rmp_serde::to_vec(&OrderRow::of(&stored)).expect("encode");
        let row: OrderRow<'_> = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(Orders::default().stored(row).expect("an order"), stored);

        let o = &stored.order;
        let old = RowBeforeAccounts {
            id: o.id.as_u128(),
            client_order_id: None,
            src: "USD",
            dst: "EUR",
            buy: false,
            price: decimal(o.price.value()),
            quantity: decimal(o.quantity.value()),
            channel: o.channel.code(),
            description: o.description.as_str(),
            created_at: time(o.created_at),
            partition: stored.partition,
            offset: stored.offset,
            status: 0,
            filled: decimal(Decimal::ZERO),
        };
        let bytes = rmp_serde::to_vec(&old).expect("encode");
        let row: OrderRow<'_> = rmp_serde::from_slice(&bytes).expect("an OMSMEM03 row decodes");
        let read = Orders::default().stored(row).expect("an order");
        assert_eq!(read.order.account, None);
        assert_eq!(read.order.id, o.id);
    }
}
