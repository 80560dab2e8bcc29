//! # sf-manifest: the ShardForge snapshot format
//!
//! A snapshot lives under a prefix URL: shard data, an immutable manifest
//! per build, run records, and one mutable pointer, `_CURRENT`. This crate
//! owns that format (compatible with shardyfusion's format v4) and the
//! protocol that publishes it:
//!
//! - [`mod@format`]: the objects of the format and their codecs, no I/O
//!   (sharding spec and keys, manifest, `_CURRENT`, run records, layout,
//!   the shards' `kv` table, checksums, ids);
//! - [`storage`]: URL + options -> object store and path, and the store
//!   wrappers every crate uses (local compare-and-swap, resent reads,
//!   copy-on-write, guarded);
//! - [`publish`]: the [`ManifestStore`] trait and its publish protocol
//!   (create-if-absent manifests, compare-and-swap on `_CURRENT`, history),
//!   and the deletion rules ([`publish::gc`]);
//! - [`error`]: the scaffolding every crate's errors share ([`ErrorKind`],
//!   [`Classified`], [`Cause`], [`chain`]) and the one classification of
//!   object-store failures ([`store_error_kind`]);
//! - [`sync`]: the one policy for poisoned locks;
//! - [`ratelimit`]: the one token bucket (writes and reads are limited
//!   with it) and its replaceable clock.
//!
//! The codec and types build without any engine; `store` (on by default)
//! adds object_store and tokio.
//!
//! ```
//! use sf_manifest::{BuildMeta, Classified, KeyEncoding, Manifest, ManifestStore, ObjectManifestStore, RunId,
//!                   ShardingSpec, StorageOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sf_manifest::Result<()> {
//! let store = ObjectManifestStore::open("memory://doc/snap", &StorageOptions::new())?;
//! let run = RunId::new("run1")?;
//! let build = BuildMeta::new(run, 4, store.prefix_url(), "id", ShardingSpec::hash(), KeyEncoding::U64Be);
//! let manifest = Manifest { build, shards: vec![] };
//!
//! // First publish: nothing observed, so _CURRENT is created.
//! let first = store.publish(&manifest, None).await?;
//! assert_eq!(store.load_current().await?.expect("published").pointer, first.pointer);
//!
//! // A publisher holding a stale view loses, and overwrites nothing.
//! let err = store.publish(&manifest, None).await.unwrap_err();
//! assert_eq!(err.kind(), sf_manifest::ErrorKind::Conflict);
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod format;
pub mod publish;
pub mod ratelimit;
#[cfg(feature = "store")]
pub mod storage;
pub mod sync;

#[cfg(feature = "store")]
pub use error::store_error_kind;
pub use error::{Cause, Classified, Error, ErrorKind, Result, chain};
pub use format::current::CurrentPointer;
pub use format::ids::{Attempt, DbId, RunId, Timestamp};
pub use format::manifest::{BuildMeta, MANIFEST_CONTENT_TYPE, Manifest, ShardRow, WriterInfo};
pub use format::run_record::{RunRecord, RunStatus};
pub use format::sharding::{
    CelType, FORMAT_VERSION, HashAlgorithm, Key, KeyEncoding, RoutingValue, ShardingSpec, ShardingStrategy,
};
#[cfg(feature = "store")]
pub use publish::manifest_store::{
    CurrentState, CurrentVersion, HistoryEntry, ManifestStore, ObjectManifestStore, Published, PublishedManifest,
};
#[cfg(feature = "store")]
pub use storage::location::{Location, StorageOptions, resolve};
