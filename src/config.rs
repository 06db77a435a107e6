//! Layered settings: built-in defaults < a TOML file given with `-c` <
//! `OMS__SECTION__KEY` environment variables < command-line flags.
//!
//! Every default lives here, in one place, and is chosen so that `oms serve`
//! works on a developer machine with no file at all.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which store the consumer writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// redb: one file, on tmpfs by default.
    Redb,
    /// sled: one folder, on tmpfs by default.
    Sled,
    /// PostgreSQL: durable and queryable.
    Postgres,
    /// Redis: an in-memory database server, persistence a setting.
    Redis,
}

/// What [`StoreUrl`] needs to know about an engine.
struct EngineInfo {
    /// Name in config, flags and metric labels; also the URL scheme.
    name: &'static str,
    /// Its URL when only the engine is named (`--store sled`).
    default_url: &'static str,
    /// Other schemes it answers to.
    aliases: &'static [&'static str],
}

impl Engine {
    /// Every engine, for error messages and parsing.
    pub const ALL: [Engine; 4] = [Engine::Redb, Engine::Sled, Engine::Postgres, Engine::Redis];

    fn info(self) -> EngineInfo {
        match self {
            Engine::Redb => EngineInfo {
                name: "redb",
                default_url: "redb:///dev/shm/oms",
                aliases: &[],
            },
            Engine::Sled => EngineInfo {
                name: "sled",
                default_url: "sled:///dev/shm/oms",
                aliases: &[],
            },
            Engine::Postgres => EngineInfo {
                name: "postgres",
                default_url: "postgres://oms:oms@127.0.0.1:5432/oms",
                aliases: &["postgresql"],
            },
            Engine::Redis => EngineInfo {
                name: "redis",
                default_url: "redis://127.0.0.1:6379/0",
                aliases: &[],
            },
        }
    }

    /// The engine's name, as used in config, flags and metric labels.
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// The engine at its default location (`--store redb`).
    pub fn default_url(self) -> StoreUrl {
        self.info()
            .default_url
            .parse()
            .unwrap_or_else(|e| unreachable!("a built-in store URL parses: {e}"))
    }

    /// Whether the engine keeps its data in files of its own (a path), rather
    /// than in a server (a connection URL).
    pub fn is_embedded(self) -> bool {
        matches!(self, Engine::Redb | Engine::Sled)
    }

    fn from_scheme(scheme: &str) -> Option<Engine> {
        Engine::ALL.into_iter().find(|e| {
            let info = e.info();
            info.name == scheme || info.aliases.contains(&scheme)
        })
    }
}

/// `store.url`: which engine keeps the orders and where, as one URL —
/// `redb:///dev/shm/oms`, `sled:///dev/shm/oms` (a folder), a PostgreSQL
/// connection URL `postgres://user:password@host:5432/database`, or a Redis
/// one `redis://[:password@]host:6379/db`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StoreUrl {
    engine: Engine,
    url: String,
}

impl StoreUrl {
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The folder of an embedded engine (`None` for a server).
    pub fn path(&self) -> Option<&Path> {
        self.engine
            .is_embedded()
            .then(|| Path::new(self.url.split_once("://").map_or("", |(_, path)| path)))
    }

    /// An embedded engine's URL for a folder.
    pub fn embedded(engine: Engine, path: &Path) -> Result<StoreUrl, String> {
        format!("{}://{}", engine.as_str(), path.display()).parse()
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The URL for logs and error messages: a password is replaced by `***`.
    pub fn redacted(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((user_info, host)) => match user_info.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                    None => self.url.clone(),
                },
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        let known = || {
            Engine::ALL
                .iter()
                .map(|e| format!("{}://", e.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!(
                "store.url {url:?} is not a URL; expected one of {}",
                known()
            ));
        };
        let engine = Engine::from_scheme(scheme).ok_or_else(|| {
            format!(
                "store.url {url:?}: unknown store engine {scheme:?}; expected one of {}",
                known()
            )
        })?;
        if engine.is_embedded() && !rest.starts_with('/') {
            return Err(format!(
                "store.url {url:?}: {scheme} needs an absolute folder, e.g. {scheme}:///dev/shm/oms"
            ));
        }
        Ok(StoreUrl {
            engine,
            url: url.to_owned(),
        })
    }
}

impl TryFrom<String> for StoreUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<StoreUrl> for String {
    fn from(u: StoreUrl) -> String {
        u.url
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

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

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// All of oms' settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub broker: BrokerSettings,
    pub consumer: ConsumerSettings,
    pub store: StoreSettings,
    pub telemetry: TelemetrySettings,
    pub memory: MemorySettings,
    /// What the operator should change (deprecated keys), to log once
    /// logging is set up.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// `[http]`: the order API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address; port 0 picks a free port.
    pub addr: String,
    /// Largest request body accepted; larger ones get 413.
    pub body_limit_bytes: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_timeout_ms: u64,
    /// A `GET /orders/{id}` that misses waits at most this long for the
    /// consumer to store every record the log is known to hold (a read
    /// right after the `202`), before it answers.
    pub read_wait_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            body_limit_bytes: 16 * 1024,
            shutdown_timeout_ms: 10_000,
            read_wait_ms: 1_000,
        }
    }
}

