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
    Account, Amount, Broken, Channel, ClientOrderId, Currency, Description, Fill, Order, OrderType,
    Reason, Side, Status, StoredOrder, StoredTrade, Terms, TimeInForce, Trade,
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
    /// `None`: a market order (rows written before order types always
    /// have one, which reads as `Some`).
    price: Option<u128>,
    quantity: u128,
    channel: u16,
    description: &'a str,
    created_at: (i64, u32),
    partition: i32,
    offset: i64,
    /// The status' place in [`Status::ALL`].
    status: u8,
    filled: u128,
    /// Defaulted, as every field after it: a row of a snapshot written
    /// before accounts (`OMSMEM03`) ends before it and reads as an order of
    /// no account.
    #[serde(borrow, default)]
    account: Option<&'a str>,
    /// The terms' places in [`OrderType::ALL`] and [`TimeInForce::ALL`],
    /// and the fill's reason's place in [`Reason::ALL`] plus one (0: none).
    /// A row written before order types (`OMSMEM04`) ends before them: a
    /// resting limit order with no reason.
    #[serde(default)]
    order_type: u8,
    #[serde(default)]
    time_in_force: u8,
    #[serde(default)]
    post_only: bool,
    #[serde(default)]
    reason: u8,
}

/// `value`'s place in `all` (every value is in its `ALL`).
fn place<T: PartialEq>(all: &[T], value: &T) -> u8 {
    all.iter()
        .position(|v| v == value)
        .expect("every value is in its ALL") as u8
}

/// The value at `place` of `all`, or what is wrong with the row.
fn at_place<T: Copy>(all: &[T], place: u8, what: &str) -> Result<T, String> {
    all.get(usize::from(place))
        .copied()
        .ok_or_else(|| format!("no such {what}: {place}"))
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
            price: o.price.map(|p| decimal(p.value())),
            quantity: decimal(o.quantity.value()),
            channel: o.channel.code(),
            description: o.description.as_str(),
            created_at: time(o.created_at),
            partition: stored.partition,
            offset: stored.offset,
            status: place(&Status::ALL, &stored.fill.status),
            filled: decimal(stored.fill.filled),
            account: o.account.as_ref().map(Account::as_str),
            order_type: place(OrderType::ALL, &o.terms.order_type),
            time_in_force: place(TimeInForce::ALL, &o.terms.time_in_force),
            post_only: o.terms.post_only,
            reason: stored
                .fill
                .reason
                .map_or(0, |r| place(&Reason::ALL, &r) + 1),
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
            price: row.price.map(|p| Amount::checked_before(from_decimal(p))),
            quantity: Amount::checked_before(from_decimal(row.quantity)),
            channel: Channel::try_from(row.channel).map_err(|e| checked("channel", e))?,
            description: Description::try_from(row.description.to_owned())
                .map_err(|e| checked("description", e))?,
            terms: Terms {
                order_type: at_place(OrderType::ALL, row.order_type, "order type")?,
                time_in_force: at_place(TimeInForce::ALL, row.time_in_force, "time in force")?,
                post_only: row.post_only,
            },
            created_at: from_time(row.created_at)?,
        };
        let mut stored = StoredOrder::new(order, row.partition, row.offset);
        stored.fill = Fill {
            status: at_place(&Status::ALL, row.status, "order status")?,
            filled: from_decimal(row.filled),
            reason: match row.reason {
                0 => None,
                n => Some(at_place(&Reason::ALL, n - 1, "reason")?),
            },
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
            price: decimal(o.price.expect("a limit order").value()),
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
