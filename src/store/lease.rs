//! Partition leases: how instances that share a store (group mode) share
//! the partitions of the orders topic, with the store as the referee.
//!
//! A lease names the one writer of a partition and carries an **epoch**
//! that moves on every time the partition changes hands (taken, given up,
//! taken over). Every batch a member writes carries the lease it holds for
//! each partition ([`Claim`]), and the store checks it inside the batch's
//! own transaction — a fencing token: a member that lost a partition while
//! it was frozen, slow or cut off can never write after the new owner,
//! whatever it still believes. A lease also has an expiry, kept by the
//! store's clock (never the members'): a member renews its leases with
//! every heartbeat, and one that stops is replaced once its time ran out.
//!
//! The broker's consumer-group protocol is not used for this: tansu 0.6's
//! coordinator never evicts a static member, and wedges a group whose
//! leader leaves while it forms (docs/architecture.md, "Group mode") —
//! partitions left unowned while every instance said ready. The store
//! already fences every write, so it can also say who may write.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::domain::Offsets;

/// One partition held by one member at one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lease {
    pub partition: i32,
    pub epoch: i64,
}

/// What a member is doing, as the others see it in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Consuming (or idle with nothing to read).
    Running,
    /// Rebuilding books or reading the store's offsets: no progress is due.
    Loading,
    /// Waiting out a failure it reports (store or broker down).
    Waiting,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Running => "running",
            MemberState::Loading => "loading",
            MemberState::Waiting => "waiting",
        }
    }

    /// The state a store gave back; an unknown word (a newer oms) reads as
    /// running, which is what the group check assumes of a stranger.
    pub fn parse(s: &str) -> MemberState {
        match s {
            "loading" => MemberState::Loading,
            "waiting" => MemberState::Waiting,
            _ => MemberState::Running,
        }
    }
}

/// A member of the group: one run of one oms process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The orders topic whose partitions are shared.
    pub topic: String,
    /// Unique per run (a restarted process is a new member).
    pub id: String,
    /// `consumer.instance_id`: the replica this run stands for (empty: none).
    /// A new run takes over the leases of an earlier run of the same
    /// instance at once, as Kafka's static membership does.
    pub instance: String,
    /// How long the store keeps the member and its leases without a heartbeat.
    pub ttl: Duration,
}

impl Member {
    pub fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A member as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: String,
    pub instance: String,
    pub state: MemberState,
}

/// A partition's lease as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub partition: i32,
    pub epoch: i64,
    /// The member that holds it (`None`: given up).
    pub owner: Option<String>,
    /// The instance of that member (empty: none, or given up).
    pub instance: String,
    /// Held and not yet run out, by the store's clock.
    pub live: bool,
}

/// The group as one heartbeat read it, in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupView {
    /// Live members, this one included, in id order.
    pub members: Vec<MemberView>,
    /// Every partition's lease the store knows (a partition never leased has none).
    pub leases: BTreeMap<i32, LeaseView>,
    /// The store's offsets of the topic.
    pub offsets: Offsets,
    /// The leases this heartbeat renewed (the others the member held are lost).
    pub renewed: Vec<Lease>,
}

/// A member as a store's row gives it: id, instance, state.
pub type MemberRow = (String, String, String);
/// A lease as a store's row gives it: partition, epoch, owner, instance, live.
pub type LeaseRow = (i32, i64, Option<String>, String, bool);

impl GroupView {
    /// The view from a store's rows (the members in any order).
    pub fn from_rows(mut members: Vec<MemberRow>, leases: Vec<LeaseRow>, offsets: Offsets) -> Self {
        members.sort();
        Self {
            members: members
                .into_iter()
                .map(|(id, instance, state)| MemberView {
                    id,
                    instance,
                    state: MemberState::parse(&state),
                })
                .collect(),
            leases: leases
                .into_iter()
                .map(|(partition, epoch, owner, instance, live)| {
                    let lease = LeaseView {
                        partition,
                        epoch,
                        owner,
                        instance,
                        live,
                    };
                    (partition, lease)
                })
                .collect(),
            offsets,
            renewed: Vec::new(),
        }
    }

    /// The partitions `member` should hold with `partitions` shared among
    /// the live members: an equal share, the first `partitions % members`
    /// members (in id order) one more. Every member computes the same
    /// shares from the same view, and they add up to the partitions.
    pub fn quota(&self, member: &str, partitions: usize) -> usize {
        let n = self.members.len().max(1);
        let rank = self
            .members
            .iter()
            .position(|m| m.id == member)
            .unwrap_or(n - 1);
        partitions / n + usize::from(rank < partitions % n)
    }

    /// Every partition is held by a live member and every member holds
    /// its share: nothing is left to move.
    pub fn balanced(&self, partitions: &[i32]) -> bool {
        let mut held = BTreeMap::<&str, usize>::new();
        for p in partitions {
            match self.leases.get(p) {
                Some(LeaseView {
                    owner: Some(owner),
                    live: true,
                    ..
                }) => *held.entry(owner.as_str()).or_default() += 1,
                _ => return false,
            }
        }
        self.members.iter().all(|m| {
            held.get(m.id.as_str()).copied().unwrap_or_default()
                == self.quota(&m.id, partitions.len())
        }) && held
            .keys()
            .all(|owner| self.members.iter().any(|m| m.id == *owner))
    }

    /// The state of the member holding `partition`'s live lease, if any.
    pub fn holder(&self, partition: i32) -> Option<&MemberView> {
        let lease = self.leases.get(&partition).filter(|l| l.live)?;
        let owner = lease.owner.as_deref()?;
        self.members.iter().find(|m| m.id == owner)
    }
}

