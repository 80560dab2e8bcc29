//! Where a build's plan runs, and how a process's memory limit is shared
//! between the engine, the shard sorts and SQLite.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::JobConfig;
use crate::error::{Error, Result};
use crate::plan::layout::ShardWriteLayout;
use crate::plan::node::ShardForgeQueryPlanner;

/// Where a build's plan runs: DataFusion in this process ([`Embedded`]) or
/// a Ballista cluster (`sf-executor`).
///
/// An engine makes sessions that know ShardForge's plan nodes. A build
/// with nothing else to go on runs in [`session`](Self::session). A caller
/// that keeps sessions of its own (a pool of them) makes each with
/// [`base_config`](Self::base_config), adjusted as it likes, and
/// [`connect`](Self::connect); a build in such a session runs with
/// [`job_state`](Self::job_state) of it, and the caller gives the session
/// back with [`release`](Self::release) when it stops using it.
#[async_trait]
pub trait Engine: Send + Sync + fmt::Debug {
    /// A short name for logs (`embedded`, `cluster df://...`).
    fn describe(&self) -> String;

    /// Whether shard tasks run in this process (so progress counters are live).
    fn runs_locally(&self) -> bool;

    /// A session made for a build of `job`.
    async fn session(&self, job: &JobConfig) -> Result<SessionContext>;

    /// What a new long-lived session starts from (no connection made).
    fn base_config(&self) -> SessionConfig;

    /// A new long-lived session with `config` (see
    /// [`base_config`](Self::base_config)).
    async fn connect(&self, config: SessionConfig) -> Result<SessionContext>;

    /// The state a build of `job` runs with in `session`: it shares the
    /// session's catalogs, views, functions and object stores, and carries
    /// what the job asks of its engine (batch size, memory limit, spill
    /// folder; on a cluster its storage options for the executors). The
    /// session itself is not changed.
    fn job_state(&self, session: &SessionContext, job: &JobConfig) -> Result<SessionState>;

    /// Releases what `session` holds outside this process, when its owner
    /// stops it. Nothing by default.
    async fn release(&self, _session: &SessionContext) {}
}

/// DataFusion in this process (the default).
#[derive(Debug, Default, Clone)]
pub struct Embedded {
    /// Partitions for scans and projections (default: the number of cores).
    pub target_partitions: Option<usize>,
}

/// A session state builder with ShardForge's planner and the layout rule
/// for a cluster (one task per shard; see [`ShardWriteLayout`]).
pub fn session_state_builder(config: SessionConfig) -> SessionStateBuilder {
    state_builder(config, ShardWriteLayout::partitioned())
}

/// A session state builder with ShardForge's planner and the layout rule
/// for this process (the writer collects rows into shards itself).
pub fn embedded_state_builder(config: SessionConfig) -> SessionStateBuilder {
    state_builder(config, ShardWriteLayout::in_process())
}

fn state_builder(config: SessionConfig, layout: ShardWriteLayout) -> SessionStateBuilder {
    SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_query_planner(Arc::new(ShardForgeQueryPlanner))
        .with_physical_optimizer_rule(Arc::new(layout))
}

#[async_trait]
impl Engine for Embedded {
    fn describe(&self) -> String {
        "embedded".into()
    }

    fn runs_locally(&self) -> bool {
        true
    }

    /// A session of its own, laid out for this process: the writer collects
    /// rows into shards itself instead of a shuffle.
    async fn session(&self, job: &JobConfig) -> Result<SessionContext> {
        let config = job_session_config(job, self.base_config());
        let runtime = job_runtime(job, None)?;
        Ok(SessionContext::new_with_state(
            embedded_state_builder(config).with_runtime_env(runtime).build(),
        ))
    }

    fn base_config(&self) -> SessionConfig {
        let config = SessionConfig::new();
        match self.target_partitions {
            Some(n) => config.with_target_partitions(n.max(1)),
            None => config,
        }
    }

    async fn connect(&self, config: SessionConfig) -> Result<SessionContext> {
        Ok(SessionContext::new_with_state(session_state_builder(config).build()))
    }

