//! `[consumer]`: the log → store loop, and how instances share it.

use serde::{Deserialize, Serialize};

/// How the consumer takes the partitions of the orders topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerMode {
    /// Assign every partition to this daemon at the store's offsets (no
    /// group join): every instance is a full replica. For embedded stores.
    Assign,
    /// Share the partitions with the other instances on the same store:
    /// each holds leases on its share, kept in the store (Postgres, Redis),
    /// which fences every batch with them. For shared stores.
    Group,
}

/// `[consumer]`: the log → store loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    pub mode: ConsumerMode,
    /// The broker-side consumer group oms commits offsets to, for lag
    /// tooling only: the store says where to resume, and which instance
    /// reads which partition is decided by leases in the store.
    pub group_id: String,
    /// Group mode: the replica this instance stands for (letters, digits,
    /// `.`, `_`, `-`). A new run under the same id takes over the
    /// partitions of the run it replaces at once (a restart does not wait
    /// for the old run's leases to run out), as Kafka's static membership
    /// does. Empty: a member of its own.
    pub instance_id: String,
    /// Group mode: how often a member renews its membership and leases in
    /// the store, takes or gives up partitions, and checks the group.
    pub heartbeat_ms: u64,
    /// Group mode: how long the store keeps a member and its leases
    /// without a heartbeat. A member frozen or cut off for longer loses its
    /// partitions to the others (and every batch it still writes is
    /// refused); a stopped one hands them over at once.
    pub session_timeout_ms: u64,
    /// Most records written in one store transaction.
    pub batch_max: usize,
    /// Longest a batch waits to fill after its first record (0: a batch is
    /// what the last fetch brought, which keeps read-after-write short).
    pub batch_wait_ms: u64,
    /// The broker answers a fetch once it has this many bytes (or after
    /// `fetch_wait_ms`): fewer, fuller fetches cost the broker less; a
    /// lightly loaded log then reaches the store up to `fetch_wait_ms` later.
    /// (tansu 0.6 always waits the full `fetch_wait_ms`, data or not: a
    /// record reaches the store 1–2 waits after its ack. 10 ms keeps
    /// read-after-write p99 near 10 ms idle for ~100 fetches a second.)
    pub fetch_min_bytes: u32,
    /// Longest the broker holds a fetch waiting for `fetch_min_bytes`.
    pub fetch_wait_ms: u64,
    /// Most KiB librdkafka prefetches ahead of the store, all partitions
    /// together (`queued.max.messages.kbytes`; its default of 64 MiB, with
    /// redb's and sled's 1 GiB caches, made a rebuild's RSS grow past 600 MiB).
    pub prefetch_kbytes: u32,
    /// First retry delay after a transient store or broker failure.
    pub retry_min_ms: u64,
    /// Cap of the exponential retry delay.
    pub retry_max_ms: u64,
    /// Records wait past the stored offsets and nothing was stored for this
    /// long although the store answers: the consumer is stalled — `/readyz`
    /// says so and the broker consumer is recreated.
    pub stall_after_ms: u64,
    /// On start the consumer reads from this many records before the offset
    /// the store holds and drops what is already stored: a broker that
    /// answers a fetch from inside a batch with the *next* batch (tansu's
    /// memory engine) would otherwise skip the rest of the batch.
    pub resume_rewind: i64,
    /// Match every order against its symbol's book as it is consumed
    /// (status, fills, trades, cancels). Off: orders are only stored, stay
    /// `open`, and `DELETE /orders/{id}` answers 501.
    pub matching: bool,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            mode: ConsumerMode::Assign,
            group_id: "oms".into(),
            instance_id: String::new(),
            heartbeat_ms: 1_000,
            session_timeout_ms: 6_000,
            batch_max: 1_000,
            batch_wait_ms: 0,
            fetch_min_bytes: 1,
            fetch_wait_ms: 10,
            prefetch_kbytes: 4_096,
            retry_min_ms: 50,
            retry_max_ms: 5_000,
            stall_after_ms: 10_000,
            resume_rewind: 1_000,
            matching: true,
        }
    }
}
