//! # sf-manifest: the ShardForge snapshot format
//!
//! A snapshot lives under a prefix URL: shard data, an immutable manifest
//! per build, run records, and one mutable pointer, `_CURRENT`. This crate
//! owns that format (compatible with shardyfusion's format v4) and the
//! protocol that publishes it:
//!
//! - [`mod@format`]: key encodings, keys, the sharding spec;
//! - [`manifest`]: the SQLite manifest codec (no I/O: bytes in, bytes out);
//! - [`current`], [`run_record`], [`layout`]: the other objects and their keys;
//! - [`checksum`]: the shard checksums writers record and readers verify;
//! - [`storage`]: URL + options -> object store and path (`file://`,
//!   `s3://`, `gs://`, `az://`, `memory://`);
//! - [`store`]: the [`ManifestStore`] trait and its publish protocol
//!   (create-if-absent manifests, compare-and-swap on `_CURRENT`), history;
//! - [`error`]: the one classification of object-store failures
//!   ([`store_error_kind`]) every crate's retries and exit codes follow;
//! - store wrappers: [`overlay::CopyOnWriteStore`] (read a SlateDB
//!   database without writing to it) and [`guarded::GuardedStore`]
//!   (remember the last failure, cut a store off when its work ends).
//!
//! The codec and types build without any engine; `store` (on by default)
//! adds object_store and tokio.
//!
//! ```
//! use sf_manifest::{BuildMeta, KeyEncoding, Manifest, ManifestStore, ObjectManifestStore, RunId,
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

pub mod base64;
#[cfg(feature = "store")]
pub mod body;
pub mod checksum;
pub mod current;
pub mod duration;
pub mod error;
pub mod failpoint;
pub mod format;
#[cfg(feature = "store")]
pub mod gc;
#[cfg(feature = "store")]
pub mod guarded;
pub mod ids;
pub mod json;
pub mod layout;
#[cfg(feature = "store")]
pub mod local;
pub mod manifest;
#[cfg(feature = "store")]
pub mod overlay;
#[cfg(feature = "store")]
pub mod resend;
pub mod run_record;
#[cfg(feature = "store")]
pub mod storage;
#[cfg(feature = "store")]
pub mod store;

pub use current::CurrentPointer;
#[cfg(feature = "store")]
pub use error::store_error_kind;
pub use error::{Error, ErrorKind, Result};
pub use format::{
    CelType, FORMAT_VERSION, HashAlgorithm, Key, KeyEncoding, RoutingValue, ShardingSpec, ShardingStrategy,
};
pub use ids::{Attempt, DbId, RunId, Timestamp};
pub use manifest::{BuildMeta, MANIFEST_CONTENT_TYPE, Manifest, ShardRow, WriterInfo};
pub use run_record::{RunRecord, RunStatus};
#[cfg(feature = "store")]
pub use storage::{Location, StorageOptions, resolve};
#[cfg(feature = "store")]
pub use store::{
    CurrentState, CurrentVersion, HistoryEntry, ManifestStore, ObjectManifestStore, Published, PublishedManifest,
};
