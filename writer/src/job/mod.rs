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

use sf_manifest::Classified;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::dataframe::DataFrame;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use sf_manifest::{
    Attempt, CurrentPointer, CurrentVersion, DbId, ManifestStore, ObjectManifestStore, RunId, RunRecord, RunStatus,
    Timestamp, format::layout, publish::failpoint,
};
use tracing::Instrument;

use crate::build::backend::{BackendConfig, backend_for};
use crate::build::shard_result::ShardResult;
use crate::build::spec::ShardWriteSpec;
use crate::config::JobConfig;
use crate::error::{Error, Result};
use crate::plan::node::ShardWriteNode;
use crate::progress;
use crate::publish::gates::PublishCheck;
use crate::publish::verdict::{GateResult, Verdict};
use crate::publish::winners::{PublishInput, PublishState, publish_winners};

pub mod engine;
pub mod report;
pub mod resolve;
#[cfg(test)]
mod tests;
pub mod vector_plan;

pub use engine::{
    Embedded, Engine, MemoryShares, embedded_state_builder, job_runtime, job_session_config, memory_shares,
    session_state_builder,
};
pub use report::{AlreadyPublished, BuildSummary, Outcome, PhaseTimes, PlanReport, RetentionReport};
use resolve::verify_sample;
pub use resolve::{MAX_INFERRED_TOKENS, Prepared, field_list, prepare, prepare_frame, read_input};

/// Receives progress while a build runs.
pub trait ProgressSink: Send + Sync {
    /// A new phase started (`reading input`, `writing shards`, ...).
    fn phase(&self, name: &str);
    /// Rows handed to shard writers and shards finished, of `num_dbs`.
    fn progress(&self, rows: u64, shards_done: u32, num_dbs: u32);
    /// A validation gate was evaluated (reports list every one).
    fn gate(&self, _result: &GateResult) {}
}

/// Options of one build.
#[derive(Clone, Default)]
pub struct BuildOptions {
    /// Plan and report, write nothing.
    pub dry_run: bool,
    /// Progress receiver.
    pub progress: Option<Arc<dyn ProgressSink>>,
    /// Extra keys for the manifest's `custom.shardforge` object (a caller's
    /// own metadata, such as the Arrow schema of a table).
    pub custom: serde_json::Map<String, serde_json::Value>,
    /// Build the job's `run_id` again although it was published before
    /// (without it, such a build does nothing and says so).
    pub rebuild: bool,
    /// Publish whatever the validation gates say; the overridden gates are
    /// recorded in the manifest and the run record.
    pub force: bool,
    /// Checks run with the gates that need more than the writer has,
    /// installed by the caller (keys read back through the online reader,
    /// say).
    pub checks: Vec<Arc<dyn PublishCheck>>,
}

impl fmt::Debug for BuildOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildOptions")
            .field("dry_run", &self.dry_run)
            .field("rebuild", &self.rebuild)
            .field("force", &self.force)
            .field("checks", &self.checks)
            .finish_non_exhaustive()
    }
}

/// Runs a build: everything is checked before anything is written, and
/// nothing is published unless every shard was written and verified and
/// every validation gate passed.
///
/// A job naming a `run_id` that was published before does nothing and
/// returns [`Outcome::AlreadyPublished`] (a scheduler's retry is a no-op),
/// unless `options.rebuild`; if that earlier build wrote its manifest but
/// died before swapping `_CURRENT`, the swap is made now.
pub async fn build(job: &JobConfig, engine: &dyn Engine, options: &BuildOptions) -> Result<Outcome> {
    build_from(job, None, engine, options).await
}

/// [`build`] of the rows of `table` instead of the job's `[input]`: a
/// table provider of the caller's (an in-memory or streaming source, such
/// as the Arrow stream the Python package hands in), read through a
/// session of `engine` like a job's files. Everything else is the same
/// build: the run-id check, planning, shard writes, verification, gates
/// and publish.
pub async fn build_table(
    job: &JobConfig,
    table: Arc<dyn datafusion::catalog::TableProvider>,
    engine: &dyn Engine,
    options: &BuildOptions,
) -> Result<Outcome> {
    build_from(job, Some(table), engine, options).await
}

