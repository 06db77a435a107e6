//! The dead-letter writer: records the consumer cannot store go to
//! `orders.dlq` unchanged (key and bytes), with headers saying where they came
//! from and why they failed.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use super::producer::{LogProducer, ProduceError};
use crate::config::BrokerSettings;
use crate::domain::RecordError;

/// Header carrying how many times a record was re-driven from the DLQ.
/// The headers a dead letter carries, each named once: where it came
/// from, why, when, and how often it was replayed. Every one starts with
/// [`OWN_HEADER_PREFIX`], so a replay can tell them from the record's own.
pub mod headers {
    pub const ORIGIN_TOPIC: &str = "oms-origin-topic";
    pub const ORIGIN_PARTITION: &str = "oms-origin-partition";
    pub const ORIGIN_OFFSET: &str = "oms-origin-offset";
    pub const ERROR_KIND: &str = "oms-error-kind";
    pub const ERROR: &str = "oms-error";
    pub const FAILED_AT: &str = "oms-failed-at";
    pub const REPLAY_COUNT: &str = "oms-replay-count";
    pub const OWN_HEADER_PREFIX: &str = "oms-";
}

pub use headers::REPLAY_COUNT as REPLAY_COUNT_HEADER;

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
            RecordError::Decode(_) | RecordError::Event(_) | RecordError::Version { .. } => {
                ErrorKind::Decode
            }
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
        for h in original
            .iter()
            .filter(|h| !h.key.starts_with(headers::OWN_HEADER_PREFIX))
        {
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

    /// The producer it writes with (shared with the consumer's other output).
    pub fn producer(&self) -> &LogProducer {
        &self.producer
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
            (headers::ORIGIN_TOPIC, m.topic()),
            (headers::ORIGIN_PARTITION, partition.as_str()),
            (headers::ORIGIN_OFFSET, offset.as_str()),
            (headers::ERROR_KIND, letter.kind.as_str()),
            (headers::ERROR, letter.reason.as_str()),
            (headers::FAILED_AT, failed_at.as_str()),
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

/// Where a record sits in the dead-letter topic, written `PARTITION:OFFSET`.
/// A bare `OFFSET` is accepted for a topic of one partition (what `oms`
/// itself creates), and means partition 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct DlqPosition {
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for DlqPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

/// A position as the operator typed it: the partition may be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DlqAddress {
    pub partition: Option<i32>,
    pub offset: i64,
}

impl std::str::FromStr for DlqAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not PARTITION:OFFSET (e.g. 0:42) or OFFSET");
        match s.split_once(':') {
            Some((p, o)) => Ok(Self {
                partition: Some(p.parse().map_err(|_| bad())?),
                offset: o.parse().map_err(|_| bad())?,
            }),
            None => Ok(Self {
                partition: None,
                offset: s.parse().map_err(|_| bad())?,
            }),
        }
    }
}

/// One record of the dead-letter topic, as `oms dlq list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DlqEntry {
    /// Where it is in the dead-letter topic (what `oms dlq replay --at` takes).
    pub at: DlqPosition,
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
    message: OwnedMessage,
}

fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    super::header_str(message, key).map(str::to_owned)
}

impl DlqEntry {
    fn from_message(message: OwnedMessage) -> Self {
        Self {
            at: DlqPosition {
                partition: message.partition(),
                offset: message.offset(),
            },
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            origin_topic: header(&message, headers::ORIGIN_TOPIC),
            origin_partition: header(&message, headers::ORIGIN_PARTITION)
                .and_then(|v| v.parse().ok()),
            origin_offset: header(&message, headers::ORIGIN_OFFSET).and_then(|v| v.parse().ok()),
            kind: header(&message, headers::ERROR_KIND),
            error: header(&message, headers::ERROR),
            failed_at: header(&message, headers::FAILED_AT),
            replays: replay_count(&message),
            value: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            message,
        }
    }
}

/// Group under which `oms dlq replay --all` remembers how far it replayed.
pub const REPLAY_GROUP: &str = "oms-dlq-replay";

