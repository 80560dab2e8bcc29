//! The exchange: a write plan's routed rows collected into their shards in
//! this process, then the shards built and uploaded in waves.
//!
//! ```text
//!  input partition 0 ──encode──┐
//!  input partition 1 ──encode──┼──> one RowCollector (all shards, shared
//!  ...                         ┘    memory budget, sorted chunks, spills)
//!                                          │ input ended
//!                                          v
//!                  shard tasks, at most build slots + upload_concurrency
//!                  at once: take the shard's rows, build (one per core),
//!                  claim an attempt, upload; one result row each
//! ```
//!
//! Each input partition is read by its own task, which encodes each batch's
//! keys and values and appends every row to its shard's chunk; full chunks
//! are sorted outside the collector's lock. Rows of shards not building
//! yet wait in memory up to the run's budget and in spill files beyond it,
//! so memory follows the data and the budget, not the shard count, and a
//! shard costs nothing until it has rows. Once the input has ended, shard
//! tasks run in waves: at most [`build_slots`] builds at once (CPU-bound)
//! and `upload_concurrency` uploads, so a build of 10,000 shards holds as
//! many shard files, open builders and task states as one of 10.
//!
//! A cluster does the same with its own parts: the shuffle groups rows by
//! shard, and the executors' task slots make the waves
//! ([`crate::build::shard_task::InputMode::Partitioned`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, RecordBatch};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use futures::StreamExt;
use sf_manifest::DbId;
use sf_manifest::sync::{self, lock};
use tokio::sync::mpsc::Sender;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::build::local_build::{build_rows, build_slots, shard_dir_in};
use crate::build::merge::{Order, ShardRows};
use crate::build::shard_result::{ShardResult, result_schema};
use crate::build::spec::ShardWriteSpec;
use crate::build::task_ids::TaskIds;
use crate::build::upload::upload_shard;
use crate::error::{Error, Result};
use crate::progress;
use crate::route::collect::RowCollector;
use crate::route::routed_batch::encode_batch;

/// Result rows sent downstream at once.
const RESULT_BATCH: usize = 1024;

/// The write's one output partition: every shard's result row, in batches
/// as shards finish.
pub(crate) fn run(
    spec: Arc<ShardWriteSpec>,
    input: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
) -> SendableRecordBatchStream {
    let mut builder = RecordBatchReceiverStreamBuilder::new(result_schema(), 2);
    let tx = builder.tx();
    // The task keeps the caller's span (the build's `write_shards`), so
    // that the shard tasks' spans are its children.
    builder.spawn(async move { exchange(spec, input, ctx, tx).await.map_err(DataFusionError::from) }.in_current_span());
    builder.build()
}

