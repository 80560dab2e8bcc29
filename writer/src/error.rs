//! The writer's error type.

use sf_manifest::{Attempt, Cause, Classified, DbId, ErrorKind, RunId};

fn gate_failures(failed: &[crate::publish::verdict::GateResult]) -> String {
    let each: Vec<String> = failed
        .iter()
        .map(|g| {
            let mut t = format!(
                "validation gate {} failed: measured {}, limit {}",
                g.gate, g.value, g.limit
            );
            if !g.detail.is_empty() {
                t.push_str(&format!(" ({})", g.detail));
            }
            t
        })
        .collect();
    each.join("; ")
}

/// Everything that can stop a build, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The job configuration is wrong; nothing was written.
    #[error("{field}: {reason}")]
    Config { field: String, reason: String },

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
        /// The class of the failure: the cause's when there is one.
        kind: ErrorKind,
        #[source]
        source: Option<Cause>,
    },

    /// A written shard does not match what its writer reported.
    #[error("shard {db_id} at {url} failed verification: {message}")]
    Verification { db_id: DbId, url: String, message: String },

    /// The snapshot format or the publish protocol failed.
    #[error(transparent)]
    Manifest(#[from] sf_manifest::Error),

    /// Object storage failed outside a shard (reading the input, reading
    /// a database back).
    #[error("{message}")]
    Storage {
        message: String,
        /// The class of the failure (see `sf_manifest::store_error_kind`).
        kind: ErrorKind,
        #[source]
        source: Option<Cause>,
    },

    /// The query engine failed.
    #[error("query engine: {message}")]
    Engine {
        message: String,
        #[source]
        source: Option<Cause>,
    },

    /// Local file I/O failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A validation gate refused the build; nothing was published.
    #[error("{}; nothing was published", gate_failures(.failed))]
    Gate {
        failed: Vec<crate::publish::verdict::GateResult>,
    },

    /// Another process holds the run id (its run record's lease is live).
    #[error(
        "run {run_id} is being built by another process (run record {record}, lease until {lease_until}); \
         nothing was written"
    )]
    RunInProgress {
        run_id: RunId,
        record: String,
        lease_until: String,
    },

    /// The engine the build runs on became unavailable (a cluster that lost
    /// every executor, say): an outage, reported as such by the engine,
    /// not a failure of the build itself.
    #[error("{message}; nothing was published")]
    EngineUnavailable { message: String },

    /// A task the engine ran in another process (a cluster executor)
    /// failed: its message and class as that process reported them, so a
    /// storage failure on an executor is a storage failure here too.
    #[error("{message}")]
    Task {
        /// What the task's process reported, causes included.
        message: String,
        /// The class the task's process gave the failure.
        kind: ErrorKind,
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

impl Classified for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::Config,
            Error::Input(_) | Error::DuplicateKey { .. } | Error::Data(_) => ErrorKind::Data,
            Error::Routing(e) => e.kind(),
            Error::Shard { kind, .. } => *kind,
            Error::Verification { .. } => ErrorKind::Data,
            Error::Manifest(e) => e.kind(),
            Error::Storage { kind, .. } => *kind,
            Error::Engine { .. } => ErrorKind::Internal,
            Error::Io { source, .. } => sf_manifest::error::io_error_kind(source),
            Error::Gate { .. } => ErrorKind::Gate,
            Error::RunInProgress { .. } => ErrorKind::Conflict,
            Error::EngineUnavailable { .. } => ErrorKind::Unavailable,
            Error::Task { kind, .. } => *kind,
            Error::Cancelled(_) | Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl Error {
    /// A configuration error at `location` (a config key, file or variable).
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A shard failure of `kind` with no underlying error.
    pub fn shard(db_id: DbId, attempt: Option<Attempt>, message: impl Into<String>, kind: ErrorKind) -> Self {
        Error::Shard {
            db_id,
            attempt,
            message: message.into(),
            kind,
            source: None,
        }
    }

    /// A shard failure caused by `source`, of `kind`.
    pub fn shard_caused(
        db_id: DbId,
        attempt: Option<Attempt>,
        message: impl Into<String>,
        kind: ErrorKind,
        source: impl Into<Cause>,
    ) -> Self {
        Error::Shard {
            db_id,
            attempt,
            message: message.into(),
            kind,
            source: Some(source.into()),
        }
    }

    /// A shard failure caused by object storage, classified as every
    /// object-store error is (retried when the store was unavailable).
    pub fn shard_store(
        db_id: DbId,
        attempt: Option<Attempt>,
        message: impl Into<String>,
        e: object_store::Error,
    ) -> Self {
        let kind = sf_manifest::store_error_kind(&e);
        Self::shard_caused(db_id, attempt, message, kind, e)
    }

    /// The query engine failed, for a reason of its own.
    pub fn engine(message: impl Into<String>) -> Self {
        Error::Engine {
            message: message.into(),
            source: None,
        }
    }

    /// The query engine failed because of `source`.
    pub fn engine_caused(message: impl Into<String>, source: impl Into<Cause>) -> Self {
        Error::Engine {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Object storage failed while doing `context`, classified as every
    /// object-store error is.
    pub fn storage(context: impl std::fmt::Display, source: object_store::Error) -> Self {
        Error::Storage {
            message: format!("{context}: {source}"),
            kind: sf_manifest::store_error_kind(&source),
            source: Some(Box::new(source)),
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        match e {
            // Our own errors travel through DataFusion as `External`; take
            // them back out so the caller sees the real kind.
            D::External(inner) => from_external(inner, |other| Error::engine_caused(other.to_string(), other)),
            D::Context(ctx, inner) => match Error::from(*inner) {
                Error::Engine { message, source } => Error::Engine {
                    message: format!("{ctx}: {message}"),
                    source,
                },
                other => other,
            },
            D::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
                Ok(inner) => Error::from(inner),
                // Still shared (an error a repartition sent to every
                // output): classified through the reference, as the same
                // error unshared would be.
                Err(shared) => match shared_kind(&shared) {
                    Some((kind, message)) => Error::Task { message, kind },
                    None => Error::engine_caused(shared.to_string(), SharedCause(shared)),
                },
            },
            // Errors crossing an Arrow-typed stream (a Ballista job's
            // results, our own errors from inside a plan) arrive wrapped as
            // Arrow's `ExternalError`; classify what is inside.
            D::ArrowError(a, _) => match *a {
                arrow::error::ArrowError::ExternalError(inner) => from_external(inner, |other| {
                    Error::Input(arrow::error::ArrowError::ExternalError(other).to_string())
                }),
                other => Error::Input(other.to_string()),
            },
            // Storage failing under the engine is storage failing, never
            // bad input data.
            D::ObjectStore(o) => Error::storage("reading through the query engine", *o),
            D::IoError(io) => Error::io("reading input", io),
            D::Plan(p) => Error::Input(p),
            e @ D::SchemaError(..) => Error::Input(e.to_string()),
            D::SQL(s, _) => Error::Input(format!("SQL: {s}")),
            other => Error::engine_caused(other.to_string(), other),
        }
    }
}

/// The kind and message of a DataFusion error that cannot be taken apart
/// (it is shared), for the classes [`Error::from`] gives a kind other than
/// an engine failure; `None` for the rest.
fn shared_kind(e: &datafusion::error::DataFusionError) -> Option<(ErrorKind, String)> {
    use datafusion::error::DataFusionError as D;
    let boxed = |inner: &(dyn std::error::Error + Send + Sync + 'static)| -> Option<(ErrorKind, String)> {
        if let Some(df) = inner.downcast_ref::<D>() {
            return shared_kind(df);
        }
        if let Some(ours) = inner.downcast_ref::<Error>() {
            return Some((ours.kind(), sf_manifest::chain(ours)));
        }
        if let Some(r) = inner.downcast_ref::<sf_router::Error>() {
            return Some((r.kind(), Error::Routing(r.clone()).to_string()));
        }
        inner
            .downcast_ref::<object_store::Error>()
            .map(|o| (sf_manifest::store_error_kind(o), format!("object storage: {o}")))
    };
    match e {
        D::External(inner) => boxed(inner.as_ref()),
        D::Context(ctx, inner) => shared_kind(inner).map(|(k, m)| (k, format!("{ctx}: {m}"))),
        D::Shared(inner) => shared_kind(inner),
        D::ArrowError(a, _) => match a.as_ref() {
            arrow::error::ArrowError::ExternalError(inner) => {
                boxed(inner.as_ref()).or_else(|| Some((ErrorKind::Data, format!("input: {a}"))))
            }
            other => Some((ErrorKind::Data, format!("input: {other}"))),
        },
        D::ObjectStore(o) => Some((
            sf_manifest::store_error_kind(o),
            format!("reading through the query engine: {o}"),
        )),
        D::Plan(p) => Some((ErrorKind::Data, format!("input: {p}"))),
        D::SchemaError(..) => Some((ErrorKind::Data, format!("input: {e}"))),
        D::SQL(s, _) => Some((ErrorKind::Data, format!("input: SQL: {s}"))),
        _ => None,
    }
}

/// An error boxed by DataFusion or Arrow: ours, the router's, an
/// object-store failure or a DataFusion error inside, each back as itself;
/// anything else through `fallback`.
fn from_external(inner: Cause, fallback: impl FnOnce(Cause) -> Error) -> Error {
    let inner = match inner.downcast::<datafusion::error::DataFusionError>() {
        Ok(df) => return Error::from(*df),
        Err(inner) => inner,
    };
    let inner = match inner.downcast::<Error>() {
        Ok(ours) => return *ours,
        Err(inner) => inner,
    };
    let inner = match inner.downcast::<sf_router::Error>() {
        Ok(r) => return Error::Routing(*r),
        Err(inner) => inner,
    };
    match inner.downcast::<object_store::Error>() {
        Ok(o) => Error::storage("object storage", *o),
        Err(other) => fallback(other),
    }
}

impl From<Error> for datafusion::error::DataFusionError {
    fn from(e: Error) -> Self {
        datafusion::error::DataFusionError::External(Box::new(e))
    }
}

/// A DataFusion error shared by several consumers, kept as a cause.
#[derive(Debug)]
struct SharedCause(std::sync::Arc<datafusion::error::DataFusionError>);

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::error::DataFusionError as D;

    use super::*;

    /// An error still shared (a repartition sends one error to every
    /// output) is classified as the same error unshared.
    #[test]
    fn a_shared_error_keeps_its_kind() {
        let parse = || {
            D::ArrowError(
                Box::new(arrow::error::ArrowError::ParseError("value 'x' is not Int64".into())),
                None,
            )
        };
        let keep = Arc::new(parse());
        let e = Error::from(D::Shared(Arc::clone(&keep)));
        assert_eq!(e.kind(), ErrorKind::Data, "{e}");
        assert_eq!(e.to_string(), Error::from(parse()).to_string());

        let store = || object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        };
        let keep = Arc::new(D::ObjectStore(Box::new(store())));
        let e = Error::from(D::Shared(Arc::clone(&keep)));
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(e.to_string().contains("connection refused"), "{e}");

        let ours = Arc::new(D::External(Box::new(Error::DuplicateKey {
            db_id: DbId(1),
            key: "7".into(),
        })));
        let e = Error::from(D::Shared(Arc::clone(&ours)));
        assert_eq!(e.kind(), ErrorKind::Data, "{e}");
        assert!(e.to_string().contains("duplicate key 7"), "{e}");

        let other = Arc::new(D::NotImplemented("x".into()));
        let e = Error::from(D::Shared(Arc::clone(&other)));
        assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
    }
}
