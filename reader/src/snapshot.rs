//! One served snapshot: a decoded manifest, its router, and a slot per
//! shard that opens lazily, exactly once.
//!
//! A shard's first open runs as a task of its own: callers wait for it,
//! and one that gives up (its deadline passed) leaves it running, so that
//! the next caller finds the shard open, or waits on the same open,
//! instead of starting a download again. While a snapshot lives it holds
//! the cached files of all its shards against eviction.

use std::collections::BTreeMap;
use std::sync::Arc;

use sf_manifest::{CurrentPointer, DbId, Key, Location, Manifest, ObjectManifestStore, Timestamp};
use sf_router::{ContextValue, KEY_VARIABLE, Routed, Router, key_as_context};
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::shard::cache_files::Hold;
use crate::shard::{ShardEnv, ShardHandle, ShardIdentity, ShardSpec};
use crate::vector::VectorIndex;

/// Values of the routing columns of a CEL snapshot, by column name.
pub type RoutingContext = BTreeMap<String, ContextValue>;

struct Slot {
    /// Index of the shard's row in the manifest.
    row: usize,
    location: Location,
    url: String,
    identity: ShardIdentity,
    /// Shared with the task that opens it.
    handle: Arc<OnceCell<Arc<ShardHandle>>>,
}

/// See the module docs.
pub(crate) struct Snapshot {
    /// The manifest's URL as `_CURRENT` (or the pin) names it.
    pub(crate) manifest_ref: String,
    /// `_CURRENT` as read, when this snapshot follows it.
    pub(crate) pointer: Option<CurrentPointer>,
    pub(crate) manifest: Manifest,
    pub(crate) router: Router,
    /// One per db_id; `None` for shards the manifest leaves out (empty).
    slots: Vec<Option<Slot>>,
    pub(crate) loaded_at: Timestamp,
    pub(crate) row_count: u64,
    /// The cached files of every shard, held while the snapshot lives.
    _files: Option<Hold>,
    /// The vector metadata and router, loaded by the first search.
    vector: OnceCell<Arc<VectorIndex>>,
    /// Auto mode holds every SQLite shard in memory ([`fits_in_memory`]).
    whole_snapshot_fits: bool,
}

