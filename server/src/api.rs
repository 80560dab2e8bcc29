//! What the HTTP API and the gRPC service share: the served snapshots,
//! admission (authentication, the bound on requests in flight), and the
//! lookups themselves, with their errors as answers ([`ApiError`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use sf_manifest::{Classified, ErrorKind, chain};
use sf_reader::{Admin, Reader, SnapshotView, Version};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Limits, ServeConfig, SnapshotConfig};
use crate::metrics::{
    KEYS_LOOKED_UP, REQUESTS_IN_FLIGHT, REQUESTS_REJECTED, RequestMetrics, SNAPSHOT_AGE, SNAPSHOT_INFO,
    SNAPSHOT_OPEN_SHARDS, SNAPSHOT_READY,
};

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

/// Routing context of a lookup, as `column=value` texts.
pub type ContextPairs = Vec<String>;

/// The routing contexts of a multiget.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Contexts {
    /// Keys route alone.
    #[default]
    None,
    /// One context for every key.
    Shared(ContextPairs),
    /// One per key (`None`: that key routes alone).
    PerKey(Vec<Option<ContextPairs>>),
}

/// One served snapshot: its settings, and its reader once open.
pub(crate) struct Served {
    pub(crate) config: SnapshotConfig,
    reader: OnceLock<Reader>,
    open_error: Mutex<Option<String>>,
    pub(crate) admin: Admin,
    found: metrics::Counter,
    missing: metrics::Counter,
    /// The run last published as [`SNAPSHOT_INFO`], to zero it on a swap.
    info_run: Mutex<Option<String>>,
}

impl Served {
    /// The reader, or 503 while the snapshot is not open yet.
    pub(crate) fn reader(&self) -> Result<&Reader, ApiError> {
        self.reader.get().ok_or_else(|| {
            let why = sf_manifest::sync::lock(&self.open_error).clone();
            ApiError::new(
                503,
                "not_ready",
                match why {
                    Some(e) => format!("snapshot {} is not open yet: {e}", self.config.name),
                    None => format!("snapshot {} is being opened", self.config.name),
                },
            )
        })
    }

    pub(crate) fn opened(&self) -> Option<&Reader> {
        self.reader.get()
    }

    pub(crate) fn open_error(&self) -> Option<String> {
        sf_manifest::sync::lock(&self.open_error).clone()
    }

    fn count(&self, values: &[Option<Bytes>]) {
        let found = values.iter().filter(|v| v.is_some()).count() as u64;
        self.found.increment(found);
        self.missing.increment(values.len() as u64 - found);
    }

    /// Sets this snapshot's gauges from its reader (age, run, open shards,
    /// readiness).
    fn publish_gauges(&self) {
        let name = &self.config.name;
        let Some(reader) = self.opened() else {
            metrics::gauge!(SNAPSHOT_READY, "snapshot" => name.clone()).set(0.0);
            return;
        };
        let info = reader.info();
        let health = reader.health(self.config.max_age.unwrap_or(Duration::MAX));
        let ready = self.config.max_age.is_none() || health.status == sf_reader::HealthStatus::Healthy;
        metrics::gauge!(SNAPSHOT_READY, "snapshot" => name.clone()).set(if ready { 1.0 } else { 0.0 });
        metrics::gauge!(SNAPSHOT_AGE, "snapshot" => name.clone()).set(health.snapshot_age_seconds);
        metrics::gauge!(SNAPSHOT_OPEN_SHARDS, "snapshot" => name.clone()).set(info.shards_open as f64);
        let run = info.run_id.to_string();
        let mut last = sf_manifest::sync::lock(&self.info_run);
        if last.as_deref() != Some(run.as_str()) {
            if let Some(old) = last.take() {
                metrics::gauge!(SNAPSHOT_INFO, "snapshot" => name.clone(), "run_id" => old).set(0.0);
            }
            metrics::gauge!(SNAPSHOT_INFO, "snapshot" => name.clone(), "run_id" => run.clone()).set(1.0);
            *last = Some(run);
        }
    }

