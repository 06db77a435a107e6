//! The order books as the consumer keeps them: rebuilt from the store's
//! resting orders when partitions are taken, matched batch by batch, and
//! the trades published to the `trades` topic — only while the books are
//! still the store's.
//!
//! **Why a batch is always matched on books equal to the store's state at
//! the batch's expected offsets.** A partition's books are loaded from the
//! store's resting index right after its offsets were read, and nothing
//! but this consumer's own writes moves them on from there: every batch is
//! written with the offsets the books stand at ([`crate::store::Batch::expected`])
//! and, in group mode, under the partition's lease ([`crate::store::lease::Claim`]),
//! both checked inside the batch's transaction; only a retry after a lost
//! answer may find the store at its own target (the same records, matched
//! on the same books). A refusal throws the books away and loads them
//! again with the offsets. So the offsets are the books' version, committed
//! with every batch and checked with it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Halt, Loop};
use crate::broker::producer::ProduceError;
use crate::domain::Event;
use crate::domain::{Positioned, Status};
use crate::feed::SymbolRecord;
use crate::matching::{Matcher, Outcome};
use crate::store::Batch;

/// The order books, shared: the consumer matches into them, `GET
/// /orderbook/{symbol}` reads them. Held only for the few µs a batch takes
/// to match or a depth takes to read.
pub type Books = Arc<Mutex<Matcher>>;

impl Loop {
    pub(super) fn lock_books(&self) -> std::sync::MutexGuard<'_, Matcher> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds `partitions`' books from the orders the store holds as
    /// resting: the store's fills commit with its offsets, so the books
    /// match the log exactly up to where the consumer resumes.
    pub(super) async fn load_books(&self, partitions: &[i32]) -> Result<(), Halt> {
        if !self.settings.matching {
            return Ok(());
        }
        let started = Instant::now();
        let mut loaded = 0;
        for partition in partitions {
            let resting = self
                .retry
                .run("reading the resting orders from the store", || {
                    self.store.resting(*partition)
                })
                .await?;
            loaded += resting.len();
            self.lock_books().load(*partition, resting);
            self.status.beat();
        }
        let resting = self.lock_books().resting();
        metrics::gauge!("book_resting_orders").set(resting as f64);
        tracing::info!(
            ?partitions,
            loaded,
            seconds = started.elapsed().as_secs_f64(),
            "order books rebuilt from the store"
        );
        Ok(())
    }

    /// Matches a batch's events into the books and publishes the trades.
    /// An order the store already holds (a repeated record) is not matched
    /// again. `fence` is the batch these events will be written with: its
    /// trades are published only while the store is still where it expects.
    pub(super) async fn match_events(
        &self,
        events: &[Positioned],
        fence: &Batch,
    ) -> Result<Outcome, Halt> {
        if !self.settings.matching || events.is_empty() {
            return Ok(Outcome::default());
        }
        let ids: Vec<uuid::Uuid> = events
            .iter()
            .filter_map(|e| match &e.event {
                Event::Order(o) => Some(o.id),
                Event::Cancel(_) => None,
            })
            .collect();
        let stored = if ids.is_empty() {
            HashSet::new()
        } else {
            self.retry
                .run("store unavailable", || self.store.known(ids.clone()))
                .await?
        };
        let started = Instant::now();
        let (outcome, resting) = {
            let mut books = self.lock_books();
            let outcome = books.run(events, &stored);
            (outcome, books.resting())
        };
        metrics::histogram!("match_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("orders_matched_total").increment(outcome.orders as u64);
        metrics::counter!("orders_cancelled_total").increment(outcome.cancelled as u64);
        metrics::counter!("orders_self_trade_cancelled_total")
            .increment(outcome.self_trades as u64);
        let expired = outcome
            .ended
            .iter()
            .filter(|s| **s == Status::Expired)
            .count();
        metrics::counter!("orders_expired_total").increment(expired as u64);
        metrics::counter!("orders_rejected_total")
            .increment((outcome.ended.len() - expired) as u64);
        metrics::counter!("trades_total").increment(outcome.trades.len() as u64);
        metrics::gauge!("book_resting_orders").set(resting as f64);
        if !outcome.trades.is_empty() || !outcome.symbols.is_empty() {
            self.still_current(fence).await?;
            self.retry
                .run("publishing trades", || self.publish(&outcome))
                .await?;
        }
        Ok(outcome)
    }

    /// Checks, after `known` was read, that the store is still where `fence`
    /// expects. Only then are the books those trades came from the store's
    /// own, and matching is a function of the books and the records, so any
    /// writer of these records publishes the very same trades. A store that
    /// moved on means another writer (this instance's replacement, when it
    /// was frozen) stored some of these records and `known` made matching
    /// skip them: trades from such books exist nowhere else and the store
    /// will refuse them, so they must never reach the topic.
    pub(super) async fn still_current(&self, fence: &Batch) -> Result<(), Halt> {
        let now = self
            .retry
            .run("reading offsets from the store", || {
                self.store.offsets(&fence.topic)
            })
            .await?;
        fence.check(&now).map_err(|moved| {
            tracing::warn!(reason = %moved, "the store moved on while matching; its trades are not published");
            Halt::Resync
        })
    }

    /// Appends trades to the `trades` topic (key `SRC-DST`, JSON, the
    /// trade's deterministic id inside) and waits for every ack. Before
    /// the store commits them: a retry or a replay publishes a trade again
    /// under the same id, never a different trade.
    /// The batch's trades, then one record per symbol it touched (its
    /// orders' new states and the top of its book: what the live feed
    /// shows), each keyed by its symbol, so a symbol's records keep their
    /// order in one partition.
    async fn publish(&self, outcome: &Outcome) -> Result<(), ProduceError> {
        let trades = outcome.trades.iter().map(|t| {
            let value =
                serde_json::to_vec(t).unwrap_or_else(|e| unreachable!("a trade serialises: {e}"));
            (t.symbol.as_str(), value)
        });
        let symbols = outcome.symbols.iter().map(|change| {
            let value = serde_json::to_vec(&SymbolRecord::from(change))
                .unwrap_or_else(|e| unreachable!("a symbol record serialises: {e}"));
            (change.symbol.as_str(), value)
        });
        let records: Vec<(&str, Vec<u8>)> = trades.chain(symbols).collect();
        let sends = records.iter().map(|(symbol, payload)| {
            self.trades.deliver(
                rdkafka::producer::FutureRecord::to(&self.broker.trades_topic)
                    .key(*symbol)
                    .payload(payload.as_slice()),
            )
        });
        futures::future::try_join_all(sends).await.map(drop)
    }
}
