//! [`ShardWriteSpec`]: what every shard task of a run needs to know,
//! plain serialisable data, so the same write runs embedded and on a
//! cluster's executors.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sf_manifest::{KeyEncoding, Location, RunId, StorageOptions};

use crate::build::backend::{BackendConfig, DuplicatePolicy};
use crate::build::merge::Order;
use crate::build::ratelimit::RateLimits;
use crate::config::RetryPolicy;
use crate::error::Result;
use crate::route::budget;
use crate::route::collect::{CollectorSettings, MAX_RUN_BYTES};
use crate::route::encode::ValueSpec;
use crate::route::vector::VectorSpec;

/// What every shard task of a run needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardWriteSpec {
    /// The run.
    pub run_id: RunId,
    /// Snapshot prefix URL.
    pub prefix_url: String,
    /// Storage options for the prefix.
    pub storage_options: std::collections::BTreeMap<String, String>,
    /// Number of shards (= partitions).
    pub num_dbs: u32,
    /// The key column.
    pub key_col: String,
    /// The snapshot's key encoding.
    pub key_encoding: KeyEncoding,
    /// How values are made.
    pub value: ValueSpec,
    /// The shard id column the routing function fills.
    pub shard_id_col: String,
    /// The backend and its settings.
    pub backend: BackendConfig,
    /// Duplicate keys.
    pub on_duplicate: DuplicatePolicy,
    /// Whether each shard task sorts its rows by key before building
    /// (each key once), in bounded memory with spills to `work_dir`.
    pub sort_within_shard: bool,
    /// Bytes of rows the shard tasks of this run hold in memory in one
    /// process, shared on demand ([`crate::route::budget`]); beyond it they
    /// spill sorted runs to `work_dir`.
    pub row_memory_bytes: u64,
    /// Write limits per shard attempt.
    pub limits: RateLimits,
    /// Upload retries.
    pub retry: RetryPolicy,
    /// Local staging folder (system temp when `None`).
    pub work_dir: Option<PathBuf>,
    /// Uploads at once per process.
    pub upload_concurrency: usize,
    /// This build's own id, recorded in every attempt it claims: a build
    /// deletes only attempt folders carrying its id (its losers, or all of
    /// its data after a failure), never another build's, whatever run id
    /// they share.
    #[serde(default)]
    pub build_id: String,
    /// The rows' vectors, for a unified build (`[vector]`).
    #[serde(default)]
    pub vector: Option<VectorSpec>,
}

impl ShardWriteSpec {
    /// How this run's row collectors sort, spilling into `spill_dir`.
    pub(crate) fn collector_settings(&self, spill_dir: PathBuf) -> CollectorSettings {
        CollectorSettings {
            order: if self.sort_within_shard {
                Order::Key
            } else {
                Order::Arrival
            },
            on_duplicate: self.on_duplicate,
            key_encoding: self.key_encoding,
            chunk_bytes: MAX_RUN_BYTES,
            spill_dir,
        }
    }

    /// This run's memory budget for rows in this process.
    pub(crate) fn row_budget(&self) -> Arc<budget::MemoryBudget> {
        budget::for_run(
            &self.run_id,
            usize::try_from(self.row_memory_bytes).unwrap_or(usize::MAX),
        )
    }

    pub(crate) fn prefix(&self) -> Result<Location> {
        let opts: StorageOptions = self
            .storage_options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(sf_manifest::resolve(&self.prefix_url, &opts)?)
    }
}
