//! The SlateDB backend: one SlateDB database per shard, rooted at the
//! attempt folder itself (docs/FORMAT.md).
//!
//! Phase 1 ([`ShardBuilder`]) needs the rows sorted by key, each key once
//! (the shard sorter's output). It streams them to a
//! local spool file of records (`u32` LE key length, key, `u32` LE value
//! length, value), so memory is the write buffer whatever the shard's size.
//! The checksum is xxh3-128 over exactly those records, in key order
//! (`xxh3_128-kv:<hex>`): it describes the logical content, so it can be
//! recomputed from any SlateDB scan of the shard.
//!
//! Phase 2 ([`StagedShard::upload`](super::StagedShard::upload)) writes the spool into a fresh database
//! and leaves it ready for read-only use:
//!
//! 1. Write with the WAL off (the spool is the log: a failed upload is
//!    redone from it into a new attempt) and no timed flushes; the memtable
//!    becomes an L0 SST each time it reaches `l0_sst_size_mib`, then once
//!    more at the end. Rows go in write batches under the attempt's rate
//!    limits.
//! 2. Close the writer, then, when more than one SST was written, run one
//!    compaction that merges every L0 SST into a single sorted run (a
//!    standalone SlateDB compactor driven by a scheduler that proposes
//!    exactly that merge), so that a lookup reads one SST, and delete the
//!    L0 SSTs it replaced.
//! 3. Record a durable checkpoint (no expiry, named [`CHECKPOINT_NAME`]) of
//!    the final state. Its UUID, in simple hex, is the shard's
//!    `checkpoint_id`.
//!
//! A reader opens the shard without writing to it through
//! `DbReader::builder(attempt_path, store).with_checkpoint_id(uuid)`, where
//! `uuid` is the manifest's `checkpoint_id`: at a checkpoint SlateDB neither
//! records a checkpoint of its own nor polls the manifest or replays a WAL.
//! Shards written by the reference carry a random `checkpoint_id` that names
//! no checkpoint; [`read_all`] shows how to read those without writing to
//! them too.
//!
//! SlateDB retries failing object-store calls forever. Every remote step
//! here therefore has a stall timeout (`stall_timeout_secs`), after which
//! the attempt fails as retryable and SlateDB's store is cut off, so that
//! its background tasks stop too.
//!
//! The backend in files: `settings` (the knobs), `spool` (phase 1),
//! `upload` (phase 2), `compaction` (the final merge), `read`
//! (verification and reading back); this file holds what they share: the
//! per-operation context `Ops` with its guarded store, stall timeout and
//! errors.

use std::fs::File;
use std::future::Future;
use std::io::BufWriter;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sf_manifest::format::checksum::KvHasher;
use sf_manifest::storage::guarded::GuardedStore;
use sf_manifest::{Attempt, DbId, ErrorKind as SfErrorKind, Location};
use slatedb::ErrorKind;

use crate::adapter::{BuildContext, ShardBackend, ShardBuilder, ShardContent};
use crate::error::{Error, Result};
use sf_manifest::Cause;

mod compaction;
mod read;
mod settings;
mod spool;
#[cfg(test)]
mod tests;
mod upload;

pub use read::read_all;
use read::verify_attempt;
pub use settings::SlateDbSettings;
use spool::SlateDbBuilder;

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * 1024;

/// "Never stall on L0", as a count SlateDB can do arithmetic with.
pub(super) const UNLIMITED_L0: usize = 1 << 30;

/// Name of the durable checkpoint an upload leaves for readers.
pub const CHECKPOINT_NAME: &str = "shardforge";

/// Write buffer of the local spool (the builder's memory for rows).
pub(super) const SPOOL_BUFFER: usize = 1 << 20;

/// How often the final compaction is checked on.
pub(super) const COMPACTION_POLL: Duration = Duration::from_millis(100);

/// Merges the final compaction may try before the upload gives up.
pub(super) const MAX_COMPACTION_TRIES: u32 = 3;

/// Grace period for closing SlateDB after a step failed.
pub(super) const CLOSE_AFTER_FAILURE: Duration = Duration::from_secs(5);

pub(super) fn mib_to_bytes(mib: u32) -> usize {
    usize::try_from(u64::from(mib) * MIB).unwrap_or(usize::MAX)
}

