//! The build job on the driver: validate against the input, plan, run the
//! shard writes on an engine, then publish.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Schema, UInt32Type};
use async_trait::async_trait;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{SessionConfig, SessionContext, ident};
use futures::StreamExt;
use sf_manifest::{
    CelType, CurrentVersion, Key, KeyEncoding, ManifestStore, ObjectManifestStore, RoutingValue, RunId, RunRecord,
    ShardingSpec, Timestamp, layout,
};
use sf_router::{CelRouting, ContextValue, Routed, Router, cel_column_type_fits, cel_tokens};

use crate::adapter::backend_for;
use crate::config::{CelMode, JobConfig, Strategy};
use crate::error::{Error, Result};
use crate::exec::{ShardResult, ShardWriteSpec};
use crate::finish::{FinishInput, finish};
use crate::partition::{PARTITION_KEY_COL, PartitionKeyUdf, RoutingSpec, ShardIdUdf};
use crate::plan::{ShardForgeQueryPlanner, ShardWriteLayout, ShardWriteNode};
use crate::progress;
use crate::value::{ValueSpec, binary_value_type_fits, default_key_encoding, key_type_fits};

/// Where the plan runs.
#[async_trait]
pub trait Engine: Send + Sync + fmt::Debug {
    /// A short name for logs (`embedded`, `cluster df://...`).
    fn describe(&self) -> String;

    /// A session that knows ShardForge's plan nodes.
    async fn session(&self, job: &JobConfig) -> Result<SessionContext>;

    /// Whether shard tasks run in this process (so progress counters are live).
    fn runs_locally(&self) -> bool;
}

/// DataFusion in this process (the default).
#[derive(Debug, Default, Clone)]
pub struct Embedded {
    /// Partitions for scans and projections (default: the number of cores).
    pub target_partitions: Option<usize>,
}

/// A session state builder with ShardForge's planner and layout rule.
pub fn session_state_builder(config: SessionConfig) -> SessionStateBuilder {
    SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_query_planner(Arc::new(ShardForgeQueryPlanner))
        .with_physical_optimizer_rule(Arc::new(ShardWriteLayout))
}

#[async_trait]
impl Engine for Embedded {
    fn describe(&self) -> String {
        "embedded".into()
    }

    async fn session(&self, job: &JobConfig) -> Result<SessionContext> {
        let mut config = SessionConfig::new().with_batch_size(job.write.batch_size);
        if let Some(n) = self.target_partitions {
            config = config.with_target_partitions(n.max(1));
        }
        // The engine gets a quarter of the memory limit (the shard tasks'
        // sort buffers and SQLite caches take the rest; see
        // `memory_shares`). The write plan itself holds little: batches in
        // flight between the input and the shard tasks, on one channel per
        // shard, which spill to disk when the pool is full. Which channel
        // needs room changes as shard tasks pause to write sorted runs, so
        // the pool is greedy: a fair pool would cap each channel at a
        // 1/num_dbs share and spill batches while the rest sits unused. It
        // also bounds what SQL inputs (joins, aggregates, sorts) hold.
        let limit_bytes = memory_shares(job.write.memory_limit_mib, 1).engine_bytes;
        config.options_mut().execution.sort_spill_reservation_bytes = (limit_bytes / 8).clamp(256 << 10, 10 << 20);
        let pool = datafusion::execution::memory_pool::GreedyMemoryPool::new(limit_bytes);
        let mut runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(pool));
        if let Some(dir) = &job.write.work_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating work_dir {}", dir.display()), e))?;
            runtime = runtime.with_temp_file_path(dir);
        }
        let runtime = runtime.build_arc().map_err(|e| Error::Engine(e.to_string()))?;
        Ok(SessionContext::new_with_state(
            session_state_builder(config).with_runtime_env(runtime).build(),
        ))
    }

    fn runs_locally(&self) -> bool {
        true
    }
}

/// Receives progress while a build runs.
pub trait ProgressSink: Send + Sync {
    /// A new phase started (`reading input`, `writing shards`, ...).
    fn phase(&self, name: &str);
    /// Rows handed to shard writers and shards finished, of `num_dbs`.
    fn progress(&self, rows: u64, shards_done: u32, num_dbs: u32);
}

/// Options of one build.
#[derive(Clone, Default)]
pub struct BuildOptions {
    /// Plan and report, write nothing.
    pub dry_run: bool,
    /// Progress receiver.
    pub progress: Option<Arc<dyn ProgressSink>>,
    /// Extra keys for the manifest's `custom.shardforge` object (a
    /// warehouse table records its schema there).
    pub custom: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for BuildOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildOptions")
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

/// What a dry run reports: the resolved plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanReport {
    /// The run id the build would use.
    pub run_id: RunId,
    /// Engine.
    pub engine: String,
    /// Input columns and types.
    pub input_schema: Vec<(String, String)>,
    /// Key column and encoding.
    pub key_col: String,
    /// Key encoding.
    pub key_encoding: KeyEncoding,
    /// Value encoding.
    pub value: ValueSpec,
    /// Routing.
    pub sharding: ShardingSpec,
    /// Number of shards.
    pub num_dbs: u32,
    /// Snapshot prefix.
    pub prefix_url: String,
    /// Backend name.
    pub backend: &'static str,
    /// What `_CURRENT` holds now.
    pub current_run: Option<RunId>,
}

