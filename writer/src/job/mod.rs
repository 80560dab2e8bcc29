//! The build job on the driver: validate against the input, plan, run the
//! shard writes on an engine, then publish.
//!
//! - [`engine`]: where the plan runs ([`Embedded`] here; Ballista in
//!   `sf-executor`) and the memory shares of a build;
//! - [`resolve`]: planning against the input ([`prepare`], [`Prepared`]);
//! - [`report`]: what a build reports ([`Outcome`], [`BuildSummary`],
//!   [`PlanReport`]);
//! - this file: the orchestration, [`build`] and [`build_prepared`]: run
//!   record, shard writes, verification and publishing, the failure sweep.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::dataframe::DataFrame;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use sf_manifest::{CurrentVersion, ManifestStore, ObjectManifestStore, RunRecord, Timestamp, layout};

use crate::adapter::backend_for;
use crate::config::JobConfig;
use crate::error::{Error, Result};
use crate::exec::{ShardResult, ShardWriteSpec};
use crate::finish::{FinishInput, finish};
use crate::plan::ShardWriteNode;
use crate::progress;

pub mod engine;
pub mod report;
pub mod resolve;

pub use engine::{
    Embedded, Engine, MemoryShares, job_runtime, job_session_config, memory_shares, session_state_builder,
};
pub use report::{BuildSummary, Outcome, PlanReport};
use resolve::verify_sample;
pub use resolve::{MAX_INFERRED_TOKENS, Prepared, field_list, prepare, prepare_frame, read_input};

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

/// Runs a build: everything is checked before anything is written, and
/// nothing is published unless every shard was written and verified.
pub async fn build(job: &JobConfig, engine: &dyn Engine, options: &BuildOptions) -> Result<Outcome> {
    let started = Instant::now();
    let phase = |name: &str| match &options.progress {
        Some(p) => p.phase(name),
        None => tracing::debug!(phase = name),
    };
    if job.output.table.is_some() {
        return Err(Error::config(
            "output.table",
            "a job that writes a warehouse table runs through sf-warehouse (`sf_warehouse::run_job`), which owns catalogs",
        ));
    }
    if job
        .input
        .as_ref()
        .is_some_and(|i| i.format == crate::config::InputFormat::Table)
    {
        return Err(crate::input::table_input_error());
    }
    phase("reading input schema");
    let prepared = prepare(job, engine).await?;
    build_prepared(job, prepared, engine, options, started).await
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
    let record_key = layout::run_record_key(Timestamp::now(), &run_id, &sf_manifest::ids::unique_hex());
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
