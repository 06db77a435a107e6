//! `[store]` and one section per engine: which engine keeps the orders,
//! where, and each engine's own settings.

use serde::{Deserialize, Serialize};

use super::url::{Engine, StoreUrl};

/// `[store]`: where consumed orders are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// The engine and where its data lives (see [`StoreUrl`]).
    pub url: StoreUrl,
    /// `[store.redb]`
    pub redb: EmbeddedStoreSettings,
    /// `[store.sled]`
    pub sled: EmbeddedStoreSettings,
    /// `[store.postgres]`
    pub postgres: PostgresSettings,
    /// `[store.redis]`
    pub redis: RedisSettings,
    /// `[store.memory]`
    pub memory: MemoryStoreSettings,
}

/// `[store.memory]`: the in-memory engine and its snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryStoreSettings {
    /// A snapshot is written after this many orders were stored since the
    /// last one (0: not by count). A restart reads the log from the newest
    /// snapshot's offsets, so this bounds how much of the log it reads again.
    pub snapshot_every_orders: u64,
    /// ... or after this long with anything stored (0: not by time).
    pub snapshot_every_ms: u64,
    /// How many snapshots are kept (the newest; at least 1). An older one is
    /// what a restart falls back to when the newest is damaged.
    pub snapshots_kept: usize,
    /// Most memory the state may hold, MiB (an estimate of what the orders,
    /// fills, trades and indexes take; 0: no bound). At the bound the
    /// consumer stops taking batches and `/readyz` says why; the log keeps
    /// every order until the bound is raised.
    pub max_mib: u64,
}

impl Default for MemoryStoreSettings {
    fn default() -> Self {
        Self {
            // A snapshot serialises the whole state (~8 s of one core per
            // million orders, bench/analysis.md): rarely enough that its
            // cost per order stays small, often enough that a restart reads
            // at most this much of the log again.
            snapshot_every_orders: 1_000_000,
            snapshot_every_ms: 300_000,
            snapshots_kept: 3,
            max_mib: 4_096,
        }
    }
}

/// `[store.redb]`, `[store.sled]`: an engine in files of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedStoreSettings {
    /// Page cache, MiB. The engines' defaults (1 GiB) only pay off for data
    /// larger than RAM; the files are on tmpfs, where a miss is a memory copy.
    pub cache_mib: u32,
    /// How long a commit may stay in memory only: a batch's rows and
    /// offsets commit together, and at most this often the commit is made
    /// durable (redb: `Durability::Immediate`, the others `None`; sled: its
    /// `flush_every_ms`). A kill -9 loses the last moments of the *store*,
    /// never of the log: the consumer resumes from the durable offsets and
    /// reads those records again. Writing every commit through (0) cost redb
    /// ~6 µs more CPU per order at ~8,500 orders/s (bench/analysis.md).
    pub durable_every_ms: u64,
}

impl Default for EmbeddedStoreSettings {
    fn default() -> Self {
        Self {
            cache_mib: 32,
            durable_every_ms: 500,
        }
    }
}

/// `[store.postgres]`: the PostgreSQL engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSettings {
    /// Connections in the pool.
    pub pool: u32,
    /// Longest a statement or a connection attempt may take.
    pub timeout_ms: u64,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            pool: 8,
            timeout_ms: 5_000,
        }
    }
}

/// `[store.redis]`: the Redis engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Prefix of every key oms writes, so several deployments (or test
    /// runs) can share one Redis database.
    pub key_prefix: String,
    /// Longest a command or a connection attempt may take.
    pub timeout_ms: u64,
    /// How Redis keeps the orders across its own restarts; oms applies it
    /// (with `maxmemory-policy noeviction`) to every Redis run it meets.
    pub persistence: RedisPersistence,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            key_prefix: "oms".into(),
            timeout_ms: 5_000,
            persistence: RedisPersistence::AofEverysec,
        }
    }
}

/// `store.redis.persistence`. What each loses is in docs/configuration.md;
/// whatever Redis loses, oms notices (the offsets it expects are gone) and
/// rebuilds from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RedisPersistence {
    /// Memory only: a Redis restart starts empty.
    None,
    /// Append-only file, fsynced once a second.
    AofEverysec,
    /// Append-only file, fsynced before every write is answered.
    AofAlways,
}

impl RedisPersistence {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::AofEverysec => "aof-everysec",
            Self::AofAlways => "aof-always",
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            url: Engine::Redb.default_url(),
            redb: EmbeddedStoreSettings::default(),
            sled: EmbeddedStoreSettings::default(),
            postgres: PostgresSettings::default(),
            redis: RedisSettings::default(),
            memory: MemoryStoreSettings::default(),
        }
    }
}

impl StoreSettings {
    pub fn engine(&self) -> Engine {
        self.url.engine()
    }
}