impl fmt::Display for PlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "run_id:        {}", self.run_id)?;
        writeln!(f, "engine:        {}", self.engine)?;
        writeln!(
            f,
            "input columns: {}",
            self.input_schema
                .iter()
                .map(|(n, t)| format!("{n}: {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(f, "key:           {} ({})", self.key_col, self.key_encoding)?;
        match &self.value {
            ValueSpec::BinaryCol(c) => writeln!(f, "value:         bytes of column {c}")?,
            ValueSpec::JsonCols(cols) => writeln!(f, "value:         JSON of {}", cols.join(", "))?,
            ValueSpec::ArrowJson(cols) => writeln!(f, "value:         table row (Arrow JSON) of {}", cols.join(", "))?,
        }
        match (&self.sharding.cel_expr, &self.sharding.routing_values) {
            (None, _) => writeln!(f, "routing:       hash (xxh3_64) over {} shards", self.num_dbs)?,
            (Some(e), None) => writeln!(f, "routing:       CEL direct `{e}` over {} shards", self.num_dbs)?,
            (Some(e), Some(v)) => writeln!(
                f,
                "routing:       CEL categorical `{e}` over {} shards: {}",
                self.num_dbs,
                v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
            )?,
        }
        writeln!(f, "backend:       {}", self.backend)?;
        writeln!(f, "prefix:        {}", self.prefix_url)?;
        write!(
            f,
            "_CURRENT:      {}",
            self.current_run
                .as_ref()
                .map_or("none (first publish)".to_string(), |r| format!("run {r}"))
        )
    }
}

/// What a finished build reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSummary {
    /// The run.
    pub run_id: RunId,
    /// The published manifest.
    pub manifest_ref: String,
    /// Number of shards.
    pub num_dbs: u32,
    /// Shards holding rows.
    pub shards_written: u32,
    /// Rows stored (distinct keys).
    pub rows: u64,
    /// Rows replaced by a later row with the same key.
    pub duplicates: u64,
    /// Shard file bytes (SQLite).
    pub bytes: u64,
    /// Rows per shard: smallest, median, largest (empty shards count).
    pub rows_per_shard: (u64, u64, u64),
    /// Upload tries that failed and were retried.
    pub retries: u32,
    /// Losing attempt folders deleted after publishing.
    pub losers_deleted: usize,
    /// Sorted runs the shards' sorts wrote to disk (0: every shard's rows
    /// fit in its sort buffer).
    pub spilled_runs: u32,
    /// Time to plan (read schema, infer routing, verify sample).
    pub plan_time: Duration,
    /// Time to write all shards.
    pub write_time: Duration,
    /// Time to verify, publish and clean up.
    pub publish_time: Duration,
    /// Wall time of the whole build.
    pub total_time: Duration,
}

impl fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.total_time.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "published run {} ({} shards, {} with rows)",
            self.run_id, self.num_dbs, self.shards_written
        )?;
        writeln!(f, "  manifest:       {}", self.manifest_ref)?;
        writeln!(
            f,
            "  rows:           {} ({} duplicates replaced), {:.0} rows/s",
            self.rows,
            self.duplicates,
            self.rows as f64 / secs
        )?;
        writeln!(f, "  bytes:          {}", human_bytes(self.bytes))?;
        let (lo, med, hi) = self.rows_per_shard;
        writeln!(f, "  rows per shard: min {lo}, median {med}, max {hi}")?;
        writeln!(
            f,
            "  retries:        {}; losing attempts deleted: {}",
            self.retries, self.losers_deleted
        )?;
        writeln!(f, "  sort spills:    {} runs written to disk", self.spilled_runs)?;
        write!(
            f,
            "  time:           {:.2}s (plan {:.2}s, write {:.2}s, publish {:.2}s)",
            secs,
            self.plan_time.as_secs_f64(),
            self.write_time.as_secs_f64(),
            self.publish_time.as_secs_f64()
        )
    }
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The result of [`build`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A dry run's plan; nothing was written.
    DryRun(PlanReport),
    /// A published snapshot.
    Built(BuildSummary),
    /// Nothing to do, and why (a table that exists, with mode `ignore`).
    Unchanged(String),
}

