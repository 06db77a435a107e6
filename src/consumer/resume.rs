//! Resuming at the store's offsets, on the log the store was built from:
//! the rewind that tansu's memory engine needs, and the two checks that
//! notice a replaced log (a store's offsets past its end, or orders before
//! them the store never saw).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset};

use super::client::LogConsumer;
use crate::domain::Event;
use crate::domain::Offsets;

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
pub(super) struct Resume {
    /// Partition → (the offset it must deliver next, how far back the next
    /// rewind goes).
    pending: BTreeMap<i32, (i64, i64)>,
    first_step: i64,
    /// Partition → the stored offset, until the log is shown to be the one
    /// the store was built from.
    unverified: BTreeMap<i32, Unverified>,
}

#[derive(Debug, Clone, Copy)]
struct Unverified {
    stored: i64,
    /// Orders before `stored` the store did not know, so far.
    unknown: usize,
}

/// Why a partition's log is not the one the store was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LogCheck {
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
pub(super) const SHORTER_LOG_CONFIRM: Duration = Duration::from_secs(2);

/// Most orders per partition and batch checked against the store.
const LOG_CHECK_SAMPLE: usize = 64;

/// Orders before the stored offset that the store must fail to know
/// (unless the log holds fewer) before the log counts as another one: one
/// order the store refused for good (dead-lettered) is not enough.
const LOG_CHECK_UNKNOWN: usize = 4;

impl Resume {
    pub(super) fn new(stored: &Offsets, rewind: i64) -> Self {
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
    pub(super) fn watch(&mut self, stored: &Offsets) {
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
    pub(super) fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.pending.remove(p);
            self.unverified.remove(p);
        }
    }

    /// Drops what must not be stored from `messages`, rewinding partitions
    /// whose broker skipped the resume offset. Returns, for partitions not
    /// yet checked, the ids of orders dropped as already stored: the store
    /// must know them, or the log is another one.
    pub(super) fn admit(
        &mut self,
        consumer: &LogConsumer,
        topic: &str,
        messages: &mut Vec<BorrowedMessage<'_>>,
    ) -> BTreeMap<i32, Vec<uuid::Uuid>> {
        let mut samples = BTreeMap::<i32, Vec<uuid::Uuid>>::new();
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
    pub(super) fn checked(
        &mut self,
        partition: i32,
        sampled: usize,
        known: usize,
    ) -> Option<LogCheck> {
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
pub(super) struct LogEnds {
    /// Partition → when its end was first seen below the stored offset.
    short_since: BTreeMap<i32, Instant>,
}

impl LogEnds {
    /// A partition whose log end (librdkafka's cached high watermark: no
    /// request, and exact on every tansu engine, where `ListOffsets`
    /// under-reports on `memory://`) has stayed below its stored offset for
    /// `confirm`.
    pub(super) fn shorter(
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_partition_given_up_is_not_checked() {
        let mut resume = Resume::new(&Offsets::from([(0, 500)]), 100);
        resume.forget(&[0]);
        assert_eq!(resume.checked(0, 64, 0), None);
    }
}
