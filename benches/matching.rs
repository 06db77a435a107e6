//! Matching throughput in process: orders/s through one symbol's book at a
//! realistic depth — `cargo bench --bench matching` (prints one JSON line;
//! `OMS_BENCH_ORDERS`, default 1,000,000).
//!
//! The book is first filled with resting orders on 200 price levels each
//! side of the mid (20 orders per level, 8,000 in all); then a stream of
//! limit orders priced within ±1.00 of the mid trades (about 0.8 trades per
//! order) and rests the rest — the book grows to ~220,000 resting orders
//! over a million orders, with no cancels. Last run (2 cores, release):
//! 2,970,006 orders/s, 337 ns per order.

use std::time::Instant;

use chrono::Utc;
use oms::matching::Book;
use oms::order::Side;
use rust_decimal::Decimal;
use uuid::Uuid;

/// A small deterministic generator: the same stream every run.
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

const MID: i64 = 100_000; // 1000.00 in cents
const LEVELS: i64 = 200;
const PER_LEVEL: u64 = 20;

fn main() {
    let orders: u64 = std::env::var("OMS_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let at = Utc::now();
    let mut book = Book::new();
    let mut rng = Lcg(42);
    let mut n: u128 = 0;
    for level in 1..=LEVELS {
        for _ in 0..PER_LEVEL {
            n += 1;
            book.submit(
                Uuid::from_u128(n),
                Side::Buy,
                Decimal::new(MID - level, 2),
                Decimal::new(10, 0),
                at,
            );
            n += 1;
            book.submit(
                Uuid::from_u128(n),
                Side::Sell,
                Decimal::new(MID + level, 2),
                Decimal::new(10, 0),
                at,
            );
        }
    }
    let depth = book.len();
    // Prebuilt, so the clock measures the book only.
    let stream: Vec<_> = (0..orders)
        .map(|_| {
            n += 1;
            let side = if rng.next(2) == 0 {
                Side::Buy
            } else {
                Side::Sell
            };
            // Within ±(LEVELS/2) cents of the mid: about half cross.
            let offset = rng.next(LEVELS as u64) as i64 - LEVELS / 2;
            let price = Decimal::new(MID + offset, 2);
            let quantity = Decimal::new(1 + rng.next(200) as i64, 1);
            (Uuid::from_u128(n), side, price, quantity)
        })
        .collect();
    let started = Instant::now();
    let mut trades = 0usize;
    for (id, side, price, quantity) in stream {
        trades += book.submit(id, side, price, quantity, at).len();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"orders\": {orders}, \"seconds\": {seconds:.3}, \"orders_per_second\": {:.0}, \"ns_per_order\": {:.0}, \"trades\": {trades}, \"resting_before\": {depth}, \"resting_after\": {}}}",
        orders as f64 / seconds,
        seconds * 1e9 / orders as f64,
        book.len()
    );
}
