//! The driver's last step: pick winners, check them, run the gates,
//! publish, delete this build's losing attempts.
//!
//! ```text
//! winners ─▶ verify checksums ─▶ gates ─▶ manifest (create-if-absent) ─▶ _CURRENT (compare-and-swap) ─▶ delete own losers
//!                                  │ fail: nothing written, the caller sweeps this build's data
//! ```
//!
//! Once the manifest is written it is in the history and must stay
//! readable: from then on a failure (a lost swap, storage going away, the
//! process dying) leaves its winners in place, and only this build's
//! losing attempts may go.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use sf_manifest::{
    Attempt, BuildMeta, CurrentPointer, CurrentVersion, DbId, KeyEncoding, Manifest, ManifestStore,
    ObjectManifestStore, RunId, ShardRow, ShardingSpec, WriterInfo, format::layout, publish::failpoint, publish::gc,
};
use tracing::Instrument;

use crate::build::backend::{ShardBackend, ShardContent};
use crate::build::shard_result::ShardResult;
use crate::error::{Error, Result};
use crate::publish::gates::{self, PublishCheck, ValidateConfig};
use crate::publish::verdict::{GateResult, Verdict};

/// Everything [`publish_winners`] needs.
pub(crate) struct PublishInput<'a> {
    pub store: &'a ObjectManifestStore,
    pub backend: Arc<dyn ShardBackend>,
    pub results: Vec<ShardResult>,
    pub run_id: RunId,
    pub num_dbs: u32,
    pub key_col: String,
    pub key_encoding: KeyEncoding,
    pub sharding: ShardingSpec,
    pub expected: Option<CurrentVersion>,
    pub verify_checksums: bool,
    pub upload_concurrency: usize,
    pub custom: serde_json::Map<String, Value>,
    /// The manifest's `custom.vector` (a unified build).
    pub vector: Option<Value>,
    /// This build's id: only attempts it claimed are its to delete.
    pub build_id: String,
    /// Every attempt the build claimed, when all its shard tasks ran in
    /// this process (so it knows them without listing the run's folder).
    pub claimed: Option<BTreeSet<(DbId, Attempt)>>,
    /// The gates.
    pub validate: ValidateConfig,
    /// Checks the caller installed (the canary).
    pub checks: Vec<Arc<dyn PublishCheck>>,
    /// Publish whatever the gates say (`--force`).
    pub force: bool,
    /// Receives each gate's result as it is known.
    pub on_gate: Option<&'a (dyn Fn(&GateResult) + Send + Sync)>,
}

/// What [`publish_winners`] got done before it failed, so the caller sweeps only
/// what nothing references.
#[derive(Debug, Default)]
pub(crate) struct PublishState {
    /// Whether the manifest write was sent: from then on the manifest may
    /// exist (even when its answer was lost), so its winners must stay.
    pub manifest_sent: bool,
    /// The winners of this build, once picked.
    pub winners: BTreeSet<(DbId, Attempt)>,
}

/// What [`publish_winners`] did.
pub(crate) struct PublishedBuild {
    pub manifest_ref: String,
    pub shards_written: u32,
    pub rows: u64,
    pub duplicates: u64,
    pub bytes: u64,
    pub rows_per_shard: Vec<u64>,
    pub retries: u32,
    pub losers_deleted: usize,
    pub spilled_runs: u32,
    /// SQLite shards by page size.
    pub page_sizes: BTreeMap<u32, u32>,
    pub gates: Vec<GateResult>,
    /// What went wrong after the publish (which stands).
    pub warnings: Vec<String>,
    pub times: PublishTimes,
}

/// How long the steps of [`publish_winners`] took.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PublishTimes {
    /// Winners picked and their checksums re-read.
    pub verify: Duration,
    /// Manifest rows built, the manifest written, `_CURRENT` swapped.
    pub publish: Duration,
    /// Losing attempts found and deleted.
    pub cleanup: Duration,
}

/// How many winning SQLite shards have each page size.
fn page_sizes(winners: &BTreeMap<DbId, ShardResult>) -> BTreeMap<u32, u32> {
    let mut sizes = BTreeMap::new();
    for size in winners.values().filter_map(|w| w.page_size) {
        *sizes.entry(size).or_insert(0) += 1;
    }
    sizes
}

