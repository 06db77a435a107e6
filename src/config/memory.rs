//! `[memory]`: the process' heap.

use serde::{Deserialize, Serialize};

/// `[memory]`: the process' heap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySettings {
    /// Every this often, freed heap pages go back to the system (jemalloc's
    /// purge of every arena; it keeps them for reuse otherwise, until its
    /// decay returns them). 0: never.
    pub trim_every_ms: u64,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            trim_every_ms: 1_000,
        }
    }
}
