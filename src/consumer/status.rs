//! What the consumer is doing, shared cheaply with `/readyz`, the read
//! path, the lag reporter, the watchdog and the group member: its state,
//! what it has stored and when, how far the log is known to reach, and —
//! in group mode — what the group check found.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::domain::Offsets;

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

/// A consumer that stopped storing while records wait: what `/readyz` says.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// Records on the log past what the store holds.
    pub behind: i64,
    /// Time since the last stored batch.
    pub idle: Duration,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stalled: {} record(s) on the log are not stored and nothing was stored for {:.1} s",
            self.behind,
            self.idle.as_secs_f64()
        )
    }
}

/// What the group check (group mode) last found, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport {
    /// Ready: the group has formed (this member saw every partition held
    /// and every share taken at least once) and no partition is left behind.
    pub ok: bool,
    pub detail: String,
}

/// Shared handle on the consumer's state.
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    /// The watchdog's request to recreate the broker consumer.
    restart: Notify,
    /// Woken whenever a batch is stored (readers waiting for their write).
    stored: Notify,
}

#[derive(Debug)]
pub(super) struct Inner {
    state: ConsumerState,
    stored: Offsets,
    /// Group mode: the partitions are shared with other instances.
    grouped: bool,
    /// The partitions this instance consumes now.
    owned: BTreeSet<i32>,
    /// When a batch was last stored (or the consumer last (re)started).
    progress: Instant,
    progress_unix: f64,
    /// When the loop last showed life: a batch stored, or a failed attempt
    /// it will retry (it is waiting out a failure it reports).
    heartbeat: Instant,
    /// Rebuilding books for partitions just taken: no batch is due.
    loading: bool,
    /// The best known log end per partition (broker watermarks and this
    /// instance's own acknowledged records).
    log_end: Offsets,
    /// The first offset the broker still holds per partition (where a
    /// store with no offset for it starts).
    log_start: Offsets,
    /// Why the log end could not be read from the broker, if it could not.
    log_end_error: Option<String>,
    /// When the watchdog last restarted the consumer, and how many times in
    /// a row without progress since (each restart waits twice as long).
    restarted: Option<Instant>,
    restarts_in_a_row: u32,
    group: Option<GroupReport>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            state: ConsumerState::default(),
            stored: Offsets::new(),
            grouped: false,
            owned: BTreeSet::new(),
            progress: Instant::now(),
            progress_unix: unix_now(),
            heartbeat: Instant::now(),
            loading: false,
            log_end: Offsets::new(),
            log_start: Offsets::new(),
            log_end_error: None,
            restarted: None,
            restarts_in_a_row: 0,
            group: None,
        }
    }
}

fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

impl ConsumerStatus {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        match self.0.inner.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub fn get(&self) -> ConsumerState {
        self.with(|s| s.state.clone())
    }

    pub(super) fn set(&self, state: ConsumerState) {
        self.with(|s| s.state = state);
    }

    /// The next offset per partition that the store holds, as last applied.
    pub fn stored(&self) -> Offsets {
        self.with(|s| s.stored.clone())
    }

    /// Group mode or not: then only the store, not this instance, knows
    /// whether the whole log is stored.
    pub fn grouped(&self) -> bool {
        self.with(|s| s.grouped)
    }

    pub(super) fn set_grouped(&self, grouped: bool) {
        self.with(|s| s.grouped = grouped);
    }

    /// The partitions this instance consumes.
    pub fn owned(&self) -> BTreeSet<i32> {
        self.with(|s| s.owned.clone())
    }

    /// Takes over `partitions` at the offsets the store holds for them
    /// (`stored`; absent: nothing stored yet).
    pub(super) fn adopt(&self, partitions: &[i32], stored: &Offsets) {
        self.with(|s| {
            for p in partitions {
                match stored.get(p) {
                    Some(o) => s.stored.insert(*p, *o),
                    None => s.stored.remove(p),
                };
                s.owned.insert(*p);
            }
            // Taking partitions over is progress: their wait starts now.
            s.progress = Instant::now();
            s.heartbeat = s.progress;
        });
    }

