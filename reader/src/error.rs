//! The reader's one error type, with the coarse [`ErrorKind`] shared with
//! `sf-manifest`, which retries and exit codes branch on.

use sf_manifest::{Cause, Classified, DbId, ErrorKind};

/// Errors of the reader, the admin operations and the CLI.
///
/// Every variant names the object it is about (the `_CURRENT` URL, the
/// manifest ref, the shard's id and URL); none carries credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting or argument is not valid.
    #[error("invalid {field}: {reason}")]
    Config { field: String, reason: String },

    /// Nothing was ever published under the prefix.
    #[error("no _CURRENT at {location}: nothing has been published under this prefix")]
    NoCurrent { location: String },

    /// `_CURRENT` (or a pin) names a manifest that is not there.
    #[error("manifest {manifest_ref} (named by {named_by}) does not exist")]
    ManifestMissing { manifest_ref: String, named_by: String },

    /// A pin or rollback target is not in the prefix's history.
    #[error("{what} is not in the history of {location}")]
    NotInHistory { what: String, location: String },

    /// A read named a version (run or offset) the reader does not hold.
    #[error("{what} is not among the snapshots held for {location} (held runs: {})", held.join(", "))]
    VersionNotHeld {
        what: String,
        location: String,
        /// Runs of the held snapshots, the served one first.
        held: Vec<String>,
    },

    /// A key given as text does not parse by the snapshot's key encoding.
    #[error("invalid key {text:?}: {source}")]
    InvalidKey {
        text: String,
        #[source]
        source: sf_router::Error,
    },

    /// The snapshot format layer failed (a corrupt or unsupported manifest
    /// or `_CURRENT`, storage errors, a lost compare-and-swap).
    #[error(transparent)]
    Manifest(#[from] sf_manifest::Error),

    /// A key or routing context could not be routed or encoded.
    #[error(transparent)]
    Routing(#[from] sf_router::Error),

    /// A shard could not be opened.
    #[error("shard {db_id} at {url}: {reason}")]
    ShardOpen {
        db_id: DbId,
        url: String,
        reason: String,
        /// The class of the failure: the cause's when there is one.
        kind: ErrorKind,
        #[source]
        source: Option<Cause>,
    },

    /// A shard's content does not have the checksum the manifest records.
    #[error("shard {db_id} at {url} is damaged: the manifest records checksum {expected}, its content has {found}")]
    ChecksumMismatch {
        db_id: DbId,
        url: String,
        expected: String,
        found: String,
    },

    /// A lookup in an open shard failed.
    #[error("reading shard {db_id} at {url}: {reason}")]
    ShardRead {
        db_id: DbId,
        url: String,
        reason: String,
        /// The class of the failure: the cause's when there is one.
        kind: ErrorKind,
        #[source]
        source: Option<Cause>,
    },

    /// Local I/O failed (the shard cache).
    #[error("local I/O on {path} while {context}: {source}")]
    Io {
        context: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A read was refused by the reader's rate limits (see
    /// [`crate::ratelimit`]): it would have had to wait `retry_after`,
    /// longer than the `max_wait` a read may wait. Of kind `Unavailable`:
    /// the same read is let in after `retry_after`.
    #[error(
        "rate limited: this read would wait {:.3} s, longer than the {:.3} s a read may wait (rate_limit_max_wait); try again in {:.3} s",
        retry_after.as_secs_f64(),
        max_wait.as_secs_f64(),
        retry_after.as_secs_f64()
    )]
    RateLimited {
        retry_after: std::time::Duration,
        max_wait: std::time::Duration,
    },

    /// The reader was closed.
    #[error("the reader of {location} is closed")]
    Closed { location: String },

    /// An invariant broken inside ShardForge.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Classified for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::Config,
            // The caller named a key, pin or rollback target that cannot be.
            Error::InvalidKey { .. } | Error::NotInHistory { .. } | Error::VersionNotHeld { .. } => ErrorKind::Config,
            Error::NoCurrent { .. } | Error::ManifestMissing { .. } | Error::ChecksumMismatch { .. } => ErrorKind::Data,
            Error::Manifest(e) => e.kind(),
            Error::Routing(e) => e.kind(),
            Error::ShardOpen { kind, .. } | Error::ShardRead { kind, .. } => *kind,
            Error::Io { source, .. } => sf_manifest::error::io_error_kind(source),
            Error::Closed { .. } => ErrorKind::Config,
            Error::RateLimited { .. } => ErrorKind::Unavailable,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl Error {
    /// Shorthand for [`Error::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_drive_retries() {
        let open = |kind| Error::ShardOpen {
            db_id: DbId(3),
            url: "s3://b/p/shards/run_id=r/db=00003/attempt=00".into(),
            reason: "x".into(),
            kind,
            source: None,
        };
        assert!(open(ErrorKind::Unavailable).is_retryable());
        assert!(!open(ErrorKind::Data).is_retryable());
        assert_eq!(open(ErrorKind::Data).kind(), ErrorKind::Data);
        assert!(open(ErrorKind::Data).to_string().contains("shard 3 at s3://b/p/"));
        let io = |k| Error::io("writing the cache", std::path::Path::new("/c"), std::io::Error::from(k));
        assert_eq!(io(std::io::ErrorKind::PermissionDenied).kind(), ErrorKind::Config);
        assert_eq!(io(std::io::ErrorKind::StorageFull).kind(), ErrorKind::Unavailable);
        assert!(io(std::io::ErrorKind::StorageFull).is_retryable());
        assert_eq!(Error::config("x", "y").kind(), ErrorKind::Config);
        let m = Error::from(sf_manifest::Error::NotFound {
            what: "manifest",
            location: "s3://b/m".into(),
        });
        assert_eq!(m.kind(), ErrorKind::Data);
        assert_eq!(m.to_string(), "manifest not found at s3://b/m");
    }
}
