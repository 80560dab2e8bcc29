//! Routing errors.

use sf_manifest::{Classified, ErrorKind, KeyEncoding};

/// Why a key, row or expression could not be routed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The routing spec is not usable (bad num_dbs, bad tokens, ...).
    #[error("invalid routing spec: {0}")]
    Spec(String),

    /// The CEL expression does not compile, or uses an unknown name.
    #[error("CEL expression {expr:?} {reason}")]
    CelCompile { expr: String, reason: String },

    /// The CEL expression failed while running.
    #[error("CEL expression {expr:?} failed{}: {reason}", row_suffix(*.row))]
    CelEval {
        expr: String,
        row: Option<usize>,
        reason: String,
    },

    /// The CEL expression returned a value of a type routing cannot use.
    #[error("CEL expression {expr:?} returned {found}{}; {wanted}", row_suffix(*.row))]
    CelResultType {
        expr: String,
        row: Option<usize>,
        found: String,
        wanted: &'static str,
    },

    /// A direct CEL expression produced an id outside `0..num_dbs`.
    #[error("routing produced db id {value}{}, outside 0..{num_dbs}", row_suffix(*.row))]
    DbIdOutOfRange {
        value: String,
        num_dbs: u32,
        row: Option<usize>,
    },

    /// A categorical expression produced a token not in `routing_values`.
    #[error("CEL routing token {token}{} is not one of the snapshot's routing_values", row_suffix(*.row))]
    UnknownToken { token: String, row: Option<usize> },

    /// A key value does not fit the key encoding or the canonical form.
    #[error("key {key} cannot be used with key encoding {encoding}: {reason}")]
    KeyOutOfRange {
        key: String,
        encoding: KeyEncoding,
        reason: String,
    },

    /// A key (or CEL column value) has the wrong type.
    #[error("{what}: expected {expected}, got {found}")]
    WrongType {
        what: String,
        expected: String,
        found: String,
    },

    /// A key or CEL column is null.
    #[error("column {column:?} is null at row {row}; keys and routing columns must not be null")]
    Null { column: String, row: usize },

    /// A column the router needs is not in the batch or the context.
    #[error("column {column:?} needed for routing is missing{}", .hint)]
    MissingColumn { column: String, hint: String },

    /// An Arrow column type routing does not read.
    #[error("column {column:?} has type {data_type}, which routing cannot read; {hint}")]
    UnsupportedType {
        column: String,
        data_type: String,
        hint: String,
    },
}

fn row_suffix(row: Option<usize>) -> String {
    row.map(|r| format!(" at row {r}")).unwrap_or_default()
}

/// Result with the router's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Classified for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::Spec(_) | Error::CelCompile { .. } => ErrorKind::Config,
            Error::CelEval { .. }
            | Error::CelResultType { .. }
            | Error::DbIdOutOfRange { .. }
            | Error::UnknownToken { .. } => ErrorKind::Routing,
            Error::KeyOutOfRange { .. }
            | Error::WrongType { .. }
            | Error::Null { .. }
            | Error::MissingColumn { .. }
            | Error::UnsupportedType { .. } => ErrorKind::Data,
        }
    }
}

impl Error {
    /// Attaches a row number to errors that carry one.
    pub fn at_row(self, r: usize) -> Self {
        match self {
            Error::CelEval { expr, reason, .. } => Error::CelEval {
                expr,
                row: Some(r),
                reason,
            },
            Error::CelResultType {
                expr, found, wanted, ..
            } => Error::CelResultType {
                expr,
                row: Some(r),
                found,
                wanted,
            },
            Error::DbIdOutOfRange { value, num_dbs, .. } => Error::DbIdOutOfRange {
                value,
                num_dbs,
                row: Some(r),
            },
            Error::UnknownToken { token, .. } => Error::UnknownToken { token, row: Some(r) },
            Error::KeyOutOfRange { key, encoding, reason } => Error::KeyOutOfRange {
                key,
                encoding,
                reason: format!("{reason} (row {r})"),
            },
            other => other,
        }
    }
}