    /// Gives up `partitions`.
    pub(super) fn forget(&self, partitions: &[i32]) {
        self.with(|s| {
            for p in partitions {
                s.stored.remove(p);
                s.owned.remove(p);
            }
        });
    }

    /// Rebuilding books: the watchdog does not count the time.
    pub(super) fn set_loading(&self, loading: bool) {
        self.with(|s| {
            s.loading = loading;
            s.heartbeat = Instant::now();
        });
    }

    pub(super) fn loading(&self) -> bool {
        self.with(|s| s.loading)
    }

    pub(super) fn record_stored(&self, offsets: &Offsets) {
        let now = unix_now();
        self.with(|s| {
            s.stored.extend(offsets.iter().map(|(p, o)| (*p, *o)));
            s.progress = Instant::now();
            s.heartbeat = s.progress;
            s.progress_unix = now;
            s.restarts_in_a_row = 0;
        });
        self.0.stored.notify_waiters();
        metrics::gauge!("consumer_last_progress_timestamp_seconds").set(now);
    }

    /// The best known log end per partition: the broker's watermarks as
    /// last read and every record this instance's producer got acknowledged
    /// since (`acked`) — everything a reader may have been told exists.
    pub fn known_log_end(&self, acked: &Offsets) -> Offsets {
        let mut end = self.with(|s| s.log_end.clone());
        for (partition, offset) in acked {
            raise(&mut end, *partition, *offset);
        }
        end
    }

    /// The log's start and end per partition as last read.
    pub(super) fn log_bounds(&self) -> (Offsets, Offsets) {
        self.with(|s| (s.log_start.clone(), s.log_end.clone()))
    }

    /// Waits until the store holds every record before `target` (per
    /// partition), at most until `deadline`. `Err` with the number of
    /// records still missing when the deadline passed first.
    pub async fn stored_up_to(
        &self,
        target: &Offsets,
        deadline: tokio::time::Instant,
    ) -> Result<(), i64> {
        loop {
            // Registered before the check, so a batch stored in between
            // still wakes this reader.
            let stored = self.0.stored.notified();
            tokio::pin!(stored);
            stored.as_mut().enable();
            let missing: i64 = self.with(|s| behind(s, target).map(|(_, b)| b).sum());
            if missing == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, stored).await.is_err() {
                return Err(missing);
            }
        }
    }

    /// Unix time of the last stored batch.
    pub fn last_progress_unix(&self) -> f64 {
        self.with(|s| s.progress_unix)
    }

    /// `Some` when records wait past the stored offsets and the loop has
    /// shown no life for `after`: nothing stored, and no failed attempt it
    /// retries (a consumer waiting out a store outage keeps trying and says
    /// why — that is not a stall), and no books being rebuilt.
    pub fn stall(&self, after: Duration) -> Option<Stall> {
        self.with(|s| {
            let behind = lag(s).values().sum();
            let active = matches!(
                s.state,
                ConsumerState::Running | ConsumerState::Waiting { .. }
            );
            (active && !s.loading && behind > 0 && s.heartbeat.elapsed() >= after).then(|| Stall {
                behind,
                idle: s.progress.elapsed(),
            })
        })
    }

    pub(super) fn beat(&self) {
        self.with(|s| s.heartbeat = Instant::now());
    }

    /// The process was not running for a while (frozen, or starved of
    /// CPU): that time is nobody's stall, so idleness counts from now.
    pub(super) fn thawed(&self) {
        self.with(|s| {
            s.heartbeat = Instant::now();
            s.progress = s.heartbeat;
        });
    }

    /// Why the log end could not be read lately, if it could not.
    pub fn log_end_error(&self) -> Option<String> {
        self.with(|s| s.log_end_error.clone())
    }

    /// Records what the log watcher read: the log's bounds (or why not),
    /// and returns the lag of this instance's partitions — `None` while the
    /// consumer starts (nothing known about the store yet).
    pub(super) fn observe_log(
        &self,
        ends: Offsets,
        starts: Offsets,
        error: Option<String>,
    ) -> Option<Offsets> {
        self.with(|s| {
            s.log_end = ends;
            s.log_start.extend(starts);
            s.log_end_error = error;
            (s.state != ConsumerState::Starting).then(|| lag(s))
        })
    }

    /// The watchdog asks the loop to recreate its broker consumer — unless
    /// it did so less than `after` × 2^(restarts in a row) ago: a broker that
    /// is merely slow to answer a first fetch must get the time to do so.
    pub(super) fn request_restart(&self, after: Duration) -> bool {
        let due = self.with(|s| {
            let wait = after.saturating_mul(1 << s.restarts_in_a_row.min(5));
            let due = s.restarted.is_none_or(|t| t.elapsed() >= wait);
            if due {
                s.restarted = Some(Instant::now());
                s.restarts_in_a_row += 1;
                s.heartbeat = Instant::now();
            }
            due
        });
        if due {
            self.0.restart.notify_one();
        }
        due
    }

    pub(super) async fn restart_requested(&self) {
        self.0.restart.notified().await;
    }

    /// What the group check found last (group mode only).
    pub fn group(&self) -> Option<GroupReport> {
        self.with(|s| s.group.clone())
    }

    pub(super) fn set_group(&self, report: GroupReport) {
        self.with(|s| s.group = Some(report));
    }
}

