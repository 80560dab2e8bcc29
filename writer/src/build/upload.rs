//! Phase 2 of writing a shard: its local build uploaded into a freshly
//! claimed attempt, retryable failures retried into new attempts, and the
//! shard's result row made.

use std::time::Instant;

use sf_manifest::{Attempt, Classified, DbId, Location};

use crate::build::backend::{AttemptTarget, StagedShard, Uploaded};
use crate::build::claim::claim_attempt;
use crate::build::local_build::Built;
use crate::build::shard_result::ShardResult;
use crate::build::spec::ShardWriteSpec;
use crate::build::task_ids::TaskIds;
use crate::error::{Error, Result};
use crate::progress::{self, Step};

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
        objects_checksum: uploaded.objects_checksum,
        page_size: content.page_size,
    })
}

async fn upload_with_retries(
    spec: &ShardWriteSpec,
    prefix: &Location,
    db_id: DbId,
    staged: &dyn StagedShard,
    task: TaskIds,
) -> Result<((Attempt, Location), Uploaded, u32)> {
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