/// The winner order of docs/FORMAT.md: the smallest
/// `(attempt, task_attempt_id or 2^63-1, db_url)`.
pub fn winner_key(r: &ShardResult) -> (Attempt, i64, String) {
    (
        r.attempt.unwrap_or(Attempt(u32::MAX)),
        r.task_attempt_id.unwrap_or(i64::MAX),
        r.db_url.clone().unwrap_or_default(),
    )
}

/// One winner per non-empty shard; errors when a shard has no result at
/// all or a result names a shard outside `0..num_dbs`.
pub fn pick_winners(results: &[ShardResult], num_dbs: u32) -> Result<BTreeMap<DbId, ShardResult>> {
    let last = DbId(num_dbs.saturating_sub(1));
    let sabotaged: Vec<ShardResult>;
    let results = if failpoint::sabotaged("publish-missing-shard") {
        sabotaged = results.iter().filter(|r| r.db_id != last).cloned().collect();
        &sabotaged[..]
    } else {
        results
    };
    if let Some(bad) = results.iter().find(|r| r.db_id.0 >= num_dbs) {
        return Err(Error::Internal(format!(
            "a task reported shard {} but the build has {num_dbs} shards; nothing was published",
            bad.db_id
        )));
    }
    let seen: BTreeSet<DbId> = results.iter().map(|r| r.db_id).collect();
    if seen.len() != num_dbs as usize && !failpoint::sabotaged("publish-missing-shard") {
        let missing: Vec<String> = (0..num_dbs)
            .map(DbId)
            .filter(|d| !seen.contains(d))
            .map(|d| d.to_string())
            .take(20)
            .collect();
        return Err(Error::Internal(format!(
            "no result for shards {}; nothing was published",
            missing.join(", ")
        )));
    }
    let mut winners: BTreeMap<DbId, ShardResult> = BTreeMap::new();
    for r in results.iter().filter(|r| r.attempt.is_some()) {
        match winners.get(&r.db_id) {
            Some(w) if winner_key(w) <= winner_key(r) => {}
            _ => {
                winners.insert(r.db_id, r.clone());
            }
        }
    }
    Ok(winners)
}

