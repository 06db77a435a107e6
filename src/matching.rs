//! Price-time priority matching, one book per symbol.
//!
//! The book is a pure function of the events fed to it, in log order: the
//! same records replayed give the same trades with the same ids, which is
//! what lets the book live in memory only and be rebuilt from the log (one
//! partition per symbol orders its events). Rules: limit orders; an
//! incoming order trades against the best opposite price first and, at one
//! price, the oldest resting order first; the trade price is the resting
//! order's; what is left of the incoming order rests at its limit; every
//! quantity and price is an exact decimal.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::order::Side;

/// Namespace of trade ids: a trade is named by its taker and its maker,
/// so a replay or a retry names it the same and cannot make a second one
/// (an order meets a given resting order at most once).
const TRADE_NAMESPACE: Uuid = Uuid::from_u128(0x6f6d_735f_7472_6164_655f_6964_5f6e_7331);

/// One execution between an incoming (taker) and a resting (maker) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trade {
    pub id: Uuid,
    pub price: Decimal,
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

/// An order resting in the book.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resting {
    id: Uuid,
    remaining: Decimal,
}

/// Where a resting order sits, to cancel it without a scan of the book.
#[derive(Debug, Clone, Copy)]
struct Place {
    side: Side,
    price: Decimal,
}

/// One aggregated price level, for `GET /orderbook/{symbol}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    pub price: Decimal,
    pub quantity: Decimal,
    pub orders: usize,
}

/// What happened to an order that was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It rested with this much left, now removed.
    Removed { remaining: Decimal },
    /// It is not in the book: filled, already cancelled, or never seen.
    NotResting,
}

/// The book of one symbol.
#[derive(Debug, Default)]
pub struct Book {
    /// Best bid first (highest price).
    bids: BTreeMap<Reverse<Decimal>, VecDeque<Resting>>,
    /// Best ask first (lowest price).
    asks: BTreeMap<Decimal, VecDeque<Resting>>,
    resting: HashMap<Uuid, Place>,
}

impl Book {
    pub fn new() -> Self {
        Self::default()
    }

    /// Matches an incoming limit order, rests what is left, and returns
    /// the trades in the order they happened. An id already resting is
    /// ignored (a record read twice must not trade twice).
    pub fn submit(
        &mut self,
        id: Uuid,
        side: Side,
        price: Decimal,
        quantity: Decimal,
        at: DateTime<Utc>,
    ) -> Vec<Trade> {
        if self.resting.contains_key(&id) || quantity <= Decimal::ZERO {
            return Vec::new();
        }
        // One key per price, whatever its written scale ("1.50" = "1.5").
        let price = price.normalize();
        let mut trades = Vec::new();
        let taker = Taker { id, side, at };
        let left = match side {
            Side::Buy => sweep(
                &mut self.asks,
                |p| *p,
                |p| p <= price,
                quantity,
                taker,
                &mut trades,
                &mut self.resting,
            ),
            Side::Sell => sweep(
                &mut self.bids,
                |Reverse(p)| *p,
                |p| p >= price,
                quantity,
                taker,
                &mut trades,
                &mut self.resting,
            ),
        };
        if left > Decimal::ZERO {
            let resting = Resting {
                id,
                remaining: left,
            };
            match side {
                Side::Buy => self
                    .bids
                    .entry(Reverse(price))
                    .or_default()
                    .push_back(resting),
                Side::Sell => self.asks.entry(price).or_default().push_back(resting),
            }
            self.resting.insert(id, Place { side, price });
        }
        trades
    }

    /// Takes a resting order out of the book.
    pub fn cancel(&mut self, id: Uuid) -> Cancelled {
        let Some(place) = self.resting.remove(&id) else {
            return Cancelled::NotResting;
        };
        let removed = match place.side {
            Side::Buy => take(&mut self.bids, &Reverse(place.price), id),
            Side::Sell => take(&mut self.asks, &place.price, id),
        };
        match removed {
            Some(remaining) => Cancelled::Removed { remaining },
            // The index and the levels always agree; if they did not, the
            // order is not resting either way.
            None => Cancelled::NotResting,
        }
    }

    /// What is left of a resting order.
    pub fn remaining(&self, id: Uuid) -> Option<Decimal> {
        let place = self.resting.get(&id)?;
        let level = match place.side {
            Side::Buy => self.bids.get(&Reverse(place.price))?,
            Side::Sell => self.asks.get(&place.price)?,
        };
        level.iter().find(|r| r.id == id).map(|r| r.remaining)
    }

