//! `[feed]`: the live feed (`GET /stream`, `src/feed`).

use serde::{Deserialize, Serialize};

/// `[feed]`: how many feed clients an instance serves and how far each may
/// fall behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedSettings {
    /// Clients served at once (each has a consumer of its own); one more
    /// is answered `503`.
    pub max_clients: usize,
    /// Events waiting for one client; past it the client is dropped with a
    /// reason and resumes from its last event id.
    pub buffer: usize,
    /// Event keys each reader remembers to show a re-published record once.
    pub dedupe: usize,
    /// Records a resumed reader reads before its position, per partition,
    /// to learn what it already showed.
    pub lookback: i64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            max_clients: 64,
            buffer: 4_096,
            dedupe: 65_536,
            lookback: 2_000,
        }
    }
}
