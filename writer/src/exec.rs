//! `ShardWriteExec`: the physical plan node that writes shard attempts and
//! emits one small result row per shard.
//!
//! The node's state is [`ShardWriteSpec`], plain serialisable data, so the
//! same node runs embedded and on a cluster's executors. It takes its rows
//! in one of two ways ([`InputMode`]):
//!
//! - **partitioned** (a cluster): partition `i` of its input holds exactly
//!   shard `i`'s rows (the shuffle delivers them), and partition `i` of the
//!   node writes shard `i`; the engine runs the partitions as tasks in its
//!   slots.
//! - **exchange** (one process): the input is routed but not partitioned;
//!   the node collects every row into its shard in bounded memory and
//!   writes the shards in waves ([`crate::exchange`]), emitting every
//!   shard's result row from its one output partition.
//!
//! Either way each shard is built by exactly one task, from its rows
//! sorted by key ([`crate::sort`]) under the run's shared memory budget
//! ([`crate::budget`]).

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::StreamExt;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sf_manifest::{Attempt, Classified, DbId, KeyEncoding, Location, RunId, StorageOptions, Timestamp, format::layout};
use tokio::sync::Semaphore;

use crate::adapter::{
    AttemptTarget, BackendConfig, BuildContext, DuplicatePolicy, Row, ShardBuilder, StagedShard, backend_for,
};
use crate::budget;
use crate::config::RetryPolicy;
use crate::error::{Error, Result};
use crate::progress::{self, RunProgress, Step};
use crate::ratelimit::RateLimits;
use crate::sort::{CollectorSettings, MAX_RUN_BYTES, Order, RowCollector, ShardRows, SortStats};
use crate::value::{ValueSpec, encode_keys, encode_values};

/// Name of the claim marker inside an attempt folder.
pub use sf_manifest::format::layout::CLAIM_FILE;
/// Attempts a shard may claim before the task gives up.
pub const MAX_ATTEMPTS: u32 = 100;

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
    /// process, shared on demand ([`crate::budget`]); beyond it they spill
    /// sorted runs to `work_dir`.
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

/// The schema of the result rows, one per partition.
pub fn result_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("db_id", DataType::UInt32, false),
            Field::new("attempt", DataType::UInt32, true),
            Field::new("db_url", DataType::Utf8, true),
            Field::new("row_count", DataType::UInt64, false),
            Field::new("duplicates", DataType::UInt64, false),
            Field::new("db_bytes", DataType::UInt64, false),
            Field::new("min_key", DataType::Binary, true),
            Field::new("max_key", DataType::Binary, true),
            Field::new("checksum", DataType::Utf8, true),
            Field::new("checkpoint_id", DataType::Utf8, true),
            Field::new("duration_ms", DataType::UInt64, false),
            Field::new("stage_id", DataType::Int64, true),
            Field::new("task_attempt_id", DataType::Int64, true),
            Field::new("failed_tries", DataType::UInt32, false),
            Field::new("spilled_runs", DataType::UInt32, false),
        ]))
    });
    Arc::clone(&SCHEMA)
}

/// One decoded result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardResult {
    /// The shard.
    pub db_id: DbId,
    /// The attempt written; `None` for an empty shard (nothing written).
    pub attempt: Option<Attempt>,
    /// URL of the attempt folder.
    pub db_url: Option<String>,
    /// Distinct keys stored.
    pub row_count: u64,
    /// Rows replaced by a later row with the same key.
    pub duplicates: u64,
    /// Shard file size (0 for SlateDB).
    pub db_bytes: u64,
    /// Smallest encoded key.
    pub min_key: Option<Vec<u8>>,
    /// Largest encoded key.
    pub max_key: Option<Vec<u8>>,
    /// Content checksum.
    pub checksum: Option<String>,
    /// Content identity.
    pub checkpoint_id: Option<String>,
    /// Wall time of the task.
    pub duration_ms: u64,
    /// Engine stage id.
    pub stage_id: Option<i64>,
    /// Engine task attempt id.
    pub task_attempt_id: Option<i64>,
    /// Upload tries that failed before the one that succeeded.
    pub failed_tries: u32,
    /// Sorted runs the shard's sort wrote to disk (0: it fit in memory).
    pub spilled_runs: u32,
}

