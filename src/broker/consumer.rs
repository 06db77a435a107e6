//! The consumer loop: log → batch → one store transaction.
//!
//! Offsets live in the store, written in the same transaction as the rows they
//! describe; on start the loop assigns itself every partition at the offsets
//! the store holds (or at the beginning when it holds none, which rebuilds an
//! empty store from the log). Broker-side commits are made afterwards, only so
//! that lag can be watched with standard tools.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::admin::{self, AdminError};
use super::client_config;
use super::dlq::{DeadLetter, DeadLetterWriter, ErrorKind, replay_count};
use super::producer::{LogProducer, ProduceError, ProduceEvidence};
use crate::config::{BrokerSettings, ConsumerMode, ConsumerSettings};
use crate::error::Chain;
use crate::matching::{Matcher, Outcome, Positioned, StoredTrade};
use crate::order::{Event, Order, RecordError};
use crate::store::{Applied, Batch, Offsets, Store, StoreError, StoredOrder};
use crate::telemetry::{self, TraceParent};
use tracing::Span;

/// How often the stored offsets are also committed broker-side (lag
/// tooling only; the store holds the offsets that matter).
const BROKER_COMMIT_EVERY: Duration = Duration::from_secs(1);

/// What the consumer is doing, for `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConsumerState {
    #[default]
    Starting,
    Running,
    /// Blocked on a transient failure; retrying with backoff.
    Waiting {
        reason: String,
    },
    Stopped,
}

/// Shared, cheap handle on the consumer's state: what it is doing, what it
/// has stored and when, and how far the log is known to reach — for
/// `/readyz`, `consumer_lag` and the progress watchdog.
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    /// The watchdog's request to recreate the broker consumer.
    restart: Notify,
    /// Woken whenever a batch is stored (readers waiting for their write).
    stored: Notify,
}

#[derive(Debug)]
struct Inner {
    state: ConsumerState,
    stored: Offsets,
    /// Group mode: the partitions are shared with other instances.
    grouped: bool,
    /// Partitions assigned through the group (group mode only).
    owned: std::collections::BTreeSet<i32>,
    /// When a batch was last stored (or the consumer last (re)started).
    progress: Instant,
    progress_unix: f64,
    /// When the loop last showed life: a batch stored, or a failed attempt
    /// it will retry (it is waiting out a failure it reports).
    heartbeat: Instant,
    /// The best known log end per partition (broker watermarks and this
    /// instance's own acknowledged records).
    log_end: Offsets,
    /// The first offset the broker still holds per partition (where a
    /// store with no offset for it starts).
    log_start: Offsets,
    /// Why the log end could not be read from the broker, if it could not.
    log_end_error: Option<String>,
    /// When the watchdog last restarted the consumer, and how many times in
    /// a row without progress since (each restart waits twice as long).
    restarted: Option<Instant>,
    restarts_in_a_row: u32,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            state: ConsumerState::default(),
            stored: Offsets::new(),
            grouped: false,
            owned: std::collections::BTreeSet::new(),
            progress: Instant::now(),
            progress_unix: unix_now(),
            heartbeat: Instant::now(),
            log_end: Offsets::new(),
            log_start: Offsets::new(),
            log_end_error: None,
            restarted: None,
            restarts_in_a_row: 0,
        }
    }
}

fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// A consumer that stopped storing while records wait: what `/readyz` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// Records on the log past what the store holds.
    pub behind: i64,
    /// Time since the last stored batch.
    pub idle: Duration,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stalled: {} record(s) on the log are not stored and nothing was stored for {:.1} s",
            self.behind,
            self.idle.as_secs_f64()
        )
    }
}

impl ConsumerStatus {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        match self.0.inner.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn get(&self) -> ConsumerState {
        self.with(|s| s.state.clone())
    }

    fn set(&self, state: ConsumerState) {
        self.with(|s| s.state = state);
    }

    /// The next offset per partition that the store holds, as last applied.
    pub fn stored(&self) -> Offsets {
        self.with(|s| s.stored.clone())
    }

    /// Takes over `partitions` at the offsets the store holds for them
    /// (`stored`; absent: nothing stored yet).
    fn adopt(&self, partitions: &[i32], stored: &Offsets) {
        self.with(|s| {
            for p in partitions {
                match stored.get(p) {
                    Some(o) => s.stored.insert(*p, *o),
                    None => s.stored.remove(p),
                };
                s.owned.insert(*p);
            }
        });
    }

    /// Gives up `partitions` (group mode).
    fn forget(&self, partitions: &[i32]) {
        self.with(|s| {
            for p in partitions {
                s.stored.remove(p);
                s.owned.remove(p);
            }
        });
    }

    /// Whether this instance shares the partitions with others (group mode):
    /// then only the store, not this instance, knows whether the log is
    /// stored.
    pub fn grouped(&self) -> bool {
        self.with(|s| s.grouped)
    }

    /// How many partitions this instance consumes through the group.
    fn owned(&self) -> usize {
        self.with(|s| s.owned.len())
    }

    /// Starts over from what the store holds (on every (re)start).
    fn reset_stored(&self, offsets: &Offsets) {
        self.with(|s| {
            s.stored = offsets.clone();
            s.owned.clear();
        });
        self.record_stored(offsets);
    }

    fn record_stored(&self, offsets: &Offsets) {
        let now = unix_now();
        self.with(|s| {
            s.stored.extend(offsets.iter().map(|(p, o)| (*p, *o)));
            s.progress = Instant::now();
            s.heartbeat = s.progress;
            s.progress_unix = now;
            s.restarts_in_a_row = 0;
        });
        self.0.stored.notify_waiters();
        metrics::gauge!("consumer_last_progress_timestamp_seconds").set(now);
    }

    /// The best known log end per partition: the broker's watermarks as
    /// last read and every record this instance's producer got acknowledged
    /// since (`acked`) — everything a reader may have been told exists.
    pub fn known_log_end(&self, acked: &Offsets) -> Offsets {
        let mut end = self.with(|s| s.log_end.clone());
        for (partition, offset) in acked {
            raise(&mut end, *partition, *offset);
        }
        end
    }

