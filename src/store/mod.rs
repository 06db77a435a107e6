//! The store seam: a materialised view of the orders log.
//!
//! Exactly-once rests on one rule: [`Store::apply`] writes a batch of orders
//! *and* the next log offset of every partition it covers in one atomic
//! transaction, and the consumer seeks to [`Store::offsets`] on start. A crash
//! at any point then neither loses nor duplicates a row.
//!
//! Adding an engine = one new module, one arm in [`open`] (and its name,
//! URL scheme and default location in [`Engine`]'s table), one line in the
//! contract tests.

pub mod lease;
pub mod memory;
pub mod postgres;
pub mod redb;
pub mod redis;
pub mod settings;
pub mod sled;
pub mod url;

#[cfg(test)]
pub(crate) mod contract;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{Account, Offsets, OrderState, StoredOrder, StoredTrade};
use settings::StoreSettings;
use url::Engine;

/// What one consumer batch asks the store to write, atomically.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Topic the offsets belong to.
    pub topic: String,
    /// Orders to insert; an id already stored is skipped (first write wins).
    pub orders: Vec<StoredOrder>,
    /// Fills to write (each replaces the order's previous fill); an order
    /// whose fill is live joins its partition's resting index, any other
    /// leaves it.
    pub states: Vec<OrderState>,
    /// Trades to insert; an id already stored is skipped (a trade id names
    /// its two orders, so a replay cannot make a second trade).
    pub trades: Vec<StoredTrade>,
    /// For every partition the batch covers, the offset to resume from.
    pub offsets: Offsets,
    /// For every partition in `offsets`, the next offset the writer believes
    /// the store holds now (absent: none stored yet). When set, the store
    /// refuses the whole batch with [`StoreError::Diverged`] unless each
    /// partition is at that offset — or, for a [`Batch::retried`] batch,
    /// already at the batch's own target. That check runs inside the same
    /// transaction as the write: an instance that lost a partition (a zombie)
    /// can never write after its new owner, and a store that lost data behind
    /// oms' back is noticed instead of being written on top of.
    pub expected: Option<Offsets>,
    /// This is an attempt after one whose answer was lost (it may have
    /// committed), so a store already at the batch's target counts as this
    /// batch applied. Never on a first attempt: there a store at the target
    /// was moved by another writer, whose fills came from its own books —
    /// a writer that took them for its own would match on from books that
    /// never saw those records.
    pub retried: bool,
    /// Group mode: the leases this batch is written under (see
    /// [`lease::Claim`]); the store refuses it with [`StoreError::Fenced`]
    /// unless its writer still holds every one.
    pub claim: Option<lease::Claim>,
    /// Fault injection for the contract tests: the engine writes everything,
    /// then fails instead of committing, so atomicity can be observed.
    #[cfg(test)]
    pub fail_before_commit: bool,
}

impl Batch {
    /// A batch of `orders` that moves `topic`'s partitions to `offsets`.
    pub fn new(topic: impl Into<String>, orders: Vec<StoredOrder>, offsets: Offsets) -> Self {
        Self {
            topic: topic.into(),
            orders,
            states: Vec::new(),
            trades: Vec::new(),
            offsets,
            expected: None,
            retried: false,
            claim: None,
            #[cfg(test)]
            fail_before_commit: false,
        }
    }

    /// The same batch, also writing what matching its records did.
    pub fn matched(mut self, states: Vec<OrderState>, trades: Vec<StoredTrade>) -> Self {
        self.states = states;
        self.trades = trades;
        self
    }

    /// The same batch, written only if the store is where `expected` says.
    pub fn expecting(mut self, expected: Offsets) -> Self {
        self.expected = Some(expected);
        self
    }

    /// The same batch, written only while `claim`'s leases are its writer's.
    pub fn claiming(mut self, claim: Option<lease::Claim>) -> Self {
        self.claim = claim;
        self
    }

    /// Whether the store must check anything before it writes (fenced by
    /// offsets or by leases).
    pub fn is_fenced(&self) -> bool {
        self.expected.is_some() || self.claim.is_some()
    }

    /// The same batch, sent again after an attempt whose answer was lost.
    pub fn retry(&self) -> Self {
        Self {
            retried: true,
            ..self.clone()
        }
    }