impl ShardResult {
    pub(crate) fn empty(db_id: DbId, duration_ms: u64, task: TaskIds) -> Self {
        ShardResult {
            db_id,
            attempt: None,
            db_url: None,
            row_count: 0,
            duplicates: 0,
            db_bytes: 0,
            min_key: None,
            max_key: None,
            checksum: None,
            checkpoint_id: None,
            duration_ms,
            stage_id: task.stage_id,
            task_attempt_id: task.task_attempt_id,
            failed_tries: 0,
            spilled_runs: 0,
        }
    }

    /// Encodes rows as a batch of [`result_schema`].
    pub fn to_batch(rows: &[ShardResult]) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.db_id.0))),
            Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.attempt.map(|a| a.0)))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.db_url.as_deref()))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.row_count))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.duplicates))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.db_bytes))),
            Arc::new(BinaryArray::from_iter(rows.iter().map(|r| r.min_key.as_deref()))),
            Arc::new(BinaryArray::from_iter(rows.iter().map(|r| r.max_key.as_deref()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.checksum.as_deref()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.checkpoint_id.as_deref()))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.duration_ms))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.stage_id))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.task_attempt_id))),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.failed_tries))),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.spilled_runs))),
        ];
        RecordBatch::try_new(result_schema(), cols).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Decodes a batch of [`result_schema`].
    pub fn from_batch(batch: &RecordBatch) -> Result<Vec<ShardResult>> {
        if batch.schema().fields() != result_schema().fields() {
            return Err(Error::Internal(format!(
                "shard results have schema {:?}, expected {:?}",
                batch.schema(),
                result_schema()
            )));
        }
        let u32s = |i: usize| batch.column(i).as_primitive::<UInt32Type>();
        let u64s = |i: usize| batch.column(i).as_primitive::<arrow::datatypes::UInt64Type>();
        let i64s = |i: usize| batch.column(i).as_primitive::<arrow::datatypes::Int64Type>();
        let strs = |i: usize| batch.column(i).as_string::<i32>();
        let bins = |i: usize| batch.column(i).as_binary::<i32>();
        let opt_str = |i: usize, r: usize| strs(i).is_valid(r).then(|| strs(i).value(r).to_string());
        let opt_bin = |i: usize, r: usize| bins(i).is_valid(r).then(|| bins(i).value(r).to_vec());
        Ok((0..batch.num_rows())
            .map(|r| ShardResult {
                db_id: DbId(u32s(0).value(r)),
                attempt: u32s(1).is_valid(r).then(|| Attempt(u32s(1).value(r))),
                db_url: opt_str(2, r),
                row_count: u64s(3).value(r),
                duplicates: u64s(4).value(r),
                db_bytes: u64s(5).value(r),
                min_key: opt_bin(6, r),
                max_key: opt_bin(7, r),
                checksum: opt_str(8, r),
                checkpoint_id: opt_str(9, r),
                duration_ms: u64s(10).value(r),
                stage_id: i64s(11).is_valid(r).then(|| i64s(11).value(r)),
                task_attempt_id: i64s(12).is_valid(r).then(|| i64s(12).value(r)),
                failed_tries: u32s(13).value(r),
                spilled_runs: u32s(14).value(r),
            })
            .collect())
    }
}

/// Engine ids of the task running a partition, when the engine has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskIds {
    /// Stage.
    pub stage_id: Option<i64>,
    /// Task attempt.
    pub task_attempt_id: Option<i64>,
}

/// Hook for engines that know their stage and task ids (set by the
/// cluster integration; embedded runs have none).
pub type TaskIdsFn = fn(&TaskContext, usize) -> TaskIds;

static TASK_IDS: std::sync::OnceLock<TaskIdsFn> = std::sync::OnceLock::new();

/// Installs how task ids are read from a task context (once per process).
pub fn set_task_ids_fn(f: TaskIdsFn) {
    let _ = TASK_IDS.set(f);
}

