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

/// The headers of `message` that are not oms' own (traceparent, content-type...),
/// to carry over into a dead letter or a replay.
fn foreign_headers(message: &impl Message) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for h in original.iter().filter(|h| !h.key.starts_with("oms-")) {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    headers
}

/// Writes dead letters with `acks=all`; an ack means the record is safe.
#[derive(Clone, Debug)]
pub struct DeadLetterWriter {
    producer: LogProducer,
    topic: String,
}

/// The replay count a record carries (0 when it was never replayed).
pub fn replay_count(message: &impl Message) -> u32 {
    super::header_str(message, REPLAY_COUNT_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl DeadLetterWriter {
    pub fn new(settings: &BrokerSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: LogProducer::new(settings, "oms-dlq")?,
            topic: settings.dlq_topic.clone(),
        })
    }

    /// Appends one dead letter and waits for the broker's ack (callers
    /// that must stay interruptible race it against their shutdown).
    pub async fn send(&self, letter: &DeadLetter) -> Result<(), ProduceError> {
        let m = &letter.message;
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let failed_at = Utc::now().to_rfc3339();
        let replays = replay_count(m).to_string();
        // Keep the original headers (traceparent, content-type), then ours.
        let mut headers = foreign_headers(m);
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
        // One copy, however long the broker takes: a deadline and a resend
        // would leave the first copy queued and write the letter twice.
        self.producer.deliver(record).await?;
        metrics::counter!("dlq_messages_total", "reason" => letter.kind.as_str()).increment(1);
        Ok(())
    }
}

/// One record of the dead-letter topic, as `oms dlq list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DlqEntry {
    /// Offset in the dead-letter topic (what `oms dlq replay --offset` takes).
    pub dlq_offset: i64,
    pub key: Option<String>,
    pub origin_topic: Option<String>,
    pub origin_partition: Option<i32>,
    pub origin_offset: Option<i64>,
    pub kind: Option<String>,
    pub error: Option<String>,
    pub failed_at: Option<String>,
    pub replays: u32,
    /// The original value, lossily decoded for display.
    pub value: String,
    #[serde(skip)]
    message: Option<OwnedMessage>,
}

fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    super::header_str(message, key).map(str::to_owned)
}

impl DlqEntry {
    fn from_message(message: OwnedMessage) -> Self {
        Self {
            dlq_offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            origin_topic: header(&message, "oms-origin-topic"),
            origin_partition: header(&message, "oms-origin-partition").and_then(|v| v.parse().ok()),
            origin_offset: header(&message, "oms-origin-offset").and_then(|v| v.parse().ok()),
            kind: header(&message, "oms-error-kind"),
            error: header(&message, "oms-error"),
            failed_at: header(&message, "oms-failed-at"),
            replays: replay_count(&message),
            value: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            message: Some(message),
        }
    }
}

/// Group under which `oms dlq replay --all` remembers how far it replayed.
pub const REPLAY_GROUP: &str = "oms-dlq-replay";

fn dlq_consumer(
    settings: &BrokerSettings,
    group: &str,
) -> Result<rdkafka::consumer::BaseConsumer, KafkaError> {
    super::client_config(settings, "oms-dlq-reader")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .create()
}