/// `[broker]`: the Kafka-API log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// `bootstrap.servers` for librdkafka.
    pub bootstrap: String,
    /// Topic of accepted orders.
    pub topic: String,
    /// Dead-letter topic for records the consumer cannot store.
    pub dlq_topic: String,
    /// Topic the consumer publishes every trade to (key `SRC-DST`).
    pub trades_topic: String,
    /// Partitions `oms migrate` creates the orders topic with.
    pub partitions: i32,
    /// Replication factor `oms migrate` asks for (1 for a single local broker).
    pub replication: i32,
    /// Longest a `POST /orders` waits for the broker's ack before answering 503.
    pub produce_timeout_ms: u64,
    /// Producer `linger.ms`: how long records wait to be batched. With a
    /// closed-loop client every ms of it is latency and so throughput. Below
    /// the broker's produce latency, librdkafka's broker thread busy-polls
    /// whenever a partition has its 5 idempotent requests in flight and a
    /// batch past its linger: on the unpatched tansu (~7 ms per produce) 1 ms
    /// cost 209 µs of oms CPU per order; on the patched one (deployment/tansu)
    /// 2 ms costs what 5 ms did and serves 1.6× the orders at 35 connections
    /// (bench/analysis.md).
    pub linger_ms: u64,
    /// Producer `compression.type`: none, lz4, zstd, snappy or gzip. `none`
    /// on loopback: tansu inflates every batch on produce and serves records
    /// uncompressed, so compressing only costs CPU on both sides.
    pub compression: String,
    /// `Retry-After` seconds sent with a 503.
    pub retry_after_secs: u32,
    /// `oms dlq replay` re-drives a record at most this many times; after
    /// that it stays in the dead-letter topic for a human.
    pub dlq_max_replays: u32,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            topic: "orders".into(),
            dlq_topic: "orders.dlq".into(),
            trades_topic: "trades".into(),
            partitions: 3,
            replication: 1,
            produce_timeout_ms: 2_000,
            linger_ms: 2,
            compression: "none".into(),
            retry_after_secs: 1,
            dlq_max_replays: 3,
        }
    }
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
    // The flat keys of oms 0.1, read for one more release (with a warning)
    // and folded into the ones above on load: none is set after `load`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_pool: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_mib: Option<u32>,
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
    /// The Redis settings (`CONFIG SET name value`) that give this mode.
    pub fn server_config(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // No snapshots either: "none" means none.
            Self::None => &[("appendonly", "no"), ("save", "")],
            Self::AofEverysec => &[("appendonly", "yes"), ("appendfsync", "everysec")],
            Self::AofAlways => &[("appendonly", "yes"), ("appendfsync", "always")],
        }
    }

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
            engine: None,
            path: None,
            postgres_url: None,
            postgres_pool: None,
            postgres_timeout_ms: None,
            cache_mib: None,
        }
    }
}

impl StoreSettings {
    pub fn engine(&self) -> Engine {
        self.url.engine()
    }

    /// Folds the deprecated keys into `url` and the engine sections; returns
    /// one warning per key found, naming its replacement.
    fn fold_deprecated(&mut self) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        let mut moved = |key: &str, to: &str| {
            warnings.push(format!(
                "store.{key} is deprecated and will be removed in the next release: use {to}"
            ));
        };
        let (old_engine, old_path, old_url) = (
            self.engine.take(),
            self.path.take(),
            self.postgres_url.take(),
        );
        if old_engine.is_some() || old_path.is_some() || old_url.is_some() {
            let engine = old_engine.unwrap_or(self.url.engine());
            self.url = if engine.is_embedded() {
                let path = old_path
                    .clone()
                    .or_else(|| self.url.path().map(Path::to_owned))
                    .unwrap_or_else(|| {
                        engine
                            .default_url()
                            .path()
                            .map(Path::to_owned)
                            .unwrap_or_default()
                    });
                StoreUrl::embedded(engine, &path)?
            } else {
                match &old_url {
                    Some(url) => url.parse()?,
                    None if self.url.engine() == engine => self.url.clone(),
                    None => engine.default_url(),
                }
            };
            let to = format!("store.url = {:?}", self.url.as_str());
            for (key, set) in [
                ("engine", old_engine.is_some()),
                ("path", old_path.is_some()),
                ("postgres_url", old_url.is_some()),
            ] {
                if set {
                    moved(key, &to);
                }
            }
        }
        if let Some(pool) = self.postgres_pool.take() {
            self.postgres.pool = pool;
            moved("postgres_pool", "store.postgres.pool");
        }
        if let Some(ms) = self.postgres_timeout_ms.take() {
            self.postgres.timeout_ms = ms;
            moved("postgres_timeout_ms", "store.postgres.timeout_ms");
        }
        if let Some(mib) = self.cache_mib.take() {
            self.redb.cache_mib = mib;
            self.sled.cache_mib = mib;
            moved("cache_mib", "store.redb.cache_mib and store.sled.cache_mib");
        }
        Ok(warnings)
    }
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// `tracing` filter directives, e.g. `info,oms=debug`.
    pub log_filter: String,
    /// OTLP/HTTP collector base URL (`/v1/traces` is appended), e.g.
    /// `http://localhost:4318`. Empty: no exporter, nothing leaves the process.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces recorded, 0.0–1.0. A request that arrives with a
    /// sampled `traceparent` is always recorded (parent-based sampling).
    pub sample_ratio: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
            service_name: "oms".into(),
            sample_ratio: 1.0,
        }
    }
}

