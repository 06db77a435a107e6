//! Group mode: this instance as a member of the group that shares the
//! orders topic's partitions through leases in the shared store
//! ([`crate::store::lease`]). Every `consumer.heartbeat_ms` it renews its
//! membership and its leases, takes free partitions up to its share, gives
//! up what is over it (after the consume loop stopped writing them), and
//! checks the whole group: a partition with records the store does not
//! hold and nobody draining it is reported — in `/readyz`, as
//! `group_partitions_undrained`, and in the log — on every instance.
//!
//! The shares are a function of the live members (in id order), so every
//! member computes the same ones from the same view; a member frozen past
//! its lease's time drops out of the view and its partitions are taken by
//! the others, and when it thaws its leases are gone — its writes are
//! refused by the store, it rejoins and takes a share again. A new run of
//! an instance (`consumer.instance_id`) takes over the leases of the run
//! it replaces at once (a kill -9 and restart does not wait for the lease
//! to run out), as Kafka's static membership does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use tokio_util::sync::CancellationToken;

use super::ConsumerError;
use super::ownership::Ownership;
use super::status::{ConsumerState, ConsumerStatus, GroupReport};
use crate::broker::admin;
use crate::broker::client_config;
use crate::config::{BrokerSettings, ConsumerSettings};
use crate::domain::Offsets;
use crate::error::Chain;
use crate::store::lease::{GroupView, Lease, Leases, Member, MemberState};
use crate::store::{Store, StoreError};

/// How long a stopping member waits for its consume loop to write its
/// last batch before it leaves anyway.
pub const LEAVE_WAIT: Duration = Duration::from_secs(10);

/// How many heartbeats a partition may sit unowned (records waiting)
/// beyond its lease's time before the group check reports it.
const UNOWNED_GRACE_BEATS: u32 = 3;

/// A member of the group, until shutdown.
pub struct GroupMember {
    pub broker: BrokerSettings,
    pub settings: ConsumerSettings,
    pub store: Arc<dyn Store>,
    pub member: Member,
    pub ownership: Ownership,
    pub status: ConsumerStatus,
}

impl GroupMember {
    /// A new member id for this run: the instance's name (or the host's
    /// process id) and a random suffix, unique per run.
    pub fn member(settings: &ConsumerSettings, topic: &str) -> Member {
        let name = if settings.instance_id.is_empty() {
            format!("pid{}", std::process::id())
        } else {
            settings.instance_id.clone()
        };
        Member {
            topic: topic.to_owned(),
            // A UUIDv7's last 16 hex digits are random.
            id: format!(
                "{name}-{}",
                &uuid::Uuid::now_v7().simple().to_string()[16..]
            ),
            instance: settings.instance_id.clone(),
            ttl: Duration::from_millis(settings.session_timeout_ms),
        }
    }

