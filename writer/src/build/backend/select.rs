//! Which backend writes a build's shards: the configured choice and the
//! backend it names.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::contract::ShardBackend;
use super::slatedb::{SlateDbBackend, SlateDbSettings};
use super::sqlite::{SqliteBackend, SqliteSettings};

/// Which backend writes shards, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendConfig {
    /// One SQLite file per shard (`shard.db`).
    Sqlite(SqliteSettings),
    /// One SlateDB database per shard, rooted at the attempt folder.
    Slatedb(SlateDbSettings),
}

impl BackendConfig {
    /// The backend's name as configured (`sqlite`, `slatedb`).
    pub fn name(&self) -> &'static str {
        match self {
            BackendConfig::Sqlite(_) => "sqlite",
            BackendConfig::Slatedb(_) => "slatedb",
        }
    }
}

/// The backend a configuration names.
pub fn backend_for(config: &BackendConfig) -> Arc<dyn ShardBackend> {
    match config {
        BackendConfig::Sqlite(s) => Arc::new(SqliteBackend::new(s.clone())),
        BackendConfig::Slatedb(s) => Arc::new(SlateDbBackend::new(s.clone())),
    }
}