/// `[memory]`: the process' heap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySettings {
    /// Every this often, freed heap pages go back to the system
    /// (`malloc_trim`; glibc keeps them otherwise). 0: never.
    pub trim_every_ms: u64,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            trim_every_ms: 1_000,
        }
    }
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads the layers in order; `overrides` are `("section.key", value)` pairs
    /// from command-line flags and win over everything else.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        Self::load_from(file, overrides, std::env::vars())
    }

    /// [`Settings::load`] with an explicit environment, so tests need not touch
    /// the process environment.
    pub fn load_from(
        file: Option<&Path>,
        overrides: &[(&str, String)],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Settings::default())?);
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let env = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("OMS__"))
            .collect::<std::collections::HashMap<_, _>>();
        builder = builder.add_source(
            config::Environment::with_prefix("OMS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.as_str())?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.warnings = settings
            .store
            .fold_deprecated()
            .map_err(ConfigError::Invalid)?;
        Ok(settings)
    }

    /// Refuses a consumer mode that does not fit the store: `group` splits
    /// the partitions between instances, so with an embedded store each
    /// instance would hold only part of the orders. Checked by `oms serve`
    /// (the other commands do not consume).
    pub fn check_mode(&self) -> Result<(), ConfigError> {
        let engine = self.store.engine();
        if self.consumer.mode == ConsumerMode::Group && engine.is_embedded() {
            return Err(ConfigError::Invalid(format!(
                "consumer.mode = \"group\" shares the partitions between instances, but {} keeps \
                 each instance's orders in its own files: every instance would hold only part of \
                 them. Use consumer.mode = \"assign\" (every instance a full replica) or a shared \
                 store (postgres, redis)",
                engine.as_str()
            )));
        }
        let c = &self.consumer;
        if !c
            .instance_id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
        {
            return Err(ConfigError::Invalid(format!(
                "consumer.instance_id {:?} may hold only letters, digits, '.', '_' and '-'",
                c.instance_id
            )));
        }
        if c.heartbeat_ms == 0 || c.heartbeat_ms.saturating_mul(2) > c.session_timeout_ms {
            return Err(ConfigError::Invalid(format!(
                "consumer.heartbeat_ms ({}) must be above 0 and at most half of \
                 consumer.session_timeout_ms ({}): a member renews its leases several times \
                 before they run out",
                c.heartbeat_ms, c.session_timeout_ms
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let s = Settings::load_from(None, &[], env(&[])).expect("defaults load");
        assert_eq!(s, Settings::default());
        assert_eq!(s.http.addr, "127.0.0.1:8080");
        assert_eq!(s.broker.produce_timeout_ms, 2_000);
    }

    #[test]
    fn the_documented_example_file_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/oms.toml");
        let s = Settings::load_from(Some(&path), &[], env(&[])).expect("configs/oms.toml loads");
        assert_eq!(s, Settings::default());
        // Every key is spelled out in the file, not filled in by defaults.
        let file_only: serde_json::Value = config::Config::builder()
            .add_source(config::File::from(path.as_path()))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("file parses");
        let defaults = serde_json::to_value(Settings::default()).expect("serialise");
        assert_eq!(file_only, defaults);
    }

    #[test]
    fn layers_apply_in_order() {
        let mut file = tempfile::NamedTempFile::with_suffix(".toml").expect("temp file");
        writeln!(
            file,
            "[http]\naddr = \"127.0.0.1:9000\"\n[broker]\ntopic = \"from-file\"\nlinger_ms = 7\n[consumer]\nbatch_max = 10"
        )
        .expect("write");
        let s = Settings::load_from(
            Some(file.path()),
            &[("broker.topic", "from-flag".into())],
            env(&[
                ("OMS__BROKER__TOPIC", "from-env"),
                ("OMS__BROKER__LINGER_MS", "9"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.http.addr, "127.0.0.1:9000", "file beats default");
        assert_eq!(s.broker.linger_ms, 9, "env beats file");
        assert_eq!(s.broker.topic, "from-flag", "flag beats env");
        assert_eq!(s.consumer.batch_max, 10);
        assert_eq!(
            s.consumer.batch_wait_ms,
            ConsumerSettings::default().batch_wait_ms
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let mut file = tempfile::NamedTempFile::with_suffix(".toml").expect("temp file");
        writeln!(file, "[http]\nadr = \"typo\"").expect("write");
        let err = Settings::load_from(Some(file.path()), &[], env(&[])).expect_err("unknown key");
        let err = crate::error::Chain(&err).to_string();
        assert!(err.contains("adr"), "{err}");

        let err = Settings::load_from(None, &[], env(&[("OMS__STORE__URL", "mongo://x")]))
            .expect_err("unknown engine");
        let err = crate::error::Chain(&err).to_string();
        assert!(err.contains("mongo"), "{err}");
        assert!(err.contains("redb://"), "names the known engines: {err}");
        let err = Settings::load_from(None, &[], env(&[("OMS__STORE__URL", "redb://relative")]))
            .expect_err("relative folder");
        let err = crate::error::Chain(&err).to_string();
        assert!(err.contains("absolute"), "{err}");
    }

    #[test]
    fn the_store_is_one_url_with_a_section_per_engine() {
        let s = Settings::load_from(
            None,
            &[],
            env(&[
                ("OMS__STORE__URL", "postgresql://u:p@db:5432/orders"),
                ("OMS__STORE__POSTGRES__POOL", "3"),
                ("OMS__STORE__SLED__CACHE_MIB", "64"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.store.engine(), Engine::Postgres);
        assert_eq!(s.store.url.as_str(), "postgresql://u:p@db:5432/orders");
        assert_eq!(s.store.url.redacted(), "postgresql://u:***@db:5432/orders");
        assert_eq!(s.store.postgres.pool, 3);
        assert_eq!(s.store.sled.cache_mib, 64);
        assert!(s.warnings.is_empty());

        let s = Settings::load_from(None, &[("store.url", "sled:///tmp/o".into())], env(&[]))
            .expect("loads");
        assert_eq!(s.store.engine(), Engine::Sled);
        assert_eq!(s.store.url.path(), Some(Path::new("/tmp/o")));
    }

    #[test]
    fn group_mode_needs_a_shared_store() {
        let group = [("OMS__CONSUMER__MODE", "group")];
        let s = Settings::load_from(None, &[], env(&group)).expect("loads");
        let err = s.check_mode().expect_err("group with redb");
        assert!(err.to_string().contains("assign"), "{err}");
        let s = Settings::load_from(
            None,
            &[("store.url", "postgres://h/db".into())],
            env(&group),
        )
        .expect("loads");
        s.check_mode().expect("group with postgres");
    }

    #[test]
    fn the_old_flat_store_keys_still_work_with_a_warning() {
        let s = Settings::load_from(
            None,
            &[],
            env(&[
                ("OMS__STORE__ENGINE", "postgres"),
                ("OMS__STORE__POSTGRES_URL", "postgres://a:b@h/db"),
                ("OMS__STORE__POSTGRES_POOL", "2"),
                ("OMS__STORE__CACHE_MIB", "16"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.store.url.as_str(), "postgres://a:b@h/db");
        assert_eq!(s.store.postgres.pool, 2);
        assert_eq!((s.store.redb.cache_mib, s.store.sled.cache_mib), (16, 16));
        assert_eq!(
            (s.store.engine, s.store.postgres_pool),
            (None, None),
            "folded"
        );
        assert_eq!(s.warnings.len(), 4, "{:?}", s.warnings);
        assert!(
            s.warnings[0].contains("store.engine")
                && s.warnings[0].contains("store.url = \"postgres://a:b@h/db\""),
            "{:?}",
            s.warnings
        );

        let s = Settings::load_from(
            None,
            &[
                ("store.engine", "sled".into()),
                ("store.path", "/tmp/s".into()),
            ],
            env(&[]),
        )
        .expect("loads");
        assert_eq!(s.store.url.as_str(), "sled:///tmp/s");
        let s =
            Settings::load_from(None, &[("store.path", "/tmp/r".into())], env(&[])).expect("loads");
        assert_eq!(
            s.store.url.as_str(),
            "redb:///tmp/r",
            "the path of the default engine"
        );
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = Settings::load_from(Some(Path::new("/nonexistent/oms.toml")), &[], env(&[]))
            .expect_err("missing file");
        let err = crate::error::Chain(&err).to_string();
        assert!(err.contains("oms.toml"), "{err}");
    }
}
