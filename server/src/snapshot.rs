//! One served snapshot: its settings, its reader (opened in the background,
//! retrying), its admin handle for rollbacks, and its figures.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use sf_manifest::chain;
use sf_reader::{Admin, Reader};

use crate::api_error::ApiError;
use crate::config::SnapshotConfig;
use crate::metrics::{
    KEYS_LOOKED_UP, SNAPSHOT_AGE, SNAPSHOT_FALLBACK, SNAPSHOT_INFO, SNAPSHOT_OPEN_SHARDS, SNAPSHOT_READY,
    SNAPSHOT_SHARDS_BY_MODE, SNAPSHOT_STALE,
};

/// Where a served snapshot stands, as `/readyz` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapshotState {
    /// Its reader is being opened (no attempt failed yet).
    Opening,
    /// Opening it failed; it is tried again.
    Failed,
    /// Open, within its `max_age`, serving the manifest `_CURRENT` names.
    Ready,
    /// Open and serving, but older than its `max_age`.
    Stale,
    /// Open and serving an older manifest of the history, because the
    /// one `_CURRENT` names could not be read at start.
    Degraded,
}

impl SnapshotState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Opening => "opening",
            SnapshotState::Failed => "failed",
            SnapshotState::Ready => "ready",
            SnapshotState::Stale => "stale",
            SnapshotState::Degraded => "degraded",
        }
    }
}

/// A served snapshot's readiness: its state, whether it counts as ready,
/// and why it is not simply ready (told to authenticated callers only:
/// the reasons name URLs and paths).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Readiness {
    pub(crate) state: SnapshotState,
    /// Open, and not stale under `unready_when_stale`.
    pub(crate) ready: bool,
    /// Older than its `max_age`.
    pub(crate) stale: bool,
    /// Why it is stale.
    pub(crate) stale_reason: Option<String>,
    /// Why it serves an older manifest than `_CURRENT` names.
    pub(crate) fallback_reason: Option<String>,
    /// Why it is not open.
    pub(crate) open_error: Option<String>,
}

impl Readiness {
    /// `ok` for a ready snapshot that is neither stale nor fallen back,
    /// `degraded` for one that serves but is, `unready` for one that does
    /// not count as ready.
    pub(crate) fn health(&self) -> &'static str {
        match (self.ready, self.state) {
            (false, _) => "unready",
            (true, SnapshotState::Ready) => "ok",
            (true, _) => "degraded",
        }
    }

    /// The reasons, for callers allowed to see them.
    pub(crate) fn reasons(&self) -> Vec<&str> {
        [&self.open_error, &self.fallback_reason, &self.stale_reason]
            .into_iter()
            .filter_map(|r| r.as_deref())
            .collect()
    }
}

/// One served snapshot: its settings, and its reader once open.
pub(crate) struct ServedSnapshot {
    pub(crate) config: SnapshotConfig,
    reader: OnceLock<Reader>,
    open_error: Mutex<Option<String>>,
    pub(crate) admin: Admin,
    found: metrics::Counter,
    missing: metrics::Counter,
    /// The run last published as [`SNAPSHOT_INFO`], to zero it on a swap.
    info_run: Mutex<Option<String>>,
}

impl ServedSnapshot {
    /// The snapshot `config` names, not open yet
    /// ([`open_until_done`](Self::open_until_done) opens it). The metrics
    /// recorder (if any) must be installed before: the counters are
    /// registered here.
    pub(crate) fn new(config: &SnapshotConfig) -> crate::Result<Self> {
        let admin = Admin::builder(&config.current_url)
            .with_storage_options(config.storage.clone())
            .build()
            .map_err(|e| crate::Error::config(format!("snapshot {}", config.name), e.to_string()))?;
        let counter = |result: &'static str| metrics::counter!(KEYS_LOOKED_UP, "snapshot" => config.name.clone(), "result" => result);
        Ok(ServedSnapshot {
            config: config.clone(),
            reader: OnceLock::new(),
            open_error: Mutex::new(None),
            admin,
            found: counter("found"),
            missing: counter("missing"),
            info_run: Mutex::new(None),
        })
    }