    /// The offsets this batch moves, given where the store is (`current`):
    /// offsets only move forward, whoever writes — a partition the store
    /// is already past keeps its offset.
    pub fn forward<'a>(&'a self, current: &'a Offsets) -> impl Iterator<Item = (i32, i64)> + 'a {
        self.offsets
            .iter()
            .filter(move |(p, next)| current.get(p).is_none_or(|now| now <= *next))
            .map(|(p, next)| (*p, *next))
    }

    /// Checks the store's current offsets of the batch's partitions
    /// (`current`, read inside the write transaction) against `expected`.
    pub fn check(&self, current: &Offsets) -> Result<(), StoreError> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let off = self.offsets.iter().find(|(p, target)| {
            let now = current.get(p);
            now != expected.get(p) && !(self.retried && now == Some(target))
        });
        match off {
            None => Ok(()),
            Some((p, _)) => Err(self.diverged(*p, current.get(p).copied())),
        }
    }

    /// The refusal of this batch because partition `p` is at `current` in
    /// the store (`None`: nothing stored) — the one wording of the fencing
    /// rule, whichever engine checked it (the Redis script reports only the
    /// partition and what it found).
    pub fn diverged(&self, p: i32, current: Option<i64>) -> StoreError {
        let expected = self.expected.as_ref().and_then(|e| e.get(&p));
        let target = self.offsets.get(&p);
        StoreError::Diverged {
            what: format!(
                "{} partition {p} is at {} in the store; this writer expected {}{}",
                self.topic,
                show(current.as_ref()),
                show(expected),
                match (self.retried, target) {
                    (true, Some(target)) => format!(" (or {target} if this batch was applied)"),
                    _ => String::new(),
                },
            ),
        }
    }
}

fn show(offset: Option<&i64>) -> String {
    offset.map_or_else(|| "nothing stored".to_owned(), i64::to_string)
}

/// JSON of a value an engine writes as bytes (an order, a fill, a trade).
pub(crate) fn to_json(what: &'static str, value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::permanent(format!("cannot encode {what}"), e))
}

/// A value an engine wrote with [`to_json`].
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::permanent(
            format!("a stored {what} does not decode (corrupt store?)"),
            e,
        )
    })
}

/// The first id (as a `u128` key) of a page strictly after `after`;
/// `None` when nothing can follow it (the largest id).
pub(crate) fn first_after(after: Option<Uuid>) -> Option<u128> {
    match after {
        Some(id) => id.as_u128().checked_add(1),
        None => Some(0),
    }
}

/// What [`Store::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub inserted: usize,
    pub duplicates: usize,
}

impl Applied {
    /// `inserted` of the batch's orders were new; the rest were there.
    pub fn of(batch: &Batch, inserted: usize) -> Self {
        Self {
            inserted,
            duplicates: batch.orders.len().saturating_sub(inserted),
        }
    }
}