/// How a [`ShardWriteExec`] receives each shard's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// Partition `i` of the input holds exactly shard `i`'s rows; the node
    /// has one output partition per shard.
    Partitioned,
    /// The input is routed but not partitioned; the node collects rows
    /// into shards itself and has one output partition.
    Exchange,
}

/// Writes shards; see the [module docs](self).
#[derive(Debug)]
pub struct ShardWriteExec {
    spec: Arc<ShardWriteSpec>,
    input: Arc<dyn ExecutionPlan>,
    mode: InputMode,
    properties: PlanProperties,
}

impl ShardWriteExec {
    /// The node over `input`, which must have `spec.num_dbs` partitions,
    /// partition `i` holding exactly shard `i`'s rows.
    pub fn new(spec: Arc<ShardWriteSpec>, input: Arc<dyn ExecutionPlan>) -> Self {
        Self::with_mode(spec, input, InputMode::Partitioned)
    }

    /// The node over `input` (routed rows in any partitioning), collecting
    /// rows into shards in this process.
    pub fn exchange(spec: Arc<ShardWriteSpec>, input: Arc<dyn ExecutionPlan>) -> Self {
        Self::with_mode(spec, input, InputMode::Exchange)
    }

    fn with_mode(spec: Arc<ShardWriteSpec>, input: Arc<dyn ExecutionPlan>, mode: InputMode) -> Self {
        let partitions = match mode {
            InputMode::Partitioned => input.properties().output_partitioning().partition_count(),
            InputMode::Exchange => 1,
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(result_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        ShardWriteExec {
            spec,
            input,
            mode,
            properties,
        }
    }

    /// The spec.
    pub fn spec(&self) -> &Arc<ShardWriteSpec> {
        &self.spec
    }

    /// The input plan.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// How the node receives rows.
    pub fn mode(&self) -> InputMode {
        self.mode
    }
}

impl DisplayAs for ShardWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ShardWriteExec: run_id={}, num_dbs={}, backend={}, prefix={}, input={}",
            self.spec.run_id,
            self.spec.num_dbs,
            self.spec.backend.name(),
            self.spec.prefix_url,
            match self.mode {
                InputMode::Partitioned => "partitioned",
                InputMode::Exchange => "exchange",
            }
        )
    }
}

impl ExecutionPlan for ShardWriteExec {
    fn name(&self) -> &str {
        "ShardWriteExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &PlanProperties {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[Arc<dyn ExecutionPlan>; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("ShardWriteExec has exactly one input".into()))?;
        Ok(Arc::new(ShardWriteExec::with_mode(
            Arc::clone(&self.spec),
            input,
            self.mode,
        )))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        if self.mode == InputMode::Exchange {
            if partition != 0 {
                return Err(DataFusionError::Internal(format!(
                    "ShardWriteExec in exchange mode has one partition, not {partition}"
                )));
            }
            return Ok(crate::exchange::run(
                Arc::clone(&self.spec),
                Arc::clone(&self.input),
                context,
            ));
        }
        let partitions = self.input.properties().output_partitioning().partition_count();
        if partitions != self.spec.num_dbs as usize {
            return Err(DataFusionError::Internal(format!(
                "ShardWriteExec needs {} input partitions (one per shard), got {partitions}",
                self.spec.num_dbs
            )));
        }
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let spec = Arc::clone(&self.spec);
        let task = TASK_IDS.get().map(|f| f(&context, partition)).unwrap_or_default();
        let fut = async move {
            let row = write_partition(&spec, DbId(partition as u32), input, task)
                .await
                .map_err(DataFusionError::from)?;
            ShardResult::to_batch(&[row]).map_err(DataFusionError::from)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            result_schema(),
            futures::stream::once(fut),
        )))
    }
}

