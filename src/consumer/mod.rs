//! The consumer: log → books → one store transaction per batch.
//!
//! Offsets live in the store, written in the same transaction as the rows
//! they describe; a partition is read from the offset the store holds (or
//! from the start of the log when it holds none, which rebuilds an empty
//! store). Broker-side commits are made afterwards, only so that lag can be
//! watched with standard tools. Which partitions are this instance's is
//! decided outside the loop: every partition (assign mode), or the leases
//! it holds in the shared store (group mode, [`group`]).
//!
//! # Layout
//! - this module: the loop — one step per batch — and its halts, and how
//!   each halt is recovered from without giving anything up.
//! - [`status`]: what the consumer is doing, for `/readyz`, the read path
//!   and lag; may use nothing else here.
//! - [`retry`]: the retry policy every waiting step takes.
//! - [`client`]: the librdkafka consumer — settings, assignment, receive
//!   errors, a bounded close.
//! - [`ownership`]: which partitions may be consumed, under which lease;
//!   where the loop and the group member meet.
//! - [`assignment`]: taking partitions on and off at the store's offsets,
//!   books rebuilt; the resync.
//! - [`group`]: group mode — membership, leases, shares, the group check.
//! - [`resume`]: resuming exactly at the store's offsets, on the log the
//!   store was built from.
//! - [`batch`]: decoding, dead letters, the fenced batch write.
//! - [`books`]: the books, matching, publishing trades.
//! - [`watch`]: the log end, `consumer_lag` and the stall watchdog.

pub mod assignment;
pub mod batch;
pub mod books;
pub mod client;
pub mod group;
pub mod ownership;
pub mod resume;
pub mod retry;
pub mod status;
pub mod watch;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use tokio_util::sync::CancellationToken;

pub use books::Books;
pub use client::consumer_config;
pub use ownership::Ownership;
pub use status::{ConsumerState, ConsumerStatus, GroupReport, Stall};
pub use watch::watch_log;

use assignment::Held;
use client::{Bounded, CLOSE_WITHIN, ErrorLog, LogConsumer, Received};
use resume::{LogCheck, LogEnds, SHORTER_LOG_CONFIRM};
use retry::{Retry, Stopped};

use crate::broker::client_config;
use crate::broker::dlq::DeadLetterWriter;
use crate::broker::producer::LogProducer;
use crate::config::{BrokerSettings, ConsumerMode, ConsumerSettings};
use crate::store::Store;

/// How often the stored offsets are also committed broker-side (lag
/// tooling only; the store holds the offsets that matter).
const BROKER_COMMIT_EVERY: Duration = Duration::from_secs(1);

/// How often the log end the broker reports is compared with the store's
/// offsets (a replaced log that ends below them delivers nothing at all).
const LOG_END_CHECK_EVERY: Duration = Duration::from_millis(500);

/// A consumer failure that ends the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("cannot create a Kafka client")]
    Create(#[from] KafkaError),
    #[error(
        "consumer.mode = \"group\" needs a store that keeps leases (postgres, redis); {0} does not"
    )]
    NoLeases(&'static str),
    /// The orders topic was created again under this running oms: the
    /// broker restarted without its log (tansu `memory://`) or the topic
    /// was deleted. Its clients hold an idempotent producer id and
    /// metadata of a log that is gone, so oms ends, to start over.
    #[error(
        "the orders topic {topic} was created again under this running oms (topic id {was} -> {now}): \
         the broker restarted without its log, or the topic was deleted. oms' producers hold ids the \
         new log does not know, so oms exits with status {EXIT_RESTART} to start over with new clients \
         (its supervisor starts it again; `just up` supervises it). Orders the old log acknowledged \
         that were not stored yet are gone with it"
    )]
    TopicRecreated {
        topic: String,
        was: String,
        now: String,
    },
}

/// The exit status of an oms that must be started again with new clients
/// (EX_TEMPFAIL): its broker lost the log under it.
pub const EXIT_RESTART: u8 = 75;

impl ConsumerError {
    /// Starting oms again fixes this (a supervisor should).
    pub fn wants_restart(&self) -> bool {
        matches!(self, ConsumerError::TopicRecreated { .. })
    }
}

