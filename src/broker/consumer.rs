//! The consumer loop: log → batch → one store transaction.
//!
//! Offsets live in the store, written in the same transaction as the rows they
//! describe; on start the loop assigns itself every partition at the offsets
//! the store holds (or at the beginning when it holds none, which rebuilds an
//! empty store from the log). Broker-side commits are made afterwards, only so
//! that lag can be watched with standard tools.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::admin::{self, AdminError};
use super::client_config;
use super::dlq::{DeadLetter, DeadLetterWriter, ErrorKind, replay_count};
use crate::config::{BrokerSettings, ConsumerSettings};
use crate::order::{Order, RecordError};
use crate::store::{Batch, Offsets, Store, StoreError, StoredOrder};
use crate::telemetry::{self, TraceParent};
use tracing::Span;

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

/// Shared, cheap handle on the consumer's state: what it is doing (for
/// `/readyz`) and the offsets it has stored (for `consumer_lag`).
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus(Arc<Mutex<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    state: ConsumerState,
    stored: Offsets,
}

impl ConsumerStatus {
    fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        match self.0.lock() {
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

    fn record_stored(&self, offsets: &Offsets) {
        self.with(|s| s.stored.extend(offsets.iter().map(|(p, o)| (*p, *o))));
    }
}

/// A consumer failure that ends the loop.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("cannot create the Kafka consumer: {0}")]
    Client(#[from] KafkaError),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// The log → store loop. Build with [`ConsumerLoop::new`], run with [`ConsumerLoop::run`].
pub struct ConsumerLoop {
    broker: BrokerSettings,
    settings: ConsumerSettings,
    store: Arc<dyn Store>,
    dlq: DeadLetterWriter,
    status: ConsumerStatus,
}

/// One record of a batch that will not be stored, and why.
struct Poison {
    letter: DeadLetter,
}

impl ConsumerLoop {
    pub fn new(
        broker: BrokerSettings,
        settings: ConsumerSettings,
        store: Arc<dyn Store>,
        status: ConsumerStatus,
    ) -> Result<Self, ConsumerError> {
        let dlq = DeadLetterWriter::new(&broker)?;
        Ok(Self {
            broker,
            settings,
            store,
            dlq,
            status,
        })
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
    /// shutdown is requested (`None`). Meanwhile `/readyz` reports the reason.
    async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        &self,
        shutdown: &CancellationToken,
        what: &str,
        mut op: impl FnMut() -> F,
    ) -> Option<T> {
        let mut delays = self.backoff();
        loop {
            match op().await {
                Ok(value) => return Some(value),
                Err(err) => {
                    let reason = format!("{what}: {err}");
                    tracing::warn!(%reason, "retrying");
                    self.status.set(ConsumerState::Waiting { reason });
                    let delay = delays
                        .next()
                        .unwrap_or(Duration::from_millis(self.settings.retry_max_ms));
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn create_consumer(&self) -> Result<StreamConsumer, KafkaError> {
        consumer_config(&self.broker, &self.settings).create()
    }

    /// Runs until `shutdown` is cancelled; the batch in hand is written first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let result = self.consume(&shutdown).await;
        self.status.set(ConsumerState::Stopped);
        tracing::info!("consumer stopped");
        result
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), ConsumerError> {
        let consumer = self.create_consumer()?;
        let topic = self.broker.topic.clone();

        let metadata_client: Arc<BaseConsumer> =
            Arc::new(client_config(&self.broker, "oms-metadata").create()?);
        let broker = self.broker.clone();
        let Some(partitions) = self
            .retry(shutdown, "reading the orders topic's partitions", || {
                let client = metadata_client.clone();
                let broker = broker.clone();
                let topic = topic.clone();
                async move {
                    let name = topic.clone();
                    tokio::task::spawn_blocking(move || {
                        admin::partitions(client.as_ref(), &broker, &topic)
                    })
                    .await
                    .unwrap_or_else(|e| Err(AdminError::MissingTopic(format!("{name} ({e})"))))
                }
            })
            .await
        else {
            return Ok(());
        };
        let Some(stored) = self
            .retry(shutdown, "reading offsets from the store", || {
                self.store.offsets(&topic)
            })
            .await
        else {
            return Ok(());
        };

        let mut assignment = TopicPartitionList::new();
        for partition in &partitions {
            let offset = stored
                .get(partition)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            assignment.add_partition_offset(&topic, *partition, offset)?;
        }
        consumer.assign(&assignment)?;
        self.status.record_stored(&stored);
        tracing::info!(%topic, ?partitions, ?stored, engine = self.store.engine(), "consuming from the store's offsets");
        self.status.set(ConsumerState::Running);

        let batch_wait = Duration::from_millis(self.settings.batch_wait_ms);
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                message = consumer.recv() => message,
            };
            let mut messages = Vec::with_capacity(self.settings.batch_max);
            self.take(first, &mut messages);
            let deadline = tokio::time::Instant::now() + batch_wait;
            while messages.len() < self.settings.batch_max {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(message) => self.take(message, &mut messages),
                    Err(_) => break,
                }
            }
            if messages.is_empty() {
                continue;
            }
            let Some(offsets) = self.process(&topic, messages, shutdown).await else {
                break;
            };
            self.status.record_stored(&offsets);
            self.report_lag(&consumer, &topic, &offsets);
        }
        Ok(())
    }

    fn take<'c>(
        &self,
        message: Result<BorrowedMessage<'c>, KafkaError>,
        into: &mut Vec<BorrowedMessage<'c>>,
    ) {
        match message {
            Ok(m) => into.push(m),
            // Transport errors are retried inside librdkafka (and logged by
            // it); `/readyz` reports the broker. Count them, log quietly.
            Err(err) => {
                metrics::counter!("consumer_errors_total").increment(1);
                tracing::debug!(error = %err, "consumer error");
            }
        }
    }

    /// Stores one batch (dead-lettering what cannot be stored). Returns the
    /// offsets now in the store, or `None` when shutdown interrupted a retry
    /// (nothing of the batch was stored; it will be read again).
    async fn process(
        &self,
        topic: &str,
        messages: Vec<BorrowedMessage<'_>>,
        shutdown: &CancellationToken,
    ) -> Option<Offsets> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut orders = Vec::with_capacity(messages.len());
        let mut raw = Vec::with_capacity(messages.len());
        let mut poison = Vec::new();
        let mut offsets = Offsets::new();
        // One span per traced record, open until its batch is stored: each
        // order's trace shows its wait in the batch and the store write.
        let mut spans = Vec::new();
        for m in &messages {
            let next = offsets.entry(m.partition()).or_insert(0);
            *next = (*next).max(m.offset() + 1);
            if let Some(ts) = m.timestamp().to_millis() {
                metrics::histogram!("message_delay_seconds")
                    .record((now_ms - ts).max(0) as f64 / 1000.0);
            }
            match Order::from_record(m.payload().unwrap_or_default()) {
                Ok(order) => {
                    if let Some(span) = record_span(m, &order, self.store.engine()) {
                        spans.push(span);
                    }
                    if replay_count(m) > 0 {
                        metrics::counter!("orders_replayed_total").increment(1);
                    }
                    orders.push(StoredOrder {
                        order,
                        partition: m.partition(),
                        offset: m.offset(),
                    });
                    raw.push(m);
                }
                Err(err) => poison.push(Poison {
                    letter: dead_letter(m, &err),
                }),
            }
        }
        metrics::histogram!("consumer_batch_size").record(messages.len() as f64);

        // A poison record's offset may only advance once the DLQ holds it.
        for p in &poison {
            let trace_id = super::header_str(&p.letter.message, "traceparent")
                .and_then(|tp| tp.split('-').nth(1))
                .unwrap_or_default();
            tracing::warn!(partition = p.letter.message.partition(), offset = p.letter.message.offset(), kind = p.letter.kind.as_str(), reason = %p.letter.reason, trace_id, "dead-lettering a record");
            self.retry(shutdown, "writing to the dead-letter topic", || {
                self.dlq.send(&p.letter)
            })
            .await?;
        }

        let batch = Arc::new(Batch::new(topic, orders, offsets.clone()));
        let engine = self.store.engine();
        // Transient errors are retried (the partition does not advance);
        // a permanent refusal comes back as `Err(reason)`.
        let outcome = self
            .retry(shutdown, "store unavailable", || {
                let batch = batch.clone();
                async move {
                    let started = Instant::now();
                    let outcome = self.store.apply(batch).await;
                    metrics::histogram!("store_write_seconds", "engine" => engine)
                        .record(started.elapsed().as_secs_f64());
                    match outcome {
                        Ok(applied) => Ok(Ok(applied)),
                        Err(StoreError::Permanent(reason)) => Ok(Err(reason)),
                        Err(transient) => Err(transient),
                    }
                }
            })
            .await?;
        self.status.set(ConsumerState::Running);
        match outcome {
            Ok(applied) => {
                metrics::counter!("orders_stored_total", "engine" => engine)
                    .increment(applied.inserted as u64);
                metrics::counter!("orders_duplicate_total", "engine" => engine)
                    .increment(applied.duplicates as u64);
                Some(offsets)
            }
            Err(reason) => {
                tracing::error!(%reason, "store refused the batch; storing its rows one by one");
                self.apply_one_by_one(topic, &batch, &raw, shutdown)
                    .await
                    .then_some(offsets)
            }
        }
    }

