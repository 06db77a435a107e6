//! Taking partitions on and off, between two batches, to consume what
//! [`super::ownership::Ownership`] wants: a partition taken is read from
//! the offset the store holds (read after its lease was taken), with its
//! books rebuilt from the store; a partition given up has its books and
//! prefetched records dropped. A resync is the same, for every partition:
//! the librdkafka consumer and the group membership stay.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::client::{self, LogConsumer};
use super::ownership::Epoch;
use super::resume::Resume;
use super::{Halt, Loop};
use crate::broker::admin;
use crate::config::ConsumerMode;
use crate::domain::Offsets;
use crate::store::lease::Claim;

/// What one broker consumer holds: partition → the lease epoch it is
/// consumed under, and the resume guard of each.
pub(super) struct Held {
    pub consuming: BTreeMap<i32, Epoch>,
    pub resume: Resume,
}

impl Held {
    pub fn new(rewind: i64) -> Self {
        Self {
            consuming: BTreeMap::new(),
            resume: Resume::new(&Offsets::new(), rewind),
        }
    }

    /// The leases a batch of `partitions` is written under (group mode:
    /// `owner` is this member).
    pub fn claim(&self, owner: Option<&str>, partitions: &BTreeSet<i32>) -> Option<Claim> {
        Some(Claim {
            owner: owner?.to_owned(),
            epochs: partitions
                .iter()
                .filter_map(|p| Some((*p, (*self.consuming.get(p)?)?)))
                .collect(),
        })
    }
}

impl Loop {
    /// Assign mode: every partition of the topic is this instance's, for
    /// good (read once, on the first start).
    pub(super) async fn decide_all(&self) -> Result<(), Halt> {
        if self.settings.mode != ConsumerMode::Assign || self.ownership.is_decided() {
            return Ok(());
        }
        let partitions = self
            .retry
            .run("reading the orders topic's partitions", || {
                admin::partitions_of(self.metadata.clone(), &self.broker)
            })
            .await?;
        self.ownership.assign_all(&partitions);
        Ok(())
    }

    /// Takes partitions on and off until this consumer reads what is wanted.
    pub(super) async fn reconcile(
        &self,
        consumer: &LogConsumer,
        held: &mut Held,
    ) -> Result<(), Halt> {
        let diff = self.ownership.diff(&held.consuming);
        if diff.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.stop(consumer, held, &diff.stop);
        if !diff.start.is_empty() {
            self.status.set_loading(true);
            let taken = self.start(consumer, held, &diff.start).await;
            self.status.set_loading(false);
            taken?;
        }
        self.ownership.report(&held.consuming);
        metrics::gauge!("consumer_assigned_partitions").set(held.consuming.len() as f64);
        metrics::histogram!("consumer_rebalance_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Reads everything this consumer holds again from the store's
    /// offsets, with its books rebuilt — after the store refused a batch
    /// (another writer moved it, or a log was replaced).
    pub(super) async fn resync(&self, consumer: &LogConsumer, held: &mut Held) -> Result<(), Halt> {
        let all: Vec<i32> = held.consuming.keys().copied().collect();
        self.stop(consumer, held, &all);
        self.reconcile(consumer, held).await
    }

    fn stop(&self, consumer: &LogConsumer, held: &mut Held, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        if let Err(err) = client::unassign(consumer, &self.broker.topic, partitions) {
            tracing::warn!(error = %err, ?partitions, "unassigning partitions failed (records of them are dropped anyway)");
        }
        for p in partitions {
            held.consuming.remove(p);
        }
        self.status.forget(partitions);
        held.resume.forget(partitions);
        self.lock_books().forget(partitions);
        tracing::info!(?partitions, "stopped consuming partitions");
    }

    async fn start(
        &self,
        consumer: &LogConsumer,
        held: &mut Held,
        partitions: &[(i32, Epoch)],
    ) -> Result<(), Halt> {
        let topic = &self.broker.topic;
        // Read now, after the leases were taken: whatever their previous
        // owner wrote is in these offsets, and it can write nothing more.
        let stored = self
            .retry
            .run("reading offsets from the store", || {
                self.store.offsets(topic)
            })
            .await?;
        let ids: Vec<i32> = partitions.iter().map(|(p, _)| *p).collect();
        self.load_books(&ids).await?;
        let owned: Offsets = ids
            .iter()
            .filter_map(|p| stored.get(p).map(|o| (*p, *o)))
            .collect();
        // A little before the stored offset: see [`Resume`].
        let rewind = self.settings.resume_rewind;
        let from: Vec<(i32, Option<i64>)> = ids
            .iter()
            .map(|p| (*p, owned.get(p).map(|o| (o - rewind).max(0))))
            .collect();
        client::assign(consumer, topic, &from).map_err(Halt::Broker)?;
        self.status.adopt(&ids, &owned);
        held.resume.watch(&owned);
        held.consuming.extend(partitions.iter().copied());
        if self.ownership.diff(&held.consuming).start.is_empty() {
            self.lock_books().mark_loaded();
        }
        tracing::info!(%topic, ?partitions, stored = ?owned, engine = self.store.engine(), "consuming from the store's offsets");
        Ok(())
    }
}
