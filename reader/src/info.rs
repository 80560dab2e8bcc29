//! What a reader tells about itself: the served snapshot and its shards
//! ([`SnapshotInfo`], [`ShardInfo`]), where a key lives ([`RouteInfo`]),
//! how refreshes went ([`RefreshOutcome`], [`RefreshStatus`]) and whether
//! it is healthy ([`Health`]).
//!
//! Plain values, serialisable as they are (`sf-read --output json` and
//! `sf-serve` print them), built from a snapshot without any I/O.

use std::sync::Arc;

use serde::Serialize;
use sf_manifest::{DbId, HashAlgorithm, Key, KeyEncoding, RunId, ShardingStrategy, Timestamp};

use crate::snapshot::Snapshot;

/// What a [`Reader::refresh`](crate::Reader::refresh) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RefreshOutcome {
    /// `_CURRENT` still names the served manifest.
    Unchanged {
        /// The served manifest.
        manifest_ref: String,
    },
    /// The reader now serves another manifest.
    Swapped {
        /// The manifest served before.
        from: String,
        /// The manifest served now.
        to: String,
    },
    /// The reader is pinned to a manifest; refresh does nothing.
    Pinned {
        /// The pinned manifest.
        manifest_ref: String,
    },
}

/// How refreshes have gone; see [`Reader::refresh_status`](crate::Reader::refresh_status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RefreshStatus {
    /// When the last refresh started.
    pub last_attempt: Option<Timestamp>,
    /// When a refresh last succeeded.
    pub last_success: Option<Timestamp>,
    /// Why the last refresh failed, if it did (cleared by a success).
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

/// The served snapshot; see [`Reader::info`](crate::Reader::info).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// The run that built it.
    pub run_id: RunId,
    /// Number of shards.
    pub num_dbs: u32,
    /// Hash or CEL.
    pub sharding: ShardingStrategy,
    /// When it was built (the manifest's `created_at`).
    pub created_at: Timestamp,
    /// The manifest, as `_CURRENT` (or the pin) names it.
    pub manifest_ref: String,
    /// Rows over all shards.
    pub row_count: u64,
    /// How keys are stored.
    pub key_encoding: KeyEncoding,
    /// Hash algorithm of the routing.
    pub hash_algorithm: HashAlgorithm,
    /// Rows in the manifest's `shards` table (non-empty shards).
    pub shards_in_manifest: usize,
    /// Shards opened so far.
    pub shards_open: usize,
    /// When `_CURRENT` was last written (`None` when pinned).
    pub published_at: Option<Timestamp>,
    /// When this reader loaded it.
    pub loaded_at: Timestamp,
    /// Whether the reader is pinned (refresh does not move it).
    pub pinned: bool,
    /// Why the reader serves this snapshot rather than the one `_CURRENT`
    /// names: set while a reader that could not read `_CURRENT`'s
    /// manifest at start serves an older one of the history, until a
    /// refresh reads a good current manifest (see
    /// [`Reader::degraded`](crate::Reader::degraded)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

impl SnapshotInfo {
    /// What `snap` is (`pinned`: whether the reader holding it is).
    pub(crate) fn of(snap: &Snapshot, pinned: bool) -> SnapshotInfo {
        let b = &snap.manifest.build;
        SnapshotInfo {
            run_id: b.run_id.clone(),
            num_dbs: b.num_dbs,
            sharding: b.sharding.strategy,
            created_at: b.created_at,
            manifest_ref: snap.manifest_ref.clone(),
            row_count: snap.row_count,
            key_encoding: b.key_encoding,
            hash_algorithm: b.sharding.hash_algorithm,
            shards_in_manifest: snap.manifest.shards.len(),
            shards_open: snap.open_count(),
            published_at: snap.pointer.as_ref().map(|p| p.updated_at),
            loaded_at: snap.loaded_at,
            pinned,
            degraded: None,
        }
    }
}

