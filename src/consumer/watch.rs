//! The log watcher: reads how far the log reaches, publishes
//! `consumer_lag{partition}`, and is the stall watchdog — records waiting
//! and no sign of life from the consume loop for `consumer.stall_after_ms`
//! recreate its broker consumer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use super::ConsumerError;
use super::status::{ConsumerStatus, raise};
use crate::broker::admin::{self, AdminError};
use crate::broker::client_config;
use crate::broker::producer::ProduceEvidence;
use crate::config::BrokerSettings;
use crate::domain::Offsets;

/// Why the log end could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error(transparent)]
    Broker(#[from] AdminError),
    #[error("the watermark task failed (a bug; please report it)")]
    Task(#[source] tokio::task::JoinError),
}

/// What one look at the broker found: the orders topic's id (when it
/// names one) and its watermarks.
struct Seen {
    topic_id: Option<String>,
    marks: Result<Vec<(i32, i64, i64)>, WatermarkError>,
}

fn look(client: &BaseConsumer, broker: &BrokerSettings) -> Seen {
    Seen {
        topic_id: admin::topic_id(client.client(), broker, &broker.topic)
            .ok()
            .flatten(),
        marks: admin::watermarks(client, broker).map_err(WatermarkError::Broker),
    }
}

/// A gap between two ticks this much longer than the interval means the
/// process did not run (frozen by SIGSTOP, or starved): not a stall.
const THAW_FACTOR: u32 = 3;

/// Every `every`, until shutdown: reads the log end, publishes
/// `consumer_lag{partition}` and restarts a stalled consumer.
///
/// The log end of a partition is the larger of the broker's high watermark
/// and the offset after the last record this instance's producer got
/// acknowledged: a broker that under-reports its watermarks (tansu's memory
/// engine does) cannot make lag read 0 while acknowledged orders are
/// missing. Lag is that end minus the consumer's own record of what it
/// stored, so it keeps growing while the store is down.
///
/// The watchdog: records past the stored offsets and no sign of life from
/// the loop for `stall_after` (nothing stored, no retried attempt, no books
/// being rebuilt) — then `consumer_stalls_total` counts it and the loop is
/// recreated ([`super::ConsumerLoop::run`]), backing off while restarts do
/// not help. Time the process spent not running at all is not counted.
pub async fn watch_log(
    broker: BrokerSettings,
    status: ConsumerStatus,
    produced: Arc<ProduceEvidence>,
    every: Duration,
    stall_after: Duration,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let client: Arc<BaseConsumer> = Arc::new(client_config(&broker, "oms-lag").create()?);
    let mut tick = tokio::time::interval(every);
    let mut published = BTreeSet::<i32>::new();
    let mut last_tick = Instant::now();
    let mut topic_id: Option<String> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if last_tick.elapsed() > every * THAW_FACTOR {
            tracing::info!(
                gap_s = last_tick.elapsed().as_secs_f64(),
                "the process did not run for a while (frozen or starved); the stall watchdog counts from now"
            );
            status.thawed();
        }
        let (c, settings) = (client.clone(), broker.clone());
        let seen = tokio::task::spawn_blocking(move || look(c.as_ref(), &settings))
            .await
            .unwrap_or_else(|e| Seen {
                topic_id: None,
                marks: Err(WatermarkError::Task(e)),
            });
        last_tick = Instant::now();
        // A topic id seen once and then another: the log is not the one
        // this process' clients know (a gap, while the broker restarts or
        // the topic is gone, proves nothing yet).
        match (&topic_id, seen.topic_id) {
            (Some(was), Some(now)) if *was != now => {
                return Err(ConsumerError::TopicRecreated {
                    topic: broker.topic.clone(),
                    was: was.clone(),
                    now,
                });
            }
            (None, Some(now)) => topic_id = Some(now),
            _ => {}
        }
        let Some(lag) = observe(&status, &produced, seen.marks) else {
            continue; // nothing known about the store yet
        };
        published = publish_lag(&published, lag);
        watchdog(&status, stall_after);
    }
}

/// Records the log's bounds (the broker's watermarks, and what this
/// instance's producer got acknowledged) or why they could not be read;
/// returns the lag of this instance's partitions once the consumer runs.
fn observe(
    status: &ConsumerStatus,
    produced: &ProduceEvidence,
    marks: Result<Vec<(i32, i64, i64)>, WatermarkError>,
) -> Option<Offsets> {
    let mut ends = produced.acked_ends();
    let mut starts = Offsets::new();
    let error = match marks {
        Ok(marks) => {
            for (partition, low, high) in marks {
                raise(&mut ends, partition, high);
                starts.insert(partition, low);
            }
            None
        }
        Err(err) => {
            let err = crate::error::Chain(&err).to_string();
            tracing::debug!(error = %err, "log end unreadable");
            Some(err)
        }
    };
    status.observe_log(ends, starts, error)
}

/// Publishes `consumer_lag{partition}`; returns the partitions published.
/// A partition given up (group mode) shows 0, not the last lag this
/// instance saw: its new owner reports it.
fn publish_lag(published: &BTreeSet<i32>, lag: Offsets) -> BTreeSet<i32> {
    for gone in published.iter().filter(|p| !lag.contains_key(p)) {
        metrics::gauge!("consumer_lag", "partition" => gone.to_string()).set(0.0);
    }
    let now = lag.keys().copied().collect();
    for (partition, behind) in lag {
        metrics::gauge!("consumer_lag", "partition" => partition.to_string()).set(behind as f64);
    }
    now
}

/// Asks for a new broker consumer when the loop stalled.
fn watchdog(status: &ConsumerStatus, stall_after: Duration) {
    if let Some(stall) = status.stall(stall_after) {
        if status.request_restart(stall_after) {
            metrics::counter!("consumer_stalls_total").increment(1);
            tracing::warn!(
                behind = stall.behind,
                idle_s = stall.idle.as_secs_f64(),
                "consumer {stall}; recreating it"
            );
        }
    }
}
