//! The librdkafka consumer: its settings, taking partitions on and off
//! (always by assignment — which partitions are this instance's is decided
//! elsewhere: all of them, or the leases it holds), receive errors, and a
//! close that cannot hang the process.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::broker::client_config;
use crate::config::{BrokerSettings, ConsumerSettings};
use crate::domain::Offsets;

/// The broker consumer.
pub type LogConsumer = StreamConsumer;

/// The librdkafka settings of the order consumer (shared with the
/// benchmark's raw consumer). Offsets are oms' business, not the group's:
/// the store holds them, and the consumer never subscribes.
pub fn consumer_config(broker: &BrokerSettings, consumer: &ConsumerSettings) -> ClientConfig {
    let mut config = client_config(broker, "oms-consumer");
    config
        // Required for assignment; also where lag commits go.
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

/// Starts reading `partitions` of `topic`, each from its offset (`None`:
/// the start of the log), without touching the others.
pub fn assign(
    consumer: &LogConsumer,
    topic: &str,
    partitions: &[(i32, Option<i64>)],
) -> Result<(), KafkaError> {
    let mut list = TopicPartitionList::new();
    for (partition, offset) in partitions {
        let offset = offset.map_or(Offset::Beginning, Offset::Offset);
        list.add_partition_offset(topic, *partition, offset)?;
    }
    consumer.incremental_assign(&list)
}

/// Stops reading `partitions`: librdkafka drops what it prefetched of them.
pub fn unassign(consumer: &LogConsumer, topic: &str, partitions: &[i32]) -> Result<(), KafkaError> {
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(topic, *partition);
    }
    consumer.incremental_unassign(&list)
}

/// Commits `offsets` broker-side, so standard Kafka tools can show lag too
/// (`consumer_lag` does not depend on it: offsets live in the store).
pub fn commit_for_lag_tools(consumer: &LogConsumer, topic: &str, offsets: &Offsets) {
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

/// What one receive brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Message,
    /// An error (counted and logged): the batch ends here.
    Error,
}

/// Receive errors: every one counted by kind (`consumer_errors_total`),
/// logged as a warning at most once per [`ErrorLog::EVERY`] with the count
/// of those not logged — never a silent loop, never a flood.
#[derive(Default)]
pub struct ErrorLog {
    last_warned: Option<Instant>,
    unlogged: u64,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(10);

    /// Puts a received message into `into`; counts and logs a receive
    /// error instead.
    pub fn sort<'c>(
        &mut self,
        message: Result<BorrowedMessage<'c>, KafkaError>,
        into: &mut Vec<BorrowedMessage<'c>>,
    ) -> Received {
        let err = match message {
            Ok(m) => {
                into.push(m);
                return Received::Message;
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
        Received::Error
    }
}

/// How long dropping the broker consumer may hold the loop (and the thread
/// it runs on). rdkafka closes a consumer in its `Drop` and waits for
/// librdkafka's close without a bound, and that close can wait for ever
/// once the broker is gone: an oms stopped with SIGTERM right after its
/// broker hung there for 20 minutes (gdb: `drop` of the `StreamConsumer`,
/// polling `rd_kafka_consumer_closed`).
pub const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Owns a broker consumer and closes it, when dropped, on a thread of its
/// own, waiting at most a bound. A close that does not finish in time is
/// left to finish on its thread (or to the process' exit) with a warning.
/// Only the lag commits it may cut short are at stake: offsets live in the
/// store.
pub struct Bounded<T: Send + 'static> {
    inner: Option<T>,
    within: Duration,
}

impl<T: Send + 'static> Bounded<T> {
    pub fn new(inner: T, within: Duration) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

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
        struct Closes(Arc<AtomicBool>);
        impl Drop for Closes {
            fn drop(&mut self) {
                std::thread::sleep(Duration::from_millis(50));
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let closed = Arc::new(AtomicBool::new(false));
        drop(Bounded::new(
            Closes(closed.clone()),
            Duration::from_secs(30),
        ));
        assert!(closed.load(Ordering::SeqCst));
    }
}
