//! Layered settings: built-in defaults < a TOML file given with `-c` <
//! `OMS__SECTION__KEY` environment variables < command-line flags.
//!
//! One file per section, each with its defaults (chosen so that `oms serve`
//! works on a developer machine with no file at all); the `[store]` section
//! and the engine registry live with the store (`store::settings`,
//! `store::url`). Keys that moved are read for one more release by
//! [`deprecated`], which can be deleted in one commit; the rules between
//! settings are checked at load, in one place ([`checks`]).

pub mod auth;
pub mod broker;
mod checks;
pub mod consumer;
mod deprecated;
pub mod dlq;
pub mod feed;
pub mod http;
pub mod memory;
pub mod migrate;
pub mod telemetry;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::store::settings::{
    EmbeddedStoreSettings, PostgresSettings, RedisPersistence, RedisSettings, StoreSettings,
};
pub use crate::store::url::{Engine, StoreUrl};
pub use auth::AuthSettings;
pub use broker::BrokerSettings;
pub use consumer::{ConsumerMode, ConsumerSettings};
pub use dlq::DlqSettings;
pub use feed::FeedSettings;
pub use http::HttpSettings;
pub use memory::MemorySettings;
pub use migrate::MigrateSettings;
pub use telemetry::{LogFormat, TelemetrySettings};

/// All of oms' settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub broker: BrokerSettings,
    pub consumer: ConsumerSettings,
    pub store: StoreSettings,
    pub telemetry: TelemetrySettings,
    pub memory: MemorySettings,
    pub dlq: DlqSettings,
    pub feed: FeedSettings,
    pub migrate: MigrateSettings,
    /// What the operator should change (deprecated keys), to log once
    /// logging is set up.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The layers, merged and with the deprecated keys moved: a source of its own.
#[derive(Debug, Clone)]
struct Merged(config::Map<String, config::Value>);

impl config::Source for Merged {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
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
        let mut merged = config::Source::collect(&builder.build()?)?;
        let warnings = deprecated::fold(&mut merged).map_err(ConfigError::Invalid)?;
        let mut settings: Settings = config::Config::builder()
            .add_source(Merged(merged))
            .build()?
            .try_deserialize()?;
        settings.warnings = warnings;
        settings.check()?;
        Ok(settings)
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
    fn the_key_settings_are_checked_at_load() {
        for (key, value, says) in [
            ("OMS__AUTH__RELOAD_MS", "0", "reload_ms"),
            ("OMS__AUTH__PUBLIC", "[\"metrics\"]", "not a path"),
            ("OMS__AUTH__PUBLIC", "[\"/orders\"]", "always needs a key"),
        ] {
            let mut file = tempfile::NamedTempFile::with_suffix(".toml").expect("temp file");
            let line = match key {
                "OMS__AUTH__RELOAD_MS" => format!("[auth]\nreload_ms = {value}"),
                _ => format!("[auth]\npublic = {value}"),
            };
            writeln!(file, "{line}").expect("write");
            let err = Settings::load_from(Some(file.path()), &[], env(&[])).expect_err(key);
            let err = crate::error::Chain(&err).to_string();
            assert!(err.contains(says), "{key}={value}: {err}");
        }
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
        let err = Settings::load_from(None, &[], env(&group)).expect_err("group with redb");
        assert!(err.to_string().contains("assign"), "{err}");
        Settings::load_from(
            None,
            &[("store.url", "postgres://h/db".into())],
            env(&group),
        )
        .expect("group with postgres");
    }

    #[test]
    fn keys_that_moved_still_work_with_one_warning_each() {
        let s = Settings::load_from(
            None,
            &[],
            env(&[
                ("OMS__BROKER__RETRY_AFTER_SECS", "4"),
                ("OMS__BROKER__DLQ_MAX_REPLAYS", "7"),
                ("OMS__BROKER__PARTITIONS", "1"),
                ("OMS__BROKER__REPLICATION", "2"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.http.retry_after_secs, 4);
        assert_eq!(s.dlq.max_replays, 7);
        assert_eq!((s.migrate.partitions, s.migrate.replication), (1, 2));
        assert_eq!(s.warnings.len(), 4, "{:?}", s.warnings);
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("broker.partitions") && w.contains("migrate.partitions")),
            "{:?}",
            s.warnings
        );
        let s = Settings::load_from(None, &[], env(&[("OMS__MIGRATE__PARTITIONS", "5")]))
            .expect("loads");
        assert_eq!(s.migrate.partitions, 5);
        assert!(s.warnings.is_empty());
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
