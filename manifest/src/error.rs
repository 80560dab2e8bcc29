//! The crate's one error type, with a coarse [`ErrorKind`] that callers branch on.

use std::fmt;

/// What class of failure an [`Error`] is; retries and exit codes branch on this alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad configuration or arguments: fix the input and run again.
    Config,
    /// Routing could not place a key (bad expression, value out of range).
    Routing,
    /// The data or a stored object is malformed, missing or unsupported.
    Data,
    /// A conditional write lost a race: someone else changed the object first.
    Conflict,
    /// Storage could not be reached or refused the request; often transient.
    Unavailable,
    /// A bug or an invariant broken inside ShardForge.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "config",
            ErrorKind::Routing => "routing",
            ErrorKind::Data => "data",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        })
    }
}

/// Errors of the snapshot format and the publish protocol.
///
/// Every variant names the object or field it is about; none carries
/// credentials (storage options are never formatted into errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value given by the user or found in a stored object is not valid.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },

    /// A storage URL could not be turned into a store.
    #[error("invalid storage URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// An object that must exist does not.
    #[error("{what} not found at {location}")]
    NotFound { what: &'static str, location: String },

    /// A create-if-absent write found the object already there.
    #[error("{what} already exists at {location}; published objects are immutable")]
    AlreadyExists { what: &'static str, location: String },

    /// A compare-and-swap on `_CURRENT` found a different version than expected.
    #[error(
        "_CURRENT at {location} changed under us: expected {}, found {}; another publisher won, nothing was overwritten",
        .expected.as_deref().unwrap_or("no _CURRENT"),
        .found.as_deref().unwrap_or("no _CURRENT")
    )]
    Conflict {
        location: String,
        expected: Option<String>,
        found: Option<String>,
    },

    /// A stored object could not be decoded.
    #[error("{what} at {location} is corrupt: {reason}")]
    Corrupt {
        what: &'static str,
        location: String,
        reason: String,
    },

    /// A stored object uses a format version this build does not read.
    #[error("{what} at {location} has format_version {found}; this build reads format_version {supported}")]
    UnsupportedVersion {
        what: &'static str,
        location: String,
        found: i64,
        supported: i64,
    },

    /// SQLite failed while encoding or decoding a manifest.
    #[cfg(feature = "codec")]
    #[error("SQLite error while {context}: {source}")]
    Sqlite {
        context: String,
        #[source]
        source: rusqlite::Error,
    },

    /// The object store failed.
    #[cfg(feature = "store")]
    #[error("storage error during {op} of {location}: {source}")]
    Store {
        op: &'static str,
        location: String,
        #[source]
        source: object_store::Error,
    },

    /// An invariant broken inside ShardForge.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid { .. } | Error::InvalidUrl { .. } => ErrorKind::Config,
            Error::NotFound { .. }
            | Error::Corrupt { .. }
            | Error::UnsupportedVersion { .. }
            | Error::AlreadyExists { .. } => ErrorKind::Data,
            Error::Conflict { .. } => ErrorKind::Conflict,
            #[cfg(feature = "codec")]
            Error::Sqlite { .. } => ErrorKind::Data,
            #[cfg(feature = "store")]
            Error::Store { source, .. } => match source {
                object_store::Error::NotFound { .. } => ErrorKind::Data,
                object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. } => {
                    ErrorKind::Conflict
                }
                object_store::Error::NotImplemented
                | object_store::Error::NotSupported { .. }
                | object_store::Error::InvalidPath { .. }
                | object_store::Error::UnknownConfigurationKey { .. } => ErrorKind::Config,
                _ => ErrorKind::Unavailable,
            },
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Corrupt`].
    pub fn corrupt(what: &'static str, location: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::Corrupt {
            what,
            location: location.into(),
            reason: reason.to_string(),
        }
    }

    #[cfg(feature = "store")]
    pub(crate) fn store(op: &'static str, location: impl Into<String>, source: object_store::Error) -> Self {
        Error::Store {
            op,
            location: location.into(),
            source,
        }
    }
}