/// How long one broker request of the DLQ tools may take.
const DLQ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next record of a range the watermarks say exists.
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the dead-letter topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("cannot read {what}")]
    Broker {
        /// The topic and the broker.
        what: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error(
        "the dead-letter topic {0} does not exist: nothing was ever dead-lettered, or run `oms migrate`"
    )]
    NoTopic(String),
    #[error("no record at {0} of the dead-letter topic (see `oms dlq list`)")]
    NoSuchRecord(String),
    #[error(
        "the dead-letter topic {topic} has {partitions} partitions: give the record as PARTITION:OFFSET"
    )]
    AmbiguousOffset { topic: String, partitions: usize },
    #[error("the broker stopped serving {at} (the partition ends at {end})")]
    Stalled { at: String, end: i64 },
    #[error("the DLQ tool's worker thread failed (a bug; please report it)")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads the dead-letter topic one partition at a time, one record at a
/// time: memory stays bounded however large the topic is.
struct DlqReader {
    consumer: BaseConsumer,
    settings: BrokerSettings,
}

impl DlqReader {
    fn new(settings: &BrokerSettings, group: &str) -> Result<Self, DlqError> {
        let consumer = super::client_config(settings, "oms-dlq-reader")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|source| Self::broker_error(settings, source))?;
        Ok(Self {
            consumer,
            settings: settings.clone(),
        })
    }

    fn broker_error(settings: &BrokerSettings, source: KafkaError) -> DlqError {
        DlqError::Broker {
            what: format!("{} at {}", settings.dlq_topic, settings.bootstrap),
            source: Box::new(source),
        }
    }

    fn fail(&self, source: KafkaError) -> DlqError {
        Self::broker_error(&self.settings, source)
    }

    fn dlq_topic(&self) -> &str {
        &self.settings.dlq_topic
    }

    /// The topic's partitions, in order.
    fn partitions(&self) -> Result<Vec<i32>, DlqError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(self.dlq_topic()), DLQ_TIMEOUT)
            .map_err(|e| self.fail(e))?;
        let mut partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.dlq_topic() && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(DlqError::NoTopic(self.dlq_topic().to_owned()));
        }
        partitions.sort_unstable();
        Ok(partitions)
    }

    /// `[low, high)` of one partition.
    fn range(&self, partition: i32) -> Result<(i64, i64), DlqError> {
        self.consumer
            .fetch_watermarks(self.dlq_topic(), partition, DLQ_TIMEOUT)
            .map_err(|e| self.fail(e))
    }

    /// Where `group` stopped in each partition (absent: never committed).
    fn committed(&self, partitions: &[i32]) -> Result<BTreeMap<i32, i64>, DlqError> {
        let mut wanted = TopicPartitionList::new();
        for p in partitions {
            wanted.add_partition(self.dlq_topic(), *p);
        }
        let committed = self
            .consumer
            .committed_offsets(wanted, DLQ_TIMEOUT)
            .map_err(|e| self.fail(e))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(at) => Some((e.partition(), at)),
                _ => None,
            })
            .collect())
    }

    /// Calls `visit` with each record of `partition` from `from` up to the
    /// end the partition had when asked, until `visit` says stop.
    fn scan<E: From<DlqError>>(
        &self,
        partition: i32,
        from: i64,
        mut visit: impl FnMut(DlqEntry) -> Result<ControlFlow<()>, E>,
    ) -> Result<ControlFlow<()>, E> {
        let (low, end) = self.range(partition)?;
        let mut next = from.max(low);
        if next >= end {
            return Ok(ControlFlow::Continue(()));
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(self.dlq_topic(), partition, Offset::Offset(next))
            .and_then(|()| self.consumer.assign(&assignment))
            .map_err(|e| self.fail(e))?;
        let mut waiting_since = Instant::now();
        while next < end {
            match self.consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    waiting_since = Instant::now();
                    if visit(DlqEntry::from_message(m.detach()))?.is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                Some(Err(e)) => return Err(self.fail(e).into()),
                None if waiting_since.elapsed() > RECORD_TIMEOUT => {
                    return Err(DlqError::Stalled {
                        at: format!("{}/{partition}@{next}", self.dlq_topic()),
                        end,
                    }
                    .into());
                }
                None => {}
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The one record at `at`.
    fn read(&self, at: DlqPosition) -> Result<DlqEntry, DlqError> {
        let mut found = None;
        // Stops at the first record served from `at`: a compacted or
        // truncated partition may start later, and then it is not there.
        let _ = self.scan::<DlqError>(at.partition, at.offset, |entry| {
            if entry.at == at {
                found = Some(entry);
            }
            Ok(ControlFlow::Break(()))
        })?;
        found.ok_or_else(|| DlqError::NoSuchRecord(at.to_string()))
    }

    /// Resolves what the operator typed against the topic's partitions.
    fn resolve(&self, address: DlqAddress) -> Result<DlqPosition, DlqError> {
        let partition = match address.partition {
            Some(p) => p,
            None => {
                let partitions = self.partitions()?;
                if partitions.len() > 1 {
                    return Err(DlqError::AmbiguousOffset {
                        topic: self.dlq_topic().to_owned(),
                        partitions: partitions.len(),
                    });
                }
                partitions[0]
            }
        };
        Ok(DlqPosition {
            partition,
            offset: address.offset,
        })
    }

    fn commit(&self, at: DlqPosition) -> Result<(), DlqError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(
            self.dlq_topic(),
            at.partition,
            Offset::Offset(at.offset + 1),
        )
        .map_err(|e| self.fail(e))?;
        self.consumer
            .commit(&list, CommitMode::Sync)
            .map_err(|e| self.fail(e))
    }
}

/// One page of the dead-letter topic, partition by partition, oldest first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DlqPage {
    pub entries: Vec<DlqEntry>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<DlqPosition>,
}