/// Why the loop stops working on the batch in hand. Nothing more of it is
/// stored, and it is read again (a batch and its offsets commit together).
#[derive(Debug)]
enum Halt {
    /// Shutdown was requested while the loop waited (a retry, a dead letter).
    Shutdown,
    /// The store's offsets are not where this consumer believed (another
    /// writer moved them, or the store lost data): read them again.
    Resync,
    /// The log of a partition is not the one the store was built from (see
    /// [`resume::Resume`]); its offset is gone from the store: read that
    /// partition again from the start of the log.
    Replaced,
    /// Group mode: the lease of `partition` is another member's now.
    Fenced { partition: i32 },
    /// librdkafka refused to take partitions on: a new broker consumer.
    Broker(KafkaError),
}

impl From<Stopped> for Halt {
    fn from(Stopped: Stopped) -> Self {
        Halt::Shutdown
    }
}

/// The log → store loop. Build with [`ConsumerLoop::new`], run with [`ConsumerLoop::run`].
pub struct ConsumerLoop {
    broker: BrokerSettings,
    settings: ConsumerSettings,
    store: Arc<dyn Store>,
    books: Books,
    status: ConsumerStatus,
    ownership: Ownership,
    /// Group mode: the member id its leases are held under.
    member: Option<String>,
}

/// One run of the loop, until shutdown: the loop's parts and its clients.
struct Loop {
    broker: BrokerSettings,
    settings: ConsumerSettings,
    store: Arc<dyn Store>,
    dlq: DeadLetterWriter,
    /// The producer of the `trades` topic (the dead-letter writer's: one
    /// librdkafka client for everything the consumer writes to the log).
    trades: LogProducer,
    /// Reads the topic's partitions (assign mode).
    metadata: Arc<BaseConsumer>,
    books: Books,
    status: ConsumerStatus,
    ownership: Ownership,
    member: Option<String>,
    retry: Retry,
    shutdown: CancellationToken,
}

/// How one broker consumer's run ended.
enum Exit {
    Shutdown,
    /// A new broker consumer is needed (the watchdog, or librdkafka).
    Recreate,
}

impl ConsumerLoop {
    pub fn new(
        broker: BrokerSettings,
        settings: ConsumerSettings,
        store: Arc<dyn Store>,
        status: ConsumerStatus,
        books: Books,
        ownership: Ownership,
        member: Option<String>,
    ) -> Self {
        Self {
            broker,
            settings,
            store,
            books,
            status,
            ownership,
            member,
        }
    }

    fn start(self, shutdown: CancellationToken) -> Result<Loop, ConsumerError> {
        let dlq = DeadLetterWriter::new(&self.broker)?;
        let trades = dlq.producer().clone();
        let metadata = Arc::new(client_config(&self.broker, "oms-metadata").create()?);
        let retry = Retry::new(
            Duration::from_millis(self.settings.retry_min_ms),
            Duration::from_millis(self.settings.retry_max_ms),
            self.status.clone(),
            shutdown.clone(),
        );
        self.status
            .set_grouped(self.settings.mode == ConsumerMode::Group);
        Ok(Loop {
            broker: self.broker,
            settings: self.settings,
            store: self.store,
            dlq,
            trades,
            metadata,
            books: self.books,
            status: self.status,
            ownership: self.ownership,
            member: self.member,
            retry,
            shutdown,
        })
    }

    /// Runs until `shutdown` is cancelled; the batch in hand is written first.
    ///
    /// When the watchdog ([`watch_log`]) finds the loop stalled, the whole
    /// consume future is dropped — whatever it was waiting on — and started
    /// again: a new broker consumer, taking everything this instance owns
    /// at the offsets the store holds. Dropping it mid-batch is safe: a
    /// batch and its offsets commit together, so the new consumer re-reads
    /// exactly what was not stored. Ownership is not touched by that.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let run = self.start(shutdown)?;
        let result = loop {
            tokio::select! {
                exit = run.consume() => match exit {
                    Ok(Exit::Shutdown) => break Ok(()),
                    Ok(Exit::Recreate) => {
                        if run.retry.pause().await.is_err() {
                            break Ok(());
                        }
                    }
                    Err(err) => break Err(err),
                },
                () = run.status.restart_requested() => {
                    tracing::warn!("recreating the broker consumer and seeking to the store's offsets");
                }
            }
            run.status.set(ConsumerState::Starting);
        };
        run.ownership.close();
        run.status.set(ConsumerState::Stopped);
        tracing::info!("consumer stopped");
        result
    }
}