/// [`build`] and [`build_table`]: the rows of `table`, else the job's
/// `[input]`.
async fn build_from(
    job: &JobConfig,
    table: Option<Arc<dyn datafusion::catalog::TableProvider>>,
    engine: &dyn Engine,
    options: &BuildOptions,
) -> Result<Outcome> {
    let started = Instant::now();
    let phase = |name: &str| match &options.progress {
        Some(p) => p.phase(name),
        None => tracing::debug!(phase = name),
    };
    if let Some(done) = already_published(job, options).await? {
        return Ok(Outcome::AlreadyPublished(done));
    }
    phase("reading input schema");
    let prepared = match table {
        None => prepare(job, engine).await?,
        Some(table) => {
            let ctx = engine.session(job).await?;
            let df = ctx.read_table(table)?;
            prepare_frame(job, ctx, df).await?
        }
    };
    build_prepared(job, prepared, engine, options, started).await
}

/// The earlier publish of the job's run id, if there is one (see [`build`]).
pub async fn already_published(job: &JobConfig, options: &BuildOptions) -> Result<Option<AlreadyPublished>> {
    let Some(run) = &job.output.run_id else {
        return Ok(None);
    };
    if options.rebuild || options.dry_run {
        return Ok(None);
    }
    let run = RunId::new(run.clone()).map_err(|e| Error::config("output.run_id", e.to_string()))?;
    let store = ObjectManifestStore::open(&job.output.prefix, &job.storage_options())
        .map_err(|e| Error::config("output.prefix", e.to_string()))?;
    let history = store.history().await?;
    // Newest first: the run's latest manifest.
    let Some(ours) = history.iter().find(|h| h.run_id == run) else {
        return Ok(None);
    };
    let current = store.load_current().await?;
    let manifest = store.load_manifest(&ours.manifest_ref).await?;
    let current_entry = current
        .as_ref()
        .and_then(|c| history.iter().find(|h| h.manifest_ref == c.pointer.manifest_ref));
    // Written but never swapped in, and nothing published since: the
    // build that wrote it stopped between its manifest and the swap.
    let unfinished = match (&current, current_entry) {
        (None, _) => true,
        (Some(c), _) if c.pointer.run_id == run => false,
        (Some(_), Some(e)) => e.published_at < ours.published_at,
        (Some(_), None) => false,
    };
    let mut current_run = current.as_ref().map(|c| c.pointer.run_id.clone());
    if unfinished {
        let pointer = CurrentPointer::new(ours.manifest_ref.clone(), run.clone());
        store
            .swap_current(&pointer, current.as_ref().map(|c| &c.version))
            .await?;
        tracing::info!(run = %run, manifest = %ours.manifest_ref, "finished an interrupted publish");
        current_run = Some(run.clone());
    }
    Ok(Some(AlreadyPublished {
        run_id: run,
        manifest_ref: ours.manifest_ref.clone(),
        published_at: ours.published_at,
        num_dbs: manifest.build.num_dbs,
        shards_written: u32::try_from(manifest.shards.len()).unwrap_or(u32::MAX),
        rows: manifest.shards.iter().map(|s| s.row_count).sum(),
        current_run,
        completed_publish: unfinished,
    }))
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
        vector_only,
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

    // A vector-only build's kernel routes with the readers' own vector
    // routers; there is no key router to check it against.
    if job.routing.verify_routing && vector_only.is_none() {
        phase("verifying routing on a sample");
        verify_sample(&routed, job, &router, &extra_cols).await?;
    }
    let plan_time = started.elapsed();

    // From here on the run leaves traces; record it, and make sure no
    // other process is building the same run.
    let build_id = spec.build_id.clone();
    let record_key = layout::run_record_key(Timestamp::now(), &run_id, &build_id);
    let lease = Duration::from_secs(job.write.run_lease_secs);
    let mut first = RunRecord::start(run_id.clone(), store.prefix_url(), lease);
    store.put_run_record(&record_key, &first).await?;
    if let Some(e) = run_taken(&store, &run_id, &record_key, &first).await? {
        first.fail(e.kind().to_string(), e.to_string());
        if let Err(w) = store.put_run_record(&record_key, &first).await {
            tracing::warn!(error = %w, "could not update the run record {record_key}");
        }
        return Err(e);
    }
    let record = Arc::new(Mutex::new(first));
    let heartbeat = spawn_heartbeat(store.clone(), record_key.clone(), Arc::clone(&record), lease);

    let (spec_num_dbs, mut spec_key_encoding) = (spec.num_dbs, spec.key_encoding);
    let mut manifest_key_col = job.key_col.clone();
    let mut manifest_sharding = sharding.clone();
    let vector_meta = match &vector_only {
        Some(plan) => {
            // The routing artifact is in place before any shard is
            // written, so a published manifest never names a missing one.
            let url = match &plan.artifact {
                Some(a) => Some(write_artifact(&store, job, &run_id, a).await?),
                None => None,
            };
            manifest_key_col = vector_plan::VECTOR_ONLY_KEY_COL.to_string();
            spec_key_encoding = vector_plan::VECTOR_ONLY_KEY_ENCODING;
            // A `cel` build's routing goes to custom.vector; the manifest's
            // sharding is the reference's hash filler.
            let cel = (sharding.strategy == sf_manifest::ShardingStrategy::Cel).then(|| {
                let bytes_tokens = router.cel().is_some_and(sf_router::CelRouting::yields_bytes);
                (&sharding, bytes_tokens)
            });
            let custom = plan.custom(url.as_deref(), cel);
            manifest_sharding = sf_manifest::ShardingSpec::hash();
            Some(custom)
        }
        None => spec.vector.as_ref().map(unified_vector_meta),
    };
    phase("writing shards");
    let write_started = Instant::now();
    let written = write_shards(&ctx, spec, routed, engine, options).await;
    let write_time = write_started.elapsed();

    let mut state = PublishState::default();
    let outcome = match written {
        Ok(results) => {
            phase("verifying and publishing");
            let publish_started = Instant::now();
            let on_gate = |g: &GateResult| {
                if let Some(p) = &options.progress {
                    p.gate(g);
                }
            };
            let finished = publish_winners(
                PublishInput {
                    store: &store,
                    backend: backend_for(&job.backend()),
                    results,
                    run_id: run_id.clone(),
                    num_dbs: spec_num_dbs,
                    key_col: manifest_key_col,
                    key_encoding: spec_key_encoding,
                    sharding: manifest_sharding,
                    expected,
                    verify_checksums: job.write.verify_checksums,
                    upload_concurrency: job.write.upload_concurrency,
                    custom: {
                        let mut custom = options.custom.clone();
                        if let BackendConfig::Sqlite(s) = job.backend() {
                            // As the reference records its setting: the
                            // number, or "auto" (each file's header says
                            // which size it got).
                            custom.insert("page_size".into(), s.page_size.manifest_value());
                        }
                        custom
                    },
                    vector: vector_meta,
                    build_id: build_id.clone(),
                    claimed: engine
                        .runs_locally()
                        .then(|| crate::build::claim::take_claims(&run_id, &build_id)),
                    validate: job.validate.clone(),
                    checks: options.checks.clone(),
                    force: options.force,
                    on_gate: Some(&on_gate),
                },
                &mut state,
            )
            .await;
            let tasks = progress::run(&run_id, 1).times();
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
                    page_sizes: f.page_sizes,
                    plan_time,
                    write_time,
                    publish_time: publish_started.elapsed(),
                    total_time: started.elapsed(),
                    gates: f.gates,
                    retention: None,
                    warnings: f.warnings,
                    vectors_skipped: progress::run(&run_id, 1).vectors_skipped(),
                    phases: report::PhaseTimes {
                        input: tasks.input,
                        build_sum: tasks.build,
                        shards_built: tasks.shards_built,
                        claim_sum: tasks.claim,
                        upload_sum: tasks.upload,
                        verify: f.times.verify,
                        publish: f.times.publish,
                        cleanup: f.times.cleanup,
                    },
                    peak_rss_bytes: progress::peak_rss_bytes(),
                }
            })
        }
        Err(e) => Err(e),
    };
    heartbeat.abort();
    progress::forget(&run_id);
    let final_record = {
        let mut r = sf_manifest::sync::lock(&record);
        match &outcome {
            Ok(s) => {
                r.succeed(s.manifest_ref.clone());
                let forced: Vec<String> = s
                    .gates
                    .iter()
                    .filter(|g| g.verdict == Verdict::Forced)
                    .map(ToString::to_string)
                    .collect();
                if !forced.is_empty() {
                    r.notes = Some(format!("published with --force past: {}", forced.join("; ")));
                }
            }
            Err(e) => r.fail(e.kind().to_string(), e.to_string()),
        }
        r.clone()
    };
    // What this process remembers of the build's claims is done with
    // (taken already when the build published).
    let _ = crate::build::claim::take_claims(&run_id, &build_id);
    if outcome.is_err() {
        // Nothing new is visible: remove what this build wrote (only what
        // it claimed), keeping the winners of a manifest it wrote or may
        // have written.
        let keep = if state.manifest_sent && !failpoint::sabotaged("sweep-sent-manifest") {
            state.winners.clone()
        } else {
            BTreeSet::new()
        };
        if !failpoint::sabotaged("keep-failed-attempts") {
            sweep_own_data(&store, &run_id, &build_id, &keep).await;
        }
    }
    if let Err(e) = store.put_run_record(&record_key, &final_record).await {
        tracing::warn!(error = %e, "could not update the run record {record_key}");
    }
    let mut summary = outcome?;
    if let Some(retention) = &job.retention {
        phase("retention");
        summary.retention = Some(
            sf_manifest::publish::gc::cleanup(&store, &retention.cleanup_options())
                .instrument(tracing::info_span!("retention"))
                .await
                .map(|r| RetentionReport {
                    manifests: r.of(sf_manifest::publish::gc::RemovalReason::OldManifest).count(),
                    folders: r.prefixes_removed,
                    objects: r.objects_deleted,
                })
                .map_err(|e| {
                    tracing::warn!(error = %e, "retention failed after the publish");
                    e.to_string()
                }),
        );
    }
    Ok(Outcome::Built(summary))
}

