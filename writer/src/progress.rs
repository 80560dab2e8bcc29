//! Per-run counters shared by a run's shard tasks in one process, read by
//! the driver to show progress and to say where the time went, and the
//! run's upload concurrency limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use sf_manifest::RunId;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Counters of one run.
#[derive(Debug)]
pub struct RunProgress {
    rows: AtomicU64,
    shards_done: AtomicU32,
    uploads: Semaphore,
    input_nanos: AtomicU64,
    step_nanos: [AtomicU64; 3],
    shards_built: AtomicU32,
    vectors_skipped: AtomicU64,
}

/// A step of a shard task, timed summed over the run's shard tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Sorting or merging the shard's rows and writing its file, checksum
    /// included.
    Build = 0,
    /// Claiming an attempt folder (one create-if-absent write).
    Claim = 1,
    /// Uploading the shard into its attempt (or placing the file there).
    Upload = 2,
}

/// Where a run's shard tasks in this process spent their time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskTimes {
    /// Wall time to read, route and collect the whole input, when the
    /// shards were collected in this process (the embedded engine).
    pub input: Option<Duration>,
    /// [`Step::Build`], summed over shards.
    pub build: Duration,
    /// [`Step::Claim`], summed over shards.
    pub claim: Duration,
    /// [`Step::Upload`], summed over shards.
    pub upload: Duration,
    /// Shards built in this process.
    pub shards_built: u32,
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

    /// Rows whose vector was left out (`vector.on_invalid = "skip"`),
    /// counted where rows are encoded in this process.
    pub fn vectors_skipped(&self) -> u64 {
        self.vectors_skipped.load(Ordering::Relaxed)
    }

    pub(crate) fn add_vectors_skipped(&self, n: u64) {
        self.vectors_skipped.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn shard_done(&self) {
        self.shards_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Where the run's shard tasks in this process spent their time.
    pub fn times(&self) -> TaskTimes {
        let nanos = |a: &AtomicU64| Duration::from_nanos(a.load(Ordering::Relaxed));
        let input = self.input_nanos.load(Ordering::Relaxed);
        TaskTimes {
            input: (input > 0).then(|| Duration::from_nanos(input)),
            build: nanos(&self.step_nanos[Step::Build as usize]),
            claim: nanos(&self.step_nanos[Step::Claim as usize]),
            upload: nanos(&self.step_nanos[Step::Upload as usize]),
            shards_built: self.shards_built.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_time(&self, step: Step, d: Duration) {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.step_nanos[step as usize].fetch_add(n, Ordering::Relaxed);
        if step == Step::Build {
            self.shards_built.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn input_read(&self, d: Duration) {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.input_nanos.store(n, Ordering::Relaxed);
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
    let mut runs = sf_manifest::sync::lock(&RUNS);
    Arc::clone(runs.entry(run.clone()).or_insert_with(|| {
        Arc::new(RunProgress {
            rows: AtomicU64::new(0),
            shards_done: AtomicU32::new(0),
            uploads: Semaphore::new(upload_concurrency.max(1)),
            input_nanos: AtomicU64::new(0),
            step_nanos: Default::default(),
            shards_built: AtomicU32::new(0),
            vectors_skipped: AtomicU64::new(0),
        })
    }))
}

/// Forgets a finished run.
pub fn forget(run: &RunId) {
    sf_manifest::sync::lock(&RUNS).remove(run);
}

/// The peak resident memory of this process so far (`VmHWM`), where the
/// system reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}
