//! Garbage collection of a prefix: listing and deleting shard attempts,
//! and [`cleanup`], the one set of rules for what may go (used by
//! `sf-read cleanup`, the reader's admin and a build's retention).
//!
//! The rule every deletion obeys: nothing `_CURRENT` or a kept manifest
//! references, and nothing of a run that may still be writing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::ids::{Attempt, DbId, RunId, Timestamp};
use crate::format::layout;
use crate::format::run_record::RunStatus;
use crate::publish::manifest_store::{HistoryEntry, ManifestStore, ObjectManifestStore};

/// One `shards/run_id=R/db=N/attempt=A/` folder and what is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptDir {
    /// The run.
    pub run_id: RunId,
    /// The shard.
    pub db_id: DbId,
    /// The attempt.
    pub attempt: Attempt,
    /// Key of the folder relative to the prefix.
    pub key: String,
    /// Objects inside it.
    pub objects: usize,
    /// Their total size.
    pub bytes: u64,
}

/// Lists every attempt folder under `shards/` (of one run, or of all).
///
/// Objects directly under `shards/run_id=R/` or `db=N/` that belong to no
/// attempt are not reported; `list_orphans` finds those.
pub async fn list_attempts(store: &ObjectManifestStore, run: Option<&RunId>) -> Result<Vec<AttemptDir>> {
    let key = match run {
        Some(r) => layout::run_shards_key(r),
        None => layout::SHARDS.to_string(),
    };
    let base = store.location().path_of(&key);
    let prefix_parts = store.location().path.parts().count();
    let mut found: BTreeMap<(RunId, DbId, Attempt), AttemptDir> = BTreeMap::new();
    let mut stream = store.object_store().list(Some(&base));
    while let Some(meta) = stream.next().await {
        let meta =
            meta.map_err(|e| Error::store("list", crate::format::layout::join_url(store.prefix_url(), &key), e))?;
        let rel: Vec<String> = meta
            .location
            .parts()
            .skip(prefix_parts)
            .map(|p| p.as_ref().to_string())
            .collect();
        let Some(parts) = layout::parse_shard_key(&rel.join("/")) else {
            continue;
        };
        let (Some(db_id), Some(attempt)) = (parts.db_id, parts.attempt) else {
            continue;
        };
        let entry = found
            .entry((parts.run_id.clone(), db_id, attempt))
            .or_insert_with(|| AttemptDir {
                key: layout::shard_attempt_key(&parts.run_id, db_id, attempt),
                run_id: parts.run_id,
                db_id,
                attempt,
                objects: 0,
                bytes: 0,
            });
        entry.objects += 1;
        entry.bytes += meta.size;
    }
    Ok(found.into_values().collect())
}

/// Deletes every object below `key` (relative to the prefix); returns how
/// many were deleted. Deleting a folder that is already gone is not an error.
pub async fn delete_prefix(store: &ObjectManifestStore, key: &str) -> Result<usize> {
    let base: Path = store.location().path_of(key);
    let url = layout::join_url(store.prefix_url(), key);
    let os = store.object_store();
    let locations = os.list(Some(&base)).map_ok(|m| m.location).boxed();
    let deleted: Vec<Path> = os
        .delete_stream(locations)
        .try_filter_map(|p| async move { Ok(Some(p)) })
        .or_else(|e| async move {
            match e {
                object_store::Error::NotFound { path, .. } => Ok(Path::from(path)),
                other => Err(other),
            }
        })
        .try_collect()
        .await
        .map_err(|e| Error::store("delete", url, e))?;
    Ok(deleted.len())
}