/// Whether another process holds `run`: a `running` record of the run,
/// other than ours, whose lease is live and which started first (by start
/// time, then key). Two builds starting together both see both records
/// and agree on the one that goes on.
async fn run_taken(store: &ObjectManifestStore, run: &RunId, ours: &str, mine: &RunRecord) -> Result<Option<Error>> {
    if failpoint::sabotaged("ignore-run-lease") {
        return Ok(None);
    }
    let now = Timestamp::now();
    let records = store.list_run_records().await?;
    let holder = records
        .iter()
        .filter(|(key, r)| {
            key != ours
                && &r.run_id == run
                && r.status == RunStatus::Running
                && r.lease_expires_at > now
                && (r.started_at, key.as_str()) < (mine.started_at, ours)
        })
        .min_by(|a, b| (a.1.started_at, &a.0).cmp(&(b.1.started_at, &b.0)));
    Ok(holder.map(|(key, r)| Error::RunInProgress {
        run_id: run.clone(),
        record: layout::join_url(store.prefix_url(), key),
        lease_until: r.lease_expires_at.to_iso(),
    }))
}

/// Deletes the shard data this build claimed (except `keep`), in passes:
/// shard tasks cancelled by the failure may still finish a write already
/// handed to the store (a local file store writes on the blocking pool),
/// so it sweeps until a pass finds nothing left.
async fn sweep_own_data(store: &ObjectManifestStore, run: &RunId, build_id: &str, keep: &BTreeSet<(DbId, Attempt)>) {
    for pass in 0..FAILED_RUN_SWEEPS {
        match sf_manifest::publish::gc::delete_own_attempts(store, run, build_id, keep).await {
            Ok(0) if pass > 0 => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not remove the failed build's shard data of run {run}");
                break;
            }
        }
        tokio::time::sleep(FAILED_RUN_SWEEP_PAUSE).await;
    }
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
                let mut r = sf_manifest::sync::lock(&record);
                r.heartbeat(lease);
                r.clone()
            };
            if let Err(e) = store.put_run_record(&key, &snapshot).await {
                tracing::warn!(error = %e, "run record heartbeat failed");
            }
        }
    })
}