/// One shard of the served snapshot; see [`Reader::shards`](crate::Reader::shards).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardInfo {
    /// The shard.
    pub db_id: DbId,
    /// Rows stored.
    pub row_count: u64,
    /// Smallest key.
    #[serde(serialize_with = "key_json")]
    pub min_key: Option<Key>,
    /// Largest key.
    #[serde(serialize_with = "key_json")]
    pub max_key: Option<Key>,
    /// `db_url` as the manifest stores it.
    pub db_url: Option<String>,
    /// Where it is read from (rebased under the prefix).
    pub resolved_url: Option<String>,
    /// The winning attempt.
    pub attempt: u32,
    /// Size of the SQLite file (0 for SlateDB).
    pub db_bytes: u64,
    /// Content identity.
    pub checkpoint_id: Option<String>,
    /// Content checksum, when the writer recorded one.
    pub checksum: Option<String>,
    /// One of [`READ_MODES`](crate::READ_MODES) once opened.
    pub opened_as: Option<&'static str>,
}

fn key_json<S: serde::Serializer>(k: &Option<Key>, s: S) -> std::result::Result<S::Ok, S::Error> {
    // As the manifest stores key bounds: numbers, text, `hex:` for bytes.
    match k {
        Some(k) => serde::Serialize::serialize(&k.to_json(), s),
        None => s.serialize_none(),
    }
}

/// The shards of one snapshot, by db_id; see [`Reader::shard_infos`](crate::Reader::shard_infos).
#[derive(Clone)]
pub struct ShardInfos {
    snap: Arc<Snapshot>,
    next: usize,
}

impl ShardInfos {
    /// From the first shard of `snap` on.
    pub(crate) fn new(snap: Arc<Snapshot>) -> Self {
        ShardInfos { snap, next: 0 }
    }
}

impl std::fmt::Debug for ShardInfos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardInfos")
            .field("manifest_ref", &self.snap.manifest_ref)
            .field("next", &self.next)
            .finish()
    }
}

impl Iterator for ShardInfos {
    type Item = ShardInfo;

    fn next(&mut self) -> Option<ShardInfo> {
        let r = self.snap.manifest.shards.get(self.next)?;
        self.next += 1;
        Some(ShardInfo {
            db_id: r.db_id,
            row_count: r.row_count,
            min_key: r.min_key.clone(),
            max_key: r.max_key.clone(),
            db_url: r.db_url.clone(),
            resolved_url: self.snap.shard_url(r.db_id).map(str::to_string),
            attempt: r.attempt.0,
            db_bytes: r.db_bytes,
            checkpoint_id: r.checkpoint_id.clone(),
            checksum: r.writer_info.checksum().map(str::to_string),
            opened_as: self.snap.open_backend(r.db_id),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.snap.manifest.shards.len() - self.next;
        (left, Some(left))
    }
}

/// Where a key lives; see [`Reader::route`](crate::Reader::route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    /// The shard, or `None` for an unknown categorical token (a miss).
    pub db_id: Option<DbId>,
    /// Its attempt folder, when the shard is in the manifest.
    pub db_url: Option<String>,
}

/// Healthy or stale; see [`Reader::health`](crate::Reader::health).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The served snapshot is younger than the threshold.
    Healthy,
    /// The served snapshot is older than the threshold.
    Stale,
}

/// See [`Reader::health`](crate::Reader::health).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Healthy or stale.
    pub status: HealthStatus,
    /// The served manifest.
    pub manifest_ref: String,
    /// Its run.
    pub run_id: RunId,
    /// Time since the snapshot was built (its `created_at`), in seconds.
    pub snapshot_age_seconds: f64,
    /// The threshold, in seconds.
    pub max_age_seconds: f64,
    /// Shards in the manifest.
    pub num_shards: usize,
    /// Whether [`Reader::close`](crate::Reader::close) was called.
    pub is_closed: bool,
    /// How refreshes have gone.
    pub refresh: RefreshStatus,
    /// See [`SnapshotInfo::degraded`]: the status speaks of the age only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}
