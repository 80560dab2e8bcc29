//! Admin operations on a snapshot prefix: [`Admin::rollback`] (a
//! compare-and-swap of `_CURRENT`) and [`Admin::cleanup`] (deleting losing
//! attempts, old runs and abandoned runs, never anything `_CURRENT` or a
//! kept manifest references).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use serde::Serialize;
use sf_manifest::gc::{self, AttemptDir};
use sf_manifest::{
    CurrentPointer, HistoryEntry, ManifestStore, ObjectManifestStore, RunId, RunStatus, StorageOptions, Timestamp,
    layout,
};

use crate::error::{Error, Result};
use crate::reader::prefix_location;

/// Which manifest a rollback goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTarget {
    /// The newest manifest of this run.
    RunId(RunId),
    /// This manifest: full URL, or key relative to the prefix.
    Ref(String),
    /// The manifest at this offset of the history (0 is the newest).
    Offset(usize),
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollback {
    /// Run `_CURRENT` named before.
    pub from_run_id: Option<RunId>,
    /// Manifest `_CURRENT` named before.
    pub from_manifest_ref: Option<String>,
    /// Run it names now.
    pub run_id: RunId,
    /// Manifest it names now.
    pub manifest_ref: String,
    /// False when `_CURRENT` already named the target (nothing written).
    pub changed: bool,
}

/// What [`Admin::cleanup`] may delete.
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

/// One folder [`Admin::cleanup`] deletes.
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

/// Builds an [`Admin`].
#[must_use]
pub struct AdminBuilder {
    current_url: String,
    options: StorageOptions,
    store: Option<Arc<dyn ObjectStore>>,
}

impl std::fmt::Debug for AdminBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminBuilder")
            .field("current_url", &self.current_url)
            .finish_non_exhaustive()
    }
}

impl AdminBuilder {
    /// Storage options for the prefix's URL.
    pub fn with_storage_options(mut self, options: StorageOptions) -> Self {
        self.options = options;
        self
    }

    /// An object store to use instead of one resolved from the URL.
    pub fn with_object_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The admin handle (no I/O yet).
    pub fn build(self) -> Result<Admin> {
        let location = prefix_location(&self.current_url, &self.options, self.store)?;
        Ok(Admin {
            store: ObjectManifestStore::new(location),
        })
    }
}

/// Admin operations on one prefix; see the module docs.
#[derive(Debug, Clone)]
pub struct Admin {
    store: ObjectManifestStore,
}

impl Admin {
    /// A builder for the prefix at `current_url` (`_CURRENT`'s URL or its folder's).
    pub fn builder(current_url: impl Into<String>) -> AdminBuilder {
        AdminBuilder {
            current_url: current_url.into(),
            options: StorageOptions::new(),
            store: None,
        }
    }

    /// The prefix's manifest store.
    pub fn store(&self) -> &ObjectManifestStore {
        &self.store
    }

    fn current_url(&self) -> String {
        layout::join_url(self.store.prefix_url(), layout::CURRENT)
    }

    /// The key of a manifest URL relative to the prefix.
    fn manifest_key(&self, url: &str) -> Result<String> {
        Ok(layout::locate(self.store.prefix_url(), None, url)?)
    }

