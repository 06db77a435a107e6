//! The order producer: `acks=all`, idempotent, with a bounded wait so a
//! request never hangs on a broker that is down.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

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
    /// The record may still be appended later: clients retry with the same
    /// `client_order_id` to stay exactly-once.
    #[error("the broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// The broker or client refused the record.
    #[error("the broker refused the record: {0}")]
    Refused(KafkaError),
}

/// Cheap to clone; all clones share one librdkafka producer.
#[derive(Clone)]
pub struct OrderProducer {
    inner: Arc<RwLock<FutureProducer>>,
    settings: Arc<BrokerSettings>,
}

impl std::fmt::Debug for OrderProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderProducer")
            .field("topic", &self.settings.topic)
            .finish()
    }
}

fn build(settings: &BrokerSettings) -> Result<FutureProducer, KafkaError> {
    client_config(settings, "oms-producer")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", settings.linger_ms.to_string())
        // librdkafka fails a record this long after it was handed over; the
        // outer deadline in `send` is only a backstop for its 1 s scan period.
        .set(
            "message.timeout.ms",
            settings.produce_timeout_ms.to_string(),
        )
        .set(
            "request.timeout.ms",
            settings.produce_timeout_ms.to_string(),
        )
        .set("compression.type", "lz4")
        .create()
}

impl OrderProducer {
    /// Creates the producer; it connects lazily, so this works with the broker down.
    pub fn new(settings: &BrokerSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            inner: Arc::new(RwLock::new(build(settings)?)),
            settings: Arc::new(settings.clone()),
        })
    }

    fn current(&self) -> FutureProducer {
        match self.inner.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// An idempotent producer whose state the broker lost (fatal error) never
    /// recovers by itself; replace it so the next request can succeed.
    fn replace_if_fatal(&self, producer: &FutureProducer) {
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::warn!(?code, %reason, "producer hit a fatal error; creating a new one");
            match build(&self.settings) {
                Ok(fresh) => match self.inner.write() {
                    Ok(mut guard) => *guard = fresh,
                    Err(poisoned) => *poisoned.into_inner() = fresh,
                },
                Err(e) => tracing::error!(error = %e, "cannot recreate the producer"),
            }
        }
    }

    /// Appends one order to the log and waits for the broker's ack.
    pub async fn send(
        &self,
        order: &Order,
        traceparent: Option<&str>,
    ) -> Result<Delivered, ProduceError> {
        let timeout = Duration::from_millis(self.settings.produce_timeout_ms);
        let started = Instant::now();
        let key = order.symbol();
        let payload = order.to_record();
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
        if let Some(tp) = traceparent {
            headers = headers.insert(Header {
                key: "traceparent",
                value: Some(tp),
            });
        }
        let record = FutureRecord::to(&self.settings.topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        let producer = self.current();
        // Backstop: librdkafka checks message timeouts about once a second,
        // so allow that much on top of message.timeout.ms, never more.
        let deadline = timeout + Duration::from_millis(900);
        let outcome =
            tokio::time::timeout(deadline, producer.send(record, Timeout::After(timeout))).await;
        let result = match outcome {
            Ok(Ok(delivery)) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((err, _))) if is_timeout(&err) => Err(ProduceError::Timeout(timeout)),
            Ok(Err((err, _))) => Err(ProduceError::Refused(err)),
            Err(_) => Err(ProduceError::Timeout(timeout)),
        };
        metrics::histogram!("produce_latency_seconds").record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => metrics::counter!("messages_produced_total").increment(1),
            Err(e) => {
                let kind = match e {
                    ProduceError::Timeout(_) => "timeout",
                    ProduceError::Refused(_) => "refused",
                };
                metrics::counter!("produce_errors_total", "kind" => kind).increment(1);
                self.replace_if_fatal(&producer);
            }
        }
        result
    }

    /// Waits for every queued record to be acknowledged (on shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().flush(Timeout::After(timeout))
    }

    /// Asks the broker for the topic's metadata: is the log reachable?
    pub async fn probe(&self) -> Result<(), KafkaError> {
        let producer = self.current();
        let topic = self.settings.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), super::METADATA_TIMEOUT)
                .map(drop)
        })
        .await
        .unwrap_or_else(|e| {
            Err(KafkaError::Canceled)
                .inspect_err(|_| tracing::error!(error = %e, "probe task failed"))
        })
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
