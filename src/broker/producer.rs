//! Producing to the log: `acks=all`, idempotent, with a bounded wait so a
//! request never hangs on a broker that is down.
//!
//! [`LogProducer`] is the reliable core shared by the order producer and the
//! dead-letter writer; [`OrderProducer`] turns orders into records.
//!
//! # Why a record never times out inside librdkafka
//!
//! An idempotent producer numbers its records per partition. When librdkafka
//! gives up on a record (`message.timeout.ms`), the numbering has a gap, so
//! it drains the partitions and **bumps the producer's epoch locally**
//! (`rd_kafka_idemp_drain_epoch_bump`, "N message(s) timed out"); the next
//! batch carries an epoch the broker never handed out. tansu 0.6's sqlite
//! engine looks that epoch up with a query that must return one row
//! (`producer_select_for_update.sql`), finds none and panics
//! (`idempotent_message_check`, "more or less than one row"); its storage
//! task is gone and every later request fails until it is restarted.
//! Replacing the producer after a timeout did not help: the old producer's
//! queued records still timed out and the bump still happened.
//!
//! So oms never lets librdkafka time a record out (`message.timeout.ms = 0`,
//! infinite) and keeps one producer for the life of the process. The HTTP
//! deadline is oms' own: at `produce_timeout_ms` the request is answered
//! `503` while the record stays queued and lands when the broker answers —
//! which the 503 already says may happen (clients retry with the same
//! `client_order_id`, and the order id absorbs the second copy). The queue
//! is bounded (`QUEUE_MAX_MESSAGES`, `QUEUE_MAX_KBYTES`): when a long outage
//! fills it, requests are answered `503` at once instead of piling up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tracing::Instrument;

use super::client_config;
use crate::config::BrokerSettings;
use crate::domain::{Cancel, Order};

/// Most records librdkafka holds waiting for the broker (its default).
const QUEUE_MAX_MESSAGES: u32 = 100_000;
/// Most bytes it holds: 64 MiB instead of librdkafka's 1 GiB, so a long
/// outage costs bounded memory and then answers `503` at once.
const QUEUE_MAX_KBYTES: u32 = 64 * 1024;

/// Where the broker put an acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The broker did not acknowledge in time (down, unreachable, overloaded).
    /// The record stays queued and may still be appended: clients retry
    /// with the same `client_order_id` to stay exactly-once.
    #[error("the broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// The producer's queue is full (a long outage): nothing was queued.
    #[error(
        "the producer queue is full ({QUEUE_MAX_MESSAGES} records or {QUEUE_MAX_KBYTES} KiB waiting for the broker)"
    )]
    QueueFull,
    /// The broker or client refused the record.
    #[error("the broker refused the record")]
    Refused(#[source] KafkaError),
}

impl ProduceError {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProduceError::Timeout(_) => "timeout",
            ProduceError::QueueFull => "queue_full",
            ProduceError::Refused(_) => "refused",
        }
    }
}

/// Why the broker's metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the broker did not answer a metadata request")]
    Metadata(#[source] KafkaError),
    #[error("the metadata request's worker thread failed (a bug; please report it)")]
    Task(#[source] tokio::task::JoinError),
}

/// What one producer has seen lately: when the broker last acknowledged a
/// record, when a request last gave up waiting, and how far each partition
/// of the topic is known to reach. Shared with `/readyz` and the lag watcher.
#[derive(Debug)]
pub struct ProduceEvidence {
    origin: Instant,
    /// Milliseconds since `origin` (+1, so 0 means never).
    last_ack: AtomicU64,
    last_timeout: AtomicU64,
    /// Next offset after the highest acknowledged record, per partition.
    acked_ends: Mutex<BTreeMap<i32, i64>>,
}

impl Default for ProduceEvidence {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_ack: AtomicU64::new(0),
            last_timeout: AtomicU64::new(0),
            acked_ends: Mutex::new(BTreeMap::new()),
        }
    }
}