/// The receive-side state of one broker consumer between batches.
struct Receiving {
    errors: ErrorLog,
    log_ends: LogEnds,
    log_check: tokio::time::Interval,
    last_commit: Instant,
}

impl Loop {
    /// One broker consumer, until shutdown or until it must be recreated.
    async fn consume(&self) -> Result<Exit, ConsumerError> {
        let consumer: LogConsumer = consumer_config(&self.broker, &self.settings).create()?;
        let consumer = Bounded::new(consumer, CLOSE_WITHIN);
        // A new consumer holds nothing: books and offsets come back with
        // each partition it takes.
        self.lock_books().clear();
        self.status
            .forget(&self.status.owned().into_iter().collect::<Vec<_>>());
        let mut held = Held::new(self.settings.resume_rewind);
        let mut log_check = tokio::time::interval(LOG_END_CHECK_EVERY);
        log_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut receiving = Receiving {
            errors: ErrorLog::default(),
            log_ends: LogEnds::default(),
            log_check,
            last_commit: Instant::now(),
        };
        let mut outcome = match self.decide_all().await {
            Ok(()) => {
                self.status.set(ConsumerState::Running);
                Ok(())
            }
            Err(halt) => Err(halt),
        };
        loop {
            match outcome {
                Ok(()) => outcome = self.step(&consumer, &mut held, &mut receiving).await,
                Err(Halt::Shutdown) => return Ok(Exit::Shutdown),
                Err(Halt::Broker(err)) => {
                    tracing::warn!(error = %err, "librdkafka refused to take partitions on; recreating the broker consumer");
                    return Ok(Exit::Recreate);
                }
                Err(halt) => outcome = self.recover(&consumer, &mut held, halt).await,
            }
        }
    }

    /// Waits for records (or a change of ownership, or the log-end check),
    /// and stores one batch.
    async fn step(
        &self,
        consumer: &LogConsumer,
        held: &mut Held,
        receiving: &mut Receiving,
    ) -> Result<(), Halt> {
        self.reconcile(consumer, held).await?;
        let first = tokio::select! {
            () = self.shutdown.cancelled() => return Err(Halt::Shutdown),
            () = self.ownership.wanted_changed() => return Ok(()),
            message = consumer.recv() => message,
            _ = receiving.log_check.tick() => return self.check_log_ends(consumer, held, receiving).await,
        };
        let (mut messages, failed) = self.gather(consumer, first, &mut receiving.errors).await;
        // Records of a partition given up a moment ago are its next owner's.
        messages.retain(|m| held.consuming.contains_key(&m.partition()));
        self.verify_log(consumer, held, &mut messages).await?;
        if messages.is_empty() {
            // Only errors: back off a little instead of spinning on them.
            if failed {
                self.retry.pause().await?;
            }
            return Ok(());
        }
        let partitions: BTreeSet<i32> = messages.iter().map(|m| m.partition()).collect();
        let claim = held.claim(self.member.as_deref(), &partitions);
        let offsets = self.process(&self.broker.topic, &messages, claim).await?;
        self.status.record_stored(&offsets);
        if receiving.last_commit.elapsed() >= BROKER_COMMIT_EVERY {
            client::commit_for_lag_tools(consumer, &self.broker.topic, &self.status.stored());
            receiving.last_commit = Instant::now();
        }
        Ok(())
    }

