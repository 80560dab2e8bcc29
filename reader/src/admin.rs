//! Admin operations on a snapshot prefix: [`Admin::rollback`] (a
//! compare-and-swap of `_CURRENT`) and [`Admin::cleanup`] (deleting losing
//! attempts, old runs and abandoned runs, never anything `_CURRENT` or a
//! kept manifest references).

use std::sync::Arc;

use object_store::ObjectStore;
use serde::Serialize;
use sf_manifest::publish::gc;
pub use sf_manifest::publish::gc::{CleanupOptions, CleanupReport, Removal, RemovalReason};
use sf_manifest::{CurrentPointer, ManifestStore, ObjectManifestStore, RunId, StorageOptions, format::layout};

use crate::error::{Error, Result};
use crate::prefix::prefix_location;

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

    /// Deletes (or, dry, lists) what `options` allow; see [`CleanupOptions`]
    /// and `sf_manifest::publish::gc::cleanup`, which this runs.
    ///
    /// Never deleted: the manifest `_CURRENT` names, kept manifests, the
    /// winning attempt folder of every shard row of those manifests
    /// (wherever its `db_url` points), runs with a live lease, and runs
    /// nothing is known about. `_CURRENT` is read again just before
    /// anything is deleted; if it moved, nothing is deleted and the error's
    /// kind is `Conflict` (run cleanup again).
    pub async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        gc::cleanup(&self.store, options).await.map_err(|e| match e {
            sf_manifest::Error::NotFound { what: "_CURRENT", .. } => Error::NoCurrent {
                location: self.current_url(),
            },
            other => other.into(),
        })
    }
}