async fn exchange(
    spec: Arc<ShardWriteSpec>,
    input: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
    tx: Sender<DfResult<RecordBatch>>,
) -> Result<()> {
    let started = Instant::now();
    let run = progress::run(&spec.run_id, spec.upload_concurrency);
    let base = spec.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).map_err(|e| Error::io(format!("creating work_dir {}", base.display()), e))?;
    // The build's one work folder: spilled rows, and each shard's staging
    // folder while it is built and uploaded.
    let spill_dir = tempfile::Builder::new()
        .prefix(&format!("sf-{}-rows-", spec.run_id))
        .tempdir_in(&base)
        .map_err(|e| Error::io(format!("creating a spill folder in {}", base.display()), e))?;
    let collector = Arc::new(Mutex::new(RowCollector::new(
        spec.collector_settings(spill_dir.path().to_path_buf()),
        spec.row_budget(),
        0,
        spec.num_dbs,
    )));

    // Read every input partition into the collector.
    let reading = tracing::info_span!("input");
    let mut readers = JoinSet::new();
    for partition in 0..input.properties().output_partitioning().partition_count() {
        readers.spawn(
            collect_partition(
                Arc::clone(&spec),
                Arc::clone(&input),
                partition,
                Arc::clone(&ctx),
                Arc::clone(&collector),
            )
            .instrument(reading.clone()),
        );
    }
    drop(reading);
    while let Some(done) = readers.join_next().await {
        // The first failure ends the build; dropping the set stops the rest.
        done.map_err(|e| Error::Internal(format!("an input task failed: {e}")))??;
    }
    let mut collector = sync::into_inner(
        Arc::try_unwrap(collector).map_err(|_| Error::Internal("the input tasks still hold the collector".into()))?,
    );
    run.input_read(started.elapsed());
    tracing::debug!(
        run_id = %spec.run_id,
        spills = collector.spills(),
        held_bytes = collector.held_bytes(),
        "input read; building shards"
    );

    // Build the shards in waves.
    let width = build_slots() + spec.upload_concurrency.max(1);
    let mut tasks: JoinSet<Result<ShardResult>> = JoinSet::new();
    let mut results: Vec<ShardResult> = Vec::with_capacity(RESULT_BATCH);
    let mut next = 0u32;
    loop {
        while tasks.len() < width && next < spec.num_dbs {
            let db_id = DbId(next);
            next += 1;
            match collector.take_shard(db_id.0)? {
                None => {
                    run.shard_done();
                    results.push(ShardResult::empty(db_id, 0, TaskIds::default()));
                    if results.len() >= RESULT_BATCH {
                        send(&tx, &mut results).await?;
                    }
                }
                Some(rows) => {
                    let span = tracing::info_span!("shard", db_id = db_id.0);
                    let dir = spill_dir.path().to_path_buf();
                    tasks.spawn(write_shard(Arc::clone(&spec), rows, dir).instrument(span));
                }
            }
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        results.push(done.map_err(|e| Error::Internal(format!("a shard task failed: {e}")))??);
        if results.len() >= RESULT_BATCH {
            send(&tx, &mut results).await?;
        }
    }
    send(&tx, &mut results).await?;
    drop(collector);
    drop(spill_dir);
    Ok(())
}

async fn send(tx: &Sender<DfResult<RecordBatch>>, results: &mut Vec<ShardResult>) -> Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    let batch = ShardResult::to_batch(results)?;
    results.clear();
    tx.send(Ok(batch))
        .await
        .map_err(|_| Error::Cancelled("the build stopped reading shard results".into()))
}

/// Reads one input partition into the collector.
async fn collect_partition(
    spec: Arc<ShardWriteSpec>,
    input: Arc<dyn ExecutionPlan>,
    partition: usize,
    ctx: Arc<TaskContext>,
    collector: Arc<Mutex<RowCollector>>,
) -> Result<()> {
    let run = progress::run(&spec.run_id, spec.upload_concurrency);
    let mut stream = input.execute(partition, ctx)?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let (dbs, keys, values) = encode_batch(&spec, &batch, None)?;
        let rows = keys.len() as u64;
        let collector = Arc::clone(&collector);
        tokio::task::spawn_blocking(move || -> Result<()> {
            let sealed = lock(&collector).push(&dbs, &keys, &values)?;
            if sealed.is_empty() {
                return Ok(());
            }
            let settings = lock(&collector).settings().clone();
            let mut sorted = Vec::with_capacity(sealed.len());
            for (db, mut chunk) in sealed {
                if settings.order == Order::Key {
                    chunk.sort(DbId(db), settings.on_duplicate, settings.key_encoding)?;
                }
                sorted.push((db, chunk));
            }
            let mut c = lock(&collector);
            for (db, chunk) in sorted {
                c.put_sealed(db, chunk)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("reading input partition {partition}: {e}")))??;
        run.add_rows(rows);
    }
    Ok(())
}

/// Builds and uploads one shard from its collected rows.
async fn write_shard(spec: Arc<ShardWriteSpec>, rows: ShardRows, build_dir: PathBuf) -> Result<ShardResult> {
    let started = Instant::now();
    let db_id = rows.db_id();
    let dir = shard_dir_in(&build_dir, db_id)?;
    let built = build_rows(&spec, rows, dir.path()).await?;
    let result = upload_shard(&spec, db_id, built, started, TaskIds::default()).await;
    drop(dir);
    progress::run(&spec.run_id, spec.upload_concurrency).shard_done();
    result
}