/// At most `limit` records after `after` (from the start without it).
pub fn list(
    settings: &BrokerSettings,
    limit: usize,
    after: Option<DlqPosition>,
) -> Result<DlqPage, DlqError> {
    let reader = DlqReader::new(settings, "oms-dlq-list")?;
    let mut entries = Vec::with_capacity(limit.min(1_000));
    let mut more = false;
    for partition in reader.partitions()? {
        let from = match after {
            Some(a) if partition < a.partition => continue,
            Some(a) if partition == a.partition => a.offset + 1,
            _ => 0,
        };
        let flow = reader.scan::<DlqError>(partition, from, |entry| {
            if entries.len() == limit {
                more = true;
                return Ok(ControlFlow::Break(()));
            }
            entries.push(entry);
            Ok(ControlFlow::Continue(()))
        })?;
        if flow.is_break() {
            break;
        }
    }
    let next_after = more.then(|| entries.last().map(|e| e.at)).flatten();
    Ok(DlqPage {
        entries,
        next_after,
    })
}

/// Which dead letters to re-drive.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every record not replayed yet by `--all` (tracked in [`REPLAY_GROUP`]).
    AllPending,
    /// These records, whether replayed before or not.
    At(Vec<DlqAddress>),
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

/// How many records a replay touched, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub replayed: usize,
    pub would_replay: usize,
    pub over_limit: usize,
}

impl ReplaySummary {
    pub fn total(&self) -> usize {
        self.replayed + self.would_replay + self.over_limit
    }

    fn count(&mut self, outcome: &ReplayOutcome) {
        match outcome {
            ReplayOutcome::Replayed { .. } => self.replayed += 1,
            ReplayOutcome::WouldReplay => self.would_replay += 1,
            ReplayOutcome::OverLimit { .. } => self.over_limit += 1,
        }
    }
}

/// `--all` commits how far it got every this many records, so an interrupted
/// replay resumes close to where it stopped.
const COMMIT_EVERY: usize = 1_000;

