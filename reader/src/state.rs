//! What a [`Reader`](crate::Reader), its clones, its views and its
//! background refresh share: the served snapshot, the snapshots kept for
//! pinned reads, the shard environment, the counters and how refreshes
//! went.
//!
//! It sits below both the reader and [`SnapshotView`](crate::SnapshotView)
//! so that each can hold it without knowing the other.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use sf_manifest::{ManifestStore, ObjectManifestStore, Timestamp};

use crate::error::{Error, Result};
use crate::info::RefreshStatus;
use crate::ratelimit::{ReadLimiter, ReadLimits};
use crate::settings::{Pin, ReaderSettings};
use crate::shard::ShardEnv;
use crate::snapshot::Snapshot;
use crate::stats::{Counters, bump};

/// See the module docs.
pub(crate) struct ReaderState {
    /// URL of the prefix's `_CURRENT`.
    pub(crate) current_url: String,
    pub(crate) store: ObjectManifestStore,
    pub(crate) settings: ReaderSettings,
    pub(crate) env: Arc<ShardEnv>,
    pub(crate) counters: Arc<Counters>,
    /// The served snapshot. Readers clone the Arc and let go of the lock
    /// at once; a swap replaces the Arc, and the old snapshot (with its
    /// open shards) lives until its last in-flight read finishes.
    pub(crate) served: RwLock<Arc<Snapshot>>,
    /// Snapshots a refresh replaced, newest first, at most
    /// `settings.keep_versions`: open for pinned reads.
    kept: Mutex<VecDeque<Arc<Snapshot>>>,
    /// Serialises refreshes (manual and background).
    pub(crate) refresh_lock: tokio::sync::Mutex<()>,
    status: Mutex<RefreshStatus>,
    closed: AtomicBool,
    /// Why the served snapshot is not the one `_CURRENT` names, while the
    /// reader serves an older manifest of the history (see
    /// `lifecycle::fallback`); cleared by a refresh that reads `_CURRENT`'s.
    degraded: Mutex<Option<String>>,
    /// The read limits of the settings, when any is set.
    pub(crate) limiter: Option<ReadLimiter>,
}

impl ReaderState {
    /// The state of a reader that serves `snapshot` and holds no other.
    pub(crate) fn new(
        current_url: String,
        store: ObjectManifestStore,
        settings: ReaderSettings,
        env: Arc<ShardEnv>,
        counters: Arc<Counters>,
        snapshot: Snapshot,
    ) -> Self {
        let settings_limits = settings.read_limits();
        ReaderState {
            current_url,
            store,
            settings,
            env,
            counters,
            served: RwLock::new(Arc::new(snapshot)),
            kept: Mutex::new(VecDeque::new()),
            refresh_lock: tokio::sync::Mutex::new(()),
            status: Mutex::new(RefreshStatus::default()),
            closed: AtomicBool::new(false),
            degraded: Mutex::new(None),
            limiter: settings_limiter(&settings_limits),
        }
    }

    /// The served snapshot, for as long as the caller holds it.
    pub(crate) fn served(&self) -> Arc<Snapshot> {
        Arc::clone(&sf_manifest::sync::read(&self.served))
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed {
                location: self.store.prefix_url().to_string(),
            });
        }
        Ok(())
    }

    /// Lets a read of `keys` keys in under the reader's limits (waiting at
    /// most `rate_limit_max_wait`), runs it, and charges the further keys
    /// and the bytes `cost` counts in its answer.
    pub(crate) async fn limited<T>(
        &self,
        keys: usize,
        read: impl std::future::Future<Output = Result<T>>,
        cost: impl FnOnce(&T) -> (u64, u64),
    ) -> Result<T> {
        let Some(limiter) = &self.limiter else {
            return read.await;
        };
        limiter.admit(keys as u64).await?;
        let answer = read.await?;
        let (more_keys, bytes) = cost(&answer);
        limiter.charge(more_keys, bytes);
        Ok(answer)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Refuses reads from now on (reads in flight finish).
    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn kept(&self) -> MutexGuard<'_, VecDeque<Arc<Snapshot>>> {
        sf_manifest::sync::lock(&self.kept)
    }

    /// Whether the reader is pinned (refresh does not move it).
    pub(crate) fn pinned(&self) -> bool {
        self.settings.pin != Pin::Current
    }

    /// See the `degraded` field.
    pub(crate) fn degraded(&self) -> Option<String> {
        sf_manifest::sync::lock(&self.degraded).clone()
    }

    pub(crate) fn set_degraded(&self, reason: Option<String>) {
        let mut d = sf_manifest::sync::lock(&self.degraded);
        if d.is_some() && reason.is_none() {
            tracing::info!(prefix = %self.store.prefix_url(), "serving the manifest _CURRENT names again; no longer degraded");
        }
        *d = reason;
    }

    pub(crate) fn refresh_status(&self) -> RefreshStatus {
        sf_manifest::sync::lock(&self.status).clone()
    }

    /// Records how a refresh that started at `started` ended, in the
    /// status and the counters.
    pub(crate) fn record_refresh(&self, started: Timestamp, outcome: std::result::Result<(), String>) {
        let mut status = sf_manifest::sync::lock(&self.status);
        status.last_attempt = Some(started);
        match outcome {
            Ok(()) => {
                status.last_success = Some(started);
                status.last_error = None;
                status.consecutive_failures = 0;
            }
            Err(e) => {
                bump(&self.counters.refresh_failures, 1);
                tracing::warn!(prefix = %self.store.prefix_url(), error = %e, "refresh failed; still serving the previous snapshot");
                status.last_error = Some(e);
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            }
        }
    }
}

fn settings_limiter(limits: &ReadLimits) -> Option<ReadLimiter> {
    limits.is_limited().then(|| ReadLimiter::new(*limits))
}