/// The encoded keys and values of one input batch, and each row's shard;
/// checks that every shard id is below `num_dbs` (or, for a partition,
/// is `only`).
pub(crate) fn encode_batch(
    spec: &ShardWriteSpec,
    batch: &RecordBatch,
    only: Option<DbId>,
) -> Result<(Vec<u32>, BinaryArray, BinaryArray)> {
    let ids = batch
        .column_by_name(&spec.shard_id_col)
        .ok_or_else(|| Error::Internal(format!("column {} missing in the shard input", spec.shard_id_col)))?;
    let ids = ids.as_primitive::<UInt32Type>();
    let bad = match only {
        Some(db) => ids.values().iter().position(|d| *d != db.0),
        None => ids.values().iter().position(|d| *d >= spec.num_dbs),
    };
    if let Some(bad) = bad {
        return Err(Error::Internal(match only {
            Some(db) => format!(
                "partition {db} received a row of shard {} (row {bad} of a batch); partitioning is broken",
                ids.value(bad)
            ),
            None => format!(
                "a row was routed to shard {} of {}; routing is broken",
                ids.value(bad),
                spec.num_dbs
            ),
        }));
    }
    let key_col = batch
        .column_by_name(&spec.key_col)
        .ok_or_else(|| Error::Internal(format!("key column {} missing in the shard input", spec.key_col)))?;
    let keys = encode_keys(key_col.as_ref(), spec.key_encoding, &spec.key_col)?;
    let values = encode_values(batch, &spec.value)?;
    Ok((ids.values().to_vec(), keys, values))
}

/// Reads one partition's rows, builds the shard locally, then uploads it
/// into a freshly claimed attempt, retrying retryable failures into new
/// attempts.
async fn write_partition(
    spec: &ShardWriteSpec,
    db_id: DbId,
    mut input: SendableRecordBatchStream,
    task: TaskIds,
) -> Result<ShardResult> {
    let started = Instant::now();
    let run = progress::run(&spec.run_id, spec.upload_concurrency);
    let mut stage: Option<(Stage, tempfile::TempDir)> = None;
    while let Some(batch) = input.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let (dbs, keys, values) = encode_batch(spec, &batch, Some(db_id))?;
        let rows = keys.len() as u64;
        let (current, dir) = match stage.take() {
            Some(s) => s,
            None => {
                let dir = work_dir(spec, db_id)?;
                (Stage::new(spec, db_id, dir.path())?, dir)
            }
        };
        stage = Some((current.add(db_id, dbs, keys, values).await?, dir));
        run.add_rows(rows);
    }
    let Some((current, dir)) = stage else {
        run.shard_done();
        return Ok(ShardResult::empty(db_id, started.elapsed().as_millis() as u64, task));
    };
    let built = current.finish(spec, db_id, dir.path()).await?;
    let result = upload_shard(spec, db_id, built, started, task).await;
    drop(dir);
    run.shard_done();
    result
}

/// A shard built locally, ready to upload.
pub(crate) struct Built {
    pub(crate) staged: Arc<dyn StagedShard>,
    pub(crate) sorted: SortStats,
}

/// Uploads a built shard into a freshly claimed attempt (retrying
/// retryable failures into new attempts) and makes its result row.
pub(crate) async fn upload_shard(
    spec: &ShardWriteSpec,
    db_id: DbId,
    built: Built,
    started: Instant,
    task: TaskIds,
) -> Result<ShardResult> {
    let run = progress::run(&spec.run_id, spec.upload_concurrency);
    let prefix = spec.prefix()?;
    let Built { staged, sorted } = built;
    let (attempt, uploaded, failed_tries) = {
        let _permit = run.upload_permit().await;
        upload_with_retries(spec, &prefix, db_id, staged.as_ref(), task).await?
    };
    let content = staged.content();
    Ok(ShardResult {
        db_id,
        attempt: Some(attempt.0),
        db_url: Some(attempt.1.url.clone()),
        row_count: content.row_count,
        duplicates: content.duplicates + sorted.duplicates,
        db_bytes: uploaded.db_bytes,
        min_key: content.min_key.clone(),
        max_key: content.max_key.clone(),
        checksum: Some(content.checksum.clone()),
        checkpoint_id: Some(uploaded.checkpoint_id),
        duration_ms: started.elapsed().as_millis() as u64,
        stage_id: task.stage_id,
        task_attempt_id: task.task_attempt_id,
        failed_tries,
        spilled_runs: sorted.spilled_runs,
    })
}

