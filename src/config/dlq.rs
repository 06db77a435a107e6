//! `[dlq]`: the dead-letter policy.

use serde::{Deserialize, Serialize};

/// `[dlq]`: what `oms dlq replay` may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DlqSettings {
    /// A record is re-driven at most this many times; after that it stays
    /// in the dead-letter topic for a human.
    pub max_replays: u32,
}

impl Default for DlqSettings {
    fn default() -> Self {
        Self { max_replays: 3 }
    }
}