/// Whether auto mode holds every SQLite shard of `manifest` in memory:
/// [`ReaderSettings::auto_memory_when_fits`](crate::ReaderSettings::auto_memory_when_fits)
/// is on and the shards' estimate fits the memory limit shared by the
/// versions a refresh may hold at once.
pub(crate) fn fits_in_memory(settings: &crate::ReaderSettings, manifest: &Manifest) -> bool {
    if settings.sqlite_mode != crate::SqliteMode::Auto || !settings.auto_memory_when_fits {
        return false;
    }
    let mut total = 0u64;
    for row in &manifest.shards {
        // A size the manifest does not record cannot be estimated.
        if row.db_bytes == 0 {
            return false;
        }
        total = total.saturating_add(crate::shard::memory_estimate(row.db_bytes, row.row_count));
    }
    let versions = u64::try_from(settings.keep_versions)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    total <= settings.memory_limit_bytes / versions
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("manifest_ref", &self.manifest_ref)
            .field("run_id", &self.manifest.build.run_id)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Loads and checks the manifest at `manifest_ref`; opens no shard.
    /// `named_by` says who named it, for the error when it is missing.
    pub(crate) async fn load(
        store: &ObjectManifestStore,
        env: &ShardEnv,
        manifest_ref: &str,
        pointer: Option<CurrentPointer>,
        named_by: &str,
    ) -> Result<Snapshot> {
        use sf_manifest::ManifestStore;
        let manifest = match store.load_manifest(manifest_ref).await {
            Ok(m) => m,
            Err(sf_manifest::Error::NotFound { .. }) => {
                return Err(Error::ManifestMissing {
                    manifest_ref: manifest_ref.to_string(),
                    named_by: named_by.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        Self::from_manifest(store, Some(env), manifest_ref, pointer, manifest)
    }

    /// A snapshot of `manifest`; with `env`, it holds its shards' cached
    /// files (a closed reader's snapshot, which opens nothing, holds none).
    pub(crate) fn from_manifest(
        store: &ObjectManifestStore,
        env: Option<&ShardEnv>,
        manifest_ref: &str,
        pointer: Option<CurrentPointer>,
        manifest: Manifest,
    ) -> Result<Snapshot> {
        let bad = |reason: String| Error::Manifest(sf_manifest::Error::corrupt("manifest", manifest_ref, reason));
        manifest.validate().map_err(|e| bad(e.to_string()))?;
        let router = Router::for_build(&manifest.build).map_err(|e| bad(format!("its routing: {e}")))?;
        let mut slots: Vec<Option<Slot>> = Vec::with_capacity(manifest.build.num_dbs as usize);
        slots.resize_with(manifest.build.num_dbs as usize, || None);
        let written = Some(manifest.build.s3_prefix.as_str());
        let mut row_count = 0u64;
        for (i, row) in manifest.shards.iter().enumerate() {
            row_count += row.row_count;
            let db_url = row
                .db_url
                .as_deref()
                .ok_or_else(|| bad(format!("shard {} has no db_url", row.db_id)))?;
            let location = store
                .locate(db_url, written)
                .map_err(|e| bad(format!("shard {}: {e}", row.db_id)))?;
            let url = location.url.clone();
            slots[row.db_id.index()] = Some(Slot {
                row: i,
                identity: ShardIdentity::of(row, &url),
                url,
                location,
                handle: Arc::new(OnceCell::new()),
            });
        }
        let files = env.map(|env| env.downloads.hold(slots.iter().flatten().map(|s| &s.identity)));
        let whole_snapshot_fits = env.is_some_and(|env| fits_in_memory(&env.settings, &manifest));
        Ok(Snapshot {
            manifest_ref: manifest_ref.to_string(),
            pointer,
            manifest,
            router,
            slots,
            loaded_at: Timestamp::now(),
            row_count,
            _files: files,
            vector: OnceCell::new(),
            whole_snapshot_fits,
        })
    }

    /// The vector index of the snapshot, loaded on first use (a failed
    /// load is tried again by the next search).
    pub(crate) async fn vector_index(&self, store: &ObjectManifestStore) -> Result<&Arc<VectorIndex>> {
        self.vector
            .get_or_try_init(|| async {
                VectorIndex::load(store, &self.manifest_ref, &self.manifest.build)
                    .await
                    .map(Arc::new)
            })
            .await
    }

    /// The shards the manifest lists (the non-empty ones), in id order.
    pub(crate) fn non_empty_shards(&self) -> Vec<DbId> {
        (0..self.slots.len() as u32)
            .map(DbId)
            .filter(|d| matches!(self.slots.get(d.index()), Some(Some(_))))
            .collect()
    }

    /// The manifest's `created_at` in Unix seconds.
    pub(crate) fn created_seconds(&self) -> f64 {
        self.manifest.build.created_at.as_micros() as f64 / 1e6
    }

    /// The shard `key` lives in (`None`: an unknown categorical token, a miss).
    pub(crate) fn route(&self, key: &Key, context: Option<&RoutingContext>) -> Result<Option<DbId>> {
        let routed = match context {
            Some(ctx) if self.router.needs_context() => {
                let cel = self
                    .router
                    .cel()
                    .ok_or_else(|| Error::Internal("context routing without CEL".into()))?;
                // A CEL expression may read the key as well as other
                // columns; the key need not be repeated in the context.
                match cel.columns().get(KEY_VARIABLE) {
                    Some(ty) if !ctx.contains_key(KEY_VARIABLE) => {
                        let mut full = ctx.clone();
                        full.insert(KEY_VARIABLE.to_string(), key_as_context(key, *ty)?);
                        self.router.route_context(&full)?
                    }
                    _ => self.router.route_context(ctx)?,
                }
            }
            _ => self.router.route_key(key)?,
        };
        Ok(match routed {
            Routed::Db(d) => Some(DbId(d)),
            Routed::UnknownToken => None,
        })
    }

    /// Shard `db` if it is already open: `Some(None)` for an empty shard,
    /// `None` while it is not open yet (see [`shard`](Self::shard)).
    pub(crate) fn shard_if_open(&self, db: DbId) -> Option<Option<&Arc<ShardHandle>>> {
        match self.slots.get(db.index()) {
            Some(Some(slot)) => slot.handle.get().map(Some),
            _ => Some(None),
        }
    }

    /// The open shard `db`, opening it on first use; `None` for an empty
    /// shard. The open runs as a task of its own (see the module docs):
    /// concurrent first callers wait for one open, a caller that stops
    /// waiting does not stop it, and a failed open is tried again by the
    /// next caller.
    pub(crate) async fn shard(&self, env: &Arc<ShardEnv>, db: DbId) -> Result<Option<&Arc<ShardHandle>>> {
        let Some(Some(slot)) = self.slots.get(db.index()) else {
            return Ok(None);
        };
        if let Some(h) = slot.handle.get() {
            return Ok(Some(h));
        }
        let cell = Arc::clone(&slot.handle);
        let whole_snapshot_fits = self.whole_snapshot_fits;
        let (task_env, row, location, url) = (
            Arc::clone(env),
            self.manifest.shards[slot.row].clone(),
            slot.location.clone(),
            slot.url.clone(),
        );
        let open = env.runtime.spawn(async move {
            let spec = ShardSpec {
                db_id: db,
                row: &row,
                location: &location,
                url: &url,
                whole_snapshot_fits,
            };
            // Another task's open in progress is waited for, not repeated.
            cell.get_or_try_init(|| ShardHandle::open(&task_env, spec))
                .await
                .map(|_| ())
        });
        open.await
            .map_err(|e| Error::Internal(format!("the open task of shard {db} failed: {e}")))??;
        slot.handle
            .get()
            .map(Some)
            .ok_or_else(|| Error::Internal(format!("shard {db} was opened but its slot is empty")))
    }

    /// The URL of shard `db`'s attempt folder, resolved under the prefix.
    pub(crate) fn shard_url(&self, db: DbId) -> Option<&str> {
        self.slots.get(db.index())?.as_ref().map(|s| s.url.as_str())
    }

    /// The backend of shard `db` if it is open.
    pub(crate) fn open_backend(&self, db: DbId) -> Option<&'static str> {
        self.slots
            .get(db.index())?
            .as_ref()?
            .handle
            .get()
            .map(|h| h.backend_name())
    }

    /// Shards open now.
    pub(crate) fn open_count(&self) -> usize {
        self.slots.iter().flatten().filter(|s| s.handle.initialized()).count()
    }

    /// Takes over `old`'s open shards whose content is the same here;
    /// returns the shards `old` had open that changed (to open before the
    /// swap).
    pub(crate) fn adopt(&self, old: &Snapshot) -> Vec<DbId> {
        let mut to_warm = Vec::new();
        for (i, old_slot) in old.slots.iter().enumerate() {
            let Some(handle) = old_slot.as_ref().and_then(|s| s.handle.get()) else {
                continue;
            };
            match self.slots.get(i) {
                Some(Some(new_slot)) if new_slot.identity == handle.identity => {
                    // A fresh cell: set cannot fail.
                    let _ = new_slot.handle.set(Arc::clone(handle));
                }
                Some(Some(_)) => to_warm.push(DbId(i as u32)),
                _ => {}
            }
        }
        to_warm
    }
}