    /// Waits until the store holds every record before `target` (per
    /// partition), at most until `deadline`. `Ok` when it does; `Err` with
    /// the number of records still missing when the deadline passed first.
    pub async fn stored_up_to(
        &self,
        target: &Offsets,
        deadline: tokio::time::Instant,
    ) -> Result<(), i64> {
        loop {
            // Registered before the check, so a batch stored in between
            // still wakes this reader.
            let stored = self.0.stored.notified();
            tokio::pin!(stored);
            stored.as_mut().enable();
            let missing: i64 = self.with(|s| Self::behind(s, target).map(|(_, b)| b).sum());
            if missing == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, stored).await.is_err() {
                return Err(missing);
            }
        }
    }

    /// Unix time of the last stored batch.
    pub fn last_progress_unix(&self) -> f64 {
        self.with(|s| s.progress_unix)
    }

    /// Records on the log past the stored offsets, per partition, by the
    /// best known log end.
    fn lag(s: &Inner) -> Offsets {
        Self::behind(s, &s.log_end).collect()
    }

    /// Records before `ends` that the store does not hold, per partition (a
    /// partition the store holds nothing of starts where the log starts).
    fn behind<'a>(s: &'a Inner, ends: &'a Offsets) -> impl Iterator<Item = (i32, i64)> + 'a {
        // In group mode the other partitions are other instances' to store.
        let mine = move |p: &i32| !s.grouped || s.owned.contains(p);
        ends.iter().filter(move |(p, _)| mine(p)).map(|(p, end)| {
            let stored = s
                .stored
                .get(p)
                .or_else(|| s.log_start.get(p))
                .copied()
                .unwrap_or(0);
            (*p, (end - stored).max(0))
        })
    }

    /// `Some` when records wait past the stored offsets and the loop has
    /// shown no life for `after`: nothing stored, and no failed attempt it
    /// retries (a consumer waiting out a store outage keeps trying and says
    /// why — that is not a stall).
    pub fn stall(&self, after: Duration) -> Option<Stall> {
        self.with(|s| {
            let behind = Self::lag(s).values().sum();
            let active = matches!(
                s.state,
                ConsumerState::Running | ConsumerState::Waiting { .. }
            );
            (active && behind > 0 && s.heartbeat.elapsed() >= after).then(|| Stall {
                behind,
                idle: s.progress.elapsed(),
            })
        })
    }

    fn beat(&self) {
        self.with(|s| s.heartbeat = Instant::now());
    }

    /// Why the log end could not be read lately, if it could not.
    pub fn log_end_error(&self) -> Option<String> {
        self.with(|s| s.log_end_error.clone())
    }

    /// The watchdog asks the loop to recreate its broker consumer — unless
    /// it did so less than `after` × 2^(restarts in a row) ago: a broker that
    /// is merely slow to answer a first fetch must get the time to do so.
    fn request_restart(&self, after: Duration) -> bool {
        let due = self.with(|s| {
            let wait = after.saturating_mul(1 << s.restarts_in_a_row.min(5));
            let due = s.restarted.is_none_or(|t| t.elapsed() >= wait);
            if due {
                s.restarted = Some(Instant::now());
                s.restarts_in_a_row += 1;
                s.heartbeat = Instant::now();
            }
            due
        });
        if due {
            self.0.restart.notify_one();
        }
        due
    }

    async fn restart_requested(&self) {
        self.0.restart.notified().await;
    }
}

/// A consumer failure that ends the loop.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("cannot create the Kafka consumer")]
    Client(#[from] KafkaError),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// The order books, shared: the consumer matches into them, `GET
/// /orderbook/{symbol}` reads them. Held only for the few µs a batch takes
/// to match or a depth takes to read.
pub type Books = Arc<Mutex<Matcher>>;

/// The log → store loop. Build with [`ConsumerLoop::new`], run with [`ConsumerLoop::run`].
pub struct ConsumerLoop {
    broker: BrokerSettings,
    settings: ConsumerSettings,
    store: Arc<dyn Store>,
    dlq: DeadLetterWriter,
    /// The producer of the `trades` topic (the dead-letter writer's: one
    /// librdkafka client for everything the consumer writes to the log).
    trades: LogProducer,
    books: Books,
    status: ConsumerStatus,
}

/// Receive errors: every one counted by kind (`consumer_errors_total`),
/// logged as a warning at most once per [`ErrorLog::EVERY`] with the count
/// of those not logged — never a silent loop, never a flood.
#[derive(Default)]
struct ErrorLog {
    last_warned: Option<Instant>,
    unlogged: u64,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(10);

    /// Keeps a message; counts and logs an error. Returns whether it was one.
    fn take<'c>(
        &mut self,
        message: Result<BorrowedMessage<'c>, KafkaError>,
        into: &mut Vec<BorrowedMessage<'c>>,
    ) -> bool {
        let err = match message {
            Ok(m) => {
                into.push(m);
                return false;
            }
            Err(err) => err,
        };
        let kind = err
            .rdkafka_error_code()
            .map_or_else(|| "client".to_owned(), |code| format!("{code:?}"));
        metrics::counter!("consumer_errors_total", "kind" => kind).increment(1);
        if self.last_warned.is_none_or(|t| t.elapsed() >= Self::EVERY) {
            tracing::warn!(error = %err, not_logged = self.unlogged, "consumer error (librdkafka retries it; counted in consumer_errors_total)");
            self.last_warned = Some(Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        true
    }
}

/// Makes sure each partition resumes exactly at the offset the store holds,
/// on the log the store was built from.
///
/// Kafka answers a fetch from inside a record batch with the whole batch
/// and the client skips the records before the fetch offset. tansu 0.6's
/// memory engine answers with the batches whose *first* offset is at or
/// after the fetch offset (`dynostore.rs`, `offsets.split_off(&offset)`):
/// resuming inside a batch silently skips the rest of it — lost orders, or,
/// when it was the last batch, a consumer that waits forever while the
/// broker's (under-reported) watermark says there is nothing to read.
///
/// So the consumer starts `consumer.resume_rewind` records before the
/// stored offset, and until a partition delivers the stored offset itself,
/// records before it are dropped (already stored) and a record after it
/// means a gap: the partition is read again from twice as far back, once
/// per gap seen, down to the start of the log.
///
/// **The log may not be the one the store was built from**: a broker that
/// keeps its log in memory (tansu `memory://`, the benchmark's) restarted,
/// or the topic was deleted and created again, while the store kept its
/// offsets. Offsets start again at 0 on the new log, so the stored offset
/// points past its end, or into records the store never saw: resuming there
/// waits for ever (tansu answers a fetch past the end with nothing, not
/// `OFFSET_OUT_OF_RANGE`) and then skips every new record below the stored
/// offset — acknowledged orders never stored, with nothing logged, a lag
/// of 0 and a healthy `/readyz`. Until a partition is shown to be the same
/// log, two checks run (see [`LogCheck`]); either one failing makes the
/// consumer forget that partition's offset in the store and read the new
/// log from its start.
struct Resume {
    /// Partition → (the offset it must deliver next, how far back the next
    /// rewind goes).
    pending: std::collections::BTreeMap<i32, (i64, i64)>,
    first_step: i64,
    /// Partition → the stored offset, until the log is shown to be the one
    /// the store was built from.
    unverified: std::collections::BTreeMap<i32, Unverified>,
}

#[derive(Debug, Clone, Copy)]
struct Unverified {
    stored: i64,
    /// Orders before `stored` the store did not know, so far.
    unknown: usize,
}

/// Why a partition's log is not the one the store was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LogCheck {
    /// The broker's high watermark (from its fetch responses) stayed below
    /// the stored offset: a log never shrinks, so this is another log.
    Shorter { end: i64, stored: i64 },
    /// None of the orders just before the stored offset is in the store:
    /// the records there are not the ones that were stored.
    Unknown { checked: usize, stored: i64 },
}

impl std::fmt::Display for LogCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogCheck::Shorter { end, stored } => write!(
                f,
                "the log ends at offset {end}, but the store has read it up to offset {stored}"
            ),
            LogCheck::Unknown { checked, stored } => write!(
                f,
                "none of the {checked} order(s) on the log before offset {stored} is in the store, which has read it up to there"
            ),
        }
    }
}

/// Group mode: how long the broker's log end must stay below a stored
/// offset before the log counts as replaced. A consumer that takes a
/// partition over may still hold the watermark of a fetch from when it last
/// owned it, which the next fetch response (every `fetch_wait_ms` at most)
/// replaces. A consumer in assign mode fetches every partition itself from
/// its start, so its watermarks are never older than the store's offsets.
const SHORTER_LOG_CONFIRM: Duration = Duration::from_secs(2);

/// Most orders per partition and batch checked against the store.
const LOG_CHECK_SAMPLE: usize = 64;

/// Orders before the stored offset that the store must fail to know
/// (unless the log holds fewer) before the log counts as another one: one
/// order the store refused for good (dead-lettered) is not enough.
const LOG_CHECK_UNKNOWN: usize = 4;

impl Resume {
    fn new(stored: &Offsets, rewind: i64) -> Self {
        let mut resume = Self {
            pending: Default::default(),
            first_step: rewind.max(1).saturating_mul(2),
            unverified: Default::default(),
        };
        resume.watch(stored);
        resume
    }

