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
//!   writes the shards in waves ([`crate::route::exchange`]), emitting every
//!   shard's result row from its one output partition.
//!
//! Either way each shard is built by exactly one task, from its rows
//! sorted by key ([`crate::build::merge`]) under the run's shared memory
//! budget ([`crate::route::budget`]).

use std::any::Any;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, BinaryArray};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::StreamExt;
use sf_manifest::DbId;
use tracing::Instrument;

use crate::build::backend::{Row, ShardBuilder, backend_for};
use crate::build::local_build::{Built, build_context, build_rows, work_dir};
use crate::build::merge::SortStats;
use crate::build::shard_result::{ShardResult, result_schema};
use crate::build::spec::ShardWriteSpec;
use crate::build::task_ids::{TaskIds, task_ids};
use crate::build::upload::upload_shard;
use crate::error::{Error, Result};
use crate::progress;
use crate::route::collect::RowCollector;
use crate::route::routed_batch::encode_batch;

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
            return Ok(crate::route::exchange::run(
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
        let task = task_ids(&context, partition);
        // Under the caller's span where there is one (in process); on a
        // cluster's executor, the root of a trace of its own.
        let span = tracing::info_span!("shard", db_id = partition);
        let fut = async move {
            let row = write_partition(&spec, DbId(partition as u32), input, task)
                .await
                .map_err(DataFusionError::from)?;
            ShardResult::to_batch(&[row]).map_err(DataFusionError::from)
        }
        .instrument(span);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            result_schema(),
            futures::stream::once(fut),
        )))
    }
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
    let mut intake: Option<(Intake, crate::build::local_build::ShardDir)> = None;
    while let Some(batch) = input.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let (dbs, keys, values) = encode_batch(spec, &batch, Some(db_id))?;
        let rows = keys.len() as u64;
        let (current, dir) = match intake.take() {
            Some(s) => s,
            None => {
                let dir = work_dir(spec, db_id)?;
                (Intake::new(spec, db_id, dir.path())?, dir)
            }
        };
        intake = Some((current.add(db_id, dbs, keys, values).await?, dir));
        run.add_rows(rows);
    }
    let Some((current, dir)) = intake else {
        run.shard_done();
        return Ok(ShardResult::empty(db_id, started.elapsed().as_millis() as u64, task));
    };
    let built = current.finish(spec, db_id, dir.path()).await?;
    let result = upload_shard(spec, db_id, built, started, task).await;
    drop(dir);
    run.shard_done();
    result
}

/// Where a partition's rows go while its input is read.
enum Intake {
    /// Into a collector of this one shard; the shard is built from it
    /// once the input ends (`sort_within_shard`).
    Sorting(Box<RowCollector>),
    /// Straight into the builder, in arrival order.
    Direct(Box<dyn ShardBuilder>),
}

impl Intake {
    fn new(spec: &ShardWriteSpec, db_id: DbId, dir: &Path) -> Result<Self> {
        Ok(if spec.sort_within_shard {
            Intake::Sorting(Box::new(RowCollector::new(
                spec.collector_settings(dir.join("spill")),
                spec.row_budget(),
                db_id.0,
                1,
            )))
        } else {
            Intake::Direct(backend_for(&spec.backend).builder(build_context(spec, db_id, dir))?)
        })
    }

    /// Takes one batch; CPU and disk work runs off the async runtime.
    async fn add(self, db_id: DbId, dbs: Vec<u32>, keys: BinaryArray, values: BinaryArray) -> Result<Self> {
        let join = |e: tokio::task::JoinError| Error::Internal(format!("shard {db_id} build task: {e}"));
        match self {
            Intake::Sorting(mut collector) => tokio::task::spawn_blocking(move || {
                let settings = collector.settings().clone();
                for (db, mut chunk) in collector.push(&dbs, &keys, &values)? {
                    chunk.sort(DbId(db), settings.on_duplicate, settings.key_encoding)?;
                    collector.put_sealed(db, chunk)?;
                }
                Ok(Intake::Sorting(collector))
            })
            .await
            .map_err(join)?,
            Intake::Direct(mut builder) => tokio::task::spawn_blocking(move || {
                let rows: Vec<Row<'_>> = (0..keys.len()).map(|i| (keys.value(i), values.value(i))).collect();
                builder.add(&rows)?;
                Ok(Intake::Direct(builder))
            })
            .await
            .map_err(join)?,
        }
    }

    /// Ends the build: the staged shard, and what sorting did.
    async fn finish(self, spec: &ShardWriteSpec, db_id: DbId, dir: &Path) -> Result<Built> {
        let join = |e: tokio::task::JoinError| Error::Internal(format!("shard {db_id} build task: {e}"));
        match self {
            Intake::Direct(builder) => {
                let staged = tokio::task::spawn_blocking(move || builder.finish())
                    .await
                    .map_err(join)??;
                Ok(Built {
                    staged,
                    sorted: SortStats::default(),
                })
            }
            Intake::Sorting(mut collector) => {
                let rows = collector
                    .take_shard(db_id.0)?
                    .ok_or_else(|| Error::Internal(format!("shard {db_id} received rows but holds none")))?;
                build_rows(spec, rows, dir).await
            }
        }
    }
}
