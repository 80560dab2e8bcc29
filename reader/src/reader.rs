//! The [`Reader`]: serves `get` and `multi_get` from the snapshot
//! `_CURRENT` (or a pin) names, and swaps to new snapshots on refresh.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::ObjectStore;
use sf_manifest::{
    DbId, HistoryEntry, Key, KeyEncoding, Manifest, ManifestStore, ObjectManifestStore, StorageOptions, Timestamp,
};

use crate::error::{Error, Result};
use crate::info::{
    Health, HealthStatus, RefreshOutcome, RefreshStatus, RouteInfo, ShardInfo, ShardInfos, SnapshotInfo,
};
use crate::prefix::prefix_location;
use crate::settings::{Pin, ReaderSettings};
use crate::shard::ShardEnv;
use crate::snapshot::{RoutingContext, Snapshot};
use crate::state::ReaderState;
use crate::stats::{Counters, ReaderStats, bump};
use crate::view::{SnapshotView, Version};

/// Builds a [`Reader`]; see [`Reader::builder`].
#[must_use]
pub struct ReaderBuilder {
    current_url: String,
    settings: ReaderSettings,
    options: StorageOptions,
    store: Option<Arc<dyn ObjectStore>>,
    unpublished: Option<(Manifest, String)>,
    metric_labels: Vec<(String, String)>,
}

impl std::fmt::Debug for ReaderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderBuilder")
            .field("current_url", &self.current_url)
            .field("settings", &self.settings)
            .field("options", &self.options)
            .field("store", &self.store.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl ReaderBuilder {
    /// Replaces all settings.
    pub fn with_settings(mut self, settings: ReaderSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Storage options for URLs the reader resolves (`aws_endpoint`, ...);
    /// the `AWS_*`/`GOOGLE_*`/`AZURE_*` environment applies too.
    pub fn with_storage_options(mut self, options: StorageOptions) -> Self {
        self.options = options;
        self
    }

    /// An object store to read the prefix (and the shards under it)
    /// through, instead of one resolved from the URL.
    pub fn with_object_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Serves `manifest`, given in hand instead of read from storage
    /// (`manifest_ref` names it in errors and `info()`): a build reads its
    /// new shards through the reader before anything is published (its
    /// canary gate). The reader never refreshes away from it.
    pub fn with_unpublished_manifest(mut self, manifest: Manifest, manifest_ref: impl Into<String>) -> Self {
        let manifest_ref = manifest_ref.into();
        self.settings.pin = Pin::Ref(manifest_ref.clone());
        self.settings.refresh_interval = None;
        self.unpublished = Some((manifest, manifest_ref));
        self
    }

    /// A label on every figure the reader emits through the `metrics`
    /// facade (e.g. `snapshot` = the name a service knows it by), so that
    /// several readers in one process are told apart. The recorder must be
    /// installed before [`build`](Self::build).
    pub fn with_metric_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metric_labels.push((key.into(), value.into()));
        self
    }

    /// Reads `_CURRENT` (or the pin) and the manifest, reads the warm-up
    /// keys (opening their shards), and starts the background refresh if
    /// one is set. Opens no other shard. Must run inside a tokio runtime,
    /// which the reader then uses for its background work.
    pub async fn build(self) -> Result<Reader> {
        self.settings.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config("runtime", "a Reader must be built inside a tokio runtime"))?;
        let location = prefix_location(&self.current_url, &self.options, self.store)?;
        let store = ObjectManifestStore::new(location);
        let counters = Arc::new(Counters::new(&self.metric_labels));
        let env = Arc::new(ShardEnv::new(
            self.settings.clone(),
            Arc::clone(&counters),
            runtime.clone(),
        )?);
        let current_url =
            sf_manifest::format::layout::join_url(store.prefix_url(), sf_manifest::format::layout::CURRENT);
        let snapshot = match self.unpublished {
            Some((manifest, manifest_ref)) => Snapshot::from_manifest(&store, &manifest_ref, None, manifest)?,
            None => initial_snapshot(&store, &self.settings.pin, &current_url).await?,
        };
        crate::view::warm_up(&env, &snapshot, &self.settings.warmup_keys).await?;
        counters.snapshot_created.set(snapshot.created_seconds());
        counters.versions_held.set(1.0);
        let inner = Arc::new(ReaderState::new(
            current_url,
            store,
            self.settings,
            env,
            counters,
            snapshot,
        ));
        let refresher = inner.settings.refresh_interval.map(|interval| {
            let task = runtime.spawn(refresh_loop(
                Arc::downgrade(&inner),
                interval,
                inner.settings.refresh_max_backoff,
            ));
            Arc::new(AbortOnDrop(task))
        });
        Ok(Reader { inner, refresher })
    }
}

