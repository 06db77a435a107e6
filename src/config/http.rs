//! `[http]`: the order API's listener and its answers.

use serde::{Deserialize, Serialize};

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
    /// `Retry-After` seconds sent with a 503.
    pub retry_after_secs: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            body_limit_bytes: 16 * 1024,
            shutdown_timeout_ms: 10_000,
            read_wait_ms: 1_000,
            retry_after_secs: 1,
        }
    }
}
