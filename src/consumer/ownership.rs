//! Which partitions this instance may consume, and under which lease — the
//! one place the consume loop and whoever decides (assign mode: every
//! partition, for good; group mode: the member holding leases, [`super::group`])
//! meet. The decider says what is *wanted*; the loop takes partitions on
//! and off to match, between two batches, and reports what it *consumes*,
//! so a lease is given up only once nothing more is written under it.
//! Both sides are level-triggered: a consume loop started again (the
//! watchdog recreates it) simply takes everything wanted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::lease::Lease;

/// A partition this instance may consume: in group mode with the epoch of
/// its lease (every batch of it is written under that lease), in assign
/// mode without (nobody else writes to this store).
pub type Epoch = Option<i64>;

/// Shared, cheap handle.
#[derive(Debug, Clone, Default)]
pub struct Ownership(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken when `wanted` changes (the loop) or `consuming` does (the decider).
    wanted_changed: Notify,
    consuming_changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    wanted: BTreeMap<i32, Epoch>,
    consuming: BTreeMap<i32, Epoch>,
    /// The consume loop has ended for good: it consumes nothing any more.
    closed: bool,
}

/// What the loop must change to consume what is wanted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub stop: Vec<i32>,
    pub start: Vec<(i32, Epoch)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.start.is_empty()
    }
}

impl Ownership {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        match self.0.state.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Assign mode: every partition, unfenced, for good.
    pub fn assign_all(&self, partitions: &[i32]) {
        self.with(|s| s.wanted = partitions.iter().map(|p| (*p, None)).collect());
        self.0.wanted_changed.notify_one();
    }

    /// Whether anything is wanted yet (assign mode fills it once).
    pub fn is_decided(&self) -> bool {
        self.with(|s| !s.wanted.is_empty())
    }

    /// Group mode: `lease` is this instance's now.
    pub fn grant(&self, lease: Lease) {
        self.with(|s| s.wanted.insert(lease.partition, Some(lease.epoch)));
        self.0.wanted_changed.notify_one();
    }

    /// Group mode: `partition` is to be given up (or was lost).
    pub fn revoke(&self, partition: i32) {
        self.with(|s| s.wanted.remove(&partition));
        self.0.wanted_changed.notify_one();
    }

    /// The store refused a batch of `partition` written under `epoch`: that
    /// lease is gone (unless it was already replaced by a newer one).
    pub fn lost(&self, partition: i32, epoch: Epoch) {
        let removed = self.with(|s| {
            let gone = s.wanted.get(&partition) == Some(&epoch);
            if gone {
                s.wanted.remove(&partition);
            }
            gone
        });
        if removed {
            self.0.wanted_changed.notify_one();
        }
    }

    /// The leases wanted now (group mode: what the heartbeat renews).
    pub fn leases(&self) -> Vec<Lease> {
        self.with(|s| {
            s.wanted
                .iter()
                .filter_map(|(p, e)| {
                    e.map(|epoch| Lease {
                        partition: *p,
                        epoch,
                    })
                })
                .collect()
        })
    }

    /// The loop: what to change, given what it consumes now.
    pub fn diff(&self, consuming: &BTreeMap<i32, Epoch>) -> Diff {
        self.with(|s| Diff {
            stop: consuming
                .iter()
                .filter(|(p, e)| s.wanted.get(p) != Some(e))
                .map(|(p, _)| *p)
                .collect(),
            start: s
                .wanted
                .iter()
                .filter(|(p, e)| consuming.get(p) != Some(e))
                .map(|(p, e)| (*p, *e))
                .collect(),
        })
    }

    /// Resolves when what is wanted may have changed.
    pub async fn wanted_changed(&self) {
        self.0.wanted_changed.notified().await;
    }

    /// The loop reports what it consumes now.
    pub fn report(&self, consuming: &BTreeMap<i32, Epoch>) {
        self.with(|s| s.consuming = consuming.clone());
        self.0.consuming_changed.notify_waiters();
    }

    /// The loop has ended: nothing is consumed or written any more.
    pub fn close(&self) {
        self.with(|s| {
            s.consuming.clear();
            s.closed = true;
        });
        self.0.consuming_changed.notify_waiters();
    }

    /// Waits until nothing of `partition` is consumed under `epoch` (at
    /// most `within`); whether that happened in time.
    pub async fn stopped(&self, partition: i32, epoch: Epoch, within: Duration) -> bool {
        self.wait(within, |s| s.consuming.get(&partition) != Some(&epoch))
            .await
    }

    /// Waits until the loop has ended (at most `within`).
    pub async fn closed(&self, within: Duration) -> bool {
        self.wait(within, |s| s.closed).await
    }

    async fn wait(&self, within: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.0.consuming_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.with(|s| done(s)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.with(|s| done(s));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_stops_what_is_no_longer_wanted_and_starts_what_is() {
        let own = Ownership::default();
        own.grant(Lease {
            partition: 0,
            epoch: 1,
        });
        own.grant(Lease {
            partition: 1,
            epoch: 4,
        });
        let consuming = BTreeMap::from([(1, Some(3)), (2, Some(1))]);
        assert_eq!(
            own.diff(&consuming),
            Diff {
                stop: vec![1, 2],
                start: vec![(0, Some(1)), (1, Some(4))],
            },
            "a partition taken again under a new epoch starts over"
        );
    }

    #[test]
    fn a_refusal_drops_only_the_lease_it_was_written_under() {
        let own = Ownership::default();
        own.grant(Lease {
            partition: 0,
            epoch: 2,
        });
        own.lost(0, Some(1));
        assert_eq!(own.leases().len(), 1, "a newer lease stays");
        own.lost(0, Some(2));
        assert!(own.leases().is_empty());
    }

    #[tokio::test]
    async fn giving_up_waits_for_the_loop_to_stop_consuming() {
        let own = Ownership::default();
        own.report(&BTreeMap::from([(0, Some(1))]));
        assert!(!own.stopped(0, Some(1), Duration::from_millis(20)).await);
        let later = own.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            later.report(&BTreeMap::new());
        });
        assert!(own.stopped(0, Some(1), Duration::from_secs(10)).await);
    }
}