impl ProduceEvidence {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    fn acked(&self, delivered: Delivered) {
        self.last_ack.fetch_max(self.now(), Ordering::Relaxed);
        let mut ends = self.acked_ends.lock().unwrap_or_else(|p| p.into_inner());
        let end = ends.entry(delivered.partition).or_insert(0);
        *end = (*end).max(delivered.offset + 1);
    }

    fn timed_out(&self) {
        self.last_timeout.fetch_max(self.now(), Ordering::Relaxed);
    }

    /// Has a request given up since the broker last acknowledged anything?
    fn waiting_since_timeout(&self) -> Option<Duration> {
        let (ack, timeout) = (
            self.last_ack.load(Ordering::Relaxed),
            self.last_timeout.load(Ordering::Relaxed),
        );
        (timeout > ack).then(|| Duration::from_millis(self.now().saturating_sub(ack.max(1))))
    }

    /// Next offset after the highest record this producer got acknowledged,
    /// per partition: a lower bound of the log end that no broker
    /// watermark can under-report.
    pub fn acked_ends(&self) -> BTreeMap<i32, i64> {
        self.acked_ends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// An idempotent `acks=all` producer that answers within its timeout.
/// One per process and purpose, never replaced (see the module docs).
/// Cheap to clone.
#[derive(Clone)]
pub struct LogProducer {
    producer: Arc<FutureProducer>,
    timeout: Duration,
    evidence: Arc<ProduceEvidence>,
}

impl std::fmt::Debug for LogProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogProducer")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The librdkafka settings of every oms producer (the benchmark's raw
/// producer uses them too, so its numbers compare like with like).
pub fn producer_config(settings: &BrokerSettings, client_id: &str) -> ClientConfig {
    let mut config = client_config(settings, client_id);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", settings.linger_ms.to_string())
        // Never time a record out inside librdkafka: that bumps the
        // idempotent epoch (module docs). oms' own deadline answers HTTP.
        .set("message.timeout.ms", "0")
        .set(
            "queue.buffering.max.messages",
            QUEUE_MAX_MESSAGES.to_string(),
        )
        .set("queue.buffering.max.kbytes", QUEUE_MAX_KBYTES.to_string())
        .set("compression.type", &settings.compression);
    config
}

impl LogProducer {
    /// Creates the producer; it connects lazily, so this works with the broker down.
    pub fn new(settings: &BrokerSettings, client_id: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: Arc::new(producer_config(settings, client_id).create()?),
            timeout: Duration::from_millis(settings.produce_timeout_ms),
            evidence: Arc::default(),
        })
    }

    /// What this producer has seen of the broker.
    pub fn evidence(&self) -> &Arc<ProduceEvidence> {
        &self.evidence
    }

    fn enqueue<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<DeliveryFuture, ProduceError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.producer.send_result(record).map_err(|(err, _)| {
            use rdkafka::types::RDKafkaErrorCode;
            if err.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                ProduceError::QueueFull
            } else {
                ProduceError::Refused(err)
            }
        })
    }

    fn settle(
        &self,
        outcome: Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
    ) -> Result<Delivered, ProduceError> {
        match outcome {
            Ok(Ok(delivery)) => {
                let delivered = Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                };
                self.evidence.acked(delivered);
                Ok(delivered)
            }
            Ok(Err((err, _))) => Err(ProduceError::Refused(err)),
            // The producer was dropped with the record in its queue.
            Err(_) => Err(ProduceError::Refused(KafkaError::Canceled)),
        }
    }

    /// Sends one record and waits for the broker's ack, at most the timeout.
    /// On [`ProduceError::Timeout`] the record stays queued; a task keeps
    /// waiting for its ack so the evidence stays true.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
    ) -> Result<Delivered, ProduceError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let mut delivery = self.enqueue(record)?;
        match tokio::time::timeout(self.timeout, &mut delivery).await {
            Ok(outcome) => self.settle(outcome),
            Err(_) => {
                self.evidence.timed_out();
                let this = self.clone();
                tokio::spawn(async move {
                    if this.settle(delivery.await).is_ok() {
                        metrics::counter!("produce_late_acks_total").increment(1);
                    }
                });
                Err(ProduceError::Timeout(self.timeout))
            }
        }
    }

    /// Sends one record and waits for the broker's ack however long that
    /// takes (the dead-letter writer: one copy, never a second).
    pub async fn deliver<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
    ) -> Result<Delivered, ProduceError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let delivery = self.enqueue(record)?;
        self.settle(delivery.await)
    }

    /// Why producing is not working right now, if it is not: records wait
    /// in the queue and none was acknowledged since a request gave up.
    pub fn stalled(&self) -> Option<String> {
        let waiting = self.producer.in_flight_count();
        let since = self.evidence.waiting_since_timeout()?;
        (waiting > 0).then(|| {
            format!(
                "{waiting} record(s) wait for the broker's ack; none acknowledged for {:.1} s",
                since.as_secs_f64()
            )
        })
    }

    /// Waits for every queued record to be acknowledged (on shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(timeout))
    }

    /// Asks the broker for `topic`'s metadata: is the log reachable?
    pub async fn probe(&self, topic: &str) -> Result<(), ProbeError> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        // fetch_metadata blocks; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), super::METADATA_TIMEOUT)
                .map(drop)
        })
        .await
        .map_err(ProbeError::Task)?
        .map_err(ProbeError::Metadata)
    }
}

