//! Claiming an attempt folder: a shard task owns the attempt whose claim
//! marker it created, so retried and duplicated tasks never share one.

use object_store::{PutMode, PutOptions, PutPayload};
use sf_manifest::format::layout::{self, CLAIM_FILE};
use sf_manifest::{Attempt, DbId, Location, RunId, Timestamp};

use crate::build::hostname::hostname;
use crate::build::task_ids::TaskIds;
use crate::error::{Error, Result};

/// Attempts a shard may claim before the task gives up.
pub const MAX_ATTEMPTS: u32 = 100;

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
        if sf_manifest::publish::failpoint::sabotaged("shared-attempt-folder") {
            // Sabotage: every task of the shard writes into attempt 0.
            claim
                .store
                .put(&claim.path, PutPayload::from(body.clone()))
                .await
                .map_err(|e| Error::shard_store(db_id, Some(attempt), format!("claiming {}: {e}", claim.url), e))?;
            return Ok((attempt, location));
        }
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
