//! Producing to the log: `acks=all`, idempotent, with a bounded wait so a
//! request never hangs on a broker that is down.
//!
//! [`LogProducer`] is the reliable core shared by the order producer and the
//! dead-letter writer; [`OrderProducer`] turns orders into records.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tracing::Instrument;

use super::client_config;
use crate::config::BrokerSettings;
use crate::order::Order;

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
    /// The record may still be appended: clients retry with the same
    /// `client_order_id` to stay exactly-once.
    #[error("the broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// The broker or client refused the record.
    #[error("the broker refused the record: {0}")]
    Refused(KafkaError),
}

impl ProduceError {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProduceError::Timeout(_) => "timeout",
            ProduceError::Refused(_) => "refused",
        }
    }
}

/// An idempotent `acks=all` producer that answers within its timeout and
/// replaces itself after a failure. Cheap to clone.
#[derive(Clone)]
pub struct LogProducer {
    current: Arc<RwLock<Arc<FutureProducer>>>,
    config: ClientConfig,
    timeout: Duration,
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
        .set(
            "message.timeout.ms",
            settings.produce_timeout_ms.to_string(),
        )
        .set(
            "request.timeout.ms",
            settings.produce_timeout_ms.to_string(),
        )
        .set("compression.type", "lz4");
    config
}

impl LogProducer {
    /// Creates the producer; it connects lazily, so this works with the broker down.
    pub fn new(settings: &BrokerSettings, client_id: &str) -> Result<Self, KafkaError> {
        let config = producer_config(settings, client_id);
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(config.create()?))),
            config,
            timeout: Duration::from_millis(settings.produce_timeout_ms),
        })
    }

    fn current(&self) -> Arc<FutureProducer> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces `failed` with a fresh producer (a new producer id), unless
    /// another request already did.
    ///
    /// Why: after a timed-out send, librdkafka bumps the idempotent
    /// producer's epoch when the broker returns; tansu 0.6's sqlite engine
    /// panics on that bump and then refuses every produce. A fresh producer
    /// asks for a new producer id instead. The old one lives on until the
    /// requests still holding it finish, then it is destroyed.
    fn replace(&self, failed: &Arc<FutureProducer>, why: &ProduceError) {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !Arc::ptr_eq(&guard, failed) {
            return;
        }
        match self.config.create() {
            Ok(fresh) => {
                tracing::warn!(error = %why, "send failed; replaced the producer with a fresh one");
                metrics::counter!("producer_restarts_total").increment(1);
                *guard = Arc::new(fresh);
            }
            Err(e) => tracing::error!(error = %e, "cannot recreate the producer"),
        }
    }

    /// Sends one record and waits for the broker's ack, at most the timeout.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
    ) -> Result<Delivered, ProduceError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let producer = self.current();
        // message.timeout.ms fails the record inside librdkafka, but only at
        // its next timeout scan (up to a second later): the outer deadline
        // keeps the promise to answer within the timeout.
        let outcome = tokio::time::timeout(
            self.timeout,
            producer.send(record, Timeout::After(self.timeout)),
        )
        .await;
        let result = match outcome {
            Ok(Ok(delivery)) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((err, _))) if is_timeout(&err) => Err(ProduceError::Timeout(self.timeout)),
            Ok(Err((err, _))) => Err(ProduceError::Refused(err)),
            Err(_) => Err(ProduceError::Timeout(self.timeout)),
        };
        if let Err(err) = &result {
            self.replace(&producer, err);
        }
        result
    }

    /// Waits for every queued record to be acknowledged (on shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().flush(Timeout::After(timeout))
    }

    /// Asks the broker for `topic`'s metadata: is the log reachable?
    pub async fn probe(&self, topic: &str) -> Result<(), KafkaError> {
        let producer = self.current();
        let topic = topic.to_owned();
        // fetch_metadata blocks; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), super::METADATA_TIMEOUT)
                .map(drop)
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }
}

fn is_timeout(err: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::*;
    matches!(
        err.rdkafka_error_code(),
        Some(
            MessageTimedOut | RequestTimedOut | QueueFull | AllBrokersDown | BrokerTransportFailure
        )
    )
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

    /// Appends one order and waits for the broker's ack. The send is a
    /// producer span of the current trace, and its context travels in the
    /// record's `traceparent` header so the consumer continues the trace.
    pub async fn send(&self, order: &Order) -> Result<Delivered, ProduceError> {
        let span = tracing::info_span!(
            "orders publish",
            otel.name = %format_args!("{} publish", self.topic),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.destination.name = %self.topic,
            order_id = %order.id,
        );
        let started = Instant::now();
        let key = order.symbol();
        let payload = order.to_record();
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
        if let Some(tp) = crate::telemetry::traceparent(&span) {
            headers = headers.insert(Header {
                key: "traceparent",
                value: Some(&tp),
            });
        }
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        let result = self.log.send(record).instrument(span).await;
        metrics::histogram!("produce_latency_seconds").record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => metrics::counter!("messages_produced_total").increment(1),
            Err(e) => metrics::counter!("produce_errors_total", "kind" => e.kind()).increment(1),
        }
        result
    }

    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.log.flush(timeout)
    }

    /// Is the orders topic reachable?
    pub async fn probe(&self) -> Result<(), KafkaError> {
        self.log.probe(&self.topic).await
    }
}