    /// The reader, or 503 while the snapshot is not open yet (the open
    /// error is logged and listed, not told to the client).
    pub(crate) fn reader(&self) -> Result<&Reader, ApiError> {
        self.reader.get().ok_or_else(|| {
            let failed = sf_manifest::sync::lock(&self.open_error).is_some();
            ApiError::new(
                503,
                "not_ready",
                if failed {
                    format!(
                        "snapshot {} is not open yet: opening it failed and is tried again (the log, /v1/snapshots and an authenticated /readyz say why)",
                        self.config.name
                    )
                } else {
                    format!("snapshot {} is being opened", self.config.name)
                },
            )
        })
    }

    /// Where the snapshot stands; see [`Readiness`].
    pub(crate) fn readiness(&self) -> Readiness {
        let Some(reader) = self.opened() else {
            let open_error = self.open_error();
            return Readiness {
                state: if open_error.is_some() {
                    SnapshotState::Failed
                } else {
                    SnapshotState::Opening
                },
                ready: false,
                stale: false,
                stale_reason: None,
                fallback_reason: None,
                open_error,
            };
        };
        let stale_reason = self.config.max_age.and_then(|max_age| {
            let h = reader.health(max_age);
            (h.status == sf_reader::HealthStatus::Stale).then(|| {
                format!(
                    "run {} is {:.0} s old, above max_age {:.0} s",
                    h.run_id, h.snapshot_age_seconds, h.max_age_seconds
                )
            })
        });
        let fallback_reason = reader.degraded();
        let stale = stale_reason.is_some();
        Readiness {
            state: if fallback_reason.is_some() {
                SnapshotState::Degraded
            } else if stale {
                SnapshotState::Stale
            } else {
                SnapshotState::Ready
            },
            ready: !(stale && self.config.unready_when_stale),
            stale,
            stale_reason,
            fallback_reason,
            open_error: None,
        }
    }

    pub(crate) fn opened(&self) -> Option<&Reader> {
        self.reader.get()
    }

    pub(crate) fn open_error(&self) -> Option<String> {
        sf_manifest::sync::lock(&self.open_error).clone()
    }

    /// Counts the keys of one answer, found and missing.
    pub(crate) fn count(&self, values: &[Option<Bytes>]) {
        let found = values.iter().filter(|v| v.is_some()).count() as u64;
        self.found.increment(found);
        self.missing.increment(values.len() as u64 - found);
    }

    /// Sets this snapshot's gauges from its reader (age, run, open shards,
    /// readiness, staleness, fallback).
    pub(crate) fn publish_gauges(&self) {
        let name = &self.config.name;
        let readiness = self.readiness();
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        metrics::gauge!(SNAPSHOT_READY, "snapshot" => name.clone()).set(flag(readiness.ready));
        metrics::gauge!(SNAPSHOT_STALE, "snapshot" => name.clone()).set(flag(readiness.stale));
        metrics::gauge!(SNAPSHOT_FALLBACK, "snapshot" => name.clone()).set(flag(readiness.fallback_reason.is_some()));
        let Some(reader) = self.opened() else {
            return;
        };
        let info = reader.info();
        let health = reader.health(self.config.max_age.unwrap_or(Duration::MAX));
        metrics::gauge!(SNAPSHOT_AGE, "snapshot" => name.clone()).set(health.snapshot_age_seconds);
        metrics::gauge!(SNAPSHOT_OPEN_SHARDS, "snapshot" => name.clone()).set(info.shards_open as f64);
        let mut by_mode = [0u64; sf_reader::READ_MODES.len()];
        for shard in reader.shard_infos() {
            if let Some(i) = shard
                .opened_as
                .and_then(|m| sf_reader::READ_MODES.iter().position(|r| *r == m))
            {
                by_mode[i] += 1;
            }
        }
        for (mode, n) in sf_reader::READ_MODES.iter().zip(by_mode) {
            metrics::gauge!(SNAPSHOT_SHARDS_BY_MODE, "snapshot" => name.clone(), "mode" => *mode).set(n as f64);
        }
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
                    match &info.degraded {
                        None => {
                            tracing::info!(snapshot = %self.config.name, run_id = %info.run_id, manifest = %info.manifest_ref, "snapshot open")
                        }
                        Some(why) => {
                            tracing::warn!(snapshot = %self.config.name, run_id = %info.run_id, manifest = %info.manifest_ref, reason = %why, "snapshot open, degraded: serving an older manifest of the history")
                        }
                    }
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
