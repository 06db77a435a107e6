//! Matching throughput in process: orders/s through one symbol's book at a
//! realistic depth, and the heap the book holds per resting order —
//! `cargo bench --bench matching` (prints one JSON line; `OMS_BENCH_ORDERS`,
//! default 1,000,000; `OMS_BENCH_TERMS=mixed` sends one order in ten each as
//! a market order, `ioc`, `fok` and `post_only`).
//!
//! The book is first filled with resting orders on 200 price levels each
//! side of the mid (20 orders per level, 8,000 in all); then a stream of
//! limit orders priced within ±1.00 of the mid trades (about 0.8 trades per
//! order) and rests the rest — the book grows to ~220,000 resting orders
//! over a million orders, with no cancels. Last run (2 cores, release):
//! ~570 ns per order (~840 with the id index the book had before), 50
//! bytes per resting order.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chrono::Utc;
use oms::domain::{Side, Status, TimeInForce};
use oms::matching::{Book, Incoming};
use rust_decimal::Decimal;
use uuid::Uuid;

/// The system allocator, counting the bytes allocated and not yet freed:
/// what the book holds is the count after it is built minus the count before.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

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
    // `mixed`: the order types too (`limit`: every order a resting limit order).
    let terms = std::env::var("OMS_BENCH_TERMS").unwrap_or_else(|_| "limit".into());
    let mixed = terms == "mixed";
    let at = Utc::now();
    let before = HELD.load(Ordering::Relaxed);
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
            let mut incoming = Incoming::limit(Uuid::from_u128(n), side, price, quantity, at);
            if mixed {
                // One in ten each: a market order, ioc, fok, post-only.
                match rng.next(10) {
                    0 => {
                        incoming.limit = None;
                        incoming.time_in_force = TimeInForce::Ioc;
                    }
                    1 => incoming.time_in_force = TimeInForce::Ioc,
                    2 => incoming.time_in_force = TimeInForce::Fok,
                    3 => incoming.post_only = true,
                    _ => {}
                }
            }
            incoming
        })
        .collect();
    let started = Instant::now();
    let (mut trades, mut expired, mut rejected) = (0usize, 0usize, 0usize);
    for incoming in stream {
        let matched = book.submit_as(incoming);
        trades += matched.executions.len();
        match matched.ended {
            Some((Status::Expired, _)) => expired += 1,
            Some(_) => rejected += 1,
            None => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // The stream is consumed and freed by now: what is left is the book.
    let book_bytes = HELD.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "{{\"orders\": {orders}, \"seconds\": {seconds:.3}, \"orders_per_second\": {:.0}, \"ns_per_order\": {:.0}, \"trades\": {trades}, \"terms\": \"{terms}\", \"expired\": {expired}, \"rejected\": {rejected}, \"resting_before\": {depth}, \"resting_after\": {}, \"book_bytes_per_order\": {:.1}}}",
        orders as f64 / seconds,
        seconds * 1e9 / orders as f64,
        book.len(),
        book_bytes as f64 / book.len().max(1) as f64
    );
}