/// Re-produces the selected dead letters to the orders topic, unchanged but
/// for an incremented `oms-replay-count`, one at a time as they are read (a
/// DLQ of any size replays in bounded memory). `progress` is called after
/// each one with the running count and an upper bound of the total.
pub async fn replay(
    settings: &BrokerSettings,
    selection: Selection,
    max_replays: u32,
    dry_run: bool,
    progress: impl FnMut(&DlqEntry, &ReplayOutcome, usize, usize) + Send + 'static,
) -> Result<ReplaySummary, ReplayError> {
    let producer = LogProducer::new(settings, "oms-dlq-replay")?;
    let settings = settings.clone();
    let runtime = tokio::runtime::Handle::current();
    // The reader is a blocking librdkafka consumer; each replayed record is
    // produced (and its ack awaited) from that same thread.
    tokio::task::spawn_blocking(move || {
        let one = |entry: &DlqEntry| -> Result<ReplayOutcome, ReplayError> {
            if entry.replays >= max_replays {
                return Ok(ReplayOutcome::OverLimit { max: max_replays });
            }
            if dry_run {
                return Ok(ReplayOutcome::WouldReplay);
            }
            let delivered = runtime.block_on(producer.send(replay_record(&settings, entry)))?;
            Ok(ReplayOutcome::Replayed {
                to_partition: delivered.partition,
                to_offset: delivered.offset,
            })
        };
        replay_blocking(&settings, selection, dry_run, one, progress)
    })
    .await
    .map_err(DlqError::from)?
}

fn replay_blocking(
    settings: &BrokerSettings,
    selection: Selection,
    dry_run: bool,
    one: impl Fn(&DlqEntry) -> Result<ReplayOutcome, ReplayError>,
    mut progress: impl FnMut(&DlqEntry, &ReplayOutcome, usize, usize),
) -> Result<ReplaySummary, ReplayError> {
    let reader = DlqReader::new(settings, REPLAY_GROUP)?;
    let mut summary = ReplaySummary::default();
    match selection {
        Selection::At(addresses) => {
            let positions = addresses
                .into_iter()
                .map(|a| reader.resolve(a))
                .collect::<Result<Vec<_>, _>>()?;
            let total = positions.len();
            for at in positions {
                let entry = reader.read(at)?;
                let outcome = one(&entry)?;
                summary.count(&outcome);
                progress(&entry, &outcome, summary.total(), total);
            }
        }
        Selection::AllPending => {
            let partitions = reader.partitions()?;
            let committed = reader.committed(&partitions)?;
            let mut starts = Vec::with_capacity(partitions.len());
            let mut total = 0;
            for p in partitions {
                let (low, high) = reader.range(p)?;
                let from = committed.get(&p).copied().unwrap_or(low).max(low);
                total += usize::try_from(high - from).unwrap_or(0);
                starts.push((p, from));
            }
            for (partition, from) in starts {
                let mut last = None;
                let mut since_commit = 0;
                let _ = reader.scan::<ReplayError>(partition, from, |entry| {
                    let outcome = one(&entry)?;
                    summary.count(&outcome);
                    progress(&entry, &outcome, summary.total(), total);
                    last = Some(entry.at);
                    since_commit += 1;
                    if !dry_run && since_commit >= COMMIT_EVERY {
                        reader.commit(entry.at)?;
                        since_commit = 0;
                    }
                    Ok(ControlFlow::Continue(()))
                })?;
                if let (Some(at), false) = (last, dry_run) {
                    reader.commit(at)?;
                }
            }
        }
    }
    Ok(summary)
}

/// The record a replay writes: the dead letter's key and value, its
/// foreign headers, and its replay count plus one.
fn replay_record<'a>(
    settings: &'a BrokerSettings,
    entry: &'a DlqEntry,
) -> FutureRecord<'a, [u8], [u8]> {
    let m = &entry.message;
    let count = (entry.replays + 1).to_string();
    let headers = foreign_headers(m).insert(Header {
        key: REPLAY_COUNT_HEADER,
        value: Some(count.as_str()),
    });
    let mut record = FutureRecord::<[u8], [u8]>::to(&settings.topic).headers(headers);
    if let Some(key) = m.key() {
        record = record.key(key);
    }
    if let Some(payload) = m.payload() {
        record = record.payload(payload);
    }
    record
}

/// Why a replay stopped. Records before the failing one were replayed (and,
/// for `--all`, committed up to the last multiple of 1,000).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Read(#[from] DlqError),
    #[error("cannot create the producer for the orders topic")]
    Client(#[from] KafkaError),
    #[error("re-producing to the orders topic failed")]
    Produce(#[from] ProduceError),
}