/// Routing resolved against the input.
struct Resolved {
    df: DataFrame,
    key_encoding: KeyEncoding,
    value: ValueSpec,
    sharding: ShardingSpec,
    num_dbs: u32,
    extra_cols: Vec<String>,
    input_schema: Vec<(String, String)>,
}

/// The column names of `schema`, comma separated, for messages.
pub(crate) fn field_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A build planned against its input: everything checked, nothing written.
pub struct Prepared {
    /// The session the plan runs in.
    pub ctx: SessionContext,
    /// The snapshot prefix.
    pub store: ObjectManifestStore,
    /// The run id.
    pub run_id: RunId,
    /// The input with key, value columns, shard id and partition key.
    pub routed: DataFrame,
    /// What every shard task gets.
    pub spec: ShardWriteSpec,
    /// The row router of the snapshot.
    pub router: Router,
    /// `_CURRENT` as observed before writing (what the publish swaps).
    pub current: Option<sf_manifest::CurrentState>,
    /// The sharding written to the manifest.
    pub sharding: ShardingSpec,
    /// Names of CEL columns read from the input besides the key.
    pub extra_cols: Vec<String>,
    /// Input columns and types.
    pub input_schema: Vec<(String, String)>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("run_id", &self.run_id)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Plans a build: reads the input's schema, checks the job against it,
/// resolves routing (counting or scanning the input when the shard count
/// or the routing values come from the data), and builds the routed input.
pub async fn prepare(job: &JobConfig, engine: &dyn Engine) -> Result<Prepared> {
    let (ctx, df) = read_input(job, engine).await?;
    prepare_frame(job, ctx, df).await
}

/// A session of `engine` and the job's `[input]` as a DataFrame of it.
async fn read_input(job: &JobConfig, engine: &dyn Engine) -> Result<(SessionContext, DataFrame)> {
    let input = job
        .input
        .as_ref()
        .ok_or_else(|| Error::config("input", "the job has no [input] section saying what to read"))?;
    let ctx = engine.session(job).await?;
    crate::input::register_stores(&ctx, &crate::input::input_urls(input), &job.storage_options())?;
    let df = crate::input::load(&ctx, input).await?;
    Ok((ctx, df))
}

/// [`prepare`] for rows given as a DataFrame of `ctx` (the job's `[input]`
/// is not read).
pub async fn prepare_frame(job: &JobConfig, ctx: SessionContext, df: DataFrame) -> Result<Prepared> {
    let storage = job.storage_options();
    let store = ObjectManifestStore::open(&job.output.prefix, &storage)
        .map_err(|e| Error::config("output.prefix", e.to_string()))?;
    let run_id = match &job.output.run_id {
        Some(r) => RunId::new(r.clone()).map_err(|e| Error::config("output.run_id", e.to_string()))?,
        None => RunId::generate(),
    };
    let resolved = resolve(job, df).await?;
    let router = Router::new(&resolved.sharding, resolved.num_dbs, resolved.key_encoding)
        .map_err(|e| Error::config("routing", e.to_string()))?;
    let current = store.load_current().await?;

    let routing = RoutingSpec {
        sharding: resolved.sharding.clone(),
        num_dbs: resolved.num_dbs,
        key_encoding: resolved.key_encoding,
        key_col: job.key_col.clone(),
        extra_cols: resolved.extra_cols.clone(),
    };
    let args: Vec<Expr> = std::iter::once(ident(&job.key_col))
        .chain(resolved.extra_cols.iter().map(ident))
        .collect();
    let mut keep: BTreeSet<&str> = resolved.value.columns().into_iter().collect();
    keep.insert(&job.key_col);
    keep.extend(resolved.extra_cols.iter().map(String::as_str));
    let mut select: Vec<Expr> = keep.iter().map(|c| ident(*c)).collect();
    select.push(ShardIdUdf::udf(routing).call(args).alias(&job.shard_id_col));
    let routed = resolved.df.select(select)?.with_column(
        PARTITION_KEY_COL,
        PartitionKeyUdf::udf(resolved.num_dbs).call(vec![ident(&job.shard_id_col)]),
    )?;
    let spec = ShardWriteSpec {
        run_id: run_id.clone(),
        prefix_url: store.prefix_url().to_string(),
        storage_options: job.storage.clone(),
        num_dbs: resolved.num_dbs,
        key_col: job.key_col.clone(),
        key_encoding: resolved.key_encoding,
        value: resolved.value,
        shard_id_col: job.shard_id_col.clone(),
        backend: capped_backend(job, resolved.num_dbs),
        on_duplicate: job.write.on_duplicate,
        sort_within_shard: job.write.sort_within_shard,
        sort_buffer_bytes: memory_shares(job.write.memory_limit_mib, resolved.num_dbs).sort_buffer_bytes,
        limits: job.limits(),
        retry: job.retry(),
        work_dir: job.write.work_dir.clone(),
        upload_concurrency: job.write.upload_concurrency,
    };
    Ok(Prepared {
        ctx,
        store,
        run_id,
        routed,
        spec,
        router,
        current,
        sharding: resolved.sharding,
        extra_cols: resolved.extra_cols,
        input_schema: resolved.input_schema,
    })
}

/// How a process's `memory_limit_mib` is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryShares {
    /// DataFusion's memory pool (a quarter).
    pub engine_bytes: usize,
    /// Rows each sorting shard task buffers before spilling a sorted run:
    /// half the limit, split evenly across the shards, halved again since
    /// a task fills one buffer while the previous one is written (the
    /// sorter caps it at [`crate::sort::MAX_RUN_BYTES`]).
    pub sort_buffer_bytes: u64,
    /// SQLite page cache of each shard being built (a quarter, split
    /// evenly across the shards; every shard may be open at once when
    /// rows are not sorted).
    pub sqlite_cache_mib: u64,
}