/// What caused a [`StoreError`]: the engine's own error.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store failure, typed by what the consumer must do about it. The
/// engine's error is kept as the source; print it all with
/// [`crate::error::Chain`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Retry later: the store is unavailable or busy (disk full, connection lost).
    #[error("store temporarily unavailable: {what}")]
    Transient {
        what: String,
        #[source]
        source: Option<Cause>,
    },
    /// Retrying will not help: the data (or the store file) is refused.
    #[error("store refused the write: {what}")]
    Permanent {
        what: String,
        #[source]
        source: Option<Cause>,
    },
    /// The store's offsets are not where this writer expected them (see
    /// [`Batch::expected`]): nothing of the batch was written. Another
    /// instance took the partition over, or the store lost data; the
    /// consumer reads the store's offsets again.
    #[error("the store's offsets moved under this consumer: {what}")]
    Diverged { what: String },
    /// Group mode: the writer no longer holds the lease of `partition` (see
    /// [`lease::Claim`]); nothing of the batch was written. Another member
    /// took the partition over while this one was frozen, slow or cut off.
    #[error("the partition's lease is another member's: {what}")]
    Fenced { partition: i32, what: String },
    /// The engine's worker thread panicked: a bug (in oms or the engine).
    /// The consumer treats the batch as refused, so its records are
    /// dead-lettered one by one instead of crashing the loop forever.
    #[error("the {engine} store's worker thread failed (a bug; please report it)")]
    Crashed {
        engine: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl StoreError {
    pub fn transient(what: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self::Transient {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    pub fn permanent(what: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self::Permanent {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// A transient failure oms itself detected (no underlying error).
    pub fn unavailable(what: impl Into<String>) -> Self {
        Self::Transient {
            what: what.into(),
            source: None,
        }
    }

    /// A refusal oms itself decided (no underlying error).
    pub fn refused(what: impl Into<String>) -> Self {
        Self::Permanent {
            what: what.into(),
            source: None,
        }
    }

    /// Retrying the same write cannot succeed: the rows themselves are
    /// refused (they go to the dead-letter topic).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent { .. } | Self::Crashed { .. })
    }
}

/// Orders read per step of [`Store::list_owned`]'s default walk.
const OWNED_SCAN_PAGE: usize = 1_000;

/// A materialised view of the orders log. Every method is safe to call
/// concurrently; blocking engines run their work off the async workers.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The engine's name, for logs and metric labels.
    fn engine(&self) -> &'static str;

    /// Writes the orders and the offsets in one transaction: all or nothing.
    async fn apply(&self, batch: Arc<Batch>) -> Result<Applied, StoreError>;

    /// The offsets last applied for `topic` (empty when the store is new).
    async fn offsets(&self, topic: &str) -> Result<Offsets, StoreError>;

    /// Drops the offsets of `partitions`, so they are read again from the
    /// start of the log; the orders, fills and trades stay. Offsets only
    /// ever move forward otherwise: this is for a log that was replaced
    /// (see `consumer::resume`), whose offsets start again at 0.
    async fn forget_offsets(&self, topic: &str, partitions: &[i32]) -> Result<(), StoreError>;

    /// One order by id, with its fill.
    async fn get(&self, id: Uuid) -> Result<Option<StoredOrder>, StoreError>;

    /// Orders of one symbol in id order, strictly after `after`, at most
    /// `limit`, with their fills.
    async fn list_by_symbol(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError>;

    /// The orders of `account` of one symbol in id order, strictly after
    /// `after`, at most `limit`, with their fills (`GET /orders`: a caller
    /// lists its own). This default walks the symbol's orders a page at a
    /// time and keeps the account's; an engine with an index by account
    /// answers from it instead.
    async fn list_owned(
        &self,
        account: &Account,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let mut owned = Vec::with_capacity(limit);
        let mut cursor = after;
        loop {
            let page = self.list_by_symbol(symbol, cursor, OWNED_SCAN_PAGE).await?;
            let last = page.len() < OWNED_SCAN_PAGE;
            cursor = page.last().map(|o| o.order.id);
            for stored in page {
                if stored.order.account.as_ref() == Some(account) {
                    owned.push(stored);
                    if owned.len() == limit {
                        return Ok(owned);
                    }
                }
            }
            if last {
                return Ok(owned);
            }
        }
    }

    /// Which of `ids` are stored (matching skips a repeated order).
    async fn known(&self, ids: Vec<Uuid>) -> Result<HashSet<Uuid>, StoreError>;

    /// The orders resting in `partition`'s books, with their fills, in log
    /// order: what a book is rebuilt from.
    async fn resting(&self, partition: i32) -> Result<Vec<StoredOrder>, StoreError>;

    /// Trades of one symbol in id order, strictly after `after`, at most `limit`.
    async fn trades(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredTrade>, StoreError>;

    /// Number of stored orders.
    async fn count(&self) -> Result<u64, StoreError>;

    /// Cheap liveness probe for `/readyz`.
    async fn health(&self) -> Result<(), StoreError>;

    /// The partitions' leases, for group mode: `None` for an engine whose
    /// data only one process sees (redb, sled), which group mode refuses.
    fn leases(&self) -> Option<&dyn lease::Leases> {
        None
    }
}

/// Opens the engine `store.url` names, with its own section's settings.
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn Store>, StoreError> {
    let url = &settings.url;
    let folder = || url.path().unwrap_or(Path::new("/"));
    match url.engine() {
        Engine::Redb => Ok(Arc::new(
            redb::RedbStore::open_with(folder(), &settings.redb).await?,
        )),
        Engine::Sled => Ok(Arc::new(
            sled::SledStore::open_with(folder(), &settings.sled).await?,
        )),
        Engine::Postgres => Ok(Arc::new(
            postgres::PostgresStore::connect(url.as_str(), &settings.postgres).await?,
        )),
        Engine::Redis => Ok(Arc::new(
            redis::RedisStore::open(url.as_str(), &settings.redis).await?,
        )),
        Engine::Memory => Ok(Arc::new(
            memory::MemoryStore::open(folder(), &settings.memory).await?,
        )),
    }
}