/// Records on the log past the stored offsets, per partition of this
/// instance, by the best known log end.
fn lag(s: &Inner) -> Offsets {
    behind(s, &s.log_end).collect()
}

/// Records before `ends` that the store does not hold, per partition (a
/// partition the store holds nothing of starts where the log starts).
fn behind<'a>(s: &'a Inner, ends: &'a Offsets) -> impl Iterator<Item = (i32, i64)> + 'a {
    // In group mode the other partitions are other instances' to store.
    let mine = move |p: &i32| !s.grouped || s.owned.contains(p);
    ends.iter().filter(move |(p, _)| mine(p)).map(|(p, end)| {
        let stored = s
            .stored
            .get(p)
            .or_else(|| s.log_start.get(p))
            .copied()
            .unwrap_or(0);
        (*p, (end - stored).max(0))
    })
}

/// Raises `ends[partition]` to `offset` if that is further (log ends only grow
/// with more evidence).
pub(super) fn raise(ends: &mut Offsets, partition: i32, offset: i64) {
    let end = ends.entry(partition).or_insert(0);
    *end = (*end).max(offset);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_spent_frozen_or_loading_is_not_a_stall() {
        let status = ConsumerStatus::default();
        status.set(ConsumerState::Running);
        status.adopt(&[0], &Offsets::new());
        status.observe_log(Offsets::from([(0, 10)]), Offsets::new(), None);
        assert!(
            status.stall(Duration::ZERO).is_some(),
            "records wait, no life"
        );
        status.set_loading(true);
        assert!(status.stall(Duration::ZERO).is_none(), "rebuilding books");
        status.set_loading(false);
        status.thawed();
        assert!(
            status.stall(Duration::from_secs(60)).is_none(),
            "idleness counts from the thaw"
        );
    }

    #[test]
    fn group_mode_counts_only_the_partitions_owned() {
        let status = ConsumerStatus::default();
        status.set_grouped(true);
        status.set(ConsumerState::Running);
        status.adopt(&[1], &Offsets::from([(1, 5)]));
        let lag = status
            .observe_log(Offsets::from([(0, 100), (1, 7)]), Offsets::new(), None)
            .expect("running");
        assert_eq!(lag, Offsets::from([(1, 2)]));
        status.forget(&[1]);
        assert!(status.owned().is_empty());
    }
}