    fn job_state(&self, session: &SessionContext, job: &JobConfig) -> Result<SessionState> {
        let mut state = session.state();
        let id = state.session_id().to_string();
        let config = job_session_config(job, state.config().clone());
        *state.config_mut() = config;
        // The job's memory pool and spill folder; the session's object stores.
        let runtime = job_runtime(job, Some(Arc::clone(&state.runtime_env().object_store_registry)))?;
        Ok(SessionStateBuilder::new_from_existing(state)
            .with_runtime_env(runtime)
            .with_session_id(id)
            .build())
    }
}

/// `config` with what a job's build needs of an embedded session: its
/// batch size, and sorts that reserve for spilling a share of the
/// engine's memory (see [`job_runtime`]).
pub fn job_session_config(job: &JobConfig, mut config: SessionConfig) -> SessionConfig {
    config = config.with_batch_size(job.write.batch_size);
    let limit_bytes = memory_shares(job.write.memory_limit_mib, 1).engine_bytes;
    config.options_mut().execution.sort_spill_reservation_bytes = (limit_bytes / 8).clamp(256 << 10, 10 << 20);
    config
}

/// The runtime an embedded build runs in: the engine's share of the job's
/// memory limit as DataFusion's memory pool, spill files under
/// `work_dir`, and object stores from `stores` when given (a session's
/// registry, so a build in a borrowed session reads what it reads).
pub fn job_runtime(job: &JobConfig, stores: Option<Arc<dyn ObjectStoreRegistry>>) -> Result<Arc<RuntimeEnv>> {
    // The engine gets a quarter of the memory limit (the shard rows
    // waiting to be built and SQLite's caches take the rest; see
    // `memory_shares`). The write plan itself holds little: the writer
    // takes the routed rows straight from the input (its memory is the
    // run's row budget), so the pool bounds what SQL inputs (joins,
    // aggregates, sorts) hold.
    let limit_bytes = memory_shares(job.write.memory_limit_mib, 1).engine_bytes;
    let pool = datafusion::execution::memory_pool::GreedyMemoryPool::new(limit_bytes);
    let mut runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(pool));
    if let Some(stores) = stores {
        runtime = runtime.with_object_store_registry(stores);
    }
    if let Some(dir) = &job.write.work_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating work_dir {}", dir.display()), e))?;
        runtime = runtime.with_temp_file_path(dir);
    }
    runtime
        .build_arc()
        .map_err(|e| Error::engine_caused("building the engine's runtime", e))
}

/// How a process's `memory_limit_mib` is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryShares {
    /// DataFusion's memory pool (a quarter).
    pub engine_bytes: usize,
    /// Rows the shard tasks hold while they wait to be sorted and built,
    /// all shards of the run together, taken on demand
    /// ([`crate::route::budget`]): half. Beyond it they spill sorted runs.
    pub row_bytes: u64,
    /// SQLite page cache of each shard built through SQLite's inserts
    /// (unsorted rows): a quarter, split across the builds that run at
    /// once (one per core, fewer when there are fewer shards).
    pub sqlite_cache_mib: u64,
}

/// The shares of `limit_mib` for a build of `num_dbs` shards.
pub fn memory_shares(limit_mib: u64, num_dbs: u32) -> MemoryShares {
    let limit = limit_mib << 20;
    let builds = (crate::build::local_build::build_slots() as u64).min(u64::from(num_dbs.max(1)));
    MemoryShares {
        engine_bytes: usize::try_from(limit / 4).unwrap_or(usize::MAX),
        row_bytes: limit / 2,
        sqlite_cache_mib: (limit_mib / 4 / builds).max(2),
    }
}

/// The backend settings, with SQLite's page cache per shard capped to its
/// share of the memory limit.
pub(super) fn capped_backend(job: &JobConfig, num_dbs: u32) -> crate::build::backend::BackendConfig {
    match job.backend() {
        crate::build::backend::BackendConfig::Sqlite(mut s) => {
            let share = memory_shares(job.write.memory_limit_mib, num_dbs).sqlite_cache_mib;
            s.cache_mib = s.cache_mib.min(u32::try_from(share).unwrap_or(u32::MAX));
            crate::build::backend::BackendConfig::Sqlite(s)
        }
        other => other,
    }
}
