//! # sf-reader: online reads by manifest
//!
//! A [`Reader`] serves point lookups from a published snapshot: it reads
//! `_CURRENT` (or a pinned manifest), decodes the manifest, routes every
//! key with `sf-router` (the code the writer routed with), and opens shards
//! lazily, once each, on first use:
//!
//! - SQLite shards, **download** mode: fetched once into a local cache
//!   named by the shard's content id, shared across processes, verified,
//!   then read through pooled read-only connections (a warm `get` is a few
//!   microseconds);
//! - SQLite shards, **range** mode: pages read by ranged GETs through a
//!   SQLite VFS and a shared block cache, never downloading the file;
//! - SQLite shards, **memory** mode: downloaded and verified as in download
//!   mode, then read once into an in-memory hash index, so that lookups
//!   never touch SQLite (within a memory limit; shards beyond it stay in
//!   download mode); **auto** picks by shard size;
//! - SlateDB shards: a read-only `DbReader` that writes nothing to the
//!   shard's prefix.
//!
//! ```text
//!  get(key) ──▶ snapshot (Arc, swapped whole on refresh)
//!                 │ encode + route (sf-router)
//!                 ▼
//!               shard slot db_id ── first use: open once (OnceCell) ──▶ SQLite | range VFS | memory | SlateDB
//! ```
//!
//! Refresh (manual or background) loads the new manifest and opens the
//! shards in use before swapping; calls in flight finish on the snapshot
//! they started on, and a bad new snapshot leaves the old one serving.
//! Reads may be limited in keys and bytes per second ([`ratelimit`]): a
//! read waits a bounded time or is refused at once, never more.
//! [`Admin`] rolls `_CURRENT` back (compare-and-swap) and cleans up old
//! data. The `sf-read` program (in `sf-cli`) is a thin face over this crate.
//!
//! ```
//! use sf_manifest::Key;
//! use sf_reader::{Reader, ReaderSettings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sf_reader::Result<()> {
//! # let fixture = std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"),
//! #     "/../tests/data/shardyfusion-v4/sqlite-bucket-golden/hash_int")).unwrap();
//! # let current_url = format!("{}/_CURRENT", fixture.display());
//! # let cache = tempfile::tempdir().unwrap();
//! // `current_url` is e.g. "s3://bucket/snapshots/users/_CURRENT".
//! let reader = Reader::builder(&current_url)
//!     .with_settings(ReaderSettings {
//!         cache_dir: Some(cache.path().to_path_buf()),
//!         ..ReaderSettings::default()
//!     })
//!     .build()
//!     .await?;
//!
//! assert_eq!(reader.get(&Key::Int(3)).await?.as_deref(), Some(&b"v2-3"[..]));
//! assert_eq!(reader.get(&Key::Int(999)).await?, None);
//!
//! // Grouped by shard, read concurrently, returned in input order.
//! let values = reader.multi_get(&[Key::Int(0), Key::Int(42), Key::Int(1)]).await?;
//! assert_eq!(values[0].as_deref(), Some(&b"v2-0"[..]));
//! assert_eq!(values[1], None);
//!
//! assert_eq!(reader.info().run_id.as_str(), "goldenrun0005");
//! # Ok(())
//! # }
//! ```

pub mod admin;
mod block_cache;
/// Durations as people type them (`30s`, `7d`), shared with the rest of the project.
pub use sf_manifest::format::duration;
mod error;
mod info;
mod prefix;
pub mod ratelimit;
mod reader;
mod settings;
mod shard;
mod snapshot;
mod state;
mod stats;
pub mod vector;
mod view;

pub use admin::{Admin, AdminBuilder, CleanupOptions, CleanupReport, Removal, RemovalReason, Rollback, RollbackTarget};
pub use error::{Error, Result};
pub use info::{Health, HealthStatus, RefreshOutcome, RefreshStatus, RouteInfo, ShardInfo, ShardInfos, SnapshotInfo};
pub use ratelimit::{ReadLimiter, ReadLimits};
pub use reader::{Reader, ReaderBuilder};
pub use settings::{MAX_KEEP_VERSIONS, Pin, ReaderSettings, SqliteMode};
pub use sf_manifest::format::checksum::{FILE_ALGORITHM, KV_ALGORITHM};
pub use shard::Inline;
pub use shard::READ_MODES;
pub use snapshot::RoutingContext;
pub use stats::{METRICS, ReaderStats};
pub use vector::{SearchHit, SearchOptions, SearchResults, SearchWithValues, VectorId};
pub use view::{SnapshotView, Version};

/// Re-exported so callers can build routing contexts without naming `sf-router`.
pub use sf_router::ContextValue;
