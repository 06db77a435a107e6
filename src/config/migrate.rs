//! `[migrate]`: what `oms migrate` creates.

use serde::{Deserialize, Serialize};

/// `[migrate]`: the topics `oms migrate` creates (an existing topic keeps
/// what it was created with).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrateSettings {
    /// Partitions of the orders and trades topics.
    pub partitions: i32,
    /// Replication factor of every topic (1 for a single local broker).
    pub replication: i32,
}

impl Default for MigrateSettings {
    fn default() -> Self {
        Self {
            partitions: 3,
            replication: 1,
        }
    }
}