/// Reads the dead-letter topic up to its current end, from the beginning or
/// (`from_committed`) from where `group` last committed.
fn read_dlq(
    settings: &BrokerSettings,
    group: &str,
    from_committed: bool,
) -> Result<Vec<DlqEntry>, KafkaError> {
    use rdkafka::consumer::Consumer;
    use std::time::{Duration, Instant};
    let timeout = Duration::from_secs(10);
    let consumer = dlq_consumer(settings, group)?;
    let (low, high) = consumer.fetch_watermarks(&settings.dlq_topic, 0, timeout)?;
    let mut start = low;
    if from_committed {
        let mut wanted = rdkafka::TopicPartitionList::new();
        wanted.add_partition(&settings.dlq_topic, 0);
        let committed = consumer.committed_offsets(wanted, timeout)?;
        if let Some(rdkafka::Offset::Offset(at)) = committed.elements().first().map(|e| e.offset())
        {
            start = start.max(at);
        }
    }
    let mut entries = Vec::new();
    if start >= high {
        return Ok(entries);
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(&settings.dlq_topic, 0, rdkafka::Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while entries
        .last()
        .is_none_or(|e: &DlqEntry| e.dlq_offset + 1 < high)
    {
        if Instant::now() > deadline {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => entries.push(DlqEntry::from_message(m.detach())),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(entries)
}

/// What is in the dead-letter topic (oldest first), at most `limit` entries.
pub fn list(settings: &BrokerSettings, limit: usize) -> Result<Vec<DlqEntry>, KafkaError> {
    let mut entries = read_dlq(settings, "oms-dlq-list", false)?;
    entries.truncate(limit);
    Ok(entries)
}

/// Which dead letters to re-drive.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every record not replayed yet by `--all` (tracked in [`REPLAY_GROUP`]).
    AllPending,
    /// These DLQ offsets, whether replayed before or not.
    Offsets(Vec<i64>),
}

/// What happened to one selected dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    Replayed {
        to_partition: i32,
        to_offset: i64,
    },
    WouldReplay,
    /// Replayed `max` times already; it stays in the DLQ for a human to look at.
    OverLimit {
        max: u32,
    },
}

/// Re-produces the selected dead letters to the orders topic, unchanged but
/// for an incremented `oms-replay-count`. `progress` is called after each one.
pub async fn replay(
    settings: &BrokerSettings,
    selection: Selection,
    max_replays: u32,
    dry_run: bool,
    mut progress: impl FnMut(&DlqEntry, &ReplayOutcome, usize, usize),
) -> Result<Vec<(DlqEntry, ReplayOutcome)>, ReplayError> {
    use rdkafka::consumer::Consumer;
    let (entries, commit_group) = {
        let settings = settings.clone();
        let selection = selection.clone();
        tokio::task::spawn_blocking(move || -> Result<_, KafkaError> {
            Ok(match selection {
                Selection::AllPending => (read_dlq(&settings, REPLAY_GROUP, true)?, true),
                Selection::Offsets(offsets) => {
                    let mut all = read_dlq(&settings, "oms-dlq-list", false)?;
                    all.retain(|e| offsets.contains(&e.dlq_offset));
                    (all, false)
                }
            })
        })
        .await
        .map_err(|e| ReplayError::Read(KafkaError::Subscription(e.to_string())))?
        .map_err(ReplayError::Read)?
    };
    if let Selection::Offsets(wanted) = &selection {
        if let Some(missing) = wanted
            .iter()
            .find(|o| !entries.iter().any(|e| e.dlq_offset == **o))
        {
            return Err(ReplayError::NoSuchOffset(*missing));
        }
    }
    let producer = LogProducer::new(settings, "oms-dlq-replay")?;
    let total = entries.len();
    let mut results = Vec::with_capacity(total);
    for (done, entry) in entries.into_iter().enumerate() {
        let outcome = if entry.replays >= max_replays {
            ReplayOutcome::OverLimit { max: max_replays }
        } else if dry_run {
            ReplayOutcome::WouldReplay
        } else {
            let message = entry
                .message
                .as_ref()
                .ok_or(ReplayError::Read(KafkaError::Canceled))?;
            let count = (entry.replays + 1).to_string();
            let mut headers = foreign_headers(message);
            headers = headers.insert(Header {
                key: REPLAY_COUNT_HEADER,
                value: Some(count.as_str()),
            });
            let mut record = FutureRecord::<[u8], [u8]>::to(&settings.topic).headers(headers);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            let delivered = producer.send(record).await?;
            ReplayOutcome::Replayed {
                to_partition: delivered.partition,
                to_offset: delivered.offset,
            }
        };
        progress(&entry, &outcome, done + 1, total);
        results.push((entry, outcome));
    }
    if commit_group && !dry_run {
        if let Some(last) = results.last().map(|(e, _)| e.dlq_offset) {
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
                let consumer = dlq_consumer(&settings, REPLAY_GROUP)?;
                let mut list = rdkafka::TopicPartitionList::new();
                list.add_partition_offset(
                    &settings.dlq_topic,
                    0,
                    rdkafka::Offset::Offset(last + 1),
                )?;
                consumer.commit(&list, rdkafka::consumer::CommitMode::Sync)
            })
            .await
            .map_err(|e| ReplayError::Read(KafkaError::Subscription(e.to_string())))?
            .map_err(ReplayError::Read)?;
        }
    }
    Ok(results)
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read the dead-letter topic: {0}")]
    Read(KafkaError),
    #[error("no record at offset {0} of the dead-letter topic")]
    NoSuchOffset(i64),
    #[error("cannot create the producer: {0}")]
    Client(#[from] KafkaError),
    #[error("re-producing to the orders topic failed (records before it were replayed): {0}")]
    Produce(#[from] ProduceError),
}