    /// Opens the reader, trying again (from 1 s, doubling up to 30 s)
    /// until it opens or the server stops.
    pub(crate) async fn open_until_done(self: Arc<Self>) {
        let mut delay = Duration::from_secs(1);
        loop {
            let built = Reader::builder(&self.config.current_url)
                .with_settings(self.config.reader.clone())
                .with_storage_options(self.config.storage.clone())
                .with_metric_label("snapshot", self.config.name.clone())
                .build()
                .await;
            match built {
                Ok(reader) => {
                    let info = reader.info();
                    tracing::info!(snapshot = %self.config.name, run_id = %info.run_id, manifest = %info.manifest_ref, "snapshot open");
                    // Only this task sets it.
                    let _ = self.reader.set(reader);
                    *sf_manifest::sync::lock(&self.open_error) = None;
                    return;
                }
                Err(e) => {
                    let text = chain(&e);
                    tracing::warn!(snapshot = %self.config.name, error = %text, retry_in = ?delay, "cannot open the snapshot yet");
                    *sf_manifest::sync::lock(&self.open_error) = Some(text);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// Bearer tokens, compared in constant time.
pub(crate) struct Auth {
    tokens: Vec<Vec<u8>>,
}

impl Auth {
    pub(crate) fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks an `authorization` header value.
    pub(crate) fn check(&self, header: Option<&[u8]>) -> Result<(), ApiError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let unauthenticated = |why: &str| ApiError::new(401, "unauthenticated", why.to_string());
        let header = header.ok_or_else(|| unauthenticated("this server needs `Authorization: Bearer <token>`"))?;
        let given = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or_else(|| unauthenticated("the Authorization header is not `Bearer <token>`"))?;
        // Every token is compared, whatever matched, so the time taken
        // does not tell which (or whether one) did.
        let mut ok = subtle::Choice::from(0);
        for t in &self.tokens {
            ok |= t.as_slice().ct_eq(given);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(unauthenticated("the token is not accepted"))
        }
    }
}

/// The state every request handler shares.
pub(crate) struct App {
    pub(crate) snapshots: BTreeMap<String, Arc<Served>>,
    pub(crate) limits: Limits,
    pub(crate) auth: Auth,
    in_flight: Arc<Semaphore>,
    rejected_overloaded: metrics::Counter,
    rejected_unauthenticated: metrics::Counter,
    pub(crate) request_metrics: RequestMetrics,
}

impl App {
    /// The state for `config`; the metrics recorder (if any) must be
    /// installed before, as the counters are registered here.
    pub(crate) fn new(config: &ServeConfig) -> crate::Result<App> {
        let mut snapshots = BTreeMap::new();
        for s in &config.snapshots {
            let admin = Admin::builder(&s.current_url)
                .with_storage_options(s.storage.clone())
                .build()
                .map_err(|e| crate::Error::config(format!("snapshot {}", s.name), e.to_string()))?;
            let counter = |result: &'static str| metrics::counter!(KEYS_LOOKED_UP, "snapshot" => s.name.clone(), "result" => result);
            snapshots.insert(
                s.name.clone(),
                Arc::new(Served {
                    config: s.clone(),
                    reader: OnceLock::new(),
                    open_error: Mutex::new(None),
                    admin,
                    found: counter("found"),
                    missing: counter("missing"),
                    info_run: Mutex::new(None),
                }),
            );
        }
        Ok(App {
            snapshots,
            limits: config.limits.clone(),
            auth: Auth {
                tokens: config.auth_tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
            },
            in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight)),
            rejected_overloaded: metrics::counter!(REQUESTS_REJECTED, "reason" => "overloaded"),
            rejected_unauthenticated: metrics::counter!(REQUESTS_REJECTED, "reason" => "unauthenticated"),
            request_metrics: RequestMetrics::new(),
        })
    }

    /// A place among the requests in flight, or 503 when all are taken.
    pub(crate) fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.in_flight).try_acquire_owned().map_err(|_| {
            self.rejected_overloaded.increment(1);
            ApiError::new(
                503,
                "overloaded",
                format!(
                    "the server is at its bound of {} requests in flight; try again",
                    self.limits.max_in_flight
                ),
            )
        })
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.limits.max_in_flight - self.in_flight.available_permits()
    }

    /// Sets the gauges that are read off the readers and the in-flight
    /// bound; called before each scrape.
    pub(crate) fn publish_gauges(&self) {
        metrics::gauge!(REQUESTS_IN_FLIGHT).set(self.in_flight() as f64);
        for served in self.snapshots.values() {
            served.publish_gauges();
        }
    }

    /// Checks the `authorization` header.
    pub(crate) fn authenticate(&self, header: Option<&[u8]>) -> Result<(), ApiError> {
        self.auth
            .check(header)
            .inspect_err(|_| self.rejected_unauthenticated.increment(1))
    }

