//! The engine registry and `store.url`: every engine's name, URL scheme
//! and default location, in one table.

use std::path::Path;

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
    /// In this process' memory, snapshots in a folder, the log as the journal.
    Memory,
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
    pub const ALL: [Engine; 5] = [
        Engine::Redb,
        Engine::Sled,
        Engine::Postgres,
        Engine::Redis,
        Engine::Memory,
    ];

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
            Engine::Memory => EngineInfo {
                name: "memory",
                default_url: "memory:///dev/shm/oms-snapshots",
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
        matches!(self, Engine::Redb | Engine::Sled | Engine::Memory)
    }

    fn from_scheme(scheme: &str) -> Option<Engine> {
        Engine::ALL.into_iter().find(|e| {
            let info = e.info();
            info.name == scheme || info.aliases.contains(&scheme)
        })
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        Engine::from_scheme(name).ok_or_else(|| {
            let known: Vec<&str> = Engine::ALL.iter().map(|e| e.as_str()).collect();
            format!(
                "unknown store engine {name:?}; expected one of {}",
                known.join(", ")
            )
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