/// Appends orders to the orders topic (key `SRC-DST`, JSON value).
#[derive(Clone, Debug)]
pub struct OrderProducer {
    log: LogProducer,
    topic: String,
}

impl OrderProducer {
    pub fn new(settings: &BrokerSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            log: LogProducer::new(settings, "oms-producer")?,
            topic: settings.topic.clone(),
        })
    }

    /// Appends one order and waits for the broker's ack. When spans are
    /// exported the send is a producer span of the current trace, and when
    /// that trace is sampled its context travels in the record's
    /// `traceparent` header so the consumer continues it. Records carry no
    /// other header.
    pub async fn send(&self, order: &Order) -> Result<Delivered, ProduceError> {
        let started = Instant::now();
        let key = order.symbol();
        let payload = order.to_record();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        let result = if crate::telemetry::spans_enabled() {
            let span = tracing::info_span!(
                "orders publish",
                otel.name = %format_args!("{} publish", self.topic),
                otel.kind = "producer",
                messaging.system = "kafka",
                messaging.destination.name = %self.topic,
                order_id = %order.id,
            );
            let traceparent = crate::telemetry::traceparent(&span);
            let record = match &traceparent {
                Some(tp) => record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: crate::telemetry::TRACEPARENT,
                    value: Some(tp),
                })),
                None => record,
            };
            self.log.send(record).instrument(span).await
        } else {
            self.log.send(record).await
        };
        metrics::histogram!("produce_latency_seconds").record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => metrics::counter!("messages_produced_total").increment(1),
            Err(e) => metrics::counter!("produce_errors_total", "kind" => e.kind()).increment(1),
        }
        result
    }

    /// Appends a cancel to the order's partition (same key) and waits for
    /// the broker's ack.
    pub async fn cancel(&self, cancel: &Cancel) -> Result<Delivered, ProduceError> {
        let payload = cancel.to_record();
        let record = FutureRecord::to(&self.topic)
            .key(cancel.symbol.as_str())
            .payload(&payload);
        let result = self.log.send(record).await;
        match &result {
            Ok(_) => metrics::counter!("cancels_produced_total").increment(1),
            Err(e) => metrics::counter!("produce_errors_total", "kind" => e.kind()).increment(1),
        }
        result
    }

    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.log.flush(timeout)
    }

    /// Is the orders topic reachable?
    pub async fn probe(&self) -> Result<(), ProbeError> {
        self.log.probe(&self.topic).await
    }

    /// Why producing does not work right now, if it does not.
    pub fn stalled(&self) -> Option<String> {
        self.log.stalled()
    }

    /// What this producer has seen of the orders topic.
    pub fn evidence(&self) -> Arc<ProduceEvidence> {
        self.log.evidence().clone()
    }
}