    /// Starts guarding `stored`'s partitions: on start, and as they are
    /// assigned (group mode).
    fn watch(&mut self, stored: &Offsets) {
        for (p, o) in stored.iter().filter(|(_, o)| **o > 0) {
            self.pending.insert(*p, (*o, self.first_step));
            self.unverified.insert(
                *p,
                Unverified {
                    stored: *o,
                    unknown: 0,
                },
            );
        }
    }

    /// Stops guarding partitions this instance no longer owns.
    fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.pending.remove(p);
            self.unverified.remove(p);
        }
    }

    /// Drops what must not be stored from `messages`, rewinding partitions
    /// whose broker skipped the resume offset. Returns, for partitions not
    /// yet checked, the ids of orders dropped as already stored: the store
    /// must know them, or the log is another one.
    fn admit(
        &mut self,
        consumer: &LogConsumer,
        topic: &str,
        messages: &mut Vec<BorrowedMessage<'_>>,
    ) -> std::collections::BTreeMap<i32, Vec<uuid::Uuid>> {
        let mut samples = std::collections::BTreeMap::<i32, Vec<uuid::Uuid>>::new();
        if self.pending.is_empty() {
            return samples;
        }
        let mut rewound = Vec::new();
        messages.retain(|m| {
            let p = m.partition();
            let Some((expected, step)) = self.pending.get_mut(&p) else {
                return true;
            };
            if rewound.contains(&p) {
                return false; // before the rewind took effect
            }
            if m.offset() < *expected {
                if self.unverified.contains_key(&p) {
                    let sample = samples.entry(p).or_default();
                    if sample.len() < LOG_CHECK_SAMPLE
                        && let Ok(Event::Order(order)) =
                            Event::from_record(m.payload().unwrap_or_default())
                    {
                        sample.push(order.id);
                    }
                }
                return false; // already stored
            }
            if m.offset() == *expected {
                self.pending.remove(&p);
                return true;
            }
            // The previous rewind already read from the start of the log.
            let exhausted = *step > self.first_step && *step / 2 >= *expected;
            let target = (*expected - *step).max(0);
            tracing::warn!(partition = p, expected = *expected, got = m.offset(), rewind_to = target, "the broker skipped records when resuming (tansu's memory engine fetches from batch starts); reading again from further back");
            metrics::counter!("consumer_errors_total", "kind" => "resume_gap").increment(1);
            if exhausted {
                // Nothing further back to read: the records are gone from the log.
                tracing::error!(partition = p, expected = *expected, got = m.offset(), "records before this offset are not on the log; continuing from here");
                self.pending.remove(&p);
                return true;
            }
            *step = step.saturating_mul(2);
            if let Err(err) = consumer.seek(topic, p, Offset::Offset(target), Duration::from_secs(5)) {
                tracing::warn!(partition = p, error = %err, "rewinding failed; the consumer will be recreated by the watchdog if it stalls");
            }
            rewound.push(p);
            false
        });
        samples.retain(|_, ids| !ids.is_empty());
        samples
    }

    /// The store's answer for a partition's sample: the log is the same
    /// (some order is known), another one (enough orders unknown), or not
    /// known yet.
    fn checked(&mut self, partition: i32, sampled: usize, known: usize) -> Option<LogCheck> {
        let check = self.unverified.get_mut(&partition)?;
        if known > 0 {
            self.unverified.remove(&partition);
            return None;
        }
        check.unknown += sampled;
        let enough = LOG_CHECK_UNKNOWN.min(usize::try_from(check.stored).unwrap_or(usize::MAX));
        (check.unknown >= enough).then_some(LogCheck::Unknown {
            checked: check.unknown,
            stored: check.stored,
        })
    }
}

/// Watches the log end the broker reports in its fetch responses: a log
/// never shrinks, so a partition whose end falls below the offset the store
/// has read is another log (see [`Resume`]) — on start, or under a running
/// consumer whose broker restarted without its log. A fetch past the end
/// gets nothing from tansu (no `OFFSET_OUT_OF_RANGE`), so only this notices.
#[derive(Debug, Default)]
struct LogEnds {
    /// Partition → when its end was first seen below the stored offset.
    short_since: std::collections::BTreeMap<i32, Instant>,
}

impl LogEnds {
    /// A partition whose log end (librdkafka's cached high watermark: no
    /// request, and exact on every tansu engine, where `ListOffsets`
    /// under-reports on `memory://`) has stayed below its stored offset for
    /// `confirm`.
    fn shorter(
        &mut self,
        consumer: &LogConsumer,
        topic: &str,
        stored: &Offsets,
        confirm: Duration,
    ) -> Option<(i32, LogCheck)> {
        self.short_since.retain(|p, _| stored.contains_key(p));
        for (p, stored) in stored {
            let end = match cached_high_watermark(consumer, topic, *p) {
                Some(end) if end < *stored => end,
                _ => {
                    self.short_since.remove(p);
                    continue;
                }
            };
            let since = *self.short_since.entry(*p).or_insert_with(Instant::now);
            if since.elapsed() >= confirm {
                return Some((
                    *p,
                    LogCheck::Shorter {
                        end,
                        stored: *stored,
                    },
                ));
            }
        }
        None
    }
}

/// librdkafka's high watermark of a partition as the broker's last fetch
/// response gave it — no request is sent (`rd_kafka_get_watermark_offsets`,
/// which rust-rdkafka does not wrap; its `fetch_watermarks` asks the broker
/// with `ListOffsets`). `None` before a fetch was answered.
fn cached_high_watermark(consumer: &LogConsumer, topic: &str, partition: i32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client handle lives as long as `consumer`; `topic` is a
    // NUL-terminated string that outlives the call; librdkafka only reads
    // its cached offsets under the partition's lock and writes the two
    // out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// The broker consumer, with oms' rebalance handling.
type LogConsumer = StreamConsumer<Rebalances>;

/// A change of the partitions this instance owns (group mode).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Hands the group's rebalances to the consume loop. It runs inside
/// librdkafka's poll (a `recv` of the loop, between two batches), so it
/// does nothing slow: before partitions are revoked it sends a commit of
/// what the store holds for them (so their next owner starts close to it;
/// without waiting for the answer), and it
/// queues the change for the loop, which reads the store's offsets of newly
/// assigned partitions itself. In assign mode it never runs.
pub struct Rebalances {
    topic: String,
    status: ConsumerStatus,
    changes: Mutex<Vec<Change>>,
    changed: Notify,
}

impl Rebalances {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    fn push(&self, change: Change) {
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
        }
        self.changed.notify_one();
    }

    /// Resolves once a change was queued (at once if one is waiting).
    async fn changed(&self) {
        self.changed.notified().await;
    }

    fn take(&self) -> Vec<Change> {
        self.changes
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

impl rdkafka::ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let stored = self.status.stored();
        let mut list = TopicPartitionList::new();
        for p in self.partitions(tpl) {
            if let Some(next) = stored.get(&p) {
                let _ = list.add_partition_offset(&self.topic, p, Offset::Offset(*next));
            }
        }
        // Async: the callback runs on a runtime worker (inside `recv`) and
        // must not wait for the broker; the request still goes out before
        // the partitions are handed over.
        if list.count() > 0 {
            if let Err(err) = consumer.commit(&list, CommitMode::Async) {
                tracing::warn!(error = %err, "committing the stored offsets of revoked partitions failed (the next owner reads a little more, and drops what is stored)");
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.push(Change::Assigned(self.partitions(tpl))),
            Rebalance::Revoke(tpl) => self.push(Change::Revoked(self.partitions(tpl))),
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance failed"),
        }
    }
}

/// How long dropping the broker consumer may hold the loop (and the thread
/// it runs on). rdkafka closes a consumer in its `Drop` and waits for
/// librdkafka's close without a bound, and that close can wait for ever
/// once the broker is gone: an oms stopped with SIGTERM right after its
/// broker hung there for 20 minutes (gdb: `drop` of the `StreamConsumer`,
/// polling `rd_kafka_consumer_closed`).
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Owns a broker consumer and closes it, when dropped, on a thread of its
/// own, waiting at most a bound. A close that finishes in time keeps every
/// ordering the inline close had (the old consumer is gone before a new one
/// is made under the same `group.instance.id`); one that does not is left
/// to finish on its thread (or to the process' exit) with a warning. Only
/// the lag commits it may cut short are at stake: offsets live in the store.
struct Bounded<T: Send + 'static> {
    inner: Option<T>,
    within: Duration,
}

