//! `[auth]`: who may call the order API (API keys, `src/auth`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[auth]`: API keys and the limits of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The key file `oms keys` writes and every instance reads (hashes only,
    /// never a key). Every instance of one deployment names the same file
    /// (one machine: one path; several: one mounted secret), so they agree.
    pub keys_file: PathBuf,
    /// How often the file is read again: a key made or revoked is in force
    /// on every instance within this long.
    pub reload_ms: u64,
    /// Paths served without a key. The order and trading operations always
    /// need one; these are the probes, the metrics and the documentation.
    pub public: Vec<String>,
    /// Requests per second a key may make, unless the key says otherwise
    /// (`oms keys create --rate`); 0: no limit.
    pub rate_per_sec: u32,
    /// Requests above the rate a key may make at once, after a quiet spell.
    pub burst: u32,
    /// Requests of one key in flight at once (a `POST /orders` waits for
    /// the broker's acknowledgement), unless the key says otherwise; 0: no limit.
    pub max_in_flight: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            keys_file: PathBuf::from("oms-keys.toml"),
            reload_ms: 1_000,
            public: [
                "/healthz",
                "/readyz",
                "/metrics",
                "/docs",
                "/feed",
                "/openapi.json",
                "/openapi.yaml",
            ]
            .map(String::from)
            .to_vec(),
            rate_per_sec: 100,
            burst: 200,
            max_in_flight: 32,
        }
    }
}
