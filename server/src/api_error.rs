//! A request that failed, as its client is told: an HTTP status, a stable
//! kind and a message ([`ApiError`]), and how each reader error becomes
//! one. The HTTP API writes it as JSON, the gRPC service as a status.

use sf_manifest::{Classified, ErrorKind, chain};

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
        serde_json::json!({ "error": error })
    }
}

impl From<sf_reader::Error> for ApiError {
    fn from(e: sf_reader::Error) -> Self {
        use sf_reader::Error as E;
        let message = chain(&e);
        match &e {
            E::InvalidKey { .. } => ApiError::bad_request("invalid_key", message),
            E::VersionNotHeld { .. } => ApiError::new(404, "version_not_held", message),
            E::NotInHistory { .. } => ApiError::new(404, "not_in_history", message),
            E::ShardOpen { db_id, .. } | E::ShardRead { db_id, .. } | E::ChecksumMismatch { db_id, .. } => ApiError {
                shard: Some(db_id.0),
                ..ApiError::new(503, "shard_unavailable", message)
            },
            E::Closed { .. } => ApiError::new(503, "shutting_down", message),
            E::Config { .. } => ApiError::bad_request("bad_request", message),
            E::Routing(_) => ApiError::bad_request("routing", message),
            _ => match e.kind() {
                ErrorKind::Conflict => ApiError::new(409, "conflict", message),
                ErrorKind::Unavailable => ApiError::new(503, "unavailable", message),
                ErrorKind::Config | ErrorKind::Routing => ApiError::bad_request("bad_request", message),
                ErrorKind::Data | ErrorKind::Gate => ApiError::new(500, "data", message),
                ErrorKind::Internal => ApiError::new(500, "internal", message),
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
        let e = ApiError::from(sf_reader::Error::Internal("boom".into()));
        assert_eq!(e.status, 500);
        assert_eq!(e.body()["error"]["kind"], "internal");
    }
}
