//! The [`Reader`] handle and what it answers: lookups (one snapshot per
//! call), views of held snapshots, routes, the snapshot's info and shards,
//! health, stats, and a refresh on demand.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sf_manifest::{DbId, HistoryEntry, Key, KeyEncoding, Manifest, ManifestStore, Timestamp};

use super::refresh::{self, BackgroundRefresh};
use crate::error::{Error, Result};
use crate::info::{
    Health, HealthStatus, RefreshOutcome, RefreshStatus, RouteInfo, ShardInfo, ShardInfos, SnapshotInfo,
};
use crate::shard::Inline;
use crate::snapshot::{RoutingContext, Snapshot};
use crate::state::ReaderState;
use crate::stats::ReaderStats;
use crate::view::{SnapshotView, Version};

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
    pub(super) state: Arc<ReaderState>,
    /// The background refresh, when one is set; shared by the clones.
    pub(super) refresher: Option<Arc<BackgroundRefresh>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("current_url", &self.state.current_url)
            .field("manifest_ref", &self.snapshot().manifest_ref)
            .finish_non_exhaustive()
    }
}

impl Reader {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.state.served()
    }

    fn check_open(&self) -> Result<()> {
        self.state.check_open()
    }

    fn pinned(&self) -> bool {
        self.state.pinned()
    }

    /// A view of the served snapshot: every read through it uses that
    /// snapshot, whatever refreshes do meanwhile.
    pub fn current(&self) -> SnapshotView {
        SnapshotView {
            state: Arc::clone(&self.state),
            snap: self.snapshot(),
            pinned: self.pinned(),
        }
    }

    /// A view of one of the snapshots the reader holds: the served one or
    /// one of the `keep_versions` a refresh replaced. A version the reader
    /// does not hold is an error of kind `Config` naming the held runs.
    pub fn version(&self, version: &Version) -> Result<SnapshotView> {
        let view = |snap| SnapshotView {
            state: Arc::clone(&self.state),
            snap,
            pinned: self.pinned(),
        };
        let served = self.snapshot();
        let kept: Vec<Arc<Snapshot>> = self.state.kept().iter().cloned().collect();
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
            location: self.state.store.prefix_url().to_string(),
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
        let kept: Vec<Arc<Snapshot>> = self.state.kept().iter().cloned().collect();
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
        let snap = self.snapshot();
        let read = crate::view::lookup(&self.state.env, &snap, key, context);
        self.state.limited(1, read, crate::view::one_cost).await
    }

    /// [`get`](Self::get) (or [`get_with_context`](Self::get_with_context))
    /// answered on the calling thread, without the async runtime, when the
    /// key's shard is already open and answers from local data as `inline`
    /// allows: a shard in memory, or (with [`Inline::LocalFiles`]) a
    /// downloaded SQLite file. `None` when it cannot answer so (the shard
    /// is not open yet, is read by range, is SlateDB, or the calling thread
    /// is an async runtime's, where SQLite never runs, or the read limits
    /// would make the read wait): call `get` then.
    ///
    /// For callers that block a thread on each lookup anyway (a binding to
    /// another language, a synchronous server): it saves the hand-off to
    /// the runtime and back, most of a warm lookup's cost.
    pub fn get_now(
        &self,
        key: &Key,
        context: Option<&RoutingContext>,
        inline: Inline,
    ) -> Option<Result<Option<Bytes>>> {
        if let Err(e) = self.check_open() {
            return Some(Err(e));
        }
        let Some(limiter) = &self.state.limiter else {
            return crate::view::lookup_now(&self.snapshot(), key, context, inline);
        };
        // A read that would wait goes through `get`, which may sleep.
        if !limiter.wait_for(1).is_zero() {
            return None;
        }
        let found = crate::view::lookup_now(&self.snapshot(), key, context, inline)?;
        if let Err(e) = limiter.acquire(1) {
            return Some(Err(e));
        }
        if let Ok(v) = &found {
            limiter.charge(0, crate::view::one_cost(v).1);
        }
        Some(found)
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

    /// The `options.top_k` vectors nearest `query` in the served snapshot,
    /// nearest first (see [`crate::vector`]): every shard of a unified
    /// snapshot, the nearest `num_probes` shards of a vector-only one, or
    /// the shards named. A snapshot without vectors, a query of the wrong
    /// length, with a non-finite component, or zero under cosine, is a
    /// [`Error::Config`](crate::Error::Config).
    pub async fn search(
        &self,
        query: &[f32],
        options: &crate::vector::SearchOptions,
    ) -> Result<crate::vector::SearchResults> {
        self.check_open()?;
        let snap = self.snapshot();
        let read = crate::view::search_vectors(&self.state, &snap, query, options);
        self.state.limited(1, read, |_| (0, 0)).await
    }

    /// [`search`](Self::search) in the served snapshot, then, for each hit,
    /// the value stored under its id taken as a key (an int id as an
    /// integer key, a text id as text, parsed by the snapshot's key
    /// encoding as `get` takes keys), read from the same snapshot even if
    /// a refresh swaps in between. An id that is not a valid key of the
    /// snapshot's type has no value. A vector-only snapshot has no values
    /// to get: [`Error::Config`](crate::Error::Config).
    pub async fn search_then_get(
        &self,
        query: &[f32],
        options: &crate::vector::SearchOptions,
    ) -> Result<crate::vector::SearchWithValues> {
        self.check_open()?;
        self.current().search_then_get(query, options).await
    }

    async fn multi_lookup<'a>(
        &self,
        items: impl ExactSizeIterator<Item = (&'a Key, Option<&'a RoutingContext>)>,
    ) -> Result<Vec<Option<Bytes>>> {
        self.check_open()?;
        let snap = self.snapshot();
        let keys = items.len();
        let read = crate::view::served_multi_lookup(&self.state, &snap, items);
        self.state.limited(keys, read, crate::view::many_cost).await
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
        match snap.shard(&self.state.env, db_id).await? {
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
        SnapshotInfo {
            degraded: self.degraded(),
            ..SnapshotInfo::of(&self.snapshot(), self.pinned())
        }
    }

    /// Why the reader does not serve the manifest `_CURRENT` names, while
    /// it serves an older one of the history because `_CURRENT`'s could
    /// not be read at start (missing, corrupt, refused; at most
    /// three older manifests are tried). `None` once a refresh reads a good
    /// current manifest, and for readers that opened it in the first place.
    pub fn degraded(&self) -> Option<String> {
        self.state.degraded()
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
        Ok(self.state.store.history().await?)
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
            is_closed: self.state.is_closed(),
            refresh: self.refresh_status(),
            degraded: self.degraded(),
        }
    }

    /// How refreshes have gone.
    pub fn refresh_status(&self) -> RefreshStatus {
        self.state.refresh_status()
    }

    /// What the reader has done so far.
    pub fn stats(&self) -> ReaderStats {
        let mut s = self.state.counters.snapshot();
        s.block_cache_bytes = self.state.env.blocks.used_bytes();
        s.memory_bytes = self.state.env.memory.used_bytes();
        s.memory_shards = self.state.env.memory.shards();
        s
    }

    /// URL of the prefix's `_CURRENT`.
    pub fn current_url(&self) -> &str {
        &self.state.current_url
    }

    /// Reads `_CURRENT`; if it names another manifest, loads that snapshot,
    /// opens the shards the served one has open (unchanged shards carry
    /// over as they are), and only then swaps. On any failure the served
    /// snapshot stays, and the error is returned and recorded in
    /// [`refresh_status`](Self::refresh_status).
    pub async fn refresh(&self) -> Result<RefreshOutcome> {
        refresh::refresh(&self.state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_is_send_sync_and_cheap_to_clone() {
        fn send_sync<T: Send + Sync + Clone + 'static>() {}
        send_sync::<Reader>();
    }
}
