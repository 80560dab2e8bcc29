//! The server's error type: what stops it from starting or serving. Errors
//! of single requests are answers ([`crate::ApiError`]), not this.

use sf_manifest::{Classified, ErrorKind};

/// Errors of starting and running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is not valid.
    #[error("invalid {field}: {reason}")]
    Config { field: String, reason: String },

    /// An address cannot be listened on.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// A listener failed while serving.
    #[error("the {what} server failed: {source}")]
    Serve {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// Requests were still in flight when the grace period after a stop
    /// signal ended; they were abandoned (their clients see the
    /// connection close).
    #[error("stopped with {count} request(s) still in flight after the grace period of {grace:?}: abandoned")]
    Abandoned { count: usize, grace: std::time::Duration },

    /// The metrics recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Classified for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            // An address in use or not ours is the operator's to fix.
            Error::Config { .. } | Error::Bind { .. } => ErrorKind::Config,
            Error::Serve { .. } | Error::Abandoned { .. } | Error::Metrics(_) => ErrorKind::Internal,
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
}