/// The shares of `limit_mib` for a build of `num_dbs` shards.
pub fn memory_shares(limit_mib: u64, num_dbs: u32) -> MemoryShares {
    let limit = limit_mib << 20;
    let shards = u64::from(num_dbs.max(1));
    MemoryShares {
        engine_bytes: usize::try_from(limit / 4).unwrap_or(usize::MAX),
        sort_buffer_bytes: limit / 4 / shards,
        sqlite_cache_mib: (limit_mib / 4 / shards).max(2),
    }
}

/// The backend settings, with SQLite's page cache per shard capped to its
/// share of the memory limit.
fn capped_backend(job: &JobConfig, num_dbs: u32) -> crate::adapter::BackendConfig {
    match job.backend() {
        crate::adapter::BackendConfig::Sqlite(mut s) => {
            let share = memory_shares(job.write.memory_limit_mib, num_dbs).sqlite_cache_mib;
            s.cache_mib = s.cache_mib.min(u32::try_from(share).unwrap_or(u32::MAX));
            crate::adapter::BackendConfig::Sqlite(s)
        }
        other => other,
    }
}

impl Prepared {
    /// The write as a logical plan (a [`ShardWriteNode`] over the routed input).
    pub fn write_plan(&self) -> Result<datafusion::logical_expr::LogicalPlan> {
        Ok(ShardWriteNode::new(Arc::new(self.spec.clone()), self.routed.clone().into_unoptimized_plan())?.into_plan())
    }
}

/// Runs a build: everything is checked before anything is written, and
/// nothing is published unless every shard was written and verified.
pub async fn build(job: &JobConfig, engine: &dyn Engine, options: &BuildOptions) -> Result<Outcome> {
    let started = Instant::now();
    let phase = |name: &str| match &options.progress {
        Some(p) => p.phase(name),
        None => tracing::debug!(phase = name),
    };
    phase("reading input schema");
    if let Some(table) = &job.output.table {
        return build_table(job, table, engine, options).await;
    }
    let prepared = prepare(job, engine).await?;
    build_prepared(job, prepared, engine, options, started).await
}

/// A job whose output is a warehouse table: its input saved with the
/// job's mode, through the same path as [`crate::warehouse::Warehouse::save`].
async fn build_table(job: &JobConfig, table: &str, engine: &dyn Engine, options: &BuildOptions) -> Result<Outcome> {
    use crate::warehouse::{SaveOutcome, save_frame};
    let catalogs = job.catalogs()?;
    let (_, df) = read_input(job, engine).await?;
    match save_frame(&catalogs, engine, None, df, table, job.output.mode, job, options).await? {
        SaveOutcome::Written(summary) => Ok(Outcome::Built(summary)),
        SaveOutcome::DryRun(report) => Ok(Outcome::DryRun(report)),
        SaveOutcome::Ignored => Ok(Outcome::Unchanged(format!(
            "table {} exists and output.mode is ignore: nothing was written",
            catalogs.ident(table)?
        ))),
    }
}