    /// Points `_CURRENT` at `target`, by compare-and-swap against the
    /// version read first: if anyone changes `_CURRENT` in between, nothing
    /// is written and the error's kind is `Conflict`. The target manifest
    /// is read and decoded first; a broken one is refused.
    pub async fn rollback(&self, target: &RollbackTarget) -> Result<Rollback> {
        let prefix = self.store.prefix_url().to_string();
        let key = match target {
            RollbackTarget::Ref(r) => {
                if r.contains("://") {
                    self.manifest_key(r)?
                } else {
                    r.trim_start_matches('/').to_string()
                }
            }
            RollbackTarget::Offset(n) => {
                let history = self.store.history().await?;
                let e = history.get(*n).ok_or_else(|| Error::NotInHistory {
                    what: format!("offset {n} (the history holds {} manifests)", history.len()),
                    location: prefix.clone(),
                })?;
                self.manifest_key(&e.manifest_ref)?
            }
            RollbackTarget::RunId(run) => {
                let history = self.store.history().await?;
                let e = history
                    .iter()
                    .find(|e| &e.run_id == run)
                    .ok_or_else(|| Error::NotInHistory {
                        what: format!("run {run}"),
                        location: prefix.clone(),
                    })?;
                self.manifest_key(&e.manifest_ref)?
            }
        };
        let url = layout::join_url(&prefix, &key);
        let manifest = match self.store.load_manifest(&url).await {
            Ok(m) => m,
            Err(sf_manifest::Error::NotFound { .. }) => {
                return Err(Error::ManifestMissing {
                    manifest_ref: url,
                    named_by: "the rollback target".into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let current = self.store.load_current().await?;
        let (from_run_id, from_manifest_ref) = match &current {
            Some(c) => (Some(c.pointer.run_id.clone()), Some(c.pointer.manifest_ref.clone())),
            None => (None, None),
        };
        let already = current
            .as_ref()
            .and_then(|c| self.manifest_key(&c.pointer.manifest_ref).ok())
            .is_some_and(|k| k == key);
        if already {
            return Ok(Rollback {
                from_run_id,
                from_manifest_ref,
                run_id: manifest.build.run_id,
                manifest_ref: url,
                changed: false,
            });
        }
        let pointer = CurrentPointer::new(url.clone(), manifest.build.run_id.clone());
        self.store
            .swap_current(&pointer, current.as_ref().map(|c| &c.version))
            .await?;
        tracing::info!(prefix = %prefix, to = %url, "rolled _CURRENT back");
        Ok(Rollback {
            from_run_id,
            from_manifest_ref,
            run_id: manifest.build.run_id,
            manifest_ref: url,
            changed: true,
        })
    }

    /// Deletes (or, dry, lists) what `options` allow; see [`CleanupOptions`].
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
    pub async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        if options.keep_last == Some(0) {
            return Err(Error::config(
                "keep_last",
                "must be at least 1 (the manifest _CURRENT names is always kept)",
            ));
        }
        let prefix = self.store.prefix_url().to_string();
        let current = self.store.load_current().await?.ok_or_else(|| Error::NoCurrent {
            location: self.current_url(),
        })?;
        let current_key = self.manifest_key(&current.pointer.manifest_ref)?;
        let history = self.store.history().await?;
        let now = Timestamp::now().as_micros();
        let age_rules = options.keep_last.is_some() || options.older_than.is_some();
        let is_old = |e: &HistoryEntry| {
            age_rules
                && options.keep_last.is_none_or(|n| e.offset >= n)
                && options.older_than.is_none_or(|d| {
                    let cutoff = now - i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
                    e.published_at.as_micros() < cutoff
                })
        };
        let mut kept: Vec<&HistoryEntry> = Vec::new();
        let mut old: Vec<&HistoryEntry> = Vec::new();
        let mut current_in_history = false;
        for e in &history {
            let key = self.manifest_key(&e.manifest_ref)?;
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
            let m = self.store.load_manifest(r).await.map_err(|e| match e {
                sf_manifest::Error::NotFound { .. } => Error::ManifestMissing {
                    manifest_ref: r.clone(),
                    named_by: "the history (a kept manifest)".into(),
                },
                other => other.into(),
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
        let records = self.store.list_run_records().await?;
        let mut records_by_run: BTreeMap<RunId, Vec<(String, sf_manifest::RunRecord)>> = BTreeMap::new();
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

        let attempts = gc::list_attempts(&self.store, None).await?;
        let mut removals: Vec<Removal> = Vec::new();
        for e in &old {
            let key = self.manifest_key(&e.manifest_ref)?;
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
            if protected.contains(&a.key) || live(&a.run_id) {
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
        let now_current = self.store.load_current().await?;
        if now_current.as_ref().map(|c| &c.version) != Some(&current.version) {
            return Err(Error::Manifest(sf_manifest::Error::Conflict {
                location: self.current_url(),
                expected: Some(current.version.to_string()),
                found: now_current.map(|c| c.version.to_string()),
            }));
        }
        for r in &report.removals {
            let n = gc::delete_prefix(&self.store, &r.key).await?;
            report.objects_deleted += n;
            report.prefixes_removed += 1;
            tracing::info!(reason = ?r.reason, url = %r.url, objects = n, "cleanup removed");
        }
        Ok(report)
    }
}