impl<T: Send + 'static> Bounded<T> {
    fn new(inner: T, within: Duration) -> Self {
        Self {
            inner: Some(inner),
            within,
        }
    }
}

impl<T: Send + 'static> std::ops::Deref for Bounded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.inner
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only by drop"))
    }
}

impl<T: Send + 'static> Drop for Bounded<T> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let (closed, done) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("consumer close".into())
            .spawn(move || {
                drop(inner);
                let _ = closed.send(());
            });
        if let Err(err) = spawned {
            // The consumer went down with the closure: closed inline.
            tracing::warn!(error = %err, "no thread to close the broker consumer on");
        } else if done.recv_timeout(self.within).is_err() {
            tracing::warn!(
                within = ?self.within,
                "the broker consumer did not close in time (broker unreachable?); left to close on its own"
            );
        }
    }
}

/// How long a stopping instance waits for the group to take its
/// partitions back before it closes anyway (then they move when the
/// coordinator notices the member is gone). librdkafka holds an unsubscribe
/// until a rebalance in progress has finished, and a static member's join
/// takes tansu ~5 s: with 5 s here, a SIGTERM during a join closed without
/// leaving and its partition stayed unread. With the close bound
/// ([`CLOSE_WITHIN`]) it stays below `just down`'s 20 s grace.
const LEAVE_WITHIN: Duration = Duration::from_secs(14);

/// Hands this instance's partitions back to the group before it stops, so
/// the others take them over now. librdkafka closes a static member
/// (`group.instance.id`) without a `LeaveGroup` (KIP-345: a bounce should
/// not rebalance) and tansu 0.6 never evicts a static member that stopped
/// heartbeating (see docs/architecture.md), so a graceful stop would leave
/// its partitions unread. Unsubscribing first revokes them (the revoke
/// commits the stored offsets, [`Rebalances::pre_rebalance`]) and then sends
/// `LeaveGroup`, static member or not; the rebalance callbacks run inside
/// `recv`, so it is polled until the assignment is empty.
async fn leave_group(consumer: &LogConsumer) {
    consumer.unsubscribe();
    let deadline = tokio::time::Instant::now() + LEAVE_WITHIN;
    loop {
        let owned = consumer.assignment().map_or(0, |a| a.count());
        if owned == 0 {
            tracing::info!("left the consumer group: its partitions are handed over");
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            tracing::warn!(
                partitions = owned,
                "the group did not take the partitions back in time; closing anyway"
            );
            return;
        }
        // Only rebalance events arrive now; a record still queued is
        // dropped (not stored, so its next owner reads it again).
        let _ = tokio::time::timeout(
            (deadline - now).min(Duration::from_millis(50)),
            consumer.recv(),
        )
        .await;
    }
}

/// Why the loop stops working on the batch in hand. Nothing more of it is
/// stored, and it is read again (a batch and its offsets commit together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    /// Shutdown was requested while the loop waited (a retry, a dead letter).
    Shutdown,
    /// The store's offsets are not where this consumer believed (another
    /// instance wrote them, or the store lost data): start over from what
    /// the store holds.
    Resync,
    /// The log of a partition is not the one the store was built from (see
    /// [`Resume`]); its offset is gone from the store: start over, reading
    /// that partition from the start of the log.
    Replaced,
}

/// A batch read from the log, each record sorted: the orders to store (each
/// knows its partition and offset, so its message can be found again) and
/// the records to dead-letter.
struct Decoded {
    rows: Vec<StoredOrder>,
    /// Every decoded record (orders and cancels), in log order, to match.
    events: Vec<Positioned>,
    poison: Vec<DeadLetter>,
    /// The next offset of every partition the batch covers.
    offsets: Offsets,
    /// One span per traced record, open until its batch is stored: each
    /// order's trace shows its wait in the batch and the store write.
    spans: Vec<Span>,
}

impl ConsumerLoop {
    pub fn new(
        broker: BrokerSettings,
        settings: ConsumerSettings,
        store: Arc<dyn Store>,
        status: ConsumerStatus,
        books: Books,
    ) -> Result<Self, ConsumerError> {
        let dlq = DeadLetterWriter::new(&broker)?;
        let trades = dlq.producer().clone();
        Ok(Self {
            broker,
            settings,
            store,
            dlq,
            trades,
            books,
            status,
        })
    }