/// Runs a build planned by [`prepare`] or [`prepare_frame`].
pub async fn build_prepared(
    job: &JobConfig,
    prepared: Prepared,
    engine: &dyn Engine,
    options: &BuildOptions,
    started: Instant,
) -> Result<Outcome> {
    let phase = |name: &str| match &options.progress {
        Some(p) => p.phase(name),
        None => tracing::debug!(phase = name),
    };
    let Prepared {
        ctx,
        store,
        run_id,
        routed,
        spec,
        router,
        current,
        sharding,
        extra_cols,
        input_schema,
    } = prepared;

    if options.dry_run {
        return Ok(Outcome::DryRun(PlanReport {
            run_id,
            engine: engine.describe(),
            input_schema,
            key_col: job.key_col.clone(),
            key_encoding: spec.key_encoding,
            value: spec.value.clone(),
            sharding,
            num_dbs: spec.num_dbs,
            prefix_url: store.prefix_url().to_string(),
            backend: job.backend().name(),
            current_run: current.map(|c| c.pointer.run_id),
        }));
    }
    let expected: Option<CurrentVersion> = current.map(|c| c.version);

    if job.routing.verify_routing {
        phase("verifying routing on a sample");
        verify_sample(&routed, job, &router, &extra_cols).await?;
    }
    let plan_time = started.elapsed();

    // From here on the run leaves traces; record it.
    let record_key = layout::run_record_key(Timestamp::now(), &run_id, &uuid::Uuid::new_v4().simple().to_string());
    let lease = Duration::from_secs(60);
    let first = RunRecord::start(run_id.clone(), store.prefix_url(), lease);
    store.put_run_record(&record_key, &first).await?;
    let record = Arc::new(Mutex::new(first));
    let heartbeat = spawn_heartbeat(store.clone(), record_key.clone(), Arc::clone(&record), lease);

    let (spec_num_dbs, spec_key_encoding) = (spec.num_dbs, spec.key_encoding);
    phase("writing shards");
    let write_started = Instant::now();
    let written = write_shards(&ctx, spec, routed, engine, options).await;
    let write_time = write_started.elapsed();

    let outcome = match written {
        Ok(results) => {
            phase("verifying and publishing");
            let publish_started = Instant::now();
            let finished = finish(FinishInput {
                store: &store,
                backend: backend_for(&job.backend()),
                results,
                run_id: run_id.clone(),
                num_dbs: spec_num_dbs,
                key_col: job.key_col.clone(),
                key_encoding: spec_key_encoding,
                sharding: sharding.clone(),
                expected,
                verify_checksums: job.write.verify_checksums,
                upload_concurrency: job.write.upload_concurrency,
                custom: options.custom.clone(),
            })
            .await;
            finished.map(|f| {
                let mut per_shard = f.rows_per_shard.clone();
                per_shard.sort_unstable();
                let med = per_shard.get(per_shard.len() / 2).copied().unwrap_or(0);
                BuildSummary {
                    run_id: run_id.clone(),
                    manifest_ref: f.manifest_ref,
                    num_dbs: spec_num_dbs,
                    shards_written: f.shards_written,
                    rows: f.rows,
                    duplicates: f.duplicates,
                    bytes: f.bytes,
                    rows_per_shard: (
                        per_shard.first().copied().unwrap_or(0),
                        med,
                        per_shard.last().copied().unwrap_or(0),
                    ),
                    retries: f.retries,
                    losers_deleted: f.losers_deleted,
                    spilled_runs: f.spilled_runs,
                    plan_time,
                    write_time,
                    publish_time: publish_started.elapsed(),
                    total_time: started.elapsed(),
                }
            })
        }
        Err(e) => Err(e),
    };
    heartbeat.abort();
    progress::forget(&run_id);
    let final_record = {
        let mut r = record.lock().expect("run record");
        match &outcome {
            Ok(s) => r.succeed(s.manifest_ref.clone()),
            Err(e) => r.fail(e.kind().to_string(), e.to_string()),
        }
        r.clone()
    };
    if let Err(e) = &outcome {
        // Nothing was published: remove what this run wrote, keep the record.
        if !matches!(e, Error::Manifest(sf_manifest::Error::Conflict { .. })) {
            let key = layout::run_shards_key(&run_id);
            // Shard tasks cancelled by the failure may still finish a write
            // already handed to the store (a local file store writes on the
            // blocking pool): sweep until a pass finds nothing left.
            for pass in 0..FAILED_RUN_SWEEPS {
                match sf_manifest::gc::delete_prefix(&store, &key).await {
                    Ok(0) if pass > 0 => break,
                    Ok(_) => {}
                    Err(ce) => {
                        tracing::warn!(error = %ce, "could not remove the failed run's shard data under {key}");
                        break;
                    }
                }
                tokio::time::sleep(FAILED_RUN_SWEEP_PAUSE).await;
            }
        }
    }
    if let Err(e) = store.put_run_record(&record_key, &final_record).await {
        tracing::warn!(error = %e, "could not update the run record {record_key}");
    }
    outcome.map(Outcome::Built)
}

/// Passes over a failed run's shard data, and the pause between them.
const FAILED_RUN_SWEEPS: usize = 5;
const FAILED_RUN_SWEEP_PAUSE: Duration = Duration::from_millis(200);

fn spawn_heartbeat(
    store: ObjectManifestStore,
    key: String,
    record: Arc<Mutex<RunRecord>>,
    lease: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(lease / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            let snapshot = {
                let mut r = record.lock().expect("run record");
                r.heartbeat(lease);
                r.clone()
            };
            if let Err(e) = store.put_run_record(&key, &snapshot).await {
                tracing::warn!(error = %e, "run record heartbeat failed");
            }
        }
    })
}