/// The leases a batch is written under: for each of its partitions, the
/// epoch its writer holds. The store refuses the whole batch with
/// [`StoreError::Fenced`] unless every one is still held by `owner` at
/// that epoch — checked in the batch's own transaction, so a lease taken
/// over while the batch was on its way fences it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub owner: String,
    pub epochs: BTreeMap<i32, i64>,
}

impl Claim {
    /// Checks the leases as the store holds them (`current`: partition →
    /// epoch and owner, read inside the write transaction).
    pub fn check(
        &self,
        topic: &str,
        current: &BTreeMap<i32, (i64, Option<String>)>,
    ) -> Result<(), StoreError> {
        for (partition, epoch) in &self.epochs {
            let held = current.get(partition);
            let ours = held.is_some_and(|(e, owner)| {
                e == epoch && owner.as_deref() == Some(self.owner.as_str())
            });
            if !ours {
                return Err(self.fenced(topic, *partition, held.cloned()));
            }
        }
        Ok(())
    }

    /// The refusal of a batch whose lease of `partition` the store holds as
    /// `held` (epoch, owner; `None`: no lease) — the one wording, whichever
    /// engine checked it.
    pub fn fenced(
        &self,
        topic: &str,
        partition: i32,
        held: Option<(i64, Option<String>)>,
    ) -> StoreError {
        let epoch = self.epochs.get(&partition).copied().unwrap_or_default();
        StoreError::Fenced {
            partition,
            what: format!(
                "{topic} partition {partition}: this writer ({}) holds its lease at epoch {epoch}, the store has {}",
                self.owner,
                match held {
                    None => "no lease".to_owned(),
                    Some((e, None)) => format!("epoch {e}, given up"),
                    Some((e, Some(owner))) => format!("epoch {e} held by {owner}"),
                }
            ),
        }
    }
}

/// A store that can referee the partitions' leases (the shared engines:
/// Postgres and Redis). Every method runs as one transaction on the store.
#[async_trait]
pub trait Leases: Send + Sync {
    /// A new run of `member` joins: earlier runs of the same instance are
    /// forgotten as members (their leases stay until taken over).
    async fn join(&self, member: &Member) -> Result<(), StoreError>;

    /// Registers or refreshes `member` in `state` until its ttl from now,
    /// forgets members whose time ran out, renews the leases of `held`
    /// that `member` still holds at their epoch (a lease that ran out but
    /// was not taken counts as still held), and returns the group.
    async fn heartbeat(
        &self,
        member: &Member,
        state: MemberState,
        held: &[Lease],
    ) -> Result<GroupView, StoreError>;

    /// Takes `partition` if its lease is free, ran out, or — `takeover` —
    /// is held by an earlier run of the same instance; its epoch moves on.
    /// `None`: it is another member's.
    async fn acquire(
        &self,
        member: &Member,
        partition: i32,
        takeover: bool,
    ) -> Result<Option<Lease>, StoreError>;

    /// Gives `lease` up (if `member` still holds it): its epoch moves on,
    /// so nothing more is written under it, and it is free at once.
    async fn release(&self, member: &Member, lease: Lease) -> Result<(), StoreError>;

    /// Leaves the group: every lease of `member` given up, its membership gone.
    async fn leave(&self, member: &Member) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> MemberView {
        MemberView {
            id: id.into(),
            instance: String::new(),
            state: MemberState::Running,
        }
    }

    fn held(partition: i32, owner: &str) -> (i32, LeaseView) {
        (
            partition,
            LeaseView {
                partition,
                epoch: 1,
                owner: Some(owner.into()),
                instance: String::new(),
                live: true,
            },
        )
    }

    #[test]
    fn shares_add_up_to_the_partitions_whatever_the_members() {
        for members in 1..=5 {
            for partitions in 0..=7 {
                let view = GroupView {
                    members: (0..members).map(|m| member(&format!("m{m}"))).collect(),
                    ..GroupView::default()
                };
                let total: usize = (0..members)
                    .map(|m| view.quota(&format!("m{m}"), partitions))
                    .sum();
                assert_eq!(
                    total, partitions,
                    "{members} members, {partitions} partitions"
                );
            }
        }
    }

    #[test]
    fn a_group_is_balanced_only_when_every_partition_is_live_and_every_share_held() {
        let mut view = GroupView {
            members: vec![member("a"), member("b")],
            leases: [held(0, "a"), held(1, "a"), held(2, "b")].into(),
            ..GroupView::default()
        };
        assert!(view.balanced(&[0, 1, 2]));
        view.leases.insert(2, held(2, "a").1);
        assert!(!view.balanced(&[0, 1, 2]), "b holds less than its share");
        view.leases.insert(2, held(2, "gone").1);
        assert!(!view.balanced(&[0, 1, 2]), "held by a member that left");
        view.leases.remove(&2);
        assert!(!view.balanced(&[0, 1, 2]), "a partition nobody holds");
    }

    #[test]
    fn a_claim_holds_only_at_its_own_epoch_and_owner() {
        let claim = Claim {
            owner: "a".into(),
            epochs: [(0, 3)].into(),
        };
        let store =
            |epoch, owner: Option<&str>| BTreeMap::from([(0, (epoch, owner.map(str::to_owned)))]);
        assert!(claim.check("t", &store(3, Some("a"))).is_ok());
        for refused in [
            store(4, Some("b")),
            store(4, None),
            store(3, Some("b")),
            BTreeMap::new(),
        ] {
            let err = claim.check("t", &refused).expect_err("fenced");
            assert!(
                matches!(err, StoreError::Fenced { partition: 0, .. }),
                "{err}"
            );
        }
    }
}
