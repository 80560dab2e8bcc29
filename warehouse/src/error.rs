//! The warehouse's error type.
//!
//! A table operation fails in the build (`sf-writer`), in the reads
//! (`sf-reader`), in the snapshot format (`sf-manifest`), or here: a bad
//! name, an unknown table, table metadata that does not decode. Every
//! variant keeps its cause, and [`Error::kind`] is the cause's kind, so a
//! storage failure under a table read is `Unavailable` (exit 5), never bad
//! input data.

use datafusion::error::DataFusionError;
use sf_manifest::{Classified, ErrorKind};

/// Errors of warehouse tables and SQL over them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name, setting or statement is wrong; nothing was written.
    #[error("{field}: {reason}")]
    Config { field: String, reason: String },

    /// A table the operation needs does not exist (or was dropped).
    #[error("table {table} does not exist")]
    NoSuchTable { table: String },

    /// A global temporary view of that name exists (create it with
    /// replace, or drop it first).
    #[error(
        "global temporary view {view} exists; use CREATE OR REPLACE GLOBAL TEMPORARY VIEW \
         (create_or_replace_global_temp_view) to replace it"
    )]
    ViewExists { view: String },

    /// A view the operation needs does not exist.
    #[error("view {view} does not exist")]
    NoSuchView { view: String },

    /// A session setting was refused (an unknown key, a value the engine
    /// does not take); the borrow that would create the session fails.
    #[error("session setting {key}: {message}")]
    Setting { key: String, message: String },

    /// The driver was closed: it lends no more sessions.
    #[error("the driver is closed: it lends no more sessions")]
    Closed,

    /// A table's stored metadata or rows cannot be decoded.
    #[error("table {table}: {message}")]
    Table { table: String, message: String },

    /// Building or publishing the table's snapshot failed.
    #[error(transparent)]
    Write(#[from] sf_writer::Error),

    /// A key could not be encoded, decoded or routed.
    #[error(transparent)]
    Routing(#[from] sf_router::Error),

    /// Reading the table's snapshot failed.
    #[error("table {table}: {source}")]
    Read {
        table: String,
        #[source]
        source: Box<sf_reader::Error>,
    },

    /// The snapshot format or storage failed.
    #[error(transparent)]
    Manifest(#[from] sf_manifest::Error),

    /// An invariant broken inside ShardForge.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result with the warehouse's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Classified for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. }
            | Error::NoSuchTable { .. }
            | Error::ViewExists { .. }
            | Error::NoSuchView { .. }
            | Error::Setting { .. }
            | Error::Closed => ErrorKind::Config,
            Error::Table { .. } => ErrorKind::Data,
            Error::Write(e) => e.kind(),
            Error::Routing(e) => e.kind(),
            Error::Read { source, .. } => source.kind(),
            Error::Manifest(e) => e.kind(),
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl Error {
    /// A configuration error at `location` (a setting, a name, `SQL`).
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A bad table: its metadata or stored rows do not decode.
    pub fn table(table: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Table {
            table: table.into(),
            message: message.to_string(),
        }
    }

    /// A read of `table` failed.
    pub fn read(table: impl std::fmt::Display, source: sf_reader::Error) -> Self {
        Error::Read {
            table: table.to_string(),
            source: Box::new(source),
        }
    }
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        // Our own errors travel through DataFusion as `External`; take them
        // back out so the caller sees the real kind and cause.
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::Write(sf_writer::Error::from(DataFusionError::External(other))),
            },
            other => Error::Write(sf_writer::Error::from(other)),
        }
    }
}

impl From<Error> for DataFusionError {
    fn from(e: Error) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_cause() {
        let store = sf_manifest::Error::Store {
            op: "read",
            location: "s3://b/w/db/t/_CURRENT".into(),
            source: object_store::Error::Generic {
                store: "S3",
                source: "connection reset".into(),
            },
        };
        let e = Error::read("wh.db.t", sf_reader::Error::from(store));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());
        assert!(e.to_string().starts_with("table wh.db.t: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());

        // Through DataFusion and back: the same error, not a string.
        let back = Error::from(DataFusionError::from(Error::NoSuchTable {
            table: "wh.db.x".into(),
        }));
        assert!(matches!(back, Error::NoSuchTable { .. }), "{back:?}");
        assert_eq!(back.kind(), ErrorKind::Config);
    }
}