async fn write_shards(
    ctx: &SessionContext,
    spec: ShardWriteSpec,
    routed: DataFrame,
    engine: &dyn Engine,
    options: &BuildOptions,
) -> Result<Vec<ShardResult>> {
    let num_dbs = spec.num_dbs;
    let run_id = spec.run_id.clone();
    let node = ShardWriteNode::new(Arc::new(spec), routed.into_unoptimized_plan())?;
    let df = ctx.execute_logical_plan(node.into_plan()).await?;
    let ticker = match (&options.progress, engine.runs_locally()) {
        (Some(sink), true) => {
            let sink = Arc::clone(sink);
            let counters = progress::run(&run_id, 1);
            Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    sink.progress(counters.rows(), counters.shards_done(), num_dbs);
                }
            }))
        }
        _ => None,
    };
    let mut stream = df.execute_stream().await?;
    let mut results = Vec::new();
    let outcome: Result<()> = async {
        while let Some(batch) = stream.next().await {
            results.extend(ShardResult::from_batch(&batch?)?);
        }
        Ok(())
    }
    .await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let (Some(sink), true) = (&options.progress, engine.runs_locally()) {
        let counters = progress::run(&run_id, 1);
        sink.progress(counters.rows(), counters.shards_done(), num_dbs);
    }
    outcome.map(|_| results)
}

async fn resolve(job: &JobConfig, df: DataFrame) -> Result<Resolved> {
    let schema: Schema = df.schema().as_arrow().clone();
    let input_schema: Vec<(String, String)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    let key_field = schema.field_with_name(&job.key_col).map_err(|_| {
        Error::config(
            "key_col",
            format!(
                "{:?} is not a column of the input (columns: {})",
                job.key_col,
                field_list(&schema)
            ),
        )
    })?;
    if schema.field_with_name(&job.shard_id_col).is_ok() {
        return Err(Error::config(
            "shard_id_col",
            format!(
                "{:?} clashes with an input column; choose another name",
                job.shard_id_col
            ),
        ));
    }
    if schema.field_with_name(PARTITION_KEY_COL).is_ok() {
        return Err(Error::config(
            "input",
            format!("the column name {PARTITION_KEY_COL:?} is reserved"),
        ));
    }
    let key_type = key_field.data_type();
    let key_encoding = match job.key_encoding {
        Some(e) => {
            if !key_type_fits(key_type, e) {
                return Err(Error::config(
                    "key_encoding",
                    format!("{e} cannot store key column {:?} of type {key_type}", job.key_col),
                ));
            }
            e
        }
        None => default_key_encoding(key_type).ok_or_else(|| {
            Error::config(
                "key_col",
                format!(
                    "key column {:?} has type {key_type}; keys must be integers, text or binary",
                    job.key_col
                ),
            )
        })?,
    };
    let value = match (&job.value.binary_col, &job.value.json_cols) {
        (Some(c), _) => {
            let f = schema.field_with_name(c).map_err(|_| {
                Error::config(
                    "value.binary_col",
                    format!("{c:?} is not a column of the input (columns: {})", field_list(&schema)),
                )
            })?;
            if !binary_value_type_fits(f.data_type()) {
                return Err(Error::config(
                    "value.binary_col",
                    format!("{c:?} has type {}; it must be text or binary", f.data_type()),
                ));
            }
            ValueSpec::BinaryCol(c.clone())
        }
        (None, Some(cols)) => {
            for c in cols {
                if schema.field_with_name(c).is_err() {
                    return Err(Error::config(
                        "value.json_cols",
                        format!("{c:?} is not a column of the input (columns: {})", field_list(&schema)),
                    ));
                }
            }
            ValueSpec::JsonCols(cols.clone())
        }
        (None, None) => {
            let cols: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| *n != job.key_col)
                .collect();
            if cols.is_empty() {
                return Err(Error::config(
                    "value",
                    "the input has no column besides the key; name a value column (value.binary_col)",
                ));
            }
            ValueSpec::JsonCols(cols)
        }
    };
    let r = &job.routing;
    let (sharding, num_dbs, extra_cols) = match r.strategy {
        Strategy::Hash => {
            let n = match (r.num_dbs, r.max_keys_per_shard) {
                (Some(n), _) => n,
                (None, Some(per)) => {
                    let rows = df.clone().count().await? as u64;
                    u32::try_from(rows.div_ceil(per).max(1)).map_err(|_| {
                        Error::config(
                            "routing.max_keys_per_shard",
                            format!("{rows} rows need too many shards"),
                        )
                    })?
                }
                (None, None) => return Err(Error::config("routing", "needs num_dbs or max_keys_per_shard")),
            };
            (ShardingSpec::hash(), n, vec![])
        }
        Strategy::Cel => {
            let expr = r.expr.clone().unwrap_or_default();
            let mut extra = Vec::new();
            for (name, ty) in &r.columns {
                let field = match schema.field_with_name(name) {
                    Ok(f) => f,
                    Err(_) if name == sf_router::KEY_VARIABLE => key_field,
                    Err(_) => {
                        return Err(Error::config(
                            format!("routing.columns.{name}"),
                            format!(
                                "is not a column of the input (columns: {}); the name \"key\" stands for the key column",
                                field_list(&schema)
                            ),
                        ));
                    }
                };
                if !cel_column_type_fits(*ty, field.data_type()) {
                    return Err(Error::config(
                        format!("routing.columns.{name}"),
                        format!("is declared {ty} but the column has type {}", field.data_type()),
                    ));
                }
                if schema.field_with_name(name).is_ok() && *name != job.key_col {
                    extra.push(name.clone());
                }
            }
            let mode = r.mode.unwrap_or(if r.routing_values.is_some() || r.num_dbs.is_none() {
                CelMode::Categorical
            } else {
                CelMode::Direct
            });
            match mode {
                CelMode::Categorical => {
                    let values = match &r.routing_values {
                        Some(v) => v.clone(),
                        None => infer_tokens(&df, job, &expr, &r.columns, &extra)
                            .await?
                            .into_iter()
                            .collect(),
                    };
                    if values.is_empty() {
                        return Err(Error::Input(
                            "the input has no rows to infer routing values from".into(),
                        ));
                    }
                    sf_manifest::format::validate_routing_values(&values)
                        .map_err(|e| Error::Data(format!("routing values inferred from the data: {e}")))?;
                    let n = u32::try_from(values.len()).map_err(|_| Error::Data("too many routing values".into()))?;
                    if let Some(want) = r.num_dbs
                        && want != n
                    {
                        return Err(Error::config(
                            "routing.num_dbs",
                            format!("is {want} but the data has {n} distinct routing values"),
                        ));
                    }
                    (ShardingSpec::cel(expr, r.columns.clone(), Some(values)), n, extra)
                }
                CelMode::Direct => {
                    let n = match r.num_dbs {
                        Some(n) => n,
                        None => {
                            let tokens = infer_tokens(&df, job, &expr, &r.columns, &extra).await?;
                            let max = tokens
                                .iter()
                                .map(|t| match t {
                                    RoutingValue::Int(i) if *i >= 0 => Ok(*i),
                                    other => Err(Error::Routing(sf_router::Error::DbIdOutOfRange {
                                        value: other.to_string(),
                                        num_dbs: u32::MAX,
                                        row: None,
                                    })),
                                })
                                .collect::<Result<Vec<i64>>>()?
                                .into_iter()
                                .max()
                                .ok_or_else(|| Error::Input("the input has no rows to infer num_dbs from".into()))?;
                            u32::try_from(max + 1).map_err(|_| Error::Data(format!("db id {max} is too large")))?
                        }
                    };
                    (ShardingSpec::cel(expr, r.columns.clone(), None), n, extra)
                }
            }
        }
    };
    Ok(Resolved {
        df,
        key_encoding,
        value,
        sharding,
        num_dbs,
        extra_cols,
        input_schema,
    })
}

