//! Phase 1 of writing a shard: building it on local disk, in a staging
//! folder of its own, from rows collected for it, in one of this
//! process's build slots.

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use sf_manifest::DbId;
use tokio::sync::Semaphore;

use crate::build::backend::{BackendConfig, BuildContext, PageSize, SizeStats, StagedShard, VectorShard, backend_for};
use crate::build::merge::{ShardRows, SortStats};
use crate::build::spec::ShardWriteSpec;
use crate::error::{Error, Result};
use crate::progress::{self, Step};
use crate::route::envelope::split_value;

/// A shard built locally, ready to upload.
pub(crate) struct Built {
    pub(crate) staged: Arc<dyn StagedShard>,
    pub(crate) sorted: SortStats,
}

/// Shard builds running at once in this process, one per core: a build is
/// CPU-bound, and more at once only share the cores and thrash caches.
static BUILD_SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(build_slots()));

/// Shard builds that run at once in this process.
pub fn build_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What the backend's builder is told about shard `db_id`, staged in `dir`.
pub(crate) fn build_context(spec: &ShardWriteSpec, db_id: DbId, dir: &Path) -> BuildContext {
    BuildContext {
        db_id,
        work_dir: dir.to_path_buf(),
        on_duplicate: spec.on_duplicate,
        sorted: spec.sort_within_shard,
        limits: spec.limits,
        key_encoding: spec.key_encoding,
        vector: spec.vector.as_ref().map(|v| VectorShard {
            dim: v.dim,
            // Checked when the job was validated.
            metric: v.metric().unwrap_or(sf_manifest::format::vector::Metric::Cosine),
            vector_only: v.vector_only,
        }),
        sizes: None,
    }
}

/// Builds shard `db_id` from its collected rows in `dir`, in one of this
/// process's build slots.
pub(crate) async fn build_rows(spec: &ShardWriteSpec, rows: ShardRows, dir: &Path) -> Result<Built> {
    let db_id = rows.db_id();
    let join = |e: tokio::task::JoinError| Error::Internal(format!("shard {db_id} build task: {e}"));
    let _slot = BUILD_SLOTS
        .acquire()
        .await
        .map_err(|e| Error::Internal(format!("shard {db_id} build slot: {e}")))?;
    let started = Instant::now();
    let backend = backend_for(&spec.backend);
    let mut ctx = build_context(spec, db_id, dir);
    let measure = matches!(&spec.backend, BackendConfig::Sqlite(s) if s.page_size == PageSize::Auto) && ctx.sorted;
    let merge_dir = dir.join("merge");
    let built = tokio::task::spawn_blocking(move || {
        let mut rows = rows;
        if measure {
            ctx.sizes = Some(measure_rows(&mut rows, &merge_dir, ctx.vector)?);
        }
        let mut builder = backend.builder(ctx)?;
        let sorted = rows.drain(&merge_dir, &mut |rows| builder.add(rows))?;
        Ok(Built {
            staged: builder.finish()?,
            sorted,
        })
    })
    .await
    .map_err(join)?;
    progress::run(&spec.run_id, spec.upload_concurrency).add_time(Step::Build, started.elapsed());
    built
}

/// The sizes of the rows a shard will store, measured before its build
/// (`output.sqlite.page_size = "auto"`): keys, and values as stored (a
/// unified shard stores each value without its vector; a vector-only
/// shard stores none).
fn measure_rows(rows: &mut ShardRows, merge_dir: &Path, vector: Option<VectorShard>) -> Result<SizeStats> {
    let mut sizes = SizeStats::default();
    let db_id = rows.db_id();
    rows.measure(merge_dir, &mut |key, value| {
        match vector {
            None => sizes.add(key.len(), value.len()),
            Some(v) if v.vector_only => {}
            Some(v) => {
                let (kv, _) =
                    split_value(value, v.dim as usize).map_err(|e| Error::Internal(format!("shard {db_id}: {e}")))?;
                sizes.add(key.len(), kv.len());
            }
        }
        Ok(())
    })?;
    Ok(sizes)
}

/// A fresh staging folder for shard `db_id` under the run's `work_dir`
/// (the system's temp folder by default), removed when dropped.
pub(crate) fn work_dir(spec: &ShardWriteSpec, db_id: DbId) -> Result<ShardDir> {
    let base = spec.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).map_err(|e| Error::io(format!("creating work_dir {}", base.display()), e))?;
    tempfile::Builder::new()
        .prefix(&format!("sf-{}-{:05}-", spec.run_id, db_id.0))
        .tempdir_in(&base)
        .map(ShardDir::Temp)
        .map_err(|e| Error::io(format!("creating a staging folder in {}", base.display()), e))
}

/// A shard's own staging folder, removed when dropped.
#[derive(Debug)]
pub(crate) enum ShardDir {
    /// A folder of its own in the system's (or the run's) temp folder.
    Temp(tempfile::TempDir),
    /// A folder inside the build's work folder, made with one `mkdir`.
    Sub(std::path::PathBuf),
}

impl ShardDir {
    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        match self {
            ShardDir::Temp(t) => t.path(),
            ShardDir::Sub(p) => p,
        }
    }
}

impl Drop for ShardDir {
    fn drop(&mut self) {
        if let ShardDir::Sub(p) = self {
            // A SQLite build leaves its one staged file (placed copies are
            // links of their own): two calls, then. Whatever else a build
            // left goes too.
            let _ = std::fs::remove_file(p.join(sf_manifest::format::layout::SQLITE_SHARD_FILE));
            if std::fs::remove_dir(&*p).is_err() {
                let _ = std::fs::remove_dir_all(&*p);
            }
        }
    }
}

/// Shard `db_id`'s staging folder inside `build_dir`, the work folder of
/// a build whose shards are all written in this process: one `mkdir`
/// instead of a fresh temp folder per shard.
pub(crate) fn shard_dir_in(build_dir: &Path, db_id: DbId) -> Result<ShardDir> {
    let dir = build_dir.join(format!("db-{:05}", db_id.0));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Left by an earlier task of the same shard: start empty.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    Ok(ShardDir::Sub(dir))
}