/// Whether the attempt folder `attempt_key` was claimed by build
/// `build_id` (its claim marker names it). A folder without a readable
/// claim is nobody's: not ours to delete.
pub async fn claimed_by(store: &ObjectManifestStore, attempt_key: &str, build_id: &str) -> Result<bool> {
    if crate::publish::failpoint::sabotaged("sweep-foreign-attempts") {
        return Ok(true);
    }
    if build_id.is_empty() {
        return Ok(false);
    }
    let key = format!("{}/{}", attempt_key.trim_end_matches('/'), layout::CLAIM_FILE);
    let url = layout::join_url(store.prefix_url(), &key);
    let bytes = match store.object_store().get(&store.location().path_of(&key)).await {
        Ok(r) => r.bytes().await.map_err(|e| Error::store("read", url.clone(), e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(Error::store("read", url, e)),
    };
    let claim: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok(claim.get("build_id").and_then(serde_json::Value::as_str) == Some(build_id))
}

/// Deletes the attempt folders of `run` that build `build_id` claimed,
/// except those in `keep` (the winners it is publishing); returns how
/// many it deleted. Attempts of other builds sharing the run id (an
/// earlier publish that a manifest references, a build running beside
/// this one) are never touched.
pub async fn delete_own_attempts(
    store: &ObjectManifestStore,
    run: &RunId,
    build_id: &str,
    keep: &BTreeSet<(DbId, Attempt)>,
) -> Result<usize> {
    let mut deleted = 0;
    for dir in list_attempts(store, Some(run)).await? {
        let kept = keep.contains(&(dir.db_id, dir.attempt))
            && !crate::publish::failpoint::sabotaged("delete-referenced-shard");
        if kept || !claimed_by(store, &dir.key, build_id).await? {
            continue;
        }
        crate::publish::failpoint::hit("delete-losers").await?;
        delete_prefix(store, &dir.key).await?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Deletes the attempt folders `claimed` of `run` (all claimed by the
/// calling build, as it knows without listing: every shard task ran in its
/// process), except those in `keep`; returns how many it deleted. Each
/// folder is listed and deleted on its own; nothing else of the run is
/// listed, so a build of N shards pays for its losers only, not for N
/// folders read back.
pub async fn delete_claimed_attempts(
    store: &ObjectManifestStore,
    run: &RunId,
    build_id: &str,
    claimed: &BTreeSet<(DbId, Attempt)>,
    keep: &BTreeSet<(DbId, Attempt)>,
) -> Result<usize> {
    if crate::publish::failpoint::sabotaged("sweep-foreign-attempts") {
        // Sabotage: the build takes every attempt of its run for its own,
        // which only a listing can find.
        return delete_own_attempts(store, run, build_id, keep).await;
    }
    let mut deleted = 0;
    for &(db_id, attempt) in claimed {
        let kept = keep.contains(&(db_id, attempt)) && !crate::publish::failpoint::sabotaged("delete-referenced-shard");
        if kept {
            continue;
        }
        crate::publish::failpoint::hit("delete-losers").await?;
        delete_prefix(store, &layout::shard_attempt_key(run, db_id, attempt)).await?;
        deleted += 1;
    }
    Ok(deleted)
}

/// What [`cleanup`] may delete.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CleanupOptions {
    /// Keep the newest N manifests (and their runs); older ones are old.
    pub keep_last: Option<usize>,
    /// Manifests published longer ago than this are old.
    /// With both rules, a manifest is old only if both say so.
    pub older_than: Option<Duration>,
    /// Also delete shard data of runs that published no manifest and are
    /// not running (their run record is failed, finished or its lease
    /// expired). Implied by `keep_last` or `older_than`.
    pub include_abandoned: bool,
    /// List what would go, delete nothing.
    pub dry_run: bool,
}

/// Why something is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    /// An attempt of a kept run that lost (not the manifest's winner).
    StaleAttempt,
    /// A manifest older than the keep rules.
    OldManifest,
    /// Shard data of a run whose manifests are all old.
    OldRun,
    /// Shard data of a run that never published and is not running.
    AbandonedRun,
    /// The run record of a run whose data goes.
    RunRecord,
}

/// One folder [`cleanup`] deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removal {
    /// Why.
    pub reason: RemovalReason,
    /// Its run.
    pub run_id: RunId,
    /// Key of the folder relative to the prefix.
    pub key: String,
    /// Its URL.
    pub url: String,
    /// Objects in it (0 when not listed, as for manifests and run records).
    pub objects: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// What a cleanup deleted (or, dry, would delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
    /// The run `_CURRENT` names.
    pub current_run_id: RunId,
    /// The manifest `_CURRENT` names.
    pub current_manifest_ref: String,
    /// Manifests kept.
    pub kept_manifests: Vec<String>,
    /// Folders deleted (or to delete), in deletion order.
    pub removals: Vec<Removal>,
    /// Runs with shard data but no manifest and no run record: left alone,
    /// since nothing says whether they are still writing.
    pub unknown_runs: Vec<RunId>,
    /// Objects deleted (dry: objects counted in the folders to delete).
    pub objects_deleted: usize,
    /// Folders removed (dry: folders to remove).
    pub prefixes_removed: usize,
}

impl CleanupReport {
    /// The removals of one reason.
    pub fn of(&self, reason: RemovalReason) -> impl Iterator<Item = &Removal> {
        self.removals.iter().filter(move |r| r.reason == reason)
    }
}

/// Deletes (or, dry, lists) what `options` allow on the prefix of `store`;
/// see [`CleanupOptions`]. `sf-read cleanup`, the reader's `Admin` and a
/// build's retention all run this.
///
/// Never deleted: the manifest `_CURRENT` names, kept manifests, the
/// winning attempt folder of every shard row of those manifests
/// (wherever its `db_url` points), runs with a live lease, and runs
/// nothing is known about. `_CURRENT` is read again just before
/// anything is deleted; if it moved, nothing is deleted and the error's
/// kind is `Conflict` (run cleanup again).
///
/// Order: old manifests first (so nothing can roll back to a snapshot
/// whose data is going), then shard data, then run records (which let
/// an interrupted cleanup find the rest next time).
pub async fn cleanup(store: &ObjectManifestStore, options: &CleanupOptions) -> Result<CleanupReport> {
    if options.keep_last == Some(0) {
        return Err(Error::invalid(
            "keep_last",
            "must be at least 1 (the manifest _CURRENT names is always kept)",
        ));
    }
    let prefix = store.prefix_url().to_string();
    let current = store.load_current().await?.ok_or_else(|| Error::NotFound {
        what: "_CURRENT",
        location: layout::join_url(store.prefix_url(), layout::CURRENT),
    })?;
    let current_key = layout::locate(store.prefix_url(), None, &current.pointer.manifest_ref)?;
    let history = store.history().await?;
    let now = Timestamp::now().as_micros();
    let age_rules = options.keep_last.is_some() || options.older_than.is_some();
    let keep_none = crate::publish::failpoint::sabotaged("retention-deletes-kept");
    let is_old = |e: &HistoryEntry| {
        age_rules
            && options.keep_last.is_none_or(|n| keep_none || e.offset >= n)
            && options.older_than.is_none_or(|d| {
                let cutoff = now - i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
                e.published_at.as_micros() < cutoff
            })
    };
    let mut kept: Vec<&HistoryEntry> = Vec::new();
    let mut old: Vec<&HistoryEntry> = Vec::new();
    let mut current_in_history = false;
    for e in &history {
        let key = layout::locate(store.prefix_url(), None, &e.manifest_ref)?;
        if key == current_key {
            current_in_history = true;
            kept.push(e);
        } else if is_old(e) {
            old.push(e);
        } else {
            kept.push(e);
        }
    }

    // What kept manifests reference, wherever it lies.
    let mut kept_refs: Vec<String> = kept.iter().map(|e| e.manifest_ref.clone()).collect();
    if !current_in_history {
        kept_refs.push(current.pointer.manifest_ref.clone());
    }
    let mut protected: HashSet<String> = HashSet::new();
    let mut kept_runs: BTreeSet<RunId> = BTreeSet::new();
    for r in &kept_refs {
        let m = store.load_manifest(r).await.map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound {
                what: "manifest kept by the history",
                location: r.clone(),
            },
            other => other,
        })?;
        kept_runs.insert(m.build.run_id.clone());
        for row in &m.shards {
            if let Some(url) = &row.db_url {
                let key = layout::locate(&prefix, Some(&m.build.s3_prefix), url)?;
                protected.insert(key.trim_end_matches('/').to_string());
            }
        }
    }
    let old_runs: BTreeSet<RunId> = old
        .iter()
        .map(|e| e.run_id.clone())
        .filter(|r| !kept_runs.contains(r))
        .collect();
    let manifest_runs: BTreeSet<RunId> = history.iter().map(|e| e.run_id.clone()).collect();

    // Run records tell whether a run without a manifest is still going.
    let records = store.list_run_records().await?;
    let mut records_by_run: BTreeMap<RunId, Vec<(String, crate::RunRecord)>> = BTreeMap::new();
    for (key, rec) in records {
        records_by_run.entry(rec.run_id.clone()).or_default().push((key, rec));
    }
    let live = |run: &RunId| {
        records_by_run.get(run).is_some_and(|rs| {
            rs.iter()
                .any(|(_, r)| r.status == RunStatus::Running && r.lease_expires_at.as_micros() > now)
        })
    };
    let abandoned_ok = |run: &RunId| {
        let Some(rs) = records_by_run.get(run) else {
            return false;
        };
        !live(run)
            && options.older_than.is_none_or(|d| {
                let cutoff = now - i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
                rs.iter().all(|(_, r)| r.updated_at.as_micros() < cutoff)
            })
    };

    let attempts = list_attempts(store, None).await?;
    let mut removals: Vec<Removal> = Vec::new();
    for e in &old {
        let key = layout::locate(store.prefix_url(), None, &e.manifest_ref)?;
        let dir = key
            .rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_else(|| key.clone());
        removals.push(Removal {
            reason: RemovalReason::OldManifest,
            run_id: e.run_id.clone(),
            url: layout::join_url(&prefix, &dir),
            key: dir,
            objects: 0,
            bytes: 0,
        });
    }
    let mut unknown_runs: BTreeSet<RunId> = BTreeSet::new();
    let mut data_gone_runs: BTreeSet<RunId> = BTreeSet::new();
    let removal = |a: &AttemptDir, reason| Removal {
        reason,
        run_id: a.run_id.clone(),
        url: layout::join_url(&prefix, &a.key),
        key: a.key.clone(),
        objects: a.objects,
        bytes: a.bytes,
    };
    for a in &attempts {
        let protected = protected.contains(&a.key) && !crate::publish::failpoint::sabotaged("delete-referenced-shard");
        if protected || live(&a.run_id) {
            continue;
        }
        if kept_runs.contains(&a.run_id) {
            removals.push(removal(a, RemovalReason::StaleAttempt));
        } else if old_runs.contains(&a.run_id) {
            removals.push(removal(a, RemovalReason::OldRun));
            data_gone_runs.insert(a.run_id.clone());
        } else if !manifest_runs.contains(&a.run_id) {
            if !(options.include_abandoned || age_rules) {
                continue;
            }
            if abandoned_ok(&a.run_id) {
                removals.push(removal(a, RemovalReason::AbandonedRun));
                data_gone_runs.insert(a.run_id.clone());
            } else if !records_by_run.contains_key(&a.run_id) {
                unknown_runs.insert(a.run_id.clone());
            }
        }
    }
    // Runs that never published and are over (failed, finished, or their
    // lease expired): their records go too, whether or not they wrote any
    // shard data (a build killed before its first upload leaves only a
    // record).
    if options.include_abandoned || age_rules {
        for run in records_by_run.keys() {
            if !manifest_runs.contains(run) && abandoned_ok(run) {
                data_gone_runs.insert(run.clone());
            }
        }
    }
    // Run records of runs that go entirely (old runs even when their
    // data is already gone).
    for run in old_runs.iter().chain(data_gone_runs.iter()).collect::<BTreeSet<_>>() {
        if kept_runs.contains(run) || live(run) {
            continue;
        }
        for (key, _) in records_by_run.get(run).into_iter().flatten() {
            let dir = key
                .rsplit_once('/')
                .map(|(d, _)| d.to_string())
                .unwrap_or_else(|| key.clone());
            removals.push(Removal {
                reason: RemovalReason::RunRecord,
                run_id: run.clone(),
                url: layout::join_url(&prefix, &dir),
                key: dir,
                objects: 0,
                bytes: 0,
            });
        }
    }
    removals.sort_by(|a, b| (a.reason, &a.key).cmp(&(b.reason, &b.key)));

    let mut report = CleanupReport {
        dry_run: options.dry_run,
        current_run_id: current.pointer.run_id.clone(),
        current_manifest_ref: current.pointer.manifest_ref.clone(),
        kept_manifests: kept_refs,
        removals,
        unknown_runs: unknown_runs.into_iter().collect(),
        objects_deleted: 0,
        prefixes_removed: 0,
    };
    if options.dry_run {
        report.objects_deleted = report.removals.iter().map(|r| r.objects.max(1)).sum();
        report.prefixes_removed = report.removals.len();
        return Ok(report);
    }
    if report.removals.is_empty() {
        return Ok(report);
    }
    // _CURRENT may have moved (a publish, a rollback) since the plan.
    let now_current = store.load_current().await?;
    if now_current.as_ref().map(|c| &c.version) != Some(&current.version)
        && !crate::publish::failpoint::sabotaged("cleanup-ignores-moved-current")
    {
        return Err(Error::Conflict {
            location: layout::join_url(store.prefix_url(), layout::CURRENT),
            expected: Some(current.version.to_string()),
            found: now_current.map(|c| c.version.to_string()),
        });
    }
    for r in &report.removals {
        crate::publish::failpoint::hit("cleanup").await?;
        let n = delete_prefix(store, &r.key).await?;
        report.objects_deleted += n;
        report.prefixes_removed += 1;
        tracing::info!(reason = ?r.reason, url = %r.url, objects = n, "cleanup removed");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::location::StorageOptions;
    use object_store::PutPayload;

    #[tokio::test]
    async fn lists_attempts_and_deletes_them() {
        let store = ObjectManifestStore::open("memory://gc-test/snap", &StorageOptions::new()).expect("open");
        let run = RunId::new("r1").expect("id");
        let os = store.object_store();
        for (db, att, file) in [
            (0, 0, "shard.db"),
            (0, 1, "shard.db"),
            (0, 1, "_claim.json"),
            (3, 0, "x/y"),
        ] {
            let key = format!("{}/{file}", layout::shard_attempt_key(&run, DbId(db), Attempt(att)));
            os.put(&store.location().path_of(&key), PutPayload::from_static(b"abc"))
                .await
                .expect("put");
        }
        os.put(
            &store.location().path_of("shards/run_id=r1/stray"),
            PutPayload::from_static(b"x"),
        )
        .await
        .expect("put");
        let all = list_attempts(&store, Some(&run)).await.expect("list");
        let ids: Vec<_> = all.iter().map(|a| (a.db_id.0, a.attempt.0, a.objects)).collect();
        assert_eq!(ids, vec![(0, 0, 1), (0, 1, 2), (3, 0, 1)]);
        assert_eq!(all[1].bytes, 6);
        assert_eq!(delete_prefix(&store, &all[1].key).await.expect("delete"), 2);
        assert_eq!(delete_prefix(&store, &all[1].key).await.expect("again"), 0);
        let left = list_attempts(&store, None).await.expect("list");
        assert_eq!(left.len(), 2);
    }

    use crate::format::current::CurrentPointer;
    use crate::format::manifest::{BuildMeta, Manifest, ShardRow, WriterInfo};
    use crate::format::run_record::RunRecord;
    use crate::format::sharding::{KeyEncoding, ShardingSpec};

    const HOUR: i64 = 3_600_000_000;

    /// A prefix on the in-memory store, filled by hand: attempt folders
    /// with their claims, manifests published at chosen ages, run records.
    struct Site {
        store: ObjectManifestStore,
    }

    impl Site {
        fn new(name: &str) -> Site {
            let url = format!("memory://gc-{name}/snap");
            Site {
                store: ObjectManifestStore::open(&url, &StorageOptions::new()).expect("open"),
            }
        }

        fn run(id: &str) -> RunId {
            RunId::new(id).expect("run id")
        }

        /// An attempt folder with a shard file and a claim by `build`.
        async fn attempt(&self, run: &str, db: u32, attempt: u32, build: &str) -> String {
            let key = layout::shard_attempt_key(&Self::run(run), DbId(db), Attempt(attempt));
            let os = self.store.object_store();
            let claim = serde_json::json!({ "build_id": build }).to_string();
            os.put(
                &self.store.location().path_of(&format!("{key}/shard.db")),
                PutPayload::from_static(b"db"),
            )
            .await
            .expect("put shard");
            os.put(
                &self.store.location().path_of(&format!("{key}/{}", layout::CLAIM_FILE)),
                PutPayload::from(claim.into_bytes()),
            )
            .await
            .expect("put claim");
            key
        }

        /// Publishes `run` with `winners` ((db, attempt)) as if `hours_ago`
        /// hours ago, and points `_CURRENT` at it.
        async fn publish(&self, run: &str, winners: &[(u32, u32)], hours_ago: i64) -> String {
            let build = BuildMeta::new(
                Self::run(run),
                4,
                self.store.prefix_url(),
                "k",
                ShardingSpec::hash(),
                KeyEncoding::U64Be,
            );
            let shards = winners
                .iter()
                .map(|&(db, attempt)| ShardRow {
                    db_id: DbId(db),
                    db_url: Some(layout::join_url(
                        self.store.prefix_url(),
                        &layout::shard_attempt_key(&Self::run(run), DbId(db), Attempt(attempt)),
                    )),
                    attempt: Attempt(attempt),
                    row_count: 1,
                    db_bytes: 2,
                    min_key: None,
                    max_key: None,
                    checkpoint_id: None,
                    writer_info: WriterInfo::default(),
                })
                .collect();
            let at = Timestamp::from_micros(Timestamp::now().as_micros() - hours_ago * HOUR).expect("time");
            let written = self
                .store
                .put_manifest_at(&Manifest { build, shards }, at)
                .await
                .expect("manifest");
            let expected = self.store.load_current().await.expect("current").map(|c| c.version);
            let pointer = CurrentPointer::new(written.manifest_ref.clone(), Self::run(run));
            self.store
                .swap_current(&pointer, expected.as_ref())
                .await
                .expect("swap");
            written.manifest_ref
        }

        /// A run record of `run` in `status`, its lease ending
        /// `lease_hours` from now, last written `updated_hours_ago` ago.
        async fn record(&self, run: &str, status: RunStatus, lease_hours: i64, updated_hours_ago: i64) {
            let now = Timestamp::now().as_micros();
            let mut r = RunRecord::start(Self::run(run), self.store.prefix_url(), std::time::Duration::ZERO);
            r.status = status;
            r.lease_expires_at = Timestamp::from_micros(now + lease_hours * HOUR).expect("lease");
            r.updated_at = Timestamp::from_micros(now - updated_hours_ago * HOUR).expect("updated");
            let key = layout::run_record_key(r.started_at, &r.run_id, &format!("{:032x}", run.len()));
            self.store.put_run_record(&key, &r).await.expect("record");
        }

        async fn attempts(&self) -> Vec<(String, u32, u32)> {
            list_attempts(&self.store, None)
                .await
                .expect("list")
                .into_iter()
                .map(|a| (a.run_id.to_string(), a.db_id.0, a.attempt.0))
                .collect()
        }

        async fn runs_in_history(&self) -> Vec<String> {
            let mut runs: Vec<String> = self
                .store
                .history()
                .await
                .expect("history")
                .into_iter()
                .map(|h| h.run_id.to_string())
                .collect();
            runs.sort();
            runs
        }
    }

    fn keys(report: &CleanupReport, reason: RemovalReason) -> Vec<String> {
        report.of(reason).map(|r| r.key.clone()).collect()
    }

    #[tokio::test]
    async fn claims_name_their_build_and_a_folder_without_one_is_nobodys() {
        let site = Site::new("claims");
        let key = site.attempt("r1", 0, 0, "b1").await;
        assert!(claimed_by(&site.store, &key, "b1").await.expect("b1"));
        assert!(!claimed_by(&site.store, &key, "b2").await.expect("b2"));
        assert!(!claimed_by(&site.store, &key, "").await.expect("no build"));
        let bare = layout::shard_attempt_key(&Site::run("r1"), DbId(1), Attempt(0));
        assert!(!claimed_by(&site.store, &bare, "b1").await.expect("no claim"));
    }

    #[tokio::test]
    async fn a_build_deletes_only_its_own_attempts_and_keeps_its_winners() {
        let site = Site::new("own");
        site.attempt("r1", 0, 0, "b1").await;
        site.attempt("r1", 0, 1, "b1").await;
        site.attempt("r1", 1, 0, "b2").await;
        site.attempt("r1", 1, 1, "b1").await;
        site.attempt("r2", 0, 0, "b1").await;
        let keep = BTreeSet::from([(DbId(0), Attempt(1))]);
        let deleted = delete_own_attempts(&site.store, &Site::run("r1"), "b1", &keep)
            .await
            .expect("delete");
        assert_eq!(deleted, 2);
        assert_eq!(
            site.attempts().await,
            vec![("r1".into(), 0, 1), ("r1".into(), 1, 0), ("r2".into(), 0, 0)]
        );
    }

    /// Three published runs an hour apart (r3 current) with their winners,
    /// a loser of r3, and runs that never published: failed, expired,
    /// live, and one without a record.
    async fn history_site(name: &str) -> Site {
        let site = Site::new(name);
        for (run, hours_ago) in [("r1", 3), ("r2", 2), ("r3", 1)] {
            site.attempt(run, 0, 0, "b").await;
            site.publish(run, &[(0, 0)], hours_ago).await;
            site.record(run, RunStatus::Succeeded, -hours_ago, hours_ago).await;
        }
        site.attempt("r3", 0, 1, "b").await;
        for run in ["failed", "expired", "live", "unknown"] {
            site.attempt(run, 0, 0, "b").await;
        }
        site.record("failed", RunStatus::Failed, -5, 5).await;
        site.record("expired", RunStatus::Running, -1, 4).await;
        site.record("live", RunStatus::Running, 1, 0).await;
        site
    }

    #[tokio::test]
    async fn keep_last_deletes_older_runs_and_losers_but_nothing_kept_live_or_unknown() {
        let site = history_site("keep-last").await;
        let options = CleanupOptions {
            keep_last: Some(2),
            ..CleanupOptions::default()
        };
        let dry = cleanup(
            &site.store,
            &CleanupOptions {
                dry_run: true,
                ..options.clone()
            },
        )
        .await
        .expect("dry");
        assert!(dry.dry_run);
        assert_eq!(site.attempts().await.len(), 8, "a dry run deletes nothing");
        let report = cleanup(&site.store, &options).await.expect("cleanup");
        assert_eq!(report.current_run_id, Site::run("r3"));
        assert_eq!(report.kept_manifests.len(), 2);
        assert_eq!(keys(&report, RemovalReason::OldManifest).len(), 1);
        assert_eq!(
            keys(&report, RemovalReason::OldRun),
            vec!["shards/run_id=r1/db=00000/attempt=00"]
        );
        assert_eq!(
            keys(&report, RemovalReason::StaleAttempt),
            vec!["shards/run_id=r3/db=00000/attempt=01"]
        );
        assert_eq!(
            keys(&report, RemovalReason::AbandonedRun),
            vec![
                "shards/run_id=expired/db=00000/attempt=00",
                "shards/run_id=failed/db=00000/attempt=00"
            ]
        );
        assert_eq!(keys(&report, RemovalReason::RunRecord).len(), 3, "r1, failed, expired");
        assert_eq!(report.unknown_runs, vec![Site::run("unknown")]);
        assert_eq!(dry.removals, report.removals, "the dry run listed what went");
        assert_eq!((report.prefixes_removed, report.objects_deleted), (8, 12));
        assert_eq!((dry.prefixes_removed, dry.objects_deleted), (8, 12));
        assert_eq!(
            site.attempts().await,
            vec![
                ("live".into(), 0, 0),
                ("r2".into(), 0, 0),
                ("r3".into(), 0, 0),
                ("unknown".into(), 0, 0)
            ]
        );
        assert_eq!(site.runs_in_history().await, vec!["r2", "r3"]);
    }

    #[tokio::test]
    async fn older_than_and_keep_last_together_need_both_to_call_a_manifest_old() {
        let site = history_site("older-than").await;
        // Alone, 90 minutes makes r1 and r2 old.
        let alone = CleanupOptions {
            older_than: Some(std::time::Duration::from_secs(90 * 60)),
            dry_run: true,
            ..CleanupOptions::default()
        };
        let report = cleanup(&site.store, &alone).await.expect("older_than");
        assert_eq!(keys(&report, RemovalReason::OldManifest).len(), 2);
        // With keep_last 2 as well, r1 only: both rules must call it old.
        let both = CleanupOptions {
            keep_last: Some(2),
            ..alone.clone()
        };
        let report = cleanup(&site.store, &both).await.expect("both");
        assert_eq!(
            keys(&report, RemovalReason::OldRun),
            vec!["shards/run_id=r1/db=00000/attempt=00"]
        );
        // Abandoned runs go only when their record is older than the cutoff too.
        assert_eq!(
            keys(&report, RemovalReason::AbandonedRun),
            vec![
                "shards/run_id=expired/db=00000/attempt=00",
                "shards/run_id=failed/db=00000/attempt=00"
            ]
        );
        let recent = CleanupOptions {
            older_than: Some(std::time::Duration::from_secs(6 * 3600)),
            dry_run: true,
            ..CleanupOptions::default()
        };
        let report = cleanup(&site.store, &recent).await.expect("six hours");
        assert!(
            report.removals.iter().all(|r| r.reason == RemovalReason::StaleAttempt),
            "{:?}",
            report.removals
        );
    }

    #[tokio::test]
    async fn a_record_without_data_goes_under_age_rules_alone() {
        let site = history_site("record-only").await;
        site.record("no-data", RunStatus::Failed, -5, 5).await;
        let report = cleanup(
            &site.store,
            &CleanupOptions {
                keep_last: Some(3),
                dry_run: true,
                ..CleanupOptions::default()
            },
        )
        .await
        .expect("keep_last");
        let records: BTreeSet<RunId> = report.of(RemovalReason::RunRecord).map(|r| r.run_id.clone()).collect();
        assert_eq!(
            records.into_iter().collect::<Vec<_>>(),
            vec![Site::run("expired"), Site::run("failed"), Site::run("no-data")]
        );
    }

    #[tokio::test]
    async fn an_old_run_being_rebuilt_keeps_its_data_and_records() {
        let site = history_site("rebuilt").await;
        site.record("r1", RunStatus::Running, 1, 0).await;
        let report = cleanup(
            &site.store,
            &CleanupOptions {
                keep_last: Some(2),
                dry_run: true,
                ..CleanupOptions::default()
            },
        )
        .await
        .expect("keep_last");
        assert_eq!(
            keys(&report, RemovalReason::OldManifest).len(),
            1,
            "its old manifest goes"
        );
        assert!(
            report
                .removals
                .iter()
                .all(|r| r.run_id != Site::run("r1") || r.reason == RemovalReason::OldManifest),
            "a live run keeps its shards and records: {:?}",
            report.removals
        );
    }

    #[tokio::test]
    async fn without_age_rules_only_losers_go_unless_abandoned_runs_are_asked_for() {
        let site = history_site("abandoned").await;
        let report = cleanup(
            &site.store,
            &CleanupOptions {
                dry_run: true,
                ..CleanupOptions::default()
            },
        )
        .await
        .expect("plain");
        assert_eq!(
            keys(&report, RemovalReason::StaleAttempt),
            vec!["shards/run_id=r3/db=00000/attempt=01"]
        );
        assert_eq!(report.removals.len(), 1);
        let report = cleanup(
            &site.store,
            &CleanupOptions {
                include_abandoned: true,
                dry_run: true,
                ..CleanupOptions::default()
            },
        )
        .await
        .expect("abandoned");
        assert_eq!(keys(&report, RemovalReason::AbandonedRun).len(), 2);
        assert_eq!(keys(&report, RemovalReason::RunRecord).len(), 2);
        assert!(report.removals.iter().all(|r| r.run_id != Site::run("live")));
        let e = cleanup(
            &site.store,
            &CleanupOptions {
                keep_last: Some(0),
                ..CleanupOptions::default()
            },
        )
        .await
        .expect_err("keep_last 0");
        assert!(e.to_string().contains("keep_last"), "{e}");
    }
}
