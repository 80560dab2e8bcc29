//! One served snapshot: its settings, its reader (opened in the background,
//! retrying), its admin handle for rollbacks, and its figures.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use sf_manifest::chain;
use sf_reader::{Admin, Reader};

use crate::api_error::ApiError;
use crate::config::SnapshotConfig;
use crate::metrics::{KEYS_LOOKED_UP, SNAPSHOT_AGE, SNAPSHOT_INFO, SNAPSHOT_OPEN_SHARDS, SNAPSHOT_READY};

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

    /// Counts the keys of one answer, found and missing.
    pub(crate) fn count(&self, values: &[Option<Bytes>]) {
        let found = values.iter().filter(|v| v.is_some()).count() as u64;
        self.found.increment(found);
        self.missing.increment(values.len() as u64 - found);
    }

    /// Sets this snapshot's gauges from its reader (age, run, open shards,
    /// readiness).
    pub(crate) fn publish_gauges(&self) {
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