pub(super) fn record_len(bytes: &[u8]) -> u32 {
    // Keys are at most u16::MAX bytes and values are checked against
    // u32::MAX before they get here; saturating keeps this total.
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

/// The SlateDB [`ShardBackend`].
#[derive(Debug, Clone)]
pub struct SlateDbBackend {
    settings: SlateDbSettings,
}

impl SlateDbBackend {
    /// A backend with `settings`.
    pub fn new(settings: SlateDbSettings) -> Self {
        SlateDbBackend { settings }
    }
}

#[async_trait]
impl ShardBackend for SlateDbBackend {
    fn name(&self) -> &'static str {
        "slatedb"
    }

    fn builder(&self, ctx: BuildContext) -> Result<Box<dyn ShardBuilder>> {
        self.settings.validate()?;
        if !ctx.sorted {
            return Err(Error::config(
                "output.slatedb",
                "the slatedb backend needs each shard's rows sorted by key (it streams them to disk in \
                 order); keep sort_within_shard = true, or use the sqlite backend",
            ));
        }
        let spool = ctx.work_dir.join("slatedb.spool");
        let file = File::create(&spool)
            .map_err(|e| Error::io(format!("creating the SlateDB spool {}", spool.display()), e))?;
        Ok(Box::new(SlateDbBuilder {
            out: BufWriter::with_capacity(SPOOL_BUFFER, file),
            spool,
            checksum: KvHasher::default(),
            min_key: None,
            last_key: Vec::new(),
            settings: self.settings.clone(),
            ctx,
        }))
    }

    async fn verify(&self, attempt: &Location, db_id: DbId, expected: &ShardContent) -> Result<()> {
        let ops = Ops::new(Some(db_id), None, attempt, self.settings.stall_timeout());
        verify_attempt(&ops, attempt, db_id, expected).await
    }
}

/// The context of one upload, verify or read: the guarded store SlateDB
/// gets, the stall timeout, and how errors name the shard.
///
/// Dropping it, when the operation returns or its future is dropped, trips
/// the store: whatever SlateDB still runs in the background then fails fast
/// instead of retrying into the attempt forever.
pub(super) struct Ops<'a> {
    pub(super) db_id: Option<DbId>,
    pub(super) attempt: Option<Attempt>,
    pub(super) url: &'a str,
    pub(super) guard: Arc<GuardedStore>,
    pub(super) stall: Duration,
}

impl Drop for Ops<'_> {
    fn drop(&mut self) {
        self.guard.trip();
    }
}

impl<'a> Ops<'a> {
    pub(super) fn new(db_id: Option<DbId>, attempt: Option<Attempt>, location: &'a Location, stall: Duration) -> Self {
        Ops {
            db_id,
            attempt,
            url: &location.url,
            guard: GuardedStore::new(Arc::clone(&location.store)),
            stall,
        }
    }

    pub(super) fn error(&self, message: String, kind: SfErrorKind) -> Error {
        self.caused(message, kind, None)
    }

    pub(super) fn caused(&self, message: String, kind: SfErrorKind, source: Option<Cause>) -> Error {
        match self.db_id {
            Some(db_id) => Error::Shard {
                db_id,
                attempt: self.attempt,
                message,
                kind,
                source,
            },
            // `read_all` knows no shard.
            None => Error::Storage { message, kind, source },
        }
    }

    /// An object-store failure, classified as every one is.
    pub(super) fn store(&self, message: String, e: object_store::Error) -> Error {
        let kind = sf_manifest::store_error_kind(&e);
        self.caused(message, kind, Some(Box::new(e)))
    }

    pub(super) fn storage_note(&self) -> String {
        match self.guard.last_error() {
            Some(e) => format!(" (object storage last said: {e})"),
            None => String::new(),
        }
    }

    /// A SlateDB failure; retryable when SlateDB blames the store.
    pub(super) fn slate(&self, what: &str, e: slatedb::Error) -> Error {
        let kind = match e.kind() {
            ErrorKind::Unavailable => SfErrorKind::Unavailable,
            _ => SfErrorKind::Internal,
        };
        self.caused(
            format!("SlateDB failed {what} at {}: {e}{}", self.url, self.storage_note()),
            kind,
            Some(Box::new(e)),
        )
    }

    pub(super) fn stalled(&self, what: &str) -> Error {
        self.error(
            format!(
                "no progress for {}s while {what} at {}{}",
                self.stall.as_secs(),
                self.url,
                self.storage_note()
            ),
            SfErrorKind::Unavailable,
        )
    }

    /// Runs one remote step under the stall timeout.
    pub(super) async fn within<T>(&self, what: &str, step: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.stall, step).await {
            Ok(result) => result,
            Err(_) => Err(self.stalled(what)),
        }
    }
}