    /// Runs until shutdown: then waits for the consume loop to write its
    /// last batch and leaves, so the others take the partitions at once.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let Some(leases) = self.store.leases() else {
            return Err(ConsumerError::NoLeases(self.store.engine()));
        };
        let Some(partitions) = self.partitions(&shutdown).await? else {
            return Ok(());
        };
        let every = Duration::from_millis(self.settings.heartbeat_ms);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = GroupCheck::new(&self.settings);
        let mut joined = false;
        tracing::info!(member = %self.member.id, instance = %self.member.instance, ?partitions, "joining the group (leases in the store)");
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !joined {
                joined = self.join(leases).await;
                if !joined {
                    continue;
                }
            }
            match self.beat(leases, &partitions, &mut check).await {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), "group heartbeat failed; retrying (leases hold until they run out)");
                    metrics::counter!("group_heartbeat_errors_total").increment(1);
                }
            }
        }
        self.leave(leases).await;
        Ok(())
    }

    /// The orders topic's partitions (`None`: shutdown first).
    async fn partitions(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<i32>>, ConsumerError> {
        let client: Arc<BaseConsumer> =
            Arc::new(client_config(&self.broker, "oms-group").create()?);
        loop {
            match admin::partitions_of(client.clone(), &self.broker).await {
                Ok(partitions) => return Ok(Some(partitions)),
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), "reading the orders topic's partitions; retrying")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(Duration::from_millis(self.settings.retry_max_ms)) => {}
            }
        }
    }

    /// Joins (once per run): an earlier run of this instance is forgotten.
    async fn join(&self, leases: &dyn Leases) -> bool {
        match leases.join(&self.member).await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %Chain(&err), "joining the group failed; retrying");
                false
            }
        }
    }

    /// One heartbeat: renew, give up what was lost, balance, check.
    async fn beat(
        &self,
        leases: &dyn Leases,
        partitions: &[i32],
        check: &mut GroupCheck,
    ) -> Result<(), StoreError> {
        let held = self.ownership.leases();
        let state = self.state();
        let view = tokio::time::timeout(
            self.member.ttl / 2,
            leases.heartbeat(&self.member, state, &held),
        )
        .await
        .map_err(|_| {
            StoreError::unavailable("the group heartbeat took longer than half the session timeout")
        })??;
        for lease in held.iter().filter(|l| !view.renewed.contains(l)) {
            tracing::warn!(
                partition = lease.partition,
                epoch = lease.epoch,
                "lost the partition's lease (it ran out and another member took it); giving it up"
            );
            metrics::counter!("group_leases_lost_total").increment(1);
            self.ownership.revoke(lease.partition);
        }
        let first = !check.formed_once && check.beats == 0;
        self.balance(leases, &view, partitions, first).await?;
        let report = check.run(&view, partitions, &self.status, &self.member.id);
        self.status.set_group(report);
        metrics::gauge!("group_members").set(view.members.len() as f64);
        Ok(())
    }

    /// What this member tells the others it is doing.
    fn state(&self) -> MemberState {
        if self.status.loading() {
            return MemberState::Loading;
        }
        match self.status.get() {
            ConsumerState::Running => MemberState::Running,
            ConsumerState::Starting => MemberState::Loading,
            ConsumerState::Waiting { .. } | ConsumerState::Stopped => MemberState::Waiting,
        }
    }

    /// Takes free partitions up to this member's share, gives up what is
    /// over it. On its first heartbeat a new run of an instance takes over
    /// the leases of the run it replaces, whatever its share.
    async fn balance(
        &self,
        leases: &dyn Leases,
        view: &GroupView,
        partitions: &[i32],
        first: bool,
    ) -> Result<(), StoreError> {
        let quota = view.quota(&self.member.id, partitions.len());
        let mine: Vec<Lease> = view.renewed.clone();
        if mine.len() > quota {
            let mut surplus = mine.clone();
            surplus.sort_by_key(|l| std::cmp::Reverse(l.partition));
            for lease in surplus.into_iter().take(mine.len() - quota) {
                self.give_up(leases, lease).await?;
            }
            return Ok(());
        }
        let takeover = first && !self.member.instance.is_empty();
        let wanted = partitions.iter().filter(|p| {
            let lease = view.leases.get(p);
            let free = lease.is_none_or(|l| !l.live);
            let predecessor = takeover
                && lease.is_some_and(|l| {
                    l.live
                        && l.instance == self.member.instance
                        && l.owner.as_deref() != Some(self.member.id.as_str())
                });
            !mine.iter().any(|l| l.partition == **p) && (free || predecessor)
        });
        let mut room = quota - mine.len();
        for partition in wanted {
            let predecessor = view
                .leases
                .get(partition)
                .is_some_and(|l| l.live && takeover);
            if room == 0 && !predecessor {
                continue;
            }
            if let Some(lease) = leases.acquire(&self.member, *partition, takeover).await? {
                tracing::info!(
                    partition,
                    epoch = lease.epoch,
                    takeover = predecessor,
                    "took the partition's lease"
                );
                metrics::counter!("group_leases_taken_total").increment(1);
                self.ownership.grant(lease);
                room = room.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// Gives up a lease over this member's share: once the consume loop
    /// stopped writing it (at most a third of the lease's time, so the
    /// other leases are renewed in time; a late write is refused by its
    /// epoch anyway).
    async fn give_up(&self, leases: &dyn Leases, lease: Lease) -> Result<(), StoreError> {
        self.ownership.revoke(lease.partition);
        let stopped = self
            .ownership
            .stopped(lease.partition, Some(lease.epoch), self.member.ttl / 3)
            .await;
        if !stopped {
            tracing::warn!(
                partition = lease.partition,
                "the consume loop did not stop the partition in time; giving its lease up anyway (its epoch fences a late write)"
            );
        }
        leases.release(&self.member, lease).await?;
        tracing::info!(
            partition = lease.partition,
            "gave the partition's lease up (over this member's share)"
        );
        Ok(())
    }

    /// Leaves once the consume loop ended (its last batch written).
    async fn leave(&self, leases: &dyn Leases) {
        if !self.ownership.closed(LEAVE_WAIT).await {
            tracing::warn!("the consume loop did not end in time; leaving the group anyway");
        }
        match leases.leave(&self.member).await {
            Ok(()) => tracing::info!("left the group: its partitions are free for the others"),
            Err(err) => {
                tracing::warn!(error = %Chain(&err), "leaving the group failed; its leases run out instead")
            }
        }
    }
}

/// The group check: what every member can see in the shared store — each
/// partition's log end against the store's offset, and who holds it.
#[derive(Debug)]
pub struct GroupCheck {
    /// Partition → since when it waits, and the stored offset then.
    waiting: BTreeMap<i32, (Instant, i64)>,
    unowned_grace: Duration,
    stall_after: Duration,
    /// Seen the group balanced at least once since this member started.
    formed_once: bool,
    beats: u64,
    last_beat: Option<Instant>,
    heartbeat: Duration,
    last_logged: Option<Instant>,
}

impl GroupCheck {
    pub fn new(settings: &ConsumerSettings) -> Self {
        let heartbeat = Duration::from_millis(settings.heartbeat_ms);
        Self {
            waiting: BTreeMap::new(),
            unowned_grace: Duration::from_millis(settings.session_timeout_ms)
                + heartbeat * UNOWNED_GRACE_BEATS,
            stall_after: Duration::from_millis(settings.stall_after_ms),
            formed_once: false,
            beats: 0,
            last_beat: None,
            heartbeat,
            last_logged: None,
        }
    }

    /// Checks one view; returns what `/readyz` says of the group.
    pub fn run(
        &mut self,
        view: &GroupView,
        partitions: &[i32],
        status: &ConsumerStatus,
        me: &str,
    ) -> GroupReport {
        self.beats += 1;
        // Frozen or starved: what was seen before says nothing of now.
        if self.last_beat.is_some_and(|t| {
            t.elapsed() > self.heartbeat * UNOWNED_GRACE_BEATS + self.unowned_grace
        }) {
            self.waiting.clear();
        }
        self.last_beat = Some(Instant::now());
        let balanced = view.balanced(partitions);
        self.formed_once |= balanced;
        let (log_start, log_end) = status.log_bounds();
        let problems = self.undrained(view, partitions, &log_start, &log_end);
        metrics::gauge!("group_partitions_undrained").set(problems.len() as f64);
        let mine: Vec<i32> = view.renewed.iter().map(|l| l.partition).collect();
        let summary = format!(
            "holds {mine:?} of {} partition(s) as {me}; {} member(s)",
            partitions.len(),
            view.members.len()
        );
        if !problems.is_empty()
            && self
                .last_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            tracing::error!(problems = %problems.join("; "), "partitions are left behind: records the store does not hold and no member draining them");
            self.last_logged = Some(Instant::now());
        }
        if !self.formed_once {
            return GroupReport {
                ok: false,
                detail: format!(
                    "forming: not every partition is held and every share taken yet; {summary}"
                ),
            };
        }
        match problems.is_empty() {
            true => GroupReport {
                ok: true,
                detail: summary,
            },
            false => GroupReport {
                ok: false,
                detail: format!("{}; {summary}", problems.join("; ")),
            },
        }
    }

    /// Partitions with records the store does not hold and nobody
    /// draining them: unowned past the grace, or held by a member that
    /// says it runs yet stored nothing of them for `stall_after`.
    fn undrained(
        &mut self,
        view: &GroupView,
        partitions: &[i32],
        log_start: &Offsets,
        log_end: &Offsets,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for p in partitions {
            let stored = view
                .offsets
                .get(p)
                .or_else(|| log_start.get(p))
                .copied()
                .unwrap_or(0);
            let behind = log_end.get(p).map_or(0, |end| end - stored);
            metrics::gauge!("group_partition_lag", "partition" => p.to_string())
                .set(behind.max(0) as f64);
            let holder = view.holder(*p);
            if behind <= 0 || holder.is_some_and(|m| m.state != MemberState::Running) {
                self.waiting.remove(p);
                continue;
            }
            let since = match self.waiting.get(p) {
                Some((since, at)) if *at == stored => *since,
                _ => {
                    self.waiting.insert(*p, (Instant::now(), stored));
                    continue;
                }
            };
            let waited = since.elapsed();
            match holder {
                None if waited >= self.unowned_grace => problems.push(format!(
                    "partition {p}: {behind} record(s) not stored and no live member holds it (for {:.0} s)",
                    waited.as_secs_f64()
                )),
                Some(m) if waited >= self.stall_after => problems.push(format!(
                    "partition {p}: {behind} record(s) not stored and its owner {} stored none of them for {:.0} s",
                    m.id,
                    waited.as_secs_f64()
                )),
                _ => {}
            }
        }
        problems
    }
}
