//! Claiming an attempt folder: a shard task owns the attempt whose claim
//! marker it created, so retried and duplicated tasks never share one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use object_store::{PutMode, PutOptions, PutPayload};
use sf_manifest::format::layout::{self, CLAIM_FILE};
use sf_manifest::{Attempt, DbId, Location, RunId, Timestamp};

use crate::build::hostname::{self, hostname};
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
        "pid": hostname::pid(),
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
            record_claim(run_id, build_id, db_id, attempt);
            return Ok((attempt, location));
        }
        if let Some(file) = claim.local_file() {
            let body = body.clone();
            let failed = |e: std::io::Error| {
                let kind = sf_manifest::error::io_error_kind(&e);
                Error::shard_caused(db_id, Some(attempt), format!("claiming {}: {e}", claim.url), kind, e)
            };
            let claimed = tokio::task::spawn_blocking(move || claim_local_file(&file, &body))
                .await
                .map_err(|e| Error::Internal(format!("claiming {}: {e}", claim.url)))?
                .map_err(failed)?;
            match claimed {
                None => continue,
                Some(written) => {
                    // Created: ours to delete, even if writing it failed.
                    record_claim(run_id, build_id, db_id, attempt);
                    written.map_err(failed)?;
                    return Ok((attempt, location));
                }
            }
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
            Ok(_) => {
                record_claim(run_id, build_id, db_id, attempt);
                return Ok((attempt, location));
            }
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

/// Creates the claim marker `file` if absent, straight on the local file
/// system: its attempt folder (and the shard's folder when new), then the
/// marker itself created exclusively (`O_EXCL`: of two tasks creating it,
/// one fails) and written in place, no staging file. `None` when another
/// task holds it, else whether writing the one this call created
/// succeeded. Five system calls for a new shard.
///
/// A marker is read only by the loser sweep, which treats one it cannot
/// parse (being written) as nobody's.
fn claim_local_file(file: &Path, body: &[u8]) -> std::io::Result<Option<std::io::Result<()>>> {
    use std::io::{ErrorKind, Write};
    let attempt_dir = file
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no parent folder", file.display())))?;
    if let Some(db_dir) = attempt_dir.parent() {
        ensure_dir(db_dir)?;
    }
    match std::fs::create_dir(attempt_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        // The shard's folder went away since (a sweep removes empty folders).
        Err(e) if e.kind() == ErrorKind::NotFound => std::fs::create_dir_all(attempt_dir)?,
        Err(e) => return Err(e),
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).open(file) {
        Ok(mut f) => Ok(Some(f.write_all(body))),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

/// Folders known to exist: the parents of shard folders (a run's
/// `shards/run_id=R`), created once per process. Forgetting them is safe:
/// a folder is then created again.
static KNOWN_PARENTS: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

/// Creates `dir` (a shard's folder) if absent: one `mkdir` when its parent
/// is known to exist, else the whole path once.
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    use std::io::ErrorKind;
    let parent = dir.parent().map(Path::to_path_buf);
    let known = parent
        .as_ref()
        .is_some_and(|p| sf_manifest::sync::lock(&KNOWN_PARENTS).contains(p));
    if known {
        match std::fs::create_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::create_dir_all(dir)?;
    if let Some(p) = parent {
        sf_manifest::sync::lock(&KNOWN_PARENTS).insert(p);
    }
    Ok(())
}

/// The attempts claimed in this process, by run and build: what a build
/// whose every shard task ran here (one process, no cluster) deletes as
/// its losers without listing the run's folder.
static CLAIMED: LazyLock<Mutex<HashMap<(String, String), Claims>>> = LazyLock::new(Default::default);

/// The attempts a build claimed, by shard.
type Claims = BTreeSet<(DbId, Attempt)>;

fn record_claim(run_id: &RunId, build_id: &str, db_id: DbId, attempt: Attempt) {
    sf_manifest::sync::lock(&CLAIMED)
        .entry((run_id.as_str().to_string(), build_id.to_string()))
        .or_default()
        .insert((db_id, attempt));
}

/// The attempts build `build_id` of `run_id` claimed in this process,
/// forgotten as they are handed out.
pub(crate) fn take_claims(run_id: &RunId, build_id: &str) -> Claims {
    sf_manifest::sync::lock(&CLAIMED)
        .remove(&(run_id.as_str().to_string(), build_id.to_string()))
        .unwrap_or_default()
}