pub(crate) async fn publish_winners(input: PublishInput<'_>, state: &mut PublishState) -> Result<PublishedBuild> {
    let started = Instant::now();
    let winners = pick_winners(&input.results, input.num_dbs)?;
    state.winners = winners.values().filter_map(|w| Some((w.db_id, w.attempt?))).collect();

    if input.verify_checksums {
        let backend = Arc::clone(&input.backend);
        futures::stream::iter(winners.values().cloned())
            .map(|w| {
                let backend = Arc::clone(&backend);
                let store = input.store;
                async move {
                    let url = w.db_url.clone().unwrap_or_default();
                    let location = store.locate(&url, None)?;
                    let content = ShardContent {
                        row_count: w.row_count,
                        duplicates: w.duplicates,
                        min_key: w.min_key.clone(),
                        max_key: w.max_key.clone(),
                        checksum: w.checksum.clone().unwrap_or_default(),
                        objects_checksum: w.objects_checksum.clone(),
                        page_size: w.page_size,
                    };
                    backend.verify(&location, w.db_id, &content).await
                }
            })
            .buffer_unordered(input.upload_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .instrument(tracing::info_span!("verify", shards = winners.len()))
            .await?;
    }
    failpoint::hit("verify").await?;
    let verified = Instant::now();

    let shards = winners
        .values()
        .map(|w| {
            let key = |k: &Option<Vec<u8>>| {
                k.as_deref()
                    .map(|b| sf_router::decode_key(b, input.key_encoding))
                    .transpose()
            };
            let mut extra = BTreeMap::new();
            if let Some(c) = &w.checksum {
                extra.insert(
                    sf_manifest::format::manifest::CHECKSUM_KEY.to_string(),
                    Value::from(c.clone()),
                );
            }
            Ok(ShardRow {
                db_id: w.db_id,
                db_url: w.db_url.clone(),
                attempt: w.attempt.unwrap_or(Attempt(0)),
                row_count: w.row_count,
                db_bytes: w.db_bytes,
                min_key: key(&w.min_key)?,
                max_key: key(&w.max_key)?,
                checkpoint_id: w.checkpoint_id.clone(),
                writer_info: WriterInfo {
                    attempt: w.attempt.map_or(0, |a| a.0),
                    duration_ms: w.duration_ms,
                    stage_id: w.stage_id,
                    task_attempt_id: w.task_attempt_id,
                    extra,
                },
            })
        })
        .collect::<Result<Vec<ShardRow>>>()?;
    let rows: u64 = shards.iter().map(|s| s.row_count).sum();
    let bytes: u64 = shards.iter().map(|s| s.db_bytes).sum();
    let duplicates: u64 = winners.values().map(|w| w.duplicates).sum();
    let mut build = BuildMeta::new(
        input.run_id.clone(),
        input.num_dbs,
        input.store.prefix_url(),
        input.key_col.clone(),
        input.sharding.clone(),
        input.key_encoding,
    );
    let mut ours = input.custom.clone();
    ours.insert(
        "writer".into(),
        json!(format!("shardforge {}", env!("CARGO_PKG_VERSION"))),
    );
    ours.insert("backend".into(), json!(input.backend.name()));
    ours.insert("rows".into(), json!(rows));
    ours.insert("duplicates".into(), json!(duplicates));
    let page_sizes = page_sizes(&winners);
    if !page_sizes.is_empty() {
        let counts: serde_json::Map<String, Value> = page_sizes
            .iter()
            .map(|(size, n)| (size.to_string(), json!(n)))
            .collect();
        ours.insert("page_sizes".into(), Value::Object(counts));
    }
    build.custom.insert("shardforge".into(), Value::Object(ours));
    if let Some(vector) = &input.vector {
        let mut vector = vector.clone();
        // A vector-only snapshot's vectors are its rows.
        if let Some(total) = vector.get_mut("total_vectors") {
            *total = json!(rows);
        }
        build.custom.insert("vector".into(), vector);
    }
    let mut manifest = Manifest { build, shards };

    // The gates, on the manifest as it would be published.
    let mut results = async {
        let previous = match input.store.load_current().await? {
            Some(c) => Some(input.store.load_manifest(&c.pointer.manifest_ref).await?),
            None => None,
        };
        let mut results = gates::evaluate(&input.validate, &manifest, previous.as_ref());
        for check in &input.checks {
            results.extend(check.check(&manifest, input.store).await?);
        }
        Ok::<_, Error>(results)
    }
    .instrument(tracing::info_span!("gates"))
    .await?;
    let blocking: Vec<GateResult> = gates::blocking(&results).into_iter().cloned().collect();
    if input.force {
        for g in results.iter_mut().filter(|g| g.verdict == Verdict::Fail) {
            g.verdict = Verdict::Forced;
        }
    }
    if let Some(report) = input.on_gate {
        results.iter().for_each(report);
    }
    if !blocking.is_empty() && !input.force {
        return Err(Error::Gate { failed: blocking });
    }
    if input.force && !blocking.is_empty() {
        let names: Vec<Value> = blocking.iter().map(|g| json!(g.to_string())).collect();
        if let Some(Value::Object(ours)) = manifest.build.custom.get_mut("shardforge") {
            ours.insert("forced_gates".into(), Value::Array(names));
        }
    }

    // Publish: the manifest (create-if-absent), then the swap of _CURRENT
    // against the version the build started from.
    let written = async {
        let observed = input.store.load_current().await?;
        if observed.as_ref().map(|c| &c.version) != input.expected.as_ref()
            && !failpoint::sabotaged("ignore-cas-version")
        {
            return Err(Error::from(sf_manifest::Error::Conflict {
                location: layout::join_url(input.store.prefix_url(), layout::CURRENT),
                expected: input.expected.as_ref().map(CurrentVersion::describe),
                found: observed.map(|c| c.version.describe()),
            }));
        }
        state.manifest_sent = true;
        let run_id = manifest.build.run_id.clone();
        let pointer_to = |manifest_ref: &str| CurrentPointer::new(manifest_ref.to_string(), run_id.clone());
        let (written, swap) = if failpoint::sabotaged("swap-before-manifest") {
            // Sabotage: _CURRENT names the manifest before it is written.
            let at = sf_manifest::Timestamp::now();
            let early = layout::join_url(input.store.prefix_url(), &layout::manifest_key(at, &run_id));
            let swap = input
                .store
                .swap_current(&pointer_to(&early), input.expected.as_ref())
                .await;
            failpoint::hit("manifest").await?;
            (input.store.put_manifest_at(&manifest, at).await?, swap)
        } else {
            let written = input.store.put_manifest(&manifest).await?;
            failpoint::hit("manifest").await?;
            let swap = input
                .store
                .swap_current(&pointer_to(&written.manifest_ref), input.expected.as_ref())
                .await;
            (written, swap)
        };
        let swapped = match swap {
            Ok(_) => failpoint::hit("swap").await.map_err(Error::from),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = swapped {
            // The swap may have been made although its answer was lost (a
            // timeout, a connection dropped after the write): look.
            match input.store.load_current().await {
                Ok(Some(c)) if c.pointer.manifest_ref == written.manifest_ref => {
                    tracing::warn!(error = %e, "the swap of _CURRENT answered with an error but was made");
                }
                _ => return Err(e),
            }
        }
        Ok::<_, Error>(written)
    }
    .instrument(tracing::info_span!("publish"))
    .await?;
    let publish_done = Instant::now();
    let mut warnings = Vec::new();

    // This build's losing attempts (including claims whose upload never
    // finished); never another build's, whatever run id they share. The
    // snapshot is published: a failure here leaves them to cleanup.
    let losers = async {
        failpoint::hit("delete-losers").await?;
        if failpoint::sabotaged("keep-losers") {
            return Ok(0);
        }
        match &input.claimed {
            Some(claimed) => {
                gc::delete_claimed_attempts(input.store, &input.run_id, &input.build_id, claimed, &state.winners).await
            }
            None => gc::delete_own_attempts(input.store, &input.run_id, &input.build_id, &state.winners).await,
        }
    };
    let losers_deleted = match losers.instrument(tracing::info_span!("cleanup")).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not delete the build's losing attempts");
            warnings.push(format!(
                "losing attempts were not deleted ({e}); `sf-read cleanup` removes them"
            ));
            0
        }
    };

    let mut rows_per_shard = vec![0u64; input.num_dbs as usize];
    for s in &manifest.shards {
        rows_per_shard[s.db_id.index()] = s.row_count;
    }
    Ok(PublishedBuild {
        manifest_ref: written.manifest_ref,
        shards_written: manifest.shards.len() as u32,
        rows,
        duplicates,
        bytes,
        rows_per_shard,
        retries: input.results.iter().map(|r| r.failed_tries).sum(),
        losers_deleted,
        spilled_runs: winners.values().map(|w| w.spilled_runs).sum(),
        page_sizes,
        gates: results,
        warnings,
        times: PublishTimes {
            verify: verified - started,
            publish: publish_done - verified,
            cleanup: publish_done.elapsed(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(db: u32, attempt: Option<u32>, task: Option<i64>, url: &str) -> ShardResult {
        ShardResult {
            db_id: DbId(db),
            attempt: attempt.map(Attempt),
            db_url: attempt.map(|_| url.to_string()),
            row_count: u64::from(attempt.is_some()),
            duplicates: 0,
            db_bytes: 0,
            min_key: None,
            max_key: None,
            checksum: None,
            checkpoint_id: None,
            duration_ms: 0,
            stage_id: None,
            task_attempt_id: task,
            failed_tries: 0,
            spilled_runs: 0,
            objects_checksum: None,
            page_size: None,
        }
    }

    #[test]
    fn winners_follow_the_format_rule_whatever_the_order() {
        let results = vec![
            result(0, Some(1), Some(5), "u/a1"),
            result(0, Some(0), Some(9), "u/a0-t9"),
            result(0, Some(0), None, "u/a0-none"),
            result(0, Some(0), Some(9), "u/a0-t9-b"),
            result(1, None, None, ""),
            result(2, Some(3), None, "u/z"),
        ];
        for rotation in 0..results.len() {
            let mut r = results.clone();
            r.rotate_left(rotation);
            let w = pick_winners(&r, 3).expect("winners");
            assert_eq!(w[&DbId(0)].db_url.as_deref(), Some("u/a0-t9"));
            assert!(!w.contains_key(&DbId(1)), "an empty shard has no winner");
            assert_eq!(w[&DbId(2)].attempt, Some(Attempt(3)));
        }
    }

    #[test]
    fn coverage_and_range_are_checked() {
        let e = pick_winners(&[result(0, Some(0), None, "u")], 2).expect_err("missing shard 1");
        assert!(e.to_string().contains("no result for shards 1"), "{e}");
        let e = pick_winners(&[result(0, None, None, ""), result(5, Some(0), None, "u")], 2).expect_err("out of range");
        assert!(e.to_string().contains("shard 5"), "{e}");
    }
}