async fn initial_snapshot(store: &ObjectManifestStore, pin: &Pin, current_url: &str) -> Result<Snapshot> {
    match pin {
        Pin::Current => {
            let state = store.load_current().await?.ok_or_else(|| Error::NoCurrent {
                location: current_url.to_string(),
            })?;
            let manifest_ref = state.pointer.manifest_ref.clone();
            Snapshot::load(store, &manifest_ref, Some(state.pointer), current_url).await
        }
        Pin::Ref(r) => {
            let url = if r.contains("://") {
                r.clone()
            } else {
                sf_manifest::format::layout::join_url(store.prefix_url(), r)
            };
            Snapshot::load(store, &url, None, "the pinned ref").await
        }
        Pin::Offset(n) => {
            let history = store.history().await?;
            let entry = history.get(*n).ok_or_else(|| Error::NotInHistory {
                what: format!("offset {n} (the history holds {} manifests)", history.len()),
                location: store.prefix_url().to_string(),
            })?;
            Snapshot::load(store, &entry.manifest_ref, None, &format!("history offset {n}")).await
        }
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An online reader of one snapshot prefix.
///
/// `Send + Sync` and cheap to clone: clones share the snapshot, the open
/// shards, the caches and the background refresh (which stops when the
/// last clone is dropped or [`close`](Self::close) is called).
///
/// Every `get`/`multi_get` reads one snapshot from start to end: a
/// refresh swaps the snapshot for later calls while calls in flight finish
/// on the one they started with.
#[derive(Clone)]
pub struct Reader {
    inner: Arc<ReaderState>,
    refresher: Option<Arc<AbortOnDrop>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("current_url", &self.inner.current_url)
            .field("manifest_ref", &self.snapshot().manifest_ref)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// A builder for a reader of the snapshot at `current_url`: the URL of
    /// `_CURRENT` (`s3://bucket/prefix/_CURRENT`) or of its prefix.
    pub fn builder(current_url: impl Into<String>) -> ReaderBuilder {
        ReaderBuilder {
            current_url: current_url.into(),
            settings: ReaderSettings::default(),
            options: StorageOptions::new(),
            store: None,
            unpublished: None,
            metric_labels: Vec::new(),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.served()
    }

    fn check_open(&self) -> Result<()> {
        self.inner.check_open()
    }

    fn pinned(&self) -> bool {
        self.inner.pinned()
    }

    /// A view of the served snapshot: every read through it uses that
    /// snapshot, whatever refreshes do meanwhile.
    pub fn current(&self) -> SnapshotView {
        SnapshotView {
            inner: Arc::clone(&self.inner),
            snap: self.snapshot(),
            pinned: self.pinned(),
        }
    }

    /// A view of one of the snapshots the reader holds: the served one or
    /// one of the `keep_versions` a refresh replaced. A version the reader
    /// does not hold is an error of kind `Config` naming the held runs.
    pub fn version(&self, version: &Version) -> Result<SnapshotView> {
        let view = |snap| SnapshotView {
            inner: Arc::clone(&self.inner),
            snap,
            pinned: self.pinned(),
        };
        let served = self.snapshot();
        let kept: Vec<Arc<Snapshot>> = self.inner.kept().iter().cloned().collect();
        let found = match version {
            Version::Current | Version::Offset(0) => Some(served.clone()),
            Version::Offset(n) => kept.get(n - 1).cloned(),
            Version::RunId(run) => std::iter::once(&served)
                .chain(kept.iter())
                .find(|s| &s.manifest.build.run_id == run)
                .cloned(),
        };
        found.map(view).ok_or_else(|| Error::VersionNotHeld {
            what: match version {
                Version::Current => "the served snapshot".to_string(),
                Version::Offset(n) => format!("offset {n}"),
                Version::RunId(r) => format!("run {r}"),
            },
            location: self.inner.store.prefix_url().to_string(),
            held: std::iter::once(&served)
                .chain(kept.iter())
                .map(|s| s.manifest.build.run_id.to_string())
                .collect(),
        })
    }

    /// The snapshots the reader holds: the served one first, then those
    /// kept for pinned reads, newest first (their offsets for
    /// [`Version::Offset`]).
    pub fn versions(&self) -> Vec<SnapshotInfo> {
        let served = self.snapshot();
        let kept: Vec<Arc<Snapshot>> = self.inner.kept().iter().cloned().collect();
        std::iter::once(&served)
            .chain(kept.iter())
            .map(|s| SnapshotInfo::of(s, self.pinned()))
            .collect()
    }

    /// The value of `key`, or `None` when the snapshot does not hold it.
    pub async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        self.lookup(key, None).await
    }

    /// Like [`get`](Self::get), for snapshots routed by CEL over columns
    /// other than the key: `context` holds those columns' values. An
    /// unknown categorical token is a miss.
    pub async fn get_with_context(&self, key: &Key, context: &RoutingContext) -> Result<Option<Bytes>> {
        self.lookup(key, Some(context)).await
    }

    async fn lookup(&self, key: &Key, context: Option<&RoutingContext>) -> Result<Option<Bytes>> {
        self.check_open()?;
        crate::view::lookup(&self.inner.env, &self.snapshot(), key, context).await
    }

    /// Values of many keys, in input order. Keys are grouped by shard;
    /// shards are read concurrently (up to `max_concurrency`), all from one
    /// snapshot.
    pub async fn multi_get(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        self.multi_lookup(keys.iter().map(|k| (k, None))).await
    }

    /// [`multi_get`](Self::multi_get) with a routing context per key.
    pub async fn multi_get_with_context(&self, items: &[(Key, RoutingContext)]) -> Result<Vec<Option<Bytes>>> {
        self.multi_lookup(items.iter().map(|(k, c)| (k, Some(c)))).await
    }

    async fn multi_lookup<'a>(
        &self,
        items: impl ExactSizeIterator<Item = (&'a Key, Option<&'a RoutingContext>)>,
    ) -> Result<Vec<Option<Bytes>>> {
        self.check_open()?;
        let snap = self.snapshot();
        crate::view::multi_lookup(&self.inner.env, &snap, self.inner.settings.max_concurrency, items).await
    }

    /// Where `key` lives in the served snapshot.
    pub fn route(&self, key: &Key, context: Option<&RoutingContext>) -> Result<RouteInfo> {
        let snap = self.snapshot();
        snap.router.encode_key(key)?;
        let db_id = snap.route(key, context)?;
        Ok(RouteInfo {
            db_id,
            db_url: db_id.and_then(|d| snap.shard_url(d)).map(str::to_string),
        })
    }

    /// Parses a key as typed on a command line, by the snapshot's key
    /// encoding (integers for `u64be`/`u32be`, text for `utf8`, text or
    /// `hex:<hex>` for `raw`).
    pub fn parse_key(&self, text: &str) -> Result<Key> {
        crate::view::parse_key(self.key_encoding(), text)
    }

    /// Parses `column=value` pairs into a routing context, typing each value
    /// by the snapshot's CEL columns.
    pub fn parse_context<'a>(&self, pairs: impl IntoIterator<Item = &'a str>) -> Result<RoutingContext> {
        crate::view::parse_context(&self.snapshot(), pairs)
    }

    /// The served snapshot's manifest.
    pub fn manifest(&self) -> Manifest {
        self.snapshot().manifest.clone()
    }

    /// `key` as the stored bytes of the served snapshot's key encoding.
    pub fn encode_key(&self, key: &Key) -> Result<Vec<u8>> {
        Ok(self.snapshot().router.encode_key(key)?)
    }

    /// One page of shard `db_id`'s stored rows, in key order: up to `limit`
    /// (encoded key, value) pairs strictly after the encoded key `after`
    /// (from the first row when `None`). An empty page is the end. A shard
    /// the manifest leaves out (empty) has no rows; a db id beyond
    /// `num_dbs` is an error.
    ///
    /// Pages come from the snapshot served when each is read: a caller
    /// that needs one snapshot across pages uses a reader without a
    /// background refresh (or a pinned one).
    pub async fn scan_shard(&self, db_id: DbId, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        self.check_open()?;
        let snap = self.snapshot();
        if db_id.0 >= snap.manifest.build.num_dbs {
            return Err(Error::config(
                "db_id",
                format!(
                    "shard {db_id} is beyond the snapshot's {} shards",
                    snap.manifest.build.num_dbs
                ),
            ));
        }
        match snap.shard(&self.inner.env, db_id).await? {
            None => Ok(Vec::new()),
            Some(shard) => shard.scan_page(after.map(<[u8]>::to_vec), limit.max(1)).await,
        }
    }

    /// Key encoding of the served snapshot.
    pub fn key_encoding(&self) -> KeyEncoding {
        self.snapshot().manifest.build.key_encoding
    }

    /// Whether lookups need a routing context (CEL over non-key columns).
    pub fn needs_context(&self) -> bool {
        self.snapshot().router.needs_context()
    }

    /// The served snapshot.
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo::of(&self.snapshot(), self.pinned())
    }

    /// The shards of the served snapshot, by db_id (empty shards, which the
    /// manifest leaves out, are not listed).
    pub fn shards(&self) -> Vec<ShardInfo> {
        self.shard_infos().collect()
    }

    /// [`shards`](Self::shards) one at a time, for listing snapshots of
    /// many shards without holding a copy of every row. The iterator keeps
    /// the snapshot it started on, whatever a refresh does meanwhile.
    pub fn shard_infos(&self) -> ShardInfos {
        ShardInfos::new(self.snapshot())
    }

    /// The prefix's manifests, newest first.
    pub async fn history(&self) -> Result<Vec<HistoryEntry>> {
        Ok(self.inner.store.history().await?)
    }

    /// Whether the served snapshot is younger than `max_age` (by its
    /// manifest's `created_at`), with what the last refreshes did.
    pub fn health(&self, max_age: Duration) -> Health {
        let snap = self.snapshot();
        let created = snap.manifest.build.created_at.as_micros();
        let now = Timestamp::now().as_micros();
        let age = (now - created).max(0) as f64 / 1e6;
        Health {
            status: if age <= max_age.as_secs_f64() {
                HealthStatus::Healthy
            } else {
                HealthStatus::Stale
            },
            manifest_ref: snap.manifest_ref.clone(),
            run_id: snap.manifest.build.run_id.clone(),
            snapshot_age_seconds: age,
            max_age_seconds: max_age.as_secs_f64(),
            num_shards: snap.manifest.shards.len(),
            is_closed: self.inner.is_closed(),
            refresh: self.refresh_status(),
        }
    }

    /// How refreshes have gone.
    pub fn refresh_status(&self) -> RefreshStatus {
        self.inner.refresh_status()
    }

    /// What the reader has done so far.
    pub fn stats(&self) -> ReaderStats {
        let mut s = self.inner.counters.snapshot();
        s.block_cache_bytes = self.inner.env.blocks.used_bytes();
        s.memory_bytes = self.inner.env.memory.used_bytes();
        s.memory_shards = self.inner.env.memory.shards();
        s
    }

    /// URL of the prefix's `_CURRENT`.
    pub fn current_url(&self) -> &str {
        &self.inner.current_url
    }

    /// Reads `_CURRENT`; if it names another manifest, loads that snapshot,
    /// opens the shards the served one has open (unchanged shards carry
    /// over as they are), and only then swaps. On any failure the served
    /// snapshot stays, and the error is returned and recorded in
    /// [`refresh_status`](Self::refresh_status).
    pub async fn refresh(&self) -> Result<RefreshOutcome> {
        self.check_open()?;
        let _serial = self.inner.refresh_lock.lock().await;
        bump(&self.inner.counters.refreshes, 1);
        let started = Timestamp::now();
        let result = self.try_refresh().await;
        self.inner
            .record_refresh(started, result.as_ref().map(|_| ()).map_err(ToString::to_string));
        result
    }

    async fn try_refresh(&self) -> Result<RefreshOutcome> {
        let old = self.snapshot();
        if self.inner.settings.pin != Pin::Current {
            return Ok(RefreshOutcome::Pinned {
                manifest_ref: old.manifest_ref.clone(),
            });
        }
        let state = self.inner.store.load_current().await?.ok_or_else(|| Error::NoCurrent {
            location: self.inner.current_url.clone(),
        })?;
        if state.pointer.manifest_ref == old.manifest_ref {
            return Ok(RefreshOutcome::Unchanged {
                manifest_ref: old.manifest_ref.clone(),
            });
        }
        let manifest_ref = state.pointer.manifest_ref.clone();
        let next = Snapshot::load(
            &self.inner.store,
            &manifest_ref,
            Some(state.pointer),
            &self.inner.current_url,
        )
        .await?;
        // Shards of the held snapshots carry over where their content is
        // the same (a rollback to a kept snapshot reopens nothing); those
        // the served one has open and that changed are opened now.
        let kept: Vec<Arc<Snapshot>> = self.inner.kept().iter().cloned().collect();
        for k in &kept {
            next.adopt(k);
        }
        let to_warm = next.adopt(&old);
        let env = &self.inner.env;
        let next_ref = &next;
        futures::stream::iter(to_warm)
            .map(|db| async move { next_ref.shard(env, db).await.map(|_| ()) })
            .buffer_unordered(self.inner.settings.max_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        crate::view::warm_up(env, &next, &self.inner.settings.warmup_keys).await?;
        // A reader closed meanwhile keeps nothing open.
        self.check_open()?;
        let from = old.manifest_ref.clone();
        let created = next.created_seconds();
        {
            // Kept before the swap, so that a read pinned to the old run
            // finds it at every moment.
            let mut kept = self.inner.kept();
            if self.inner.settings.keep_versions > 0 {
                kept.push_front(Arc::clone(&old));
            }
            kept.truncate(self.inner.settings.keep_versions);
            *sf_manifest::sync::write(&self.inner.served) = Arc::new(next);
            self.inner.counters.versions_held.set((kept.len() + 1) as f64);
        }
        self.inner.counters.snapshot_created.set(created);
        bump(&self.inner.counters.swaps, 1);
        tracing::info!(prefix = %self.inner.store.prefix_url(), %from, to = %manifest_ref, "swapped to a new snapshot");
        Ok(RefreshOutcome::Swapped { from, to: manifest_ref })
    }

    /// Stops the background refresh, refuses further reads (reads in
    /// flight finish) and lets go of the open shards: their memory (memory
    /// mode) and connections are released once the reads in flight are
    /// done. `info()`, `shards()` and `stats()` still answer.
    pub fn close(&self) {
        self.inner.mark_closed();
        if let Some(r) = &self.refresher {
            r.0.abort();
        }
        // Snapshots kept for pinned reads go now; the same manifest
        // without open shards takes the served one's place; the old ones,
        // and their shards, go with their last readers.
        self.inner.kept().clear();
        let snap = self.snapshot();
        match Snapshot::from_manifest(
            &self.inner.store,
            &snap.manifest_ref,
            snap.pointer.clone(),
            snap.manifest.clone(),
        ) {
            Ok(mut unopened) => {
                unopened.loaded_at = snap.loaded_at;
                *sf_manifest::sync::write(&self.inner.served) = Arc::new(unopened);
            }
            // It was checked when it was loaded; should it fail now, the
            // shards close with the last clone of the reader instead.
            Err(e) => {
                tracing::warn!(error = %e, "closing: the served snapshot's shards stay open until the reader is dropped")
            }
        }
    }
}