    pub(crate) fn served(&self, name: &str) -> Result<&Arc<Served>, ApiError> {
        self.snapshots.get(name).ok_or_else(|| {
            ApiError::new(
                404,
                "unknown_snapshot",
                format!(
                    "no snapshot is served as {name:?} (served: {})",
                    self.snapshots.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }

    /// The snapshot `version` of `name` names.
    pub(crate) fn view(&self, name: &str, version: &Version) -> Result<(&Arc<Served>, SnapshotView), ApiError> {
        let served = self.served(name)?;
        let reader = served.reader()?;
        let view = match version {
            Version::Current => reader.current(),
            v => reader.version(v)?,
        };
        Ok((served, view))
    }

    /// One key.
    pub(crate) async fn get(
        &self,
        name: &str,
        key: &str,
        context: &[String],
        version: &Version,
    ) -> Result<(SnapshotView, Option<Bytes>), ApiError> {
        let (served, view) = self.view(name, version)?;
        let run = view.run_id().clone();
        let result = async {
            let k = view.parse_key(key)?;
            if context.is_empty() {
                view.get(&k).await
            } else {
                let c = view.parse_context(context.iter().map(String::as_str))?;
                view.get_with_context(&k, &c).await
            }
        }
        .await
        .map_err(|e| ApiError::from(e).with_run(&run))?;
        served.count(std::slice::from_ref(&result));
        Ok((view, result))
    }

    /// Checks a multiget's size before any work.
    pub(crate) fn check_keys(&self, n: usize, limit: usize) -> Result<(), ApiError> {
        if n > limit {
            return Err(ApiError::new(
                413,
                "too_many_keys",
                format!("{n} keys is over this server's limit of {limit} per request"),
            ));
        }
        Ok(())
    }

    /// Many keys from `view`, in input order.
    pub(crate) async fn multi_get_in(
        &self,
        served: &Served,
        view: &SnapshotView,
        keys: &[String],
        contexts: &Contexts,
    ) -> Result<Vec<Option<Bytes>>, ApiError> {
        let run = view.run_id().clone();
        let bad = |e: sf_reader::Error| ApiError::from(e).with_run(&run);
        let parsed = keys
            .iter()
            .map(|k| view.parse_key(k))
            .collect::<sf_reader::Result<Vec<_>>>()
            .map_err(bad)?;
        let values = match contexts {
            Contexts::None => view.multi_get(&parsed).await.map_err(bad)?,
            Contexts::Shared(pairs) => {
                let c = view.parse_context(pairs.iter().map(String::as_str)).map_err(bad)?;
                let items: Vec<_> = parsed.into_iter().map(|k| (k, Some(c.clone()))).collect();
                view.multi_get_with_contexts(&items).await.map_err(bad)?
            }
            Contexts::PerKey(list) => {
                if list.len() != parsed.len() {
                    return Err(ApiError::bad_request(
                        "bad_body",
                        format!(
                            "{} contexts for {} keys: give one per key, or one for all",
                            list.len(),
                            parsed.len()
                        ),
                    )
                    .with_run(&run));
                }
                let mut items = Vec::with_capacity(parsed.len());
                for (k, c) in parsed.into_iter().zip(list) {
                    let c = match c {
                        Some(pairs) if !pairs.is_empty() => {
                            Some(view.parse_context(pairs.iter().map(String::as_str)).map_err(bad)?)
                        }
                        _ => None,
                    };
                    items.push((k, c));
                }
                view.multi_get_with_contexts(&items).await.map_err(bad)?
            }
        };
        served.count(&values);
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked() {
        let auth = Auth {
            tokens: vec![b"alpha".to_vec(), b"beta-token".to_vec()],
        };
        assert!(auth.check(Some(b"Bearer alpha")).is_ok());
        assert!(auth.check(Some(b"Bearer beta-token")).is_ok());
        for bad in [
            &b"Bearer alph"[..],
            b"Bearer alphaa",
            b"alpha",
            b"Basic YWxwaGE=",
            b"Bearer ",
        ] {
            let e = auth.check(Some(bad)).expect_err("refused");
            assert_eq!((e.status, e.kind), (401, "unauthenticated"));
            assert!(!e.message.contains("alpha"), "{}", e.message);
        }
        assert_eq!(auth.check(None).expect_err("missing").status, 401);
        let open = Auth { tokens: vec![] };
        assert!(!open.required() && open.check(None).is_ok());
    }

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