    /// The best `depth` levels of each side, best first.
    pub fn depth(&self, depth: usize) -> (Vec<Level>, Vec<Level>) {
        let level = |price: Decimal, orders: &VecDeque<Resting>| Level {
            price,
            quantity: orders.iter().map(|r| r.remaining).sum(),
            orders: orders.len(),
        };
        (
            self.bids
                .iter()
                .take(depth)
                .map(|(Reverse(p), o)| level(*p, o))
                .collect(),
            self.asks
                .iter()
                .take(depth)
                .map(|(p, o)| level(*p, o))
                .collect(),
        )
    }

    /// Orders resting in the book.
    pub fn len(&self) -> usize {
        self.resting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resting.is_empty()
    }
}

/// The incoming order, as the trades it makes name it.
#[derive(Debug, Clone, Copy)]
struct Taker {
    id: Uuid,
    side: Side,
    at: DateTime<Utc>,
}

/// Fills `left` against the opposite side, best level first while its price
/// `crosses`, oldest order first within a level; returns what is unfilled.
fn sweep<K: Ord + Copy>(
    levels: &mut BTreeMap<K, VecDeque<Resting>>,
    price_of: impl Fn(&K) -> Decimal,
    crosses: impl Fn(Decimal) -> bool,
    mut left: Decimal,
    taker: Taker,
    trades: &mut Vec<Trade>,
    resting: &mut HashMap<Uuid, Place>,
) -> Decimal {
    while left > Decimal::ZERO {
        let Some(mut level) = levels.first_entry() else {
            break;
        };
        let price = price_of(level.key());
        if !crosses(price) {
            break;
        }
        let orders = level.get_mut();
        while left > Decimal::ZERO {
            let Some(maker) = orders.front_mut() else {
                break;
            };
            let quantity = left.min(maker.remaining);
            let (buy, sell) = match taker.side {
                Side::Buy => (taker.id, maker.id),
                Side::Sell => (maker.id, taker.id),
            };
            trades.push(Trade {
                id: Trade::id_for(taker.id, maker.id),
                price,
                quantity,
                buy_order_id: buy,
                sell_order_id: sell,
                taker_side: taker.side,
                executed_at: taker.at,
            });
            left -= quantity;
            maker.remaining -= quantity;
            if maker.remaining.is_zero() {
                resting.remove(&maker.id);
                orders.pop_front();
            }
        }
        if orders.is_empty() {
            level.remove();
        }
    }
    left
}

