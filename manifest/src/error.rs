//! The error scaffolding every ShardForge crate shares, and this crate's
//! own error type.
//!
//! - [`ErrorKind`]: the coarse class of a failure; retries and exit codes
//!   branch on it alone;
//! - [`Classified`]: what every crate's `Error` implements (its kind, and
//!   [`Classified::is_retryable`] derived from it, so retries and exit
//!   codes never disagree);
//! - [`Cause`]: the boxed underlying failure an error keeps as its source;
//! - [`chain`]: an error and its causes as one line, for programs and
//!   answers of the lookup service;
//! - [`store_error_kind`] and [`io_error_kind`]: the one classification of
//!   object-store and local I/O failures.
//!
//! Configuration errors are `Config { field, reason }` in every crate:
//! `field` names the setting, key, flag, variable or file that is wrong.

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
    /// Storage could not be reached or failed; often transient, so retried.
    Unavailable,
    /// A validation gate refused to publish a build.
    Gate,
    /// A bug or an invariant broken inside ShardForge.
    Internal,
}

impl ErrorKind {
    /// Whether a failure of this kind may go away when tried again: exactly
    /// [`ErrorKind::Unavailable`].
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Unavailable
    }
}

/// An error of one of ShardForge's crates: it knows its [`ErrorKind`].
///
/// Every crate's `Error` implements it; programs turn the kind into an exit
/// code and services into a status, in one place each.
pub trait Classified: std::error::Error + Send + Sync + 'static {
    /// The coarse class of this error.
    fn kind(&self) -> ErrorKind;

    /// Whether the same operation may succeed when tried again: exactly
    /// when the kind is [`ErrorKind::Unavailable`].
    fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

/// The underlying failure of an error (an object-store, SQLite, SlateDB or
/// engine error), kept as its source for callers that inspect it.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error and its sources, `: `-separated, leaving out a cause whose
/// text the message already holds (errors that print their cause inline).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "config",
            ErrorKind::Routing => "routing",
            ErrorKind::Data => "data",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Gate => "gate",
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

/// The class of an object-store failure: the one mapping every crate of
/// the project uses, so retries and exit codes agree wherever a storage
/// error surfaces.
///
/// | object_store error | kind | why |
/// |---|---|---|
/// | `NotFound`, `NotModified` | `Data` | a fact about the objects, not a fault |
/// | `Precondition`, `AlreadyExists` | `Conflict` | a conditional write lost a race |
/// | `PermissionDenied`, `Unauthenticated` | `Config` | the credentials or the bucket's policy are wrong; retrying cannot help |
/// | `InvalidPath`, `NotSupported`, `NotImplemented`, `UnknownConfigurationKey` | `Config` | the URL or options ask for something the store cannot do |
/// | `Generic` (network errors, timeouts, 5xx and throttling after the client's own retries), `JoinError`, anything else | `Unavailable` | may go away: retried |
#[cfg(feature = "store")]
pub fn store_error_kind(e: &object_store::Error) -> ErrorKind {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } | E::NotModified { .. } => ErrorKind::Data,
        E::Precondition { .. } | E::AlreadyExists { .. } => ErrorKind::Conflict,
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented
        | E::UnknownConfigurationKey { .. } => ErrorKind::Config,
        E::Generic { source, .. } if refused_access(source.as_ref()) => ErrorKind::Config,
        _ => ErrorKind::Unavailable,
    }
}

/// Whether a `Generic` failure is the store refusing our credentials (401
/// or 403). object_store 0.12 turns those statuses into `PermissionDenied`
/// and `Unauthenticated` for requests about one object, but a listing's
/// error arrives as `Generic` with the answer's status only in its text
/// (`Server returned non-2xx status code: 403 Forbidden`); without this a
/// denied listing would be retried and reported as storage unavailable.
#[cfg(feature = "store")]
fn refused_access(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        let t = x.to_string();
        if t.contains("status code: 401") || t.contains("status code: 403") {
            return true;
        }
        cur = x.source();
    }
    false
}

/// The class of a local I/O failure (a work folder, the reader's cache): a
/// path that is missing or not ours to write is configuration; anything
/// else (a full disk, an interrupted write) may go away, so is retried.
pub fn io_error_kind(e: &std::io::Error) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::NotFound
        | std::io::ErrorKind::PermissionDenied
        | std::io::ErrorKind::ReadOnlyFilesystem => ErrorKind::Config,
        _ => ErrorKind::Unavailable,
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Classified for Error {
    fn kind(&self) -> ErrorKind {
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
            Error::Store { source, .. } => store_error_kind(source),
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl Error {
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

    /// An object-store failure during `op` (`read`, `write`, `list`, ...)
    /// of `location`.
    #[cfg(feature = "store")]
    pub fn store(op: &'static str, location: impl Into<String>, source: object_store::Error) -> Self {
        Error::Store {
            op,
            location: location.into(),
            source,
        }
    }
}

#[cfg(all(test, feature = "store"))]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_each_cause_once() {
        let store = Error::store(
            "read",
            "s3://b/p/_CURRENT",
            object_store::Error::Generic {
                store: "S3",
                source: "connection refused".into(),
            },
        );
        let line = chain(&store);
        assert!(
            line.starts_with("storage error during read of s3://b/p/_CURRENT"),
            "{line}"
        );
        assert_eq!(line.matches("connection refused").count(), 1, "{line}");
        let io = std::io::Error::other("disk full");
        let wrapped = Error::Internal(format!("writing: {io}"));
        assert_eq!(chain(&wrapped), "internal error: writing: disk full");
    }

    fn boxed(s: &str) -> Box<dyn std::error::Error + Send + Sync> {
        s.into()
    }

    #[test]
    fn every_object_store_error_has_its_documented_kind() {
        use object_store::Error as E;
        let cases: Vec<(E, ErrorKind)> = vec![
            (
                E::NotFound {
                    path: "p".into(),
                    source: boxed("404"),
                },
                ErrorKind::Data,
            ),
            (
                E::NotModified {
                    path: "p".into(),
                    source: boxed("304"),
                },
                ErrorKind::Data,
            ),
            (
                E::Precondition {
                    path: "p".into(),
                    source: boxed("412"),
                },
                ErrorKind::Conflict,
            ),
            (
                E::AlreadyExists {
                    path: "p".into(),
                    source: boxed("409"),
                },
                ErrorKind::Conflict,
            ),
            (
                E::PermissionDenied {
                    path: "p".into(),
                    source: boxed("403"),
                },
                ErrorKind::Config,
            ),
            (
                E::Unauthenticated {
                    path: "p".into(),
                    source: boxed("401"),
                },
                ErrorKind::Config,
            ),
            (E::NotSupported { source: boxed("no") }, ErrorKind::Config),
            (E::NotImplemented, ErrorKind::Config),
            (
                E::UnknownConfigurationKey {
                    store: "S3",
                    key: "k".into(),
                },
                ErrorKind::Config,
            ),
            (
                E::Generic {
                    store: "S3",
                    source: boxed("503 Slow Down"),
                },
                ErrorKind::Unavailable,
            ),
            (
                E::Generic {
                    store: "S3",
                    source: boxed("operation timed out"),
                },
                ErrorKind::Unavailable,
            ),
        ];
        for (e, kind) in cases {
            let text = e.to_string();
            let ours = Error::store("read", "s3://b/k", e);
            assert_eq!(ours.kind(), kind, "{text}");
            assert_eq!(ours.is_retryable(), kind == ErrorKind::Unavailable, "{text}");
            assert!(std::error::Error::source(&ours).is_some(), "the cause is kept: {text}");
        }
    }
}
