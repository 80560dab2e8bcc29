//! One shard to open, as its manifest row and location describe it, and
//! the errors an open reports about it. Every backend takes one; it knows
//! none of them.

use sf_manifest::format::checksum::{Coverage, Recorded};
use sf_manifest::{Cause, DbId, ErrorKind, Location, ShardRow};

use crate::error::Error;

/// One shard of a snapshot, as its manifest row and location describe it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShardSpec<'a> {
    pub(crate) db_id: DbId,
    pub(crate) row: &'a ShardRow,
    /// The attempt folder, rebased under the prefix being read.
    pub(crate) location: &'a Location,
    /// Its URL (as resolved).
    pub(crate) url: &'a String,
    /// Auto mode holds this shard in memory: its whole snapshot fits
    /// (`ReaderSettings::auto_memory_when_fits`).
    pub(crate) whole_snapshot_fits: bool,
}

impl ShardSpec<'_> {
    /// The shard cannot be opened for a reason of its own (missing,
    /// damaged, unreadable): bad data, not worth retrying.
    pub(crate) fn open_error(&self, reason: String) -> Error {
        self.open_failed(reason, ErrorKind::Data, None)
    }

    /// The store failed while opening the shard; classified as every
    /// object-store error is.
    pub(crate) fn store_error(&self, reason: String, e: object_store::Error) -> Error {
        self.open_failed(reason, sf_manifest::store_error_kind(&e), Some(Box::new(e)))
    }

    pub(crate) fn open_failed(&self, reason: String, kind: ErrorKind, source: Option<Cause>) -> Error {
        Error::ShardOpen {
            db_id: self.db_id,
            url: self.url.clone(),
            reason,
            kind,
            source,
        }
    }

    /// The manifest's checksum when it covers what `coverage` says.
    pub(crate) fn expected_checksum(&self, coverage: Coverage) -> Option<Recorded> {
        let text = self.row.writer_info.checksum()?;
        match Recorded::parse(text) {
            Some(r) if r.coverage == coverage => Some(r),
            Some(_) => {
                tracing::warn!(shard = %self.db_id, checksum = text, "checksum does not fit the shard's backend; not verified");
                None
            }
            None => {
                tracing::warn!(shard = %self.db_id, checksum = text, "unknown checksum algorithm; not verified");
                None
            }
        }
    }
}

/// What makes two snapshots' shards the same content, so a refresh can
/// carry an open shard over instead of opening it again; the same fields
/// name its file in the download cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardIdentity {
    pub(super) url: String,
    pub(super) checkpoint_id: Option<String>,
    pub(super) checksum: Option<String>,
    pub(super) db_bytes: u64,
}

impl ShardIdentity {
    pub(crate) fn of(row: &ShardRow, url: &str) -> Self {
        ShardIdentity {
            url: url.to_string(),
            checkpoint_id: row.checkpoint_id.clone(),
            checksum: row.writer_info.checksum().map(str::to_string),
            db_bytes: row.db_bytes,
        }
    }
}