/// Where a partition's rows go while its input is read.
enum Stage {
    /// Into a collector of this one shard; the shard is built from it
    /// once the input ends (`sort_within_shard`).
    Sorting(Box<RowCollector>),
    /// Straight into the builder, in arrival order.
    Direct(Box<dyn ShardBuilder>),
}

/// Shard builds running at once in this process, one per core: a build is
/// CPU-bound, and more at once only share the cores and thrash caches.
static BUILD_SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(build_slots()));

/// Shard builds that run at once in this process.
pub fn build_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn build_context(spec: &ShardWriteSpec, db_id: DbId, dir: &Path) -> BuildContext {
    BuildContext {
        db_id,
        work_dir: dir.to_path_buf(),
        on_duplicate: spec.on_duplicate,
        sorted: spec.sort_within_shard,
        limits: spec.limits,
        key_encoding: spec.key_encoding,
    }
}

/// Builds shard `db_id` from its collected rows in `dir`, in one of this
/// process's build slots.
pub(crate) async fn build_rows(spec: &ShardWriteSpec, rows: ShardRows, dir: &Path) -> Result<Built> {
    let db_id = rows.db_id();
    let join = |e: tokio::task::JoinError| Error::Internal(format!("shard {db_id} build task: {e}"));
    let _slot = BUILD_SLOTS
        .acquire()
        .await
        .map_err(|e| Error::Internal(format!("shard {db_id} build slot: {e}")))?;
    let started = Instant::now();
    let builder = backend_for(&spec.backend).builder(build_context(spec, db_id, dir))?;
    let merge_dir = dir.join("merge");
    let built = tokio::task::spawn_blocking(move || {
        let mut builder = builder;
        let sorted = rows.drain(&merge_dir, &mut |rows| builder.add(rows))?;
        Ok(Built {
            staged: builder.finish()?,
            sorted,
        })
    })
    .await
    .map_err(join)?;
    progress::run(&spec.run_id, spec.upload_concurrency).add_time(Step::Build, started.elapsed());
    built
}

impl Stage {
    fn new(spec: &ShardWriteSpec, db_id: DbId, dir: &Path) -> Result<Self> {
        Ok(if spec.sort_within_shard {
            Stage::Sorting(Box::new(RowCollector::new(
                spec.collector_settings(dir.join("spill")),
                spec.row_budget(),
                db_id.0,
                1,
            )))
        } else {
            Stage::Direct(backend_for(&spec.backend).builder(build_context(spec, db_id, dir))?)
        })
    }

    /// Takes one batch; CPU and disk work runs off the async runtime.
    async fn add(self, db_id: DbId, dbs: Vec<u32>, keys: BinaryArray, values: BinaryArray) -> Result<Self> {
        let join = |e: tokio::task::JoinError| Error::Internal(format!("shard {db_id} build task: {e}"));
        match self {
            Stage::Sorting(mut collector) => tokio::task::spawn_blocking(move || {
                let settings = collector.settings().clone();
                for (db, mut chunk) in collector.push(&dbs, &keys, &values)? {
                    chunk.sort(DbId(db), settings.on_duplicate, settings.key_encoding)?;
                    collector.put_sealed(db, chunk)?;
                }
                Ok(Stage::Sorting(collector))
            })
            .await
            .map_err(join)?,
            Stage::Direct(mut builder) => tokio::task::spawn_blocking(move || {
                let rows: Vec<Row<'_>> = (0..keys.len()).map(|i| (keys.value(i), values.value(i))).collect();
                builder.add(&rows)?;
                Ok(Stage::Direct(builder))
            })
            .await
            .map_err(join)?,
        }
    }

    /// Ends the build: the staged shard, and what sorting did.
    async fn finish(self, spec: &ShardWriteSpec, db_id: DbId, dir: &Path) -> Result<Built> {
        let join = |e: tokio::task::JoinError| Error::Internal(format!("shard {db_id} build task: {e}"));
        match self {
            Stage::Direct(builder) => {
                let staged = tokio::task::spawn_blocking(move || builder.finish())
                    .await
                    .map_err(join)??;
                Ok(Built {
                    staged,
                    sorted: SortStats::default(),
                })
            }
            Stage::Sorting(mut collector) => {
                let rows = collector
                    .take_shard(db_id.0)?
                    .ok_or_else(|| Error::Internal(format!("shard {db_id} received rows but holds none")))?;
                build_rows(spec, rows, dir).await
            }
        }
    }
}

