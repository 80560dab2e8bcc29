//! What the SlateDB backend's steps share: the per-operation context
//! [`Ops`] (the guarded store SlateDB gets, the stall timeout, errors that
//! name the shard), the reads every step makes through it, and the name of
//! the checkpoint an upload leaves and verification looks for.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use sf_manifest::storage::guarded::GuardedStore;
use sf_manifest::{Attempt, Cause, DbId, ErrorKind as SfErrorKind, Location};
use slatedb::admin::Admin;
use slatedb::{ErrorKind, VersionedManifest};

use crate::error::{Error, Result};

/// Name of the durable checkpoint an upload leaves for readers.
pub const CHECKPOINT_NAME: &str = "shardforge";

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

pub(super) async fn read_manifest(ops: &Ops<'_>, admin: &Admin, id: Option<u64>) -> Result<Option<VersionedManifest>> {
    ops.within("reading the SlateDB manifest", async {
        admin
            .read_manifest(id)
            .await
            .map_err(|e| ops.slate("reading the manifest", e))
    })
    .await
}

/// The first object listed under `prefix`, if any.
pub(super) async fn first_object(
    ops: &Ops<'_>,
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
) -> Result<Option<ObjectMeta>> {
    ops.within("listing the attempt folder", async {
        store
            .list(Some(prefix))
            .next()
            .await
            .transpose()
            .map_err(|e| ops.store(format!("listing {prefix}: {e}"), e))
    })
    .await
}