/// The shard tasks, in the `write_shards` span (each shard's task in a
/// `shard` span under it, where it runs in this process).
#[tracing::instrument(name = "write_shards", skip_all, fields(num_dbs = spec.num_dbs))]
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

/// The manifest's `custom.vector` of a unified build, with exactly the keys
/// and values the reference writes for a unified sqlite-vec snapshot (its
/// readers pick their sqlite-vec reader from `backend`).
fn unified_vector_meta(v: &crate::route::vector::VectorSpec) -> serde_json::Value {
    serde_json::json!({
        "backend": "sqlite-vec",
        "dim": v.dim,
        "index_type": "hnsw",
        "kv_backend": "sqlite-vec",
        "metric": v.metric,
        "quantization": null,
        "unified": true,
    })
}

/// Writes a vector-only build's routing artifact under the snapshot prefix
/// (`vector_meta/run_id=<run>/<name>`); returns its URL. The object
/// belongs to the run: no attempt cleanup removes it, and a rebuild of the
/// run replaces it before its manifest can name it.
async fn write_artifact(
    store: &ObjectManifestStore,
    job: &JobConfig,
    run_id: &RunId,
    artifact: &vector_plan::Artifact,
) -> Result<String> {
    let prefix = sf_manifest::resolve(store.prefix_url(), &job.storage_options())?;
    let loc = prefix.child(&vector_plan::artifact_key(run_id, artifact.name));
    let bytes = sf_manifest::format::npy::write_f32(&artifact.matrix);
    loc.store
        .put(&loc.path, object_store::PutPayload::from(bytes))
        .await
        .map_err(|e| Error::Storage {
            message: format!("writing the routing artifact {}: {e}", loc.url),
            kind: sf_manifest::store_error_kind(&e),
            source: Some(Box::new(e).into()),
        })?;
    Ok(loc.url)
}
