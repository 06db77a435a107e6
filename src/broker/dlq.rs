//! The dead-letter writer: records the consumer cannot store go to
//! `orders.dlq` unchanged (key and bytes), with headers saying where they came
//! from and why they failed.

use chrono::Utc;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;

use super::producer::{LogProducer, ProduceError};
use crate::config::BrokerSettings;
use crate::order::RecordError;

/// Header carrying how many times a record was re-driven from the DLQ.
pub const REPLAY_COUNT_HEADER: &str = "oms-replay-count";

/// Why a record is dead-lettered (`oms-error-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Decode,
    Validate,
    Store,
}

impl From<&RecordError> for ErrorKind {
    fn from(err: &RecordError) -> Self {
        match err {
            RecordError::Decode(_) | RecordError::Version { .. } => ErrorKind::Decode,
            RecordError::Invalid(_) => ErrorKind::Validate,
        }
    }
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Decode => "decode",
            ErrorKind::Validate => "validate",
            ErrorKind::Store => "store",
        }
    }
}

/// A record on its way to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: OwnedMessage,
    pub kind: ErrorKind,
    pub reason: String,
}

/// Writes dead letters with `acks=all`; an ack means the record is safe.
#[derive(Clone, Debug)]
pub struct DeadLetterWriter {
    producer: LogProducer,
    topic: String,
}

/// The replay count a record carries (0 when it was never replayed).
pub fn replay_count(message: &impl Message) -> u32 {
    message
        .headers()
        .and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == REPLAY_COUNT_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

impl DeadLetterWriter {
    pub fn new(settings: &BrokerSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: LogProducer::new(settings, "oms-dlq")?,
            topic: settings.dlq_topic.clone(),
        })
    }

    /// Appends one dead letter and waits for the broker's ack.
    pub async fn send(&self, letter: &DeadLetter) -> Result<(), ProduceError> {
        let m = &letter.message;
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let failed_at = Utc::now().to_rfc3339();
        let replays = replay_count(m).to_string();
        let mut headers = OwnedHeaders::new();
        // Keep the original headers (traceparent, content-type), then ours.
        if let Some(original) = m.headers() {
            for h in original.iter().filter(|h| !h.key.starts_with("oms-")) {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        for (key, value) in [
            ("oms-origin-topic", m.topic()),
            ("oms-origin-partition", partition.as_str()),
            ("oms-origin-offset", offset.as_str()),
            ("oms-error-kind", letter.kind.as_str()),
            ("oms-error", letter.reason.as_str()),
            ("oms-failed-at", failed_at.as_str()),
            (REPLAY_COUNT_HEADER, replays.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        if let Some(payload) = m.payload() {
            record = record.payload(payload);
        }
        self.producer.send(record).await?;
        metrics::counter!("dlq_messages_total", "reason" => letter.kind.as_str()).increment(1);
        Ok(())
    }
}