    fn lock_books(&self) -> std::sync::MutexGuard<'_, Matcher> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds `partitions`' books from the orders the store holds as
    /// resting: the store's fills commit with its offsets, so the books
    /// match the log exactly up to where the consumer resumes.
    async fn load_books(
        &self,
        partitions: &[i32],
        shutdown: &CancellationToken,
    ) -> Result<(), Halt> {
        if !self.settings.matching {
            return Ok(());
        }
        let started = Instant::now();
        let mut loaded = 0;
        for partition in partitions {
            let resting = self
                .retry(
                    shutdown,
                    "reading the resting orders from the store",
                    || self.store.resting(*partition),
                )
                .await?;
            loaded += resting.len();
            self.lock_books().load(*partition, resting);
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
    async fn match_events(
        &self,
        events: &[Positioned],
        fence: &Batch,
        shutdown: &CancellationToken,
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
            self.retry(shutdown, "store unavailable", || {
                self.store.known(ids.clone())
            })
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
        metrics::counter!("trades_total").increment(outcome.trades.len() as u64);
        metrics::gauge!("book_resting_orders").set(resting as f64);
        if !outcome.trades.is_empty() {
            self.still_current(fence, shutdown).await?;
            self.retry(shutdown, "publishing trades", || {
                self.publish(&outcome.trades)
            })
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
    async fn still_current(&self, fence: &Batch, shutdown: &CancellationToken) -> Result<(), Halt> {
        let now = self
            .retry(shutdown, "reading offsets from the store", || {
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
    async fn publish(&self, trades: &[StoredTrade]) -> Result<(), ProduceError> {
        let records: Vec<Vec<u8>> = trades
            .iter()
            .map(|t| {
                serde_json::to_vec(t).unwrap_or_else(|e| unreachable!("a trade serialises: {e}"))
            })
            .collect();
        let sends = trades.iter().zip(&records).map(|(t, payload)| {
            self.trades.deliver(
                rdkafka::producer::FutureRecord::to(&self.broker.trades_topic)
                    .key(t.symbol.as_str())
                    .payload(payload.as_slice()),
            )
        });
        futures::future::try_join_all(sends).await.map(drop)
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.retry_min_ms))
            .with_max_delay(Duration::from_millis(self.settings.retry_max_ms))
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Retries `op` with capped exponential backoff until it succeeds or
    /// shutdown is requested. Meanwhile `/readyz` reports the reason.
    async fn retry<T, E: std::error::Error + 'static, F: Future<Output = Result<T, E>>>(
        &self,
        shutdown: &CancellationToken,
        what: &str,
        mut op: impl FnMut() -> F,
    ) -> Result<T, Halt> {
        let mut delays = self.backoff();
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(err) => {
                    let reason = format!("{what}: {}", Chain(&err));
                    tracing::warn!(%reason, "retrying");
                    self.status.set(ConsumerState::Waiting { reason });
                    self.status.beat();
                    let delay = delays
                        .next()
                        .unwrap_or(Duration::from_millis(self.settings.retry_max_ms));
                    tokio::select! {
                        () = shutdown.cancelled() => return Err(Halt::Shutdown),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn create_consumer(&self) -> Result<LogConsumer, KafkaError> {
        consumer_config(&self.broker, &self.settings).create_with_context(Rebalances {
            topic: self.broker.topic.clone(),
            status: self.status.clone(),
            changes: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    /// Runs until `shutdown` is cancelled; the batch in hand is written first.
    ///
    /// When the watchdog ([`watch_log`]) finds the loop stalled, the whole
    /// consume future is dropped — whatever it was waiting on — and started
    /// again: a new broker consumer, seeking to the offsets the store holds.
    /// Dropping it mid-batch is safe: a batch and its offsets commit
    /// together, so the new consumer re-reads exactly what was not stored.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let result = loop {
            tokio::select! {
                result = self.consume(&shutdown) => match result {
                    Ok(Halt::Shutdown) => break Ok(()),
                    Ok(halt @ (Halt::Resync | Halt::Replaced)) => {
                        if halt == Halt::Resync {
                            metrics::counter!("consumer_resyncs_total").increment(1);
                            tracing::warn!("the store's offsets moved under this consumer (another instance wrote them, or the store lost data): reading them again");
                        }
                        self.status.set(ConsumerState::Starting);
                        tokio::select! {
                            () = shutdown.cancelled() => break Ok(()),
                            () = tokio::time::sleep(Duration::from_millis(self.settings.retry_min_ms)) => {}
                        }
                    }
                    Err(err) => break Err(err),
                },
                () = self.status.restart_requested() => {
                    tracing::warn!("recreating the broker consumer and seeking to the store's offsets");
                    self.status.set(ConsumerState::Starting);
                }
            }
        };
        self.status.set(ConsumerState::Stopped);
        tracing::info!("consumer stopped");
        result
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<Halt, ConsumerError> {
        let consumer = Bounded::new(self.create_consumer()?, CLOSE_WITHIN);
        let topic = self.broker.topic.clone();
        // Books are rebuilt from the store with the partitions they belong to.
        self.lock_books().clear();

        let stored = match self.settings.mode {
            ConsumerMode::Assign => match self.assign_all(&consumer, &topic, shutdown).await? {
                Some(stored) => stored,
                None => return Ok(Halt::Shutdown),
            },
            ConsumerMode::Group => {
                // Partitions arrive through `Rebalances`; each resumes from
                // the store's offset when it is assigned.
                consumer.subscribe(&[topic.as_str()])?;
                tracing::info!(%topic, group = %self.settings.group_id, "joining the consumer group");
                Offsets::new()
            }
        };
        // What the store holds now, not what this consumer stored before:
        // every batch is written only if the store is still there.
        self.status.reset_stored(&stored);
        let grouped = self.settings.mode == ConsumerMode::Group;
        self.status.with(|s| s.grouped = grouped);
        self.status.set(ConsumerState::Running);
        let rewind = self.settings.resume_rewind;

        let batch_wait = Duration::from_millis(self.settings.batch_wait_ms);
        let mut errors = ErrorLog::default();
        let mut resume = Resume::new(&stored, rewind);
        let mut last_commit = Instant::now();
        let mut log_ends = LogEnds::default();
        let confirm = if grouped {
            SHORTER_LOG_CONFIRM
        } else {
            Duration::ZERO
        };
        let mut log_check = tokio::time::interval(Duration::from_millis(500));
        log_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Every way out of the loop is a `Halt`, so a stop leaves the group
        // whether it came mid-batch or while a retry waited.
        let halt = 'consume: loop {
            // A rebalance (which librdkafka runs inside `recv`) wakes the
            // loop too, so partitions are taken over with no record waiting.
            let first = tokio::select! {
                () = shutdown.cancelled() => break 'consume Halt::Shutdown,
                () = consumer.context().changed() => None,
                message = consumer.recv() => Some(message),
                // A replaced log that ends below the stored offset delivers
                // nothing at all: only the clock notices.
                _ = log_check.tick() => {
                    match log_ends.shorter(&consumer, &topic, &self.status.stored(), confirm) {
                        Some((partition, why)) => break 'consume self.log_replaced(&topic, partition, &why, shutdown).await,
                        None => continue,
                    }
                }
            };
            let mut messages = Vec::with_capacity(self.settings.batch_max);
            let rebalanced = first.is_none();
            let mut failed = false;
            if let Some(first) = first {
                failed = errors.take(first, &mut messages);
            }
            let deadline = tokio::time::Instant::now() + batch_wait;
            while !rebalanced && !failed && messages.len() < self.settings.batch_max {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(message) => failed = errors.take(message, &mut messages),
                    Err(_) => break,
                }
            }
            for change in consumer.context().take() {
                match self
                    .apply_change(change, &topic, &mut resume, &mut messages, shutdown)
                    .await
                {
                    Ok(()) => {}
                    Err(halt) => break 'consume halt,
                }
            }
            let samples = resume.admit(&consumer, &topic, &mut messages);
            for (partition, ids) in samples {
                let sampled = ids.len();
                let Ok(known) = self
                    .retry(shutdown, "checking the log against the store", || {
                        self.store.known(ids.clone())
                    })
                    .await
                else {
                    break 'consume Halt::Shutdown;
                };
                if let Some(why) = resume.checked(partition, sampled, known.len()) {
                    break 'consume self.log_replaced(&topic, partition, &why, shutdown).await;
                }
            }
            if messages.is_empty() {
                // Only errors: back off a little instead of spinning on them.
                if failed {
                    tokio::select! {
                        () = shutdown.cancelled() => break 'consume Halt::Shutdown,
                        () = tokio::time::sleep(Duration::from_millis(self.settings.retry_min_ms)) => {}
                    }
                }
                continue;
            }
            let offsets = match self.process(&topic, &messages, shutdown).await {
                Ok(offsets) => offsets,
                Err(Halt::Shutdown) => break 'consume Halt::Shutdown,
                Err(halt @ (Halt::Resync | Halt::Replaced)) => break 'consume halt,
            };
            self.status.record_stored(&offsets);
            if last_commit.elapsed() >= BROKER_COMMIT_EVERY {
                self.report_lag(&consumer, &topic, &self.status.stored());
                last_commit = Instant::now();
            }
        };
        if grouped && halt == Halt::Shutdown {
            leave_group(&consumer).await;
        }
        Ok(halt)
    }

    /// A partition's log is not the one the store was built from: says so
    /// loudly and makes the store forget that partition's offset, so the
    /// consumer starts over and reads the new log from its start. The
    /// orders, fills and trades stored from the old log stay; ids are
    /// unique, so an order on both logs is stored once.
    async fn log_replaced(
        &self,
        topic: &str,
        partition: i32,
        why: &LogCheck,
        shutdown: &CancellationToken,
    ) -> Halt {
        metrics::counter!("consumer_log_replaced_total").increment(1);
        tracing::error!(partition, %why, "the log is not the one the store was built from: it was replaced (a broker keeping its log in memory restarted, or the topic was created again); reading this partition from the start of the log, the orders stored from the old one stay");
        let partitions = [partition];
        match self
            .retry(shutdown, "forgetting the replaced log's offset", || {
                self.store.forget_offsets(topic, &partitions)
            })
            .await
        {
            Ok(()) => Halt::Replaced,
            Err(halt) => halt,
        }
    }

    /// Assign mode: every partition of the topic, each from a little before
    /// the offset the store holds (see [`Resume`]). `None`: shutdown.
    async fn assign_all(
        &self,
        consumer: &LogConsumer,
        topic: &str,
        shutdown: &CancellationToken,
    ) -> Result<Option<Offsets>, ConsumerError> {
        let metadata_client: Arc<BaseConsumer> =
            Arc::new(client_config(&self.broker, "oms-metadata").create()?);
        let broker = self.broker.clone();
        let Ok(partitions) = self
            .retry(shutdown, "reading the orders topic's partitions", || {
                let client = metadata_client.clone();
                let broker = broker.clone();
                let topic = topic.to_owned();
                async move {
                    tokio::task::spawn_blocking(move || {
                        admin::partitions(client.client(), &broker, &topic)
                    })
                    .await
                    .unwrap_or_else(|e| Err(AdminError::Task(e)))
                }
            })
            .await
        else {
            return Ok(None);
        };
        let Ok(stored) = self
            .retry(shutdown, "reading offsets from the store", || {
                self.store.offsets(topic)
            })
            .await
        else {
            return Ok(None);
        };
        let rewind = self.settings.resume_rewind;
        let mut assignment = TopicPartitionList::new();
        for partition in &partitions {
            // A little before the stored offset: see [`Resume`].
            let offset = stored
                .get(partition)
                .map_or(Offset::Beginning, |o| Offset::Offset((o - rewind).max(0)));
            assignment.add_partition_offset(topic, *partition, offset)?;
        }
        if self.load_books(&partitions, shutdown).await.is_err() {
            return Ok(None);
        }
        self.lock_books().mark_loaded();
        consumer.assign(&assignment)?;
        tracing::info!(%topic, ?partitions, ?stored, engine = self.store.engine(), "consuming from the store's offsets");
        metrics::gauge!("consumer_assigned_partitions").set(partitions.len() as f64);
        Ok(Some(stored))
    }

    /// Group mode: a partition revoked is given up with what is in hand
    /// (its records in the batch are dropped: the next owner reads them
    /// from the store's offset); a partition assigned resumes from the
    /// offset the store holds, read now.
    async fn apply_change(
        &self,
        change: Change,
        topic: &str,
        resume: &mut Resume,
        messages: &mut Vec<BorrowedMessage<'_>>,
        shutdown: &CancellationToken,
    ) -> Result<(), Halt> {
        let started = Instant::now();
        match change {
            Change::Revoked(partitions) => {
                messages.retain(|m| !partitions.contains(&m.partition()));
                self.status.forget(&partitions);
                resume.forget(&partitions);
                self.lock_books().forget(&partitions);
                tracing::info!(?partitions, "partitions revoked");
            }
            Change::Assigned(partitions) => {
                let now = self
                    .retry(shutdown, "reading offsets from the store", || {
                        self.store.offsets(topic)
                    })
                    .await?;
                let owned: Offsets = partitions
                    .iter()
                    .filter_map(|p| now.get(p).map(|o| (*p, *o)))
                    .collect();
                self.load_books(&partitions, shutdown).await?;
                self.status.adopt(&partitions, &owned);
                resume.watch(&owned);
                tracing::info!(?partitions, stored = ?owned, "partitions assigned; resuming from the store's offsets");
            }
        }
        metrics::gauge!("consumer_assigned_partitions").set(self.status.owned() as f64);
        metrics::histogram!("consumer_rebalance_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Stores one batch: its poison records go to the dead-letter topic, its
    /// orders and offsets to the store in one transaction. Returns the
    /// offsets now in the store.
    async fn process(
        &self,
        topic: &str,
        messages: &[BorrowedMessage<'_>],
        shutdown: &CancellationToken,
    ) -> Result<Offsets, Halt> {
        let Decoded {
            rows,
            events,
            poison,
            offsets,
            spans: _open_until_stored,
        } = self.decode(messages);
        // A poison record's offset may only advance once the DLQ holds it.
        for letter in &poison {
            let m = &letter.message;
            let trace_id = super::header_str(m, "traceparent")
                .and_then(|tp| tp.split('-').nth(1))
                .unwrap_or_default();
            tracing::warn!(partition = m.partition(), offset = m.offset(), kind = letter.kind.as_str(), reason = %letter.reason, trace_id, "dead-lettering a record");
            self.dead_letter(letter, shutdown).await?;
        }
        let batch = Batch::new(topic, rows, offsets.clone()).expecting(self.expected(&offsets));
        let matched = self.match_events(&events, &batch, shutdown).await?;
        let batch = Arc::new(batch.matched(matched.states, matched.trades));
        match self.store_batch(&batch, shutdown).await? {
            Ok(applied) => {
                let engine = self.store.engine();
                metrics::counter!("orders_stored_total", "engine" => engine)
                    .increment(applied.inserted as u64);
                metrics::counter!("orders_duplicate_total", "engine" => engine)
                    .increment(applied.duplicates as u64);
            }
            Err(reason) => {
                tracing::error!(%reason, "store refused the batch; storing its rows one by one");
                self.apply_one_by_one(&batch, &events, messages, shutdown)
                    .await?;
            }
        }
        Ok(offsets)
    }

    /// The store offsets this consumer believes current for `partitions`
    /// (absent: nothing stored yet): a batch is written only if they are.
    fn expected(&self, partitions: &Offsets) -> Offsets {
        let stored = self.status.stored();
        partitions
            .keys()
            .filter_map(|p| stored.get(p).map(|o| (*p, *o)))
            .collect()
    }

    /// Sorts each record of a batch into an order to store or a dead letter.
    fn decode(&self, messages: &[BorrowedMessage<'_>]) -> Decoded {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut decoded = Decoded {
            rows: Vec::with_capacity(messages.len()),
            events: Vec::with_capacity(messages.len()),
            poison: Vec::new(),
            offsets: Offsets::new(),
            spans: Vec::new(),
        };
        for m in messages {
            raise(&mut decoded.offsets, m.partition(), m.offset() + 1);
            if let Some(ts) = m.timestamp().to_millis() {
                metrics::histogram!("message_delay_seconds")
                    .record((now_ms - ts).max(0) as f64 / 1000.0);
            }
            let event = match Event::from_record(m.payload().unwrap_or_default()) {
                Ok(event) => event,
                Err(err) => {
                    decoded.poison.push(dead_letter(m, &err));
                    continue;
                }
            };
            if replay_count(m) > 0 {
                metrics::counter!("orders_replayed_total").increment(1);
            }
            if let Event::Order(order) = &event {
                decoded
                    .spans
                    .extend(record_span(m, order, self.store.engine()));
                decoded
                    .rows
                    .push(StoredOrder::new(order.clone(), m.partition(), m.offset()));
            }
            decoded.events.push(Positioned {
                partition: m.partition(),
                offset: m.offset(),
                event,
            });
        }
        metrics::histogram!("consumer_batch_size").record(messages.len() as f64);
        decoded
    }

    /// Writes a batch, waiting out transient failures (the partitions do not
    /// advance meanwhile); a permanent refusal of its rows comes back as
    /// `Err(reason)`, offsets that moved under this consumer as
    /// [`Halt::Resync`].
    async fn store_batch(
        &self,
        batch: &Arc<Batch>,
        shutdown: &CancellationToken,
    ) -> Result<Result<Applied, String>, Halt> {
        let engine = self.store.engine();
        let mut attempts = 0;
        let outcome = self
            .retry(shutdown, "store unavailable", || {
                // A failed attempt may have committed before its answer was
                // lost; only a retry may find the store at its own target.
                attempts += 1;
                let batch = if attempts == 1 {
                    batch.clone()
                } else {
                    Arc::new(batch.retry())
                };
                async move {
                    let started = Instant::now();
                    let outcome = self.store.apply(batch).await;
                    metrics::histogram!("store_write_seconds", "engine" => engine)
                        .record(started.elapsed().as_secs_f64());
                    match outcome {
                        Ok(applied) => Ok(Ok(applied)),
                        Err(refused) if refused.is_permanent() => {
                            Ok(Err(Some(Chain(&refused).to_string())))
                        }
                        Err(diverged @ StoreError::Diverged { .. }) => {
                            tracing::warn!(reason = %diverged, "the store refused the batch");
                            Ok(Err(None))
                        }
                        Err(transient) => Err(transient),
                    }
                }
            })
            .await?;
        self.status.set(ConsumerState::Running);
        match outcome {
            Ok(applied) => Ok(Ok(applied)),
            Err(Some(reason)) => Ok(Err(reason)),
            Err(None) => Err(Halt::Resync),
        }
    }

    /// Writes `letter` to the dead-letter topic, waiting as long as the
    /// broker needs (one copy) unless shutdown comes first.
    async fn dead_letter(
        &self,
        letter: &DeadLetter,
        shutdown: &CancellationToken,
    ) -> Result<(), Halt> {
        let send = self.retry(shutdown, "writing to the dead-letter topic", || {
            self.dlq.send(letter)
        });
        tokio::pin!(send);
        let mut waiting = tokio::time::interval(Duration::from_secs(1));
        waiting.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Err(Halt::Shutdown),
                sent = &mut send => return sent,
                // Waiting for the broker's ack is life, not a stall: a new
                // consumer would only write the letter a second time.
                _ = waiting.tick() => {
                    self.status.beat();
                    self.status.set(ConsumerState::Waiting {
                        reason: "writing to the dead-letter topic: waiting for the broker's ack".into(),
                    });
                }
            }
        }
    }

    /// The slow path after a batch was refused: each record alone (matched
    /// alone, from books rebuilt to where the store is), the refused ones
    /// to the DLQ (and the books rebuilt again, undoing their matching),
    /// then the offsets. Every step is idempotent, so a crash in between
    /// only repeats work.
    async fn apply_one_by_one(
        &self,
        batch: &Batch,
        events: &[Positioned],
        messages: &[BorrowedMessage<'_>],
        shutdown: &CancellationToken,
    ) -> Result<(), Halt> {
        let partitions: Vec<i32> = batch.offsets.keys().copied().collect();
        self.load_books(&partitions, shutdown).await?;
        // Each record alone is fenced like the batch (its offsets "move" to
        // where they are): the books were just read from the store, and a
        // fill matched from them must not land after another writer's.
        let fence = batch.expected.clone().unwrap_or_default();
        for event in events {
            let rows = match &event.event {
                Event::Order(order) => vec![StoredOrder::new(
                    order.clone(),
                    event.partition,
                    event.offset,
                )],
                Event::Cancel(_) if self.settings.matching => Vec::new(),
                Event::Cancel(_) => continue,
            };
            let single = Batch::new(&batch.topic, rows, fence.clone()).expecting(fence.clone());
            let matched = self
                .match_events(std::slice::from_ref(event), &single, shutdown)
                .await?;
            let single = Arc::new(single.matched(matched.states, matched.trades));
            let Err(reason) = self.store_batch(&single, shutdown).await? else {
                continue;
            };
            // The record's log position names its message.
            let Some(message) = messages
                .iter()
                .find(|m| (m.partition(), m.offset()) == (event.partition, event.offset))
            else {
                unreachable!("every event of a batch comes from one of its messages");
            };
            let letter = DeadLetter {
                message: message.detach(),
                kind: ErrorKind::Store,
                reason,
            };
            self.dead_letter(&letter, shutdown).await?;
            self.load_books(&[event.partition], shutdown).await?;
        }
        let mut offsets_only = Batch::new(&batch.topic, Vec::new(), batch.offsets.clone());
        offsets_only.expected = batch.expected.clone();
        match self.store_batch(&Arc::new(offsets_only), shutdown).await? {
            Ok(_) => Ok(()),
            Err(reason) => {
                tracing::error!(%reason, "the store refused the batch's offsets; reading them again from the store");
                Err(Halt::Resync)
            }
        }
    }

    /// Commits the stored offsets broker-side, so standard Kafka tools can
    /// show lag too (`consumer_lag` comes from [`watch_log`]). At most every
    /// [`BROKER_COMMIT_EVERY`]: each commit is a write in the broker's
    /// database, and nothing depends on it being fresh.
    fn report_lag(&self, consumer: &LogConsumer, topic: &str, offsets: &Offsets) {
        let mut list = TopicPartitionList::new();
        for (partition, next) in offsets {
            if list
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .is_err()
            {
                return;
            }
        }
        if let Err(err) = consumer.commit(&list, CommitMode::Async) {
            tracing::debug!(error = %err, "broker-side commit (lag reporting only) failed");
        }
    }
}

/// Raises `ends[partition]` to `offset` if that is further (log ends only grow
/// with more evidence).
fn raise(ends: &mut Offsets, partition: i32, offset: i64) {
    let end = ends.entry(partition).or_insert(0);
    *end = (*end).max(offset);
}

/// The consumer span of a record whose producer sampled its trace (no
/// span at all for the rest, which keeps an untraced consumer cheap).
fn record_span(message: &BorrowedMessage<'_>, order: &Order, engine: &str) -> Option<Span> {
    if !telemetry::spans_enabled() {
        return None;
    }
    let traceparent = super::header_str(message, "traceparent")?;
    if !telemetry::is_sampled(traceparent) {
        return None;
    }
    let span = tracing::info_span!(
        "store order",
        otel.name = %format_args!("{} process", message.topic()),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination.partition.id = message.partition(),
        messaging.kafka.offset = message.offset(),
        order_id = %order.id,
        store.engine = engine,
        trace_id = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, &TraceParent(Some(traceparent)));
    span.record("trace_id", telemetry::trace_id(&span));
    Some(span)
}

/// The librdkafka settings of the order consumer (shared with the
/// benchmark's raw consumer). Offsets are oms' business, not the group's.
pub fn consumer_config(broker: &BrokerSettings, consumer: &ConsumerSettings) -> ClientConfig {
    let mut config = client_config(broker, "oms-consumer");
    if consumer.mode == ConsumerMode::Group {
        config
            .set("partition.assignment.strategy", "cooperative-sticky")
            // A member that stops heartbeating loses its partitions after
            // this; a static member restarted under its id within it gets
            // them back without a rebalance.
            .set("session.timeout.ms", "10000");
        if !consumer.instance_id.is_empty() {
            config.set("group.instance.id", &consumer.instance_id);
        }
    }
    config
        .set("group.id", &consumer.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.min.bytes", consumer.fetch_min_bytes.to_string())
        .set("fetch.wait.max.ms", consumer.fetch_wait_ms.to_string())
        .set(
            "queued.max.messages.kbytes",
            consumer.prefetch_kbytes.to_string(),
        )
        // With a bounded prefetch the queue is often full during a rebuild;
        // librdkafka then postpones the next fetch by this much (default
        // 1 s, which cut the drain on tansu's memory engine to a third).
        .set(
            "fetch.queue.backoff.ms",
            consumer.fetch_wait_ms.max(1).to_string(),
        );
    config
}

fn dead_letter(message: &BorrowedMessage<'_>, err: &RecordError) -> DeadLetter {
    DeadLetter {
        message: message.detach(),
        kind: ErrorKind::from(err),
        reason: Chain(err).to_string(),
    }
}

/// The broker's view of the log end: `(partition, low, high)` per partition.
fn watermarks(
    client: &BaseConsumer,
    broker: &BrokerSettings,
) -> Result<Vec<(i32, i64, i64)>, String> {
    let topic = &broker.topic;
    let partitions =
        admin::partitions(client.client(), broker, topic).map_err(|e| Chain(&e).to_string())?;
    partitions
        .into_iter()
        .map(|p| {
            client
                .fetch_watermarks(topic, p, super::METADATA_TIMEOUT)
                .map(|(low, high)| (p, low, high))
                .map_err(|e| format!("reading the log end of {topic}/{p}: {e}"))
        })
        .collect()
}

/// Every `every`, until shutdown: reads the log end, publishes
/// `consumer_lag{partition}` and restarts a stalled consumer.
///
/// The log end of a partition is the larger of the broker's high watermark
/// and the offset after the last record this instance's producer got
/// acknowledged: a broker that under-reports its watermarks (tansu's memory
/// engine does) cannot make lag read 0 while acknowledged orders are
/// missing. Lag is that end minus the consumer's own record of what it
/// stored, so it keeps growing while the store is down.
///
/// The watchdog: records past the stored offsets and no sign of life from
/// the loop for `stall_after` (nothing stored, no retried attempt) — then
/// `consumer_stalls_total` counts it and the loop is recreated
/// ([`ConsumerLoop::run`]), backing off while restarts do not help.
pub async fn watch_log(
    broker: BrokerSettings,
    status: ConsumerStatus,
    produced: Arc<ProduceEvidence>,
    every: Duration,
    stall_after: Duration,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let client: Arc<BaseConsumer> = Arc::new(client_config(&broker, "oms-lag").create()?);
    let mut tick = tokio::time::interval(every);
    let mut published = std::collections::BTreeSet::<i32>::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let (c, settings) = (client.clone(), broker.clone());
        let marks = tokio::task::spawn_blocking(move || watermarks(c.as_ref(), &settings))
            .await
            .unwrap_or_else(|e| Err(format!("the watermark task failed: {e}")));
        let mut ends = produced.acked_ends();
        let mut starts = Offsets::new();
        let error = match marks {
            Ok(marks) => {
                for (partition, low, high) in marks {
                    raise(&mut ends, partition, high);
                    starts.insert(partition, low);
                }
                None
            }
            Err(err) => {
                tracing::debug!(error = %err, "log end unreadable");
                Some(err)
            }
        };
        let (lag, starting) = status.with(|s| {
            s.log_end = ends;
            s.log_start.extend(starts);
            s.log_end_error = error;
            (ConsumerStatus::lag(s), s.state == ConsumerState::Starting)
        });
        if starting {
            continue; // nothing known about the store yet
        }
        // A partition given up (group mode) shows 0 here, not the last lag
        // this instance saw: its new owner reports it.
        for gone in published.iter().filter(|p| !lag.contains_key(p)) {
            metrics::gauge!("consumer_lag", "partition" => gone.to_string()).set(0.0);
        }
        published = lag.keys().copied().collect();
        for (partition, behind) in lag {
            metrics::gauge!("consumer_lag", "partition" => partition.to_string())
                .set(behind as f64);
        }
        if let Some(stall) = status.stall(stall_after) {
            if status.request_restart(stall_after) {
                metrics::counter!("consumer_stalls_total").increment(1);
                tracing::warn!(
                    behind = stall.behind,
                    idle_s = stall.idle.as_secs_f64(),
                    "consumer {stall}; recreating it"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_that_never_closes_holds_its_dropper_no_longer_than_the_bound() {
        struct NeverCloses;
        impl Drop for NeverCloses {
            fn drop(&mut self) {
                loop {
                    std::thread::park();
                }
            }
        }
        let started = Instant::now();
        drop(Bounded::new(NeverCloses, Duration::from_millis(200)));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "dropping took {took:?}"
        );
    }

    #[test]
    fn a_consumer_that_closes_is_closed_when_its_drop_returns() {
        struct Closes(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Closes {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(50));
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        drop(Bounded::new(
            Closes(closed.clone()),
            Duration::from_secs(30),
        ));
        assert!(closed.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_known_order_before_the_stored_offset_shows_the_same_log() {
        let mut resume = Resume::new(&Offsets::from([(0, 500), (1, 0)]), 100);
        assert!(resume.unverified.contains_key(&0));
        assert!(
            !resume.unverified.contains_key(&1),
            "nothing stored: nothing to check"
        );
        assert_eq!(resume.checked(0, 10, 1), None);
        assert!(resume.unverified.is_empty(), "checked once, for good");
        assert_eq!(resume.checked(0, 10, 0), None, "no second verdict");
    }

    #[test]
    fn orders_the_store_does_not_know_show_another_log() {
        let mut resume = Resume::new(&Offsets::from([(0, 500)]), 100);
        assert_eq!(
            resume.checked(0, 1, 0),
            None,
            "one unknown order may be one the store dead-lettered"
        );
        assert_eq!(
            resume.checked(0, LOG_CHECK_UNKNOWN - 1, 0),
            Some(LogCheck::Unknown {
                checked: LOG_CHECK_UNKNOWN,
                stored: 500
            })
        );
    }

    #[test]
    fn a_log_with_fewer_orders_than_the_threshold_is_judged_on_all_of_them() {
        let mut resume = Resume::new(&Offsets::from([(2, 2)]), 100);
        assert_eq!(
            resume.checked(2, 2, 0),
            Some(LogCheck::Unknown {
                checked: 2,
                stored: 2
            })
        );
    }

    fn order(side: &str, price: &str) -> Order {
        crate::order::NewOrder::from_value(serde_json::json!({
            "src_currency": "USD", "dst_currency": "EUR", "side": side,
            "price": price, "quantity": "1", "channel": 11, "description": "unit",
        }))
        .and_then(|o| o.accept(chrono::Utc::now()))
        .expect("a valid order")
    }

    /// A writer whose books stand at "nothing stored" while another writer
    /// stored partition 0 up to 2 (a thawed zombie): its crossing orders make
    /// a trade, which must not be published (the broker here does not even
    /// exist); the consumer resyncs instead.
    #[tokio::test]
    async fn trades_are_not_published_once_the_store_moved_past_the_books() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store: Arc<dyn Store> = Arc::new(
            crate::store::redb::RedbStore::open(dir.path())
                .await
                .expect("redb opens"),
        );
        store
            .apply(Arc::new(Batch::new(
                "orders",
                Vec::new(),
                Offsets::from([(0, 2)]),
            )))
            .await
            .expect("the other writer's batch");
        let broker = BrokerSettings {
            bootstrap: "127.0.0.1:9".into(),
            ..BrokerSettings::default()
        };
        let consumer = ConsumerLoop::new(
            broker,
            ConsumerSettings::default(),
            store,
            ConsumerStatus::default(),
            Books::default(),
        )
        .expect("a consumer");
        let events: Vec<Positioned> = [order("sell", "100.00"), order("buy", "101.00")]
            .into_iter()
            .enumerate()
            .map(|(offset, o)| Positioned {
                partition: 0,
                offset: offset as i64,
                event: Event::Order(o),
            })
            .collect();
        let stale =
            Batch::new("orders", Vec::new(), Offsets::from([(0, 2)])).expecting(Offsets::new());
        let current = stale.clone().expecting(Offsets::from([(0, 2)]));
        // Cancelled up front: a retry gives up at once instead of waiting.
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(
            consumer.still_current(&current, &shutdown).await.is_ok(),
            "a store where the batch expects it is current"
        );
        // Publishing waits for an ack forever (`message.timeout.ms = 0`):
        // an attempt to publish shows as this guard running out.
        let matched = tokio::time::timeout(
            Duration::from_secs(30),
            consumer.match_events(&events, &stale, &shutdown),
        )
        .await
        .expect("trades from stale books were sent to the broker");
        assert!(
            matches!(matched, Err(Halt::Resync)),
            "matched from stale books: {:?}",
            matched.map(|o| o.trades.len())
        );
    }

    #[test]
    fn a_partition_given_up_is_not_checked() {
        let mut resume = Resume::new(&Offsets::from([(0, 500)]), 100);
        resume.forget(&[0]);
        assert_eq!(resume.checked(0, 64, 0), None);
    }
}