/// Most distinct tokens a categorical expression may produce.
pub const MAX_INFERRED_TOKENS: usize = 100_000;

async fn infer_tokens(
    df: &DataFrame,
    job: &JobConfig,
    expr: &str,
    columns: &BTreeMap<String, CelType>,
    extra: &[String],
) -> Result<BTreeSet<RoutingValue>> {
    let cel = CelRouting::compile_tokens(expr, columns).map_err(|e| Error::config("routing.expr", e.to_string()))?;
    let cols: Vec<Expr> = std::iter::once(ident(&job.key_col))
        .chain(extra.iter().map(ident))
        .collect();
    let mut stream = df.clone().select(cols)?.execute_stream().await?;
    let mut tokens = BTreeSet::new();
    while let Some(batch) = stream.next().await {
        for t in cel_tokens(&cel, &batch?, &job.key_col)? {
            tokens.insert(t);
        }
        if tokens.len() > MAX_INFERRED_TOKENS {
            return Err(Error::Data(format!(
                "the routing expression yields more than {MAX_INFERRED_TOKENS} distinct values; categorical routing makes one shard per value"
            )));
        }
    }
    Ok(tokens)
}

/// Recomputes the shard id of a sample of rows with the row router (the
/// reader's code path) and fails on any difference from the kernel's.
async fn verify_sample(routed: &DataFrame, job: &JobConfig, router: &Router, extra: &[String]) -> Result<()> {
    let sample = routed
        .clone()
        .limit(0, Some(job.routing.verify_sample_size))?
        .collect()
        .await?;
    for batch in &sample {
        check_batch_routing(batch, job, router, extra)?;
    }
    Ok(())
}

