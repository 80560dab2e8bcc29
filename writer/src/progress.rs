//! Per-run counters shared by a run's shard tasks in one process, read by
//! the driver to show progress, and the run's upload concurrency limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use sf_manifest::RunId;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Counters of one run.
#[derive(Debug)]
pub struct RunProgress {
    rows: AtomicU64,
    shards_done: AtomicU32,
    uploads: Semaphore,
}

impl RunProgress {
    /// Rows handed to shard builders so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Shards finished (written or empty).
    pub fn shards_done(&self) -> u32 {
        self.shards_done.load(Ordering::Relaxed)
    }

    pub(crate) fn add_rows(&self, n: u64) {
        self.rows.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn shard_done(&self) {
        self.shards_done.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) async fn upload_permit(&self) -> SemaphorePermit<'_> {
        self.uploads
            .acquire()
            .await
            .expect("the upload semaphore is never closed")
    }
}

static RUNS: LazyLock<Mutex<HashMap<RunId, Arc<RunProgress>>>> = LazyLock::new(Default::default);

/// The counters of `run`, created on first use with `upload_concurrency`.
pub fn run(run: &RunId, upload_concurrency: usize) -> Arc<RunProgress> {
    let mut runs = RUNS.lock().expect("progress registry poisoned");
    Arc::clone(runs.entry(run.clone()).or_insert_with(|| {
        Arc::new(RunProgress {
            rows: AtomicU64::new(0),
            shards_done: AtomicU32::new(0),
            uploads: Semaphore::new(upload_concurrency.max(1)),
        })
    }))
}

/// Forgets a finished run.
pub fn forget(run: &RunId) {
    RUNS.lock().expect("progress registry poisoned").remove(run);
}
