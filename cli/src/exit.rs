//! One exit-code table for every program, derived from the error kind.
//!
//! Libraries classify their errors into [`ErrorKind`]s (`kind()` on each
//! crate's `Error`); this module is the only place a kind becomes an exit
//! code, so a storage failure exits 5 whichever program hit it and through
//! whichever crate it travelled.

use std::fmt;

use sf_manifest::{Classified, ErrorKind, chain};

/// Success.
pub const OK: u8 = 0;
/// Any other failure: a bug, or the query engine failed.
pub const FAILED: u8 = 1;
/// Bad configuration or arguments; nothing was written.
pub const CONFIG: u8 = 2;
/// Bad input data; nothing was published.
pub const DATA: u8 = 3;
/// Conflict: another publisher changed `_CURRENT`, or a live run holds the run id.
pub const CONFLICT: u8 = 4;
/// Storage unavailable after retries, or the cluster (its scheduler, or
/// every executor) unavailable.
pub const UNAVAILABLE: u8 = 5;
/// A validation gate failed; nothing was published.
pub const GATE: u8 = 6;

/// The table, as every program's `--help` prints it.
pub const EXIT_CODES: &str = "\
Exit codes (the same for every ShardForge program):
  0  success
  1  failed for another reason (a bug, or the query engine failed)
  2  bad configuration or arguments; nothing was written
  3  bad input data (an empty, truncated or unreadable input file, keys
     of an unsupported type, null or out-of-range keys, duplicate keys,
     routing errors, an invalid vector: null, of the wrong length, not
     finite or zero under cosine, a missing or corrupt object); nothing
     was published
  4  conflict: another publisher changed _CURRENT, or a live run holds
     the run id; nothing was overwritten
  5  storage unavailable after retries, or the cluster (scheduler or
     every executor) unavailable; nothing was published
  6  a validation gate failed; nothing was published
The code is the cause's wherever it happened: in this process or in a
task on a cluster executor.";

/// The exit code of an error of `kind`.
pub fn code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Config => CONFIG,
        ErrorKind::Data | ErrorKind::Routing => DATA,
        ErrorKind::Conflict => CONFLICT,
        ErrorKind::Unavailable => UNAVAILABLE,
        ErrorKind::Gate => GATE,
        ErrorKind::Internal => FAILED,
    }
}

/// A failed command on its way to the terminal: the error, with its
/// causes, and the kind its exit code comes from.
#[derive(Debug)]
pub struct Failure {
    kind: ErrorKind,
    error: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl Failure {
    /// Bad arguments or configuration at `location`.
    pub fn usage(location: impl fmt::Display, message: impl fmt::Display) -> Self {
        Failure {
            kind: ErrorKind::Config,
            error: format!("{location}: {message}").into(),
        }
    }

    /// A failure of `kind` described by `error`.
    pub fn new(kind: ErrorKind, error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Failure {
            kind,
            error: error.into(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Its exit code.
    pub fn exit_code(&self) -> u8 {
        code(self.kind)
    }

    /// The error and its causes, `: `-separated, each cause once.
    pub fn message(&self) -> String {
        chain(self.error.as_ref())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl<E: Classified> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            kind: e.kind(),
            error: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_documented_code() {
        let table = [
            (ErrorKind::Config, 2),
            (ErrorKind::Data, 3),
            (ErrorKind::Routing, 3),
            (ErrorKind::Conflict, 4),
            (ErrorKind::Unavailable, 5),
            (ErrorKind::Gate, 6),
            (ErrorKind::Internal, 1),
        ];
        for (kind, want) in table {
            assert_eq!(code(kind), want, "{kind}");
            assert!(EXIT_CODES.contains(&format!("\n  {want}  ")), "{want} is documented");
        }
    }

    #[test]
    fn a_failure_keeps_the_kind_and_the_causes() {
        let store = sf_manifest::Error::store(
            "read",
            "s3://b/p/_CURRENT",
            object_store::Error::Generic {
                store: "S3",
                source: "connection refused".into(),
            },
        );
        let f = Failure::from(sf_writer::Error::from(store));
        assert_eq!(f.exit_code(), UNAVAILABLE);
        let m = f.message();
        assert!(
            m.contains("s3://b/p/_CURRENT") && m.contains("connection refused"),
            "{m}"
        );
        assert_eq!(Failure::usage("--config", "is required").exit_code(), CONFIG);
    }
}
