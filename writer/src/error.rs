//! The writer's error type.

use sf_manifest::{Attempt, DbId, ErrorKind};

/// Everything that can stop a build, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job configuration is wrong; nothing was written.
    #[error("{location}: {message}")]
    Config { location: String, message: String },

    /// The input could not be read or has the wrong shape.
    #[error("input: {0}")]
    Input(String),

    /// A row could not be routed or encoded.
    #[error("routing: {0}")]
    Routing(#[from] sf_router::Error),

    /// Two rows of one shard have the same key and `on_duplicate = "error"`.
    #[error("shard {db_id}: duplicate key {key} (on_duplicate = \"error\"; use \"last_wins\" to keep the last row)")]
    DuplicateKey { db_id: DbId, key: String },

    /// A row's data cannot be stored (wrong type, bad value column, ...).
    #[error("{0}")]
    Data(String),

    /// Writing one shard failed.
    #[error("shard {db_id}{}: {message}", .attempt.map(|a| format!(" attempt {a}")).unwrap_or_default())]
    Shard {
        db_id: DbId,
        attempt: Option<Attempt>,
        message: String,
        retryable: bool,
    },

    /// A written shard does not match what its writer reported.
    #[error("shard {db_id} at {url} failed verification: {message}")]
    Verification { db_id: DbId, url: String, message: String },

    /// The snapshot format or the publish protocol failed.
    #[error(transparent)]
    Manifest(#[from] sf_manifest::Error),

    /// The query engine failed.
    #[error("query engine: {0}")]
    Engine(String),

    /// Local file I/O failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The build was cancelled.
    #[error("cancelled: {0}")]
    Cancelled(String),

    /// A bug: an invariant that should hold did not.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result with the writer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::Config,
            Error::Input(_) | Error::DuplicateKey { .. } | Error::Data(_) => ErrorKind::Data,
            Error::Routing(e) => e.kind(),
            Error::Shard { retryable, .. } => {
                if *retryable {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::Data
                }
            }
            Error::Verification { .. } => ErrorKind::Data,
            Error::Manifest(e) => e.kind(),
            Error::Engine(_) => ErrorKind::Internal,
            Error::Io { .. } => ErrorKind::Unavailable,
            Error::Cancelled(_) | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether the same operation may succeed when tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Shard { retryable, .. } => *retryable,
            Error::Manifest(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// A configuration error at `location` (a config key, file or variable).
    pub fn config(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            location: location.into(),
            message: message.into(),
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A shard failure; retryable when the cause was storage being unavailable.
    pub fn shard(db_id: DbId, attempt: Option<Attempt>, message: impl Into<String>, retryable: bool) -> Self {
        Error::Shard {
            db_id,
            attempt,
            message: message.into(),
            retryable,
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        // Our own errors travel through DataFusion as `External`; unwrap them
        // so the caller sees the real kind.
        match e {
            D::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => match other.downcast::<sf_router::Error>() {
                    Ok(r) => Error::Routing(*r),
                    Err(other) => Error::Engine(other.to_string()),
                },
            },
            D::Context(ctx, inner) => match Error::from(*inner) {
                Error::Engine(msg) => Error::Engine(format!("{ctx}: {msg}")),
                other => other,
            },
            D::Shared(shared) => Error::Engine(shared.to_string()),
            // Errors crossing an Arrow-typed stream (a Ballista job's
            // results, our own errors from inside a plan) arrive wrapped as
            // Arrow's `ExternalError`; classify what is inside.
            D::ArrowError(a, _) => match *a {
                arrow::error::ArrowError::ExternalError(inner) => match inner.downcast::<D>() {
                    Ok(df) => Error::from(*df),
                    Err(inner) => match inner.downcast::<Error>() {
                        Ok(ours) => *ours,
                        Err(inner) => match inner.downcast::<sf_router::Error>() {
                            Ok(r) => Error::Routing(*r),
                            Err(inner) => Error::Input(arrow::error::ArrowError::ExternalError(inner).to_string()),
                        },
                    },
                },
                other => Error::Input(other.to_string()),
            },
            D::ObjectStore(o) => Error::Input(o.to_string()),
            D::IoError(io) => Error::io("reading input", io),
            D::Plan(p) => Error::Input(p),
            e @ D::SchemaError(..) => Error::Input(e.to_string()),
            D::SQL(s, _) => Error::Input(format!("SQL: {s}")),
            other => Error::Engine(other.to_string()),
        }
    }
}

impl From<Error> for datafusion::error::DataFusionError {
    fn from(e: Error) -> Self {
        datafusion::error::DataFusionError::External(Box::new(e))
    }
}