    /// A batch: the first record and what follows within `batch_wait_ms`,
    /// at most `batch_max`; whether a receive error ended it.
    async fn gather<'c>(
        &self,
        consumer: &'c LogConsumer,
        first: Result<BorrowedMessage<'c>, KafkaError>,
        errors: &mut ErrorLog,
    ) -> (Vec<BorrowedMessage<'c>>, bool) {
        let mut messages = Vec::with_capacity(self.settings.batch_max);
        let mut failed = errors.sort(first, &mut messages) == Received::Error;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.settings.batch_wait_ms);
        while !failed && messages.len() < self.settings.batch_max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(message) => failed = errors.sort(message, &mut messages) == Received::Error,
                Err(_) => break,
            }
        }
        (messages, failed)
    }

    /// Drops what must not be stored again (see [`resume::Resume`]) and
    /// checks the records just before the stored offsets against the store.
    async fn verify_log(
        &self,
        consumer: &LogConsumer,
        held: &mut Held,
        messages: &mut Vec<BorrowedMessage<'_>>,
    ) -> Result<(), Halt> {
        let samples = held.resume.admit(consumer, &self.broker.topic, messages);
        for (partition, ids) in samples {
            let sampled = ids.len();
            let known = self
                .retry
                .run("checking the log against the store", || {
                    self.store.known(ids.clone())
                })
                .await?;
            if let Some(why) = held.resume.checked(partition, sampled, known.len()) {
                return Err(self.log_replaced(partition, &why).await);
            }
        }
        Ok(())
    }

    /// A replaced log that ends below the stored offset delivers nothing
    /// at all: only the log end the broker reports shows it.
    async fn check_log_ends(
        &self,
        consumer: &LogConsumer,
        held: &Held,
        receiving: &mut Receiving,
    ) -> Result<(), Halt> {
        // A partition taken over may still show the watermark of a fetch
        // from when this consumer last held it: wait for a fresh one.
        let confirm = match self.settings.mode {
            ConsumerMode::Group => SHORTER_LOG_CONFIRM,
            ConsumerMode::Assign => Duration::ZERO,
        };
        let stored = self.status.stored();
        let mine = stored
            .into_iter()
            .filter(|(p, _)| held.consuming.contains_key(p))
            .collect();
        match receiving
            .log_ends
            .shorter(consumer, &self.broker.topic, &mine, confirm)
        {
            Some((partition, why)) => Err(self.log_replaced(partition, &why).await),
            None => Ok(()),
        }
    }

    /// A partition's log is not the one the store was built from: says so
    /// loudly and makes the store forget that partition's offset, so it is
    /// read again from the start of the new log. The orders, fills and
    /// trades stored from the old log stay; ids are unique, so an order on
    /// both logs is stored once.
    async fn log_replaced(&self, partition: i32, why: &LogCheck) -> Halt {
        metrics::counter!("consumer_log_replaced_total").increment(1);
        tracing::error!(partition, %why, "the log is not the one the store was built from: it was replaced (a broker keeping its log in memory restarted, or the topic was created again); reading this partition from the start of the log, the orders stored from the old one stay");
        let partitions = [partition];
        let topic = &self.broker.topic;
        match self
            .retry
            .run("forgetting the replaced log's offset", || {
                self.store.forget_offsets(topic, &partitions)
            })
            .await
        {
            Ok(()) => Halt::Replaced,
            Err(Stopped) => Halt::Shutdown,
        }
    }

    /// After the store refused a batch: what this instance holds is read
    /// again from the store's offsets with its books rebuilt — without
    /// leaving the group or recreating the broker consumer. A lease that
    /// is gone is given up first.
    async fn recover(
        &self,
        consumer: &LogConsumer,
        held: &mut Held,
        halt: Halt,
    ) -> Result<(), Halt> {
        let reason = match halt {
            Halt::Resync => "diverged",
            Halt::Replaced => "replaced",
            Halt::Fenced { partition } => {
                let epoch = held.consuming.get(&partition).copied().flatten();
                self.ownership.lost(partition, epoch);
                "fenced"
            }
            stop @ (Halt::Shutdown | Halt::Broker(_)) => return Err(stop),
        };
        metrics::counter!("consumer_resyncs_total", "reason" => reason).increment(1);
        tracing::warn!(
            reason,
            "the store refused the batch (another writer moved it, or it lost data); reading its offsets again, the books rebuilt"
        );
        self.retry.pause().await?;
        self.resync(consumer, held).await
    }
}

#[cfg(test)]
mod tests;