fn check_batch_routing(batch: &RecordBatch, job: &JobConfig, router: &Router, extra: &[String]) -> Result<()> {
    let ids = batch
        .column_by_name(&job.shard_id_col)
        .ok_or_else(|| Error::Internal("shard id column missing from the sample".into()))?
        .as_primitive::<UInt32Type>()
        .clone();
    let key_col = batch
        .column_by_name(&job.key_col)
        .ok_or_else(|| Error::Internal("key column missing from the sample".into()))?;
    let cel_types = router.cel().map(|c| c.columns().clone()).unwrap_or_default();
    for row in 0..batch.num_rows() {
        let routed = if router.needs_context() {
            let mut ctx = BTreeMap::new();
            for (name, ty) in &cel_types {
                let array = if extra.contains(name) {
                    batch.column_by_name(name).cloned()
                } else {
                    Some(Arc::clone(key_col))
                };
                let array = array.ok_or_else(|| Error::Internal(format!("column {name} missing from the sample")))?;
                ctx.insert(name.clone(), context_value_at(array.as_ref(), row, *ty)?);
            }
            router.route_context(&ctx)?
        } else {
            router.route_key(&key_at(key_col.as_ref(), row)?)?
        };
        let want = ids.value(row);
        if routed != Routed::Db(want) {
            return Err(Error::Internal(format!(
                "routing check failed at sample row {row}: the kernel routed to shard {want}, the row router to {routed:?}; nothing was written"
            )));
        }
    }
    Ok(())
}

/// A key column's value as a [`Key`].
pub fn key_at(array: &dyn Array, row: usize) -> Result<Key> {
    use arrow::datatypes::*;
    if array.is_null(row) {
        return Err(Error::Data(format!("null key at row {row}")));
    }
    Ok(match array.data_type() {
        DataType::Int8 => Key::Int(i64::from(array.as_primitive::<Int8Type>().value(row))),
        DataType::Int16 => Key::Int(i64::from(array.as_primitive::<Int16Type>().value(row))),
        DataType::Int32 => Key::Int(i64::from(array.as_primitive::<Int32Type>().value(row))),
        DataType::Int64 => Key::Int(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Key::Int(i64::from(array.as_primitive::<UInt8Type>().value(row))),
        DataType::UInt16 => Key::Int(i64::from(array.as_primitive::<UInt16Type>().value(row))),
        DataType::UInt32 => Key::Int(i64::from(array.as_primitive::<UInt32Type>().value(row))),
        DataType::UInt64 => Key::from_u64(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Utf8 => Key::Str(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Key::Str(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Key::Str(array.as_string_view().value(row).to_string()),
        DataType::Binary => Key::Bytes(array.as_binary::<i32>().value(row).to_vec()),
        DataType::LargeBinary => Key::Bytes(array.as_binary::<i64>().value(row).to_vec()),
        DataType::BinaryView => Key::Bytes(array.as_binary_view().value(row).to_vec()),
        other => return Err(Error::Data(format!("key type {other} is not supported"))),
    })
}

fn context_value_at(array: &dyn Array, row: usize, ty: CelType) -> Result<ContextValue> {
    use arrow::datatypes::*;
    if array.is_null(row) {
        return Err(Error::Data(format!("null routing column value at row {row}")));
    }
    let text = || -> Option<String> {
        Some(match array.data_type() {
            DataType::Utf8 => array.as_string::<i32>().value(row).to_string(),
            DataType::LargeUtf8 => array.as_string::<i64>().value(row).to_string(),
            DataType::Utf8View => array.as_string_view().value(row).to_string(),
            _ => return None,
        })
    };
    Ok(match ty {
        CelType::String => ContextValue::Str(text().ok_or_else(|| Error::Data("expected text".into()))?),
        CelType::Bool => ContextValue::Bool(array.as_boolean().value(row)),
        CelType::Double => match array.data_type() {
            DataType::Float64 => ContextValue::Double(array.as_primitive::<Float64Type>().value(row)),
            DataType::Float32 => ContextValue::Double(f64::from(array.as_primitive::<Float32Type>().value(row))),
            _ => match key_at(array, row)? {
                Key::Int(i) => ContextValue::Double(i as f64),
                Key::UInt(u) => ContextValue::Double(u as f64),
                _ => return Err(Error::Data("expected a number".into())),
            },
        },
        CelType::Bytes => match key_at(array, row)? {
            Key::Str(s) => ContextValue::Bytes(s.into_bytes()),
            Key::Bytes(b) => ContextValue::Bytes(b),
            _ => return Err(Error::Data("expected bytes".into())),
        },
        CelType::Int | CelType::Uint => {
            let k = key_at(array, row)?;
            sf_router::key_as_context(&k, ty)?
        }
    })
}
