//! A request that failed, as its client is told: an HTTP status, a stable
//! kind and a message ([`ApiError`]), and how each reader error becomes
//! one. The HTTP API writes it as JSON, the gRPC service as a status.
//!
//! A failure of the server's side (5xx) that comes from the reader is
//! told without its internals: the store's message, the bucket's URLs and
//! the cache's paths go to the log, under an `error_id` the answer
//! carries, and the client gets a generic message naming that id. A
//! failure of the request (4xx) keeps its message about the request.
//!
//! Every error made while a request is served names that request's id
//! (its `request_id`, in the body beside `kind`), the id its log lines
//! carry.

use sf_manifest::{Classified, ErrorKind, chain};

use crate::request_id::RequestId;

/// A request that failed, as the client is told: an HTTP status, a kind
/// (stable, for programs), a message (for people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// A short stable name: `invalid_key`, `unknown_snapshot`, ...
    pub kind: &'static str,
    /// What happened.
    pub message: String,
    /// The shard that could not be read, for `shard_unavailable`.
    pub shard: Option<u32>,
    /// The run the request was served from, when it got that far.
    pub run_id: Option<String>,
    /// For a failure of the server's side told without its internals: the
    /// id of the log line that holds them.
    pub error_id: Option<String>,
    /// The id of the request that failed, when the error was made while
    /// serving one.
    pub request_id: Option<std::sync::Arc<str>>,
}

impl ApiError {
    /// An error answer.
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            shard: None,
            run_id: None,
            error_id: None,
            request_id: RequestId::current(),
        }
    }

    /// A failure of the server's side: `error` goes to the log under a
    /// fresh `error_id`; the client is told `what` and that id.
    pub fn internal(status: u16, kind: &'static str, what: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        let id = format!("{:016x}", sf_manifest::format::ids::random_u64());
        // Logged inside the request's span: the line names its request_id too.
        tracing::error!(error_id = %id, status, kind, error = %chain(error), "request failed");
        ApiError {
            error_id: Some(id.clone()),
            ..ApiError::new(
                status,
                kind,
                format!("{what}; the server's log has the details under error_id {id}"),
            )
        }
    }

    /// 400.
    pub fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, kind, message)
    }

    /// The same error, naming the run it was served from.
    pub fn with_run(mut self, run_id: &sf_manifest::RunId) -> Self {
        self.run_id = Some(run_id.to_string());
        self
    }

    /// The error as the HTTP API's JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({"kind": self.kind, "message": self.message});
        if let Some(s) = self.shard {
            error["shard"] = serde_json::Value::from(s);
        }
        if let Some(id) = &self.error_id {
            error["error_id"] = serde_json::Value::from(id.as_str());
        }
        if let Some(id) = &self.request_id {
            error["request_id"] = serde_json::Value::from(&**id);
        }
        serde_json::json!({ "error": error })
    }
}

impl From<sf_reader::Error> for ApiError {
    fn from(e: sf_reader::Error) -> Self {
        use sf_reader::Error as E;
        let message = chain(&e);
        match &e {
            E::InvalidKey { .. } => ApiError::bad_request("invalid_key", message),
            // Told without the prefix's URL: the runs are what the caller
            // can ask for.
            E::VersionNotHeld { what, held, .. } => ApiError::new(
                404,
                "version_not_held",
                format!(
                    "{what} is not among the snapshots this server holds (held runs: {})",
                    held.join(", ")
                ),
            ),
            E::NotInHistory { .. } => ApiError::new(404, "not_in_history", message),
            E::ShardOpen { db_id, .. } | E::ShardRead { db_id, .. } | E::ChecksumMismatch { db_id, .. } => ApiError {
                shard: Some(db_id.0),
                ..ApiError::internal(
                    503,
                    "shard_unavailable",
                    &format!("shard {db_id} of this snapshot cannot be read now"),
                    &e,
                )
            },
            E::Closed { .. } => ApiError::internal(503, "shutting_down", "the server is shutting down", &e),
            E::Config { .. } => ApiError::bad_request("bad_request", message),
            E::Routing(_) => ApiError::bad_request("routing", message),
            _ => match e.kind() {
                ErrorKind::Conflict => ApiError::new(409, "conflict", message),
                ErrorKind::Unavailable => {
                    ApiError::internal(503, "unavailable", "the snapshot's storage cannot be reached now", &e)
                }
                ErrorKind::Config | ErrorKind::Routing => ApiError::bad_request("bad_request", message),
                ErrorKind::Data | ErrorKind::Gate => {
                    ApiError::internal(500, "data", "the snapshot's stored data cannot be read", &e)
                }
                ErrorKind::Internal => ApiError::internal(500, "internal", "an internal error", &e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_errors_become_statuses() {
        let shard = sf_reader::Error::ShardOpen {
            db_id: sf_manifest::DbId(3),
            url: "file:///x/db=00003".into(),
            reason: "missing".into(),
            kind: ErrorKind::Data,
            source: None,
        };
        let e = ApiError::from(shard);
        assert_eq!((e.status, e.kind, e.shard), (503, "shard_unavailable", Some(3)));
        assert!(e.message.contains("shard 3"));
        assert_eq!(e.body()["error"]["shard"], 3);
        let e = ApiError::from(sf_reader::Error::config("x", "y"));
        assert_eq!((e.status, e.kind), (400, "bad_request"));
        assert!(
            e.message.contains('y') && e.error_id.is_none(),
            "a 4xx keeps its message"
        );
        let e = ApiError::from(sf_reader::Error::Internal("boom".into()));
        assert_eq!(e.status, 500);
        assert_eq!(e.body()["error"]["kind"], "internal");
    }

    #[test]
    fn server_side_failures_are_told_without_urls_paths_or_store_messages() {
        let internals = [
            "file:///x/db=00003",
            "/var/cache/sf",
            "s3://bucket",
            "disk on fire",
            "boom",
        ];
        let errors = [
            sf_reader::Error::ShardOpen {
                db_id: sf_manifest::DbId(3),
                url: "file:///x/db=00003".into(),
                reason: "disk on fire".into(),
                kind: ErrorKind::Unavailable,
                source: None,
            },
            sf_reader::Error::Io {
                context: "caching a shard",
                path: "/var/cache/sf/shard.db".into(),
                source: std::io::Error::other("disk on fire"),
            },
            sf_reader::Error::Closed {
                location: "s3://bucket/snap".into(),
            },
            sf_reader::Error::Manifest(sf_manifest::Error::corrupt("manifest", "s3://bucket/m", "boom")),
            sf_reader::Error::Internal("boom".into()),
        ];
        for err in errors {
            let e = ApiError::from(err);
            assert!(e.status >= 500, "{e:?}");
            let id = e.error_id.clone().expect("an error id");
            let body = e.body().to_string();
            assert!(body.contains(&id), "{body}");
            for secret in internals {
                assert!(!body.contains(secret), "{secret:?} in {body}");
            }
        }
        let held = sf_reader::Error::VersionNotHeld {
            what: "run r9".into(),
            location: "s3://bucket/snap".into(),
            held: vec!["r2".into(), "r1".into()],
        };
        let e = ApiError::from(held);
        assert_eq!((e.status, e.kind), (404, "version_not_held"));
        assert!(
            e.message.contains("r9") && e.message.contains("r2, r1"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("s3://"), "{}", e.message);
    }
}