pub(crate) fn work_dir(spec: &ShardWriteSpec, db_id: DbId) -> Result<tempfile::TempDir> {
    let base = spec.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).map_err(|e| Error::io(format!("creating work_dir {}", base.display()), e))?;
    tempfile::Builder::new()
        .prefix(&format!("sf-{}-{:05}-", spec.run_id, db_id.0))
        .tempdir_in(&base)
        .map_err(|e| Error::io(format!("creating a staging folder in {}", base.display()), e))
}

async fn upload_with_retries(
    spec: &ShardWriteSpec,
    prefix: &Location,
    db_id: DbId,
    staged: &dyn StagedShard,
    task: TaskIds,
) -> Result<((Attempt, Location), crate::adapter::Uploaded, u32)> {
    let run = progress::run(&spec.run_id, spec.upload_concurrency);
    let mut failed = 0u32;
    loop {
        let started = Instant::now();
        let claimed = claim_attempt(prefix, &spec.run_id, &spec.build_id, db_id, task).await;
        run.add_time(Step::Claim, started.elapsed());
        let result = match claimed {
            Ok((attempt, location)) => {
                let target = AttemptTarget {
                    db_id,
                    attempt,
                    location: location.clone(),
                    limits: spec.limits,
                };
                match sf_manifest::publish::failpoint::hit("claim").await {
                    Ok(()) => {
                        let started = Instant::now();
                        let uploaded = staged.upload(&target).await;
                        run.add_time(Step::Upload, started.elapsed());
                        match uploaded {
                            Ok(up) => sf_manifest::publish::failpoint::hit("upload")
                                .await
                                .map(|_| ((attempt, location), up))
                                .map_err(Error::from),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((claimed, uploaded)) => return Ok((claimed, uploaded, failed)),
            Err(e) if e.is_retryable() && failed < spec.retry.retries => {
                failed += 1;
                let wait = spec.retry.backoff(failed);
                tracing::warn!(db_id = db_id.0, try_ = failed, ?wait, error = %e, "shard upload failed; retrying into a new attempt");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Claims the lowest free attempt of a shard by creating its claim marker
/// if absent; a retried or duplicated task therefore never writes into
/// another's attempt folder.
pub async fn claim_attempt(
    prefix: &Location,
    run_id: &RunId,
    build_id: &str,
    db_id: DbId,
    task: TaskIds,
) -> Result<(Attempt, Location)> {
    let body = serde_json::json!({
        "run_id": run_id.as_str(),
        "build_id": build_id,
        "db_id": db_id.0,
        "claimed_at": Timestamp::now().to_iso(),
        "host": hostname(),
        "pid": std::process::id(),
        "stage_id": task.stage_id,
        "task_attempt_id": task.task_attempt_id,
    });
    let body = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
    for a in 0..MAX_ATTEMPTS {
        let attempt = Attempt(a);
        let location = prefix.child(&layout::shard_attempt_key(run_id, db_id, attempt));
        let claim = location.child(CLAIM_FILE);
        let put = claim
            .store
            .put_opts(
                &claim.path,
                PutPayload::from(body.clone()),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match put {
            Ok(_) => return Ok((attempt, location)),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => continue,
            Err(e) => {
                return Err(Error::shard_store(
                    db_id,
                    Some(attempt),
                    format!("claiming {}: {e}", claim.url),
                    e,
                ));
            }
        }
    }
    Err(Error::shard(
        db_id,
        None,
        format!("all {MAX_ATTEMPTS} attempts of the shard are claimed; clean up the run or use a new run_id"),
        sf_manifest::ErrorKind::Conflict,
    ))
}

/// This host's name, looked up once per process (every claim marker
/// names it).
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_default()
    })
}

/// The progress of a run in this process.
pub fn run_progress(run_id: &RunId) -> Arc<RunProgress> {
    progress::run(run_id, 1)
}
