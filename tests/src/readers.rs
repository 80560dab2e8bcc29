//! Readers for tests: one way to open a reader on a snapshot, and one
//! conformance run of the SQLite read modes.
//!
//! A SQLite shard answers the same in every mode: from a downloaded file,
//! by ranged reads of the object, or from memory. A check written once runs
//! in each mode through [`in_every_mode`] (the check opens what it needs)
//! or [`read_in_every_mode`] (it is handed a reader of the snapshot), and a
//! failure names the mode it happened in. Snapshots on files or on the S3
//! test server are read alike: the storage is the prefix's.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use futures::FutureExt;
use object_store::ObjectStore;
use sf_manifest::Key;
use sf_reader::{Reader, ReaderSettings, SqliteMode};

/// Every mode a SQLite shard can be read in (`auto` picks one of them).
pub const SQLITE_MODES: [SqliteMode; 3] = [SqliteMode::Download, SqliteMode::Range, SqliteMode::Memory];

/// The two modes in which SQLite itself answers each lookup, from the
/// downloaded file or by ranged reads (memory mode answers from an index
/// of its own): the modes of checks about SQLite's own opens, downloads
/// and held reads, and of the end-to-end reads written before memory mode.
pub const PAGED_MODES: [SqliteMode; 2] = [SqliteMode::Download, SqliteMode::Range];

/// Settings of a test reader: shards read in `mode`, files cached under
/// `cache`, the rest as the defaults have it.
pub fn settings(mode: SqliteMode, cache: &Path) -> ReaderSettings {
    ReaderSettings {
        cache_dir: Some(cache.to_path_buf()),
        sqlite_mode: mode,
        ..ReaderSettings::default()
    }
}

/// A reader of the snapshot `prefix/_CURRENT` names; panics naming the
/// prefix when it does not open.
pub async fn open(prefix: &str, settings: ReaderSettings) -> Reader {
    try_open(prefix, settings)
        .await
        .unwrap_or_else(|e| panic!("open {prefix}/_CURRENT: {e}"))
}

/// [`open`], with the error left to the test.
pub async fn try_open(prefix: &str, settings: ReaderSettings) -> sf_reader::Result<Reader> {
    Reader::builder(format!("{prefix}/_CURRENT"))
        .with_settings(settings)
        .build()
        .await
}

/// [`open`], reading through `store` instead of the one the prefix's URL
/// resolves to (a [`FaultStore`](crate::fault_store::FaultStore) over it).
pub async fn open_through(prefix: &str, store: Arc<dyn ObjectStore>, settings: ReaderSettings) -> Reader {
    Reader::builder(format!("{prefix}/_CURRENT"))
        .with_object_store(store)
        .with_settings(settings)
        .build()
        .await
        .unwrap_or_else(|e| panic!("open {prefix}/_CURRENT: {e}"))
}

/// The first of the integer keys `0..keys` that `reader` routes to shard
/// `db`.
pub fn key_in(reader: &Reader, db: u32, keys: i64) -> i64 {
    (0..keys)
        .find(|k| reader.route(&Key::Int(*k), None).expect("route").db_id.map(|d| d.0) == Some(db))
        .unwrap_or_else(|| panic!("none of the keys 0..{keys} is in shard {db}"))
}

/// Runs `check` once for each of `modes`, in order. A panic in a check is
/// raised again naming the mode (the original message and place are
/// printed as it happens).
pub async fn in_every_mode(modes: &[SqliteMode], mut check: impl AsyncFnMut(SqliteMode)) {
    for &mode in modes {
        if let Err(panic) = AssertUnwindSafe(check(mode)).catch_unwind().await {
            panic!("in {} mode: {}", mode.as_str(), message(panic.as_ref()));
        }
    }
}

/// Runs `check` against the snapshot under `prefix` through a reader in
/// each of `modes`, each reader with a cache folder of its own and closed
/// once its check is done; a failure names the mode.
pub async fn read_in_every_mode(prefix: &str, modes: &[SqliteMode], mut check: impl AsyncFnMut(&Reader)) {
    in_every_mode(modes, async |mode| {
        let cache = tempfile::tempdir().expect("cache");
        let reader = open(prefix, settings(mode, cache.path())).await;
        check(&reader).await;
        reader.close();
    })
    .await;
}

fn message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message")
}