/// The background refresh: polls every `interval`; after a failure retries
/// sooner (from 1 s, doubling up to `max_backoff`). It never gives up, and
/// a panic in one round is caught and counted as a failure. It stops when
/// the reader is dropped or closed.
async fn refresh_loop(inner: Weak<ReaderState>, interval: Duration, max_backoff: Duration) {
    let mut failures: u32 = 0;
    loop {
        let delay = if failures == 0 {
            interval
        } else {
            let base = interval.min(Duration::from_secs(1));
            let backoff = base.saturating_mul(2u32.saturating_pow(failures - 1)).min(max_backoff);
            jitter(backoff)
        };
        tokio::time::sleep(delay).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.is_closed() {
            return;
        }
        let reader = Reader { inner, refresher: None };
        let started = Timestamp::now();
        let round = std::panic::AssertUnwindSafe(reader.refresh()).catch_unwind().await;
        failures = match round {
            Ok(Ok(_)) => 0,
            Ok(Err(_)) => failures.saturating_add(1),
            Err(payload) => {
                // Recorded like any failed refresh, so that health and the
                // status show a reader whose refreshes keep panicking.
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                tracing::error!(prefix = %reader.inner.store.prefix_url(), %message, "a background refresh panicked; retrying");
                reader
                    .inner
                    .record_refresh(started, Err(format!("the refresh panicked: {message}")));
                failures.saturating_add(1)
            }
        };
    }
}

/// ±10%, so that many readers that failed together do not retry together.
fn jitter(d: Duration) -> Duration {
    let r = (sf_manifest::format::ids::random_u64() % 2001) as f64 / 10_000.0 - 0.1;
    d.mul_f64(1.0 + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_is_send_sync_and_cheap_to_clone() {
        fn send_sync<T: Send + Sync + Clone + 'static>() {}
        send_sync::<Reader>();
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10)).as_secs_f64();
            assert!((9.0..=11.0).contains(&j), "{j}");
        }
    }
}