    /// The slow path after a batch was refused: each row alone, the refused
    /// ones to the DLQ, then the offsets. Every step is idempotent, so a crash
    /// in between only repeats work.
    async fn apply_one_by_one(
        &self,
        topic: &str,
        batch: &Batch,
        raw: &[&BorrowedMessage<'_>],
        shutdown: &CancellationToken,
    ) -> bool {
        for (row, message) in batch.orders.iter().zip(raw) {
            let single = Arc::new(Batch::new(topic, vec![row.clone()], Offsets::new()));
            let refused = self
                .retry(shutdown, "storing a row", || {
                    let single = single.clone();
                    async move {
                        match self.store.apply(single).await {
                            Ok(_) => Ok(None),
                            Err(StoreError::Permanent(reason)) => Ok(Some(reason)),
                            Err(e @ StoreError::Transient(_)) => Err(e),
                        }
                    }
                })
                .await;
            match refused {
                None => return false,
                Some(None) => {}
                Some(Some(reason)) => {
                    let letter = DeadLetter {
                        message: message.detach(),
                        kind: ErrorKind::Store,
                        reason,
                    };
                    if self
                        .retry(shutdown, "writing to the dead-letter topic", || {
                            self.dlq.send(&letter)
                        })
                        .await
                        .is_none()
                    {
                        return false;
                    }
                }
            }
        }
        let offsets_only = Arc::new(Batch::new(topic, Vec::new(), batch.offsets.clone()));
        self.retry(shutdown, "storing offsets", || {
            self.store.apply(offsets_only.clone())
        })
        .await
        .is_some()
    }

    /// Commits the stored offsets broker-side, so standard Kafka tools can
    /// show lag too (`consumer_lag` comes from [`watch_lag`]).
    fn report_lag(&self, consumer: &StreamConsumer, topic: &str, offsets: &Offsets) {
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

/// The consumer span of a record whose producer sampled its trace (no
/// span at all for the rest, which keeps an untraced consumer cheap).
fn record_span(message: &BorrowedMessage<'_>, order: &Order, engine: &str) -> Option<Span> {
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
    config
        .set("group.id", &consumer.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.min.bytes", consumer.fetch_min_bytes.to_string())
        .set("fetch.wait.max.ms", consumer.fetch_wait_ms.to_string());
    config
}

fn dead_letter(message: &BorrowedMessage<'_>, err: &RecordError) -> DeadLetter {
    DeadLetter {
        message: message.detach(),
        kind: ErrorKind::from(err),
        reason: err.to_string(),
    }
}

/// Publishes `consumer_lag{partition}` — log end minus the offset the
/// consumer last stored — every `every`, until shutdown. It uses the
/// consumer's own record of what it stored, not a store read, so the gauge
/// keeps growing while the store is down.
pub async fn watch_lag(
    broker: BrokerSettings,
    status: ConsumerStatus,
    every: Duration,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let client: Arc<BaseConsumer> = Arc::new(client_config(&broker, "oms-lag").create()?);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let (client, settings) = (client.clone(), broker.clone());
        let ends =
            tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64, i64)>, AdminError> {
                let topic = &settings.topic;
                let mut ends = Vec::new();
                for partition in admin::partitions(client.as_ref(), &settings, topic)? {
                    if let Ok((low, high)) =
                        client.fetch_watermarks(topic, partition, super::METADATA_TIMEOUT)
                    {
                        ends.push((partition, low, high));
                    }
                }
                Ok(ends)
            })
            .await;
        let Ok(Ok(ends)) = ends else {
            continue; // broker unreachable: /readyz says so; try again
        };
        if status.get() == ConsumerState::Starting {
            continue; // nothing known about the store yet
        }
        let stored = status.stored();
        for (partition, low, high) in ends {
            let next = stored.get(&partition).copied().unwrap_or(low);
            metrics::gauge!("consumer_lag", "partition" => partition.to_string())
                .set((high - next).max(0) as f64);
        }
    }
}