fn take<K: Ord>(side: &mut BTreeMap<K, VecDeque<Resting>>, key: &K, id: Uuid) -> Option<Decimal> {
    let level = side.get_mut(key)?;
    let at = level.iter().position(|r| r.id == id)?;
    let removed = level.remove(at).map(|r| r.remaining);
    if level.is_empty() {
        side.remove(key);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("time")
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn crossing_orders_trade_at_the_resting_price() {
        let mut book = Book::new();
        assert!(
            book.submit(id(1), Side::Sell, d("1.10"), d("5"), at())
                .is_empty()
        );
        let trades = book.submit(id(2), Side::Buy, d("1.20"), d("3"), at());
        assert_eq!(trades.len(), 1);
        let t = &trades[0];
        assert_eq!((t.price, t.quantity), (d("1.1"), d("3")));
        assert_eq!((t.buy_order_id, t.sell_order_id), (id(2), id(1)));
        assert_eq!(t.taker_side, Side::Buy);
        assert_eq!(t.id, Trade::id_for(id(2), id(1)));
        assert_eq!(book.remaining(id(1)), Some(d("2")), "partially filled");
        assert_eq!(book.remaining(id(2)), None, "filled, not resting");
    }

    #[test]
    fn best_price_first_then_oldest_first() {
        let mut book = Book::new();
        book.submit(id(1), Side::Buy, d("10"), d("1"), at());
        book.submit(id(2), Side::Buy, d("11"), d("1"), at());
        book.submit(id(3), Side::Buy, d("11.0"), d("1"), at());
        book.submit(id(4), Side::Buy, d("9"), d("1"), at());
        let trades = book.submit(id(5), Side::Sell, d("10"), d("10"), at());
        let makers: Vec<_> = trades.iter().map(|t| t.buy_order_id).collect();
        assert_eq!(
            makers,
            [id(2), id(3), id(1)],
            "11, 11 (older first), 10; never 9"
        );
        let prices: Vec<_> = trades.iter().map(|t| t.price).collect();
        assert_eq!(prices, [d("11"), d("11"), d("10")]);
        assert_eq!(book.remaining(id(5)), Some(d("7")), "the rest rests at 10");
        let (bids, asks) = book.depth(5);
        assert_eq!(
            bids,
            [Level {
                price: d("9"),
                quantity: d("1"),
                orders: 1
            }]
        );
        assert_eq!(asks[0].price, d("10"));
        assert_eq!(asks[0].quantity, d("7"));
    }

    #[test]
    fn a_cancelled_order_no_longer_trades_and_cancelling_twice_is_harmless() {
        let mut book = Book::new();
        book.submit(id(1), Side::Sell, d("5"), d("2"), at());
        assert_eq!(book.cancel(id(1)), Cancelled::Removed { remaining: d("2") });
        assert_eq!(book.cancel(id(1)), Cancelled::NotResting);
        assert!(
            book.submit(id(2), Side::Buy, d("6"), d("1"), at())
                .is_empty()
        );
        assert!(book.depth(10).1.is_empty());
    }

    #[test]
    fn an_order_seen_twice_trades_once() {
        let mut book = Book::new();
        book.submit(id(1), Side::Sell, d("5"), d("2"), at());
        book.submit(id(2), Side::Buy, d("4"), d("1"), at());
        assert!(
            book.submit(id(2), Side::Buy, d("4"), d("1"), at())
                .is_empty()
        );
        assert_eq!(book.len(), 2);
    }

    /// A tiny deterministic generator (the tests need no crate for it).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % bound
        }
    }

    /// The obvious matcher: scan every resting order for the best one.
    fn reference(events: &[(Uuid, Side, Decimal, Decimal)]) -> Vec<(Uuid, Uuid, Decimal, Decimal)> {
        let mut resting: Vec<(u64, Uuid, Side, Decimal, Decimal)> = Vec::new();
        let mut out = Vec::new();
        for (seq, (id, side, price, qty)) in events.iter().enumerate() {
            let mut left = *qty;
            loop {
                let best = resting
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.2 != *side)
                    .filter(|(_, r)| match side {
                        Side::Buy => r.3 <= *price,
                        Side::Sell => r.3 >= *price,
                    })
                    .min_by(|(_, a), (_, b)| match side {
                        Side::Buy => a.3.cmp(&b.3).then(a.0.cmp(&b.0)),
                        Side::Sell => b.3.cmp(&a.3).then(a.0.cmp(&b.0)),
                    })
                    .map(|(i, _)| i);
                let Some(i) = best else { break };
                if left.is_zero() {
                    break;
                }
                let q = left.min(resting[i].4);
                out.push((*id, resting[i].1, resting[i].3, q));
                left -= q;
                resting[i].4 -= q;
                if resting[i].4.is_zero() {
                    resting.remove(i);
                }
            }
            if !left.is_zero() {
                resting.push((seq as u64, *id, *side, *price, left));
            }
        }
        out
    }

    #[test]
    fn the_book_agrees_with_the_obvious_matcher_and_replays_identically() {
        let mut rng = Lcg(7);
        let events: Vec<_> = (0..3_000u128)
            .map(|n| {
                let side = if rng.next(2) == 0 {
                    Side::Buy
                } else {
                    Side::Sell
                };
                let price = Decimal::new(9_900 + rng.next(200) as i64, 2);
                let qty = Decimal::new(1 + rng.next(500) as i64, 1);
                (id(n + 1), side, price, qty)
            })
            .collect();
        let run = || {
            let mut book = Book::new();
            events
                .iter()
                .flat_map(|(id, side, price, qty)| book.submit(*id, *side, *price, *qty, at()))
                .collect::<Vec<_>>()
        };
        let trades = run();
        let expected = reference(&events);
        let got: Vec<_> = trades
            .iter()
            .map(|t| {
                let maker = if t.taker_side == Side::Buy {
                    t.sell_order_id
                } else {
                    t.buy_order_id
                };
                let taker = if t.taker_side == Side::Buy {
                    t.buy_order_id
                } else {
                    t.sell_order_id
                };
                (taker, maker, t.price, t.quantity)
            })
            .collect();
        assert!(trades.len() > 500, "the workload crosses: {}", trades.len());
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(
                (g.0, g.1, g.2.normalize(), g.3),
                (e.0, e.1, e.2.normalize(), e.3)
            );
        }
        assert_eq!(run(), trades, "a replay gives the same trades, same ids");
        let ids: std::collections::HashSet<_> = trades.iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), trades.len(), "trade ids are unique");
    }
}
