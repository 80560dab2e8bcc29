//! Opening shards and reading from them.
//!
//! A shard row's `db_url` names an attempt folder. Which backend wrote it is
//! not recorded in the manifest, so the first open probes: a `shard.db`
//! object means SQLite, a `manifest/` folder SlateDB. The manifest's
//! `db_bytes` (0 for SlateDB, the file size for SQLite) decides which to
//! try first, so a normal open costs no extra request.
//!
//! A SQLite shard is then read one of three ways: downloaded into the
//! local cache and read through SQLite, read by range through SQLite, or
//! downloaded and held in memory (`memory.rs`), where lookups never reach
//! SQLite.

pub(crate) mod cache_dir;
pub(crate) mod cache_files;
pub(crate) mod download;
pub(crate) mod huge_pages;
pub(crate) mod memory;
pub(crate) mod remote_file;
pub(crate) mod slate;
pub(crate) mod spec;
pub(crate) mod sqlite;
pub(crate) mod vectors;
mod vfs;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use sf_manifest::format::untrusted;
use sf_manifest::{DbId, ErrorKind};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use xxhash_rust::xxh3::Xxh3;

use crate::block_cache::BlockCache;
use crate::error::{Error, Result};
use crate::settings::{ReaderSettings, SqliteMode};
use crate::stats::{Counters, bump};
use sf_manifest::Cause;
use sf_manifest::format::checksum::{Coverage, file_checksum};

use cache_files::Hold;
use download::DownloadCache;
pub(crate) use memory::estimate as memory_estimate;
use memory::{LoadError, MemoryBudget, MemoryShard};
use remote_file::RemoteFile;
use sf_manifest::format::vector::Metric;
use sf_router::filter::PayloadFilter;
use slate::SlateShard;
pub(crate) use spec::{ShardIdentity, ShardSpec};
pub(crate) use sqlite::VectorHit;
use sqlite::{ConnPool, Source, spawn_sqlite};
use vectors::VectorArena;

/// Multi-gets on a downloaded shard with at least this many keys run on
/// the blocking pool in a task of their own, so that several shards'
/// lookups use several cores; smaller groups of one `multi_get` share one
/// blocking task (see [`Shard::get_small_groups`]), as a hop to another
/// thread costs more than their lookups.
pub(crate) const PARALLEL_GROUP: usize = 64;

/// Multi-gets on a memory-mode shard with at least this many keys run as
/// tasks of their own on the runtime's workers, so that one `multi_get`'s
/// shards are looked up on every core; smaller ones run inline. A lookup
/// takes a fraction of a microsecond, so a task of this size costs about
/// as much as spawning it.
const MEMORY_PARALLEL_GROUP: usize = 64;

/// Keys per memory-mode lookup task: a few hundred microseconds of work at
/// most, so that a huge `multi_get` on one shard still spreads over the
/// cores and never holds a runtime worker for long.
pub(crate) const MEMORY_TASK_KEYS: usize = 2048;

/// How an open shard is read, as
/// [`ShardInfo::opened_as`](crate::ShardInfo::opened_as) names it.
pub const READ_MODES: [&str; 4] = ["sqlite-download", "sqlite-memory", "sqlite-range", "slatedb"];

/// A key to look up, with its position in the caller's batch.
pub(crate) type SlotKey = (usize, Vec<u8>);

/// What every shard open needs; one per reader.
#[derive(Debug)]
pub(crate) struct ShardEnv {
    pub(crate) settings: ReaderSettings,
    /// Where SQLite shards are downloaded (download and memory modes).
    pub(crate) downloads: DownloadCache,
    pub(crate) blocks: Arc<BlockCache>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) runtime: Handle,
    /// Bounds remote reads in flight (range mode, SlateDB, opens).
    pub(crate) remote_permits: Arc<Semaphore>,
    /// What memory-mode shards may hold, across the reader's snapshots.
    pub(crate) memory: Arc<MemoryBudget>,
    next_file_id: AtomicU64,
}

impl ShardEnv {
    pub(crate) fn new(settings: ReaderSettings, counters: Arc<Counters>, runtime: Handle) -> Result<Self> {
        let cache_dir = match &settings.cache_dir {
            Some(dir) => dir.clone(),
            None => {
                let dir = cache_dir::default_cache_dir()?;
                cache_dir::prepare_default(&dir)?;
                dir
            }
        };
        let downloads = DownloadCache::open(
            &cache_dir,
            settings.verify_checksums,
            settings.cache_max_bytes,
            Arc::clone(&counters),
        )?;
        Ok(ShardEnv {
            blocks: Arc::new(BlockCache::new(settings.page_cache_bytes)),
            remote_permits: Arc::new(Semaphore::new(settings.max_concurrency)),
            memory: MemoryBudget::new(settings.memory_limit_bytes),
            downloads,
            settings,
            counters,
            runtime,
            next_file_id: AtomicU64::new(1),
        })
    }
}

enum Backend {
    /// A downloaded SQLite file.
    Local(ConnPool),
    /// A downloaded SQLite file held in memory. Lookups use the index
    /// only; scans, which need key order, read the file through the pool.
    /// Its vectors are loaded into an arena of their own on the first
    /// search (`None`: they do not fit, searches read the file).
    Memory {
        index: Arc<MemoryShard>,
        pool: ConnPool,
        file_bytes: u64,
        vectors: tokio::sync::OnceCell<Option<Arc<VectorArena>>>,
    },
    /// A SQLite file read by range. The registration keeps the VFS name
    /// alive while the shard is open.
    Range {
        pool: ConnPool,
        file: Arc<RemoteFile>,
        _registration: vfs::Registration,
    },
    /// A SlateDB database.
    Slate(SlateShard),
}

/// An opened backend, and the hold on its cached file when it reads one.
type Opened = (Backend, Option<Hold>);

/// What [`Reader::get_now`](crate::Reader::get_now) may do on the calling
/// thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inline {
    /// Shards held in memory only: no SQLite, no I/O, a lookup in the
    /// shard's index (well under a microsecond).
    Memory,
    /// Shards in memory and downloaded SQLite files: a lookup may wait on
    /// the local disk for a page that is not in the page cache.
    LocalFiles,
}

/// An open shard.
pub(crate) struct ShardHandle {
    db_id: DbId,
    url: String,
    pub(crate) identity: ShardIdentity,
    backend: Backend,
    env: Arc<ShardEnv>,
    /// The cached file a downloaded shard reads, held while it is open.
    _cache_hold: Option<Hold>,
}

impl std::fmt::Debug for ShardHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardHandle")
            .field("db_id", &self.db_id)
            .field("url", &self.url)
            .field("backend", &self.backend_name())
            .finish()
    }
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        if let Backend::Range { file, .. } = &self.backend {
            self.env.blocks.forget_file(file.id);
        }
    }
}

impl ShardHandle {
    /// The in-memory index of a memory-mode shard.
    pub(crate) fn memory(&self) -> Option<&MemoryShard> {
        match &self.backend {
            Backend::Memory { index, .. } => Some(index),
            _ => None,
        }
    }

    /// `sqlite-download`, `sqlite-memory`, `sqlite-range` or `slatedb`.
    pub(crate) fn backend_name(&self) -> &'static str {
        let [download, memory, range, slate] = READ_MODES;
        match self.backend {
            Backend::Local(_) => download,
            Backend::Memory { .. } => memory,
            Backend::Range { .. } => range,
            Backend::Slate(_) => slate,
        }
    }

    /// Opens a shard (probing its backend) and verifies its checksum.
    pub(crate) async fn open(env: &Arc<ShardEnv>, spec: ShardSpec<'_>) -> Result<Arc<ShardHandle>> {
        let _permit = env
            .remote_permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("the reader's permits were closed".into()))?;
        bump(&env.counters.shard_opens, 1);
        let slate_first = spec.row.db_bytes == 0;
        let backend = if slate_first {
            match Self::try_slate(env, spec).await? {
                Some(b) => Some(b),
                None => Self::try_sqlite(env, spec).await?,
            }
        } else {
            match Self::try_sqlite(env, spec).await? {
                Some(b) => Some(b),
                None => Self::try_slate(env, spec).await?,
            }
        };
        let (backend, cache_hold) = backend.ok_or_else(|| {
            spec.open_error(
                "the shard is missing: the attempt folder holds neither a shard.db nor a SlateDB database".into(),
            )
        })?;
        tracing::debug!(shard = %spec.db_id, url = %spec.url, "opened shard");
        Ok(Arc::new(ShardHandle {
            db_id: spec.db_id,
            url: spec.url.clone(),
            identity: ShardIdentity::of(spec.row, spec.url),
            backend,
            env: Arc::clone(env),
            _cache_hold: cache_hold,
        }))
    }

    async fn try_slate(env: &Arc<ShardEnv>, spec: ShardSpec<'_>) -> Result<Option<Opened>> {
        if !slate::exists(&spec).await? {
            return Ok(None);
        }
        let shard = slate::open(&spec, env.settings.verify_checksums, env.runtime.clone()).await?;
        Ok(Some((Backend::Slate(shard), None)))
    }

    async fn try_sqlite(env: &Arc<ShardEnv>, spec: ShardSpec<'_>) -> Result<Option<Opened>> {
        let s = &env.settings;
        let db_bytes = spec.row.db_bytes;
        let mode = match s.sqlite_mode {
            // Only shards whose size the manifest records: 0 says nothing.
            SqliteMode::Auto if spec.whole_snapshot_fits => SqliteMode::Memory,
            SqliteMode::Auto if db_bytes > 0 && db_bytes <= s.auto_memory_threshold_bytes => SqliteMode::Memory,
            SqliteMode::Auto if db_bytes > s.auto_range_threshold_bytes => SqliteMode::Range,
            SqliteMode::Auto => SqliteMode::Download,
            other => other,
        };
        match mode {
            SqliteMode::Range => Self::open_range(env, spec).await,
            SqliteMode::Memory => Self::open_memory(env, spec).await,
            _ => Self::open_local(env, spec).await,
        }
    }

    async fn open_local(env: &Arc<ShardEnv>, spec: ShardSpec<'_>) -> Result<Option<Opened>> {
        let Some((path, hold)) = env.downloads.cached_file(&spec).await? else {
            return Ok(None);
        };
        let (pool, _) = Self::local_pool(env, path)?;
        Self::seeded_local(spec, pool).await.map(|b| Some((b, Some(hold))))
    }

    /// A pool over a cached file, and the file's size.
    fn local_pool(env: &ShardEnv, path: PathBuf) -> Result<(ConnPool, u64)> {
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io("reading a cached shard's size", &path, e))?
            .len();
        let pool = ConnPool::new(
            Source::Local { path, mmap_bytes: size },
            env.settings.max_idle_connections_per_shard,
        );
        Ok((pool, size))
    }

    fn unreadable(spec: ShardSpec<'_>, e: rusqlite::Error) -> Error {
        spec.open_failed(
            format!("SQLite cannot read the shard file: {e}"),
            ErrorKind::Data,
            Some(Box::new(e)),
        )
    }

    /// Download mode over `pool`, with its first connection open (which
    /// checks the file is a shard).
    async fn seeded_local(spec: ShardSpec<'_>, pool: ConnPool) -> Result<Backend> {
        let (pool, opened) = spawn_sqlite(move || {
            let opened = pool.open_connection();
            (pool, opened)
        })
        .await
        .map_err(|e| Error::Internal(format!("shard open task failed: {e}")))?;
        pool.seed(opened.map_err(|e| Self::unreadable(spec, e))?);
        Ok(Backend::Local(pool))
    }

    /// Memory mode: the cached file (downloaded and verified as in
    /// download mode) loaded into memory, or left in download mode when
    /// the memory budget cannot hold it.
    async fn open_memory(env: &Arc<ShardEnv>, spec: ShardSpec<'_>) -> Result<Option<Opened>> {
        let Some((path, hold)) = env.downloads.cached_file(&spec).await? else {
            return Ok(None);
        };
        let (pool, size) = Self::local_pool(env, path)?;
        let rows = spec.row.row_count;
        let Some(reservation) = env.memory.reserve(memory::estimate(size, rows)) else {
            return Self::memory_fallback(env, spec, pool)
                .await
                .map(|b| Some((b, Some(hold))));
        };
        let huge_pages = env.settings.memory_huge_pages;
        // A full read of the file: off the runtime's workers.
        let (pool, loaded) = spawn_sqlite(move || {
            let loaded = pool
                .open_connection()
                .map_err(LoadError::from)
                .and_then(|conn| memory::load(&conn, reservation, size, rows, huge_pages));
            (pool, loaded)
        })
        .await
        .map_err(|e| Error::Internal(format!("memory load task failed: {e}")))?;
        match loaded {
            Ok(index) => {
                tracing::debug!(shard = %spec.db_id, rows = index.rows(), bytes = index.bytes(), "shard held in memory");
                // Scans read the file: it stays held.
                Ok(Some((
                    Backend::Memory {
                        index: Arc::new(index),
                        pool,
                        file_bytes: size,
                        vectors: tokio::sync::OnceCell::new(),
                    },
                    Some(hold),
                )))
            }
            Err(LoadError::OverBudget) => Self::memory_fallback(env, spec, pool)
                .await
                .map(|b| Some((b, Some(hold)))),
            Err(LoadError::Sqlite(e)) => Err(Self::unreadable(spec, e)),
            Err(e) => Err(spec.open_failed(
                format!("the shard cannot be held in memory: {e}"),
                ErrorKind::Data,
                Some(Box::new(e)),
            )),
        }
    }

    async fn memory_fallback(env: &ShardEnv, spec: ShardSpec<'_>, pool: ConnPool) -> Result<Backend> {
        bump(&env.counters.memory_fallbacks, 1);
        tracing::info!(
            shard = %spec.db_id,
            db_bytes = spec.row.db_bytes,
            memory_bytes = env.memory.used_bytes(),
            memory_limit_bytes = env.settings.memory_limit_bytes,
            "the shard does not fit in the memory limit; reading it in download mode"
        );
        Self::seeded_local(spec, pool).await
    }

    async fn open_range(env: &Arc<ShardEnv>, spec: ShardSpec<'_>) -> Result<Option<Opened>> {
        let file_loc = spec.location.child(sf_manifest::format::layout::SQLITE_SHARD_FILE);
        let meta = match file_loc.store.head(&file_loc.path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                return Err(spec.store_error(format!("reading {}: {e}", file_loc.url), e));
            }
        };
        if spec.row.db_bytes > 0 && meta.size != spec.row.db_bytes {
            return Err(spec.open_error(format!(
                "{} has {} bytes, the manifest records db_bytes {}",
                file_loc.url, meta.size, spec.row.db_bytes
            )));
        }
        if env.settings.verify_checksums
            && let Some(expected) = spec.expected_checksum(Coverage::File)
        {
            // Range mode never stores the file; the check streams it once.
            let res = file_loc
                .store
                .get(&file_loc.path)
                .await
                .map_err(|e| spec.store_error(format!("reading {}: {e}", file_loc.url), e))?;
            let mut hasher = Xxh3::new();
            let mut stream = sf_manifest::storage::body::body_chunks(res);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| spec.store_error(format!("reading {}: {e}", file_loc.url), e))?;
                hasher.update(&chunk);
            }
            let found = file_checksum(&hasher);
            if found != expected.text {
                return Err(Error::ChecksumMismatch {
                    db_id: spec.db_id,
                    url: file_loc.url.clone(),
                    expected: expected.text,
                    found,
                });
            }
        }
        let file = Arc::new(RemoteFile::new(
            env.next_file_id.fetch_add(1, Ordering::Relaxed),
            Arc::clone(&file_loc.store),
            file_loc.path.clone(),
            file_loc.url.clone(),
            meta.size,
            env.settings.range_block_bytes,
            Arc::clone(&env.blocks),
            env.runtime.clone(),
            Arc::clone(&env.counters),
        ));
        let registration =
            vfs::register(Arc::clone(&file)).map_err(|e| spec.open_failed(e, ErrorKind::Internal, None))?;
        let pool = ConnPool::new(
            Source::Remote {
                uri: registration.uri(),
            },
            env.settings.max_idle_connections_per_shard,
        );
        // The first connection reads the header and schema pages: blocking
        // remote I/O, so it runs on the blocking pool.
        let (pool, file, result) = spawn_sqlite(move || {
            let r = pool.open_connection();
            (pool, file, r)
        })
        .await
        .map_err(|e| Error::Internal(format!("range open task failed: {e}")))?;
        let conn = result.map_err(|e| match file.take_error() {
            // The store failed under SQLite: that failure's class, not SQLite's.
            Some(detail) => spec.open_failed(
                format!("SQLite cannot read the shard file by range: {e} ({detail})"),
                detail.kind,
                Some(Box::new(e)),
            ),
            None => spec.open_failed(
                format!("SQLite cannot read the shard file by range: {e}"),
                ErrorKind::Data,
                Some(Box::new(e)),
            ),
        })?;
        pool.seed(conn);
        Ok(Some((
            Backend::Range {
                pool,
                file,
                _registration: registration,
            },
            None,
        )))
    }

    fn read_error(&self, reason: String, kind: ErrorKind, source: Option<Cause>) -> Error {
        Error::ShardRead {
            db_id: self.db_id,
            url: self.url.clone(),
            reason,
            kind,
            source,
        }
    }

    /// A SlateDB read error (`doing`: what failed, after "SlateDB");
    /// unavailable when SlateDB says the store was.
    fn slate_error(&self, doing: &str, e: slatedb::Error) -> Error {
        let kind = slate::error_kind(&e);
        self.read_error(format!("SlateDB{doing}: {e}"), kind, Some(Box::new(e)))
    }

    fn sqlite_error(&self, e: rusqlite::Error, file: Option<&RemoteFile>) -> Error {
        // In range mode an I/O error is usually the store; say what failed,
        // classified as the store's failure.
        match file.and_then(RemoteFile::take_error) {
            Some(detail) => self.read_error(format!("{e} ({detail})"), detail.kind, Some(Box::new(e))),
            None if untrusted::is_interrupted(&e) => self.read_error(
                format!(
                    "the query passed its budget of SQLite steps and was stopped \
                     (the shard's kv is not a plain keyed table): {e}"
                ),
                ErrorKind::Data,
                Some(Box::new(e)),
            ),
            None => self.read_error(e.to_string(), ErrorKind::Data, Some(Box::new(e))),
        }
    }

    /// The value stored for an encoded key, looked up on the calling
    /// thread when the shard answers from local data: always for a shard
    /// in memory, and for a downloaded file when `inline` allows SQLite.
    /// `None` for the others (read by range, SlateDB), which need
    /// [`get`](Self::get). Never on a runtime worker (see
    /// [`Inline`]).
    pub(crate) fn get_now(&self, key: &[u8], inline: Inline) -> Option<Result<Option<Bytes>>> {
        match &self.backend {
            Backend::Memory { index, .. } => Some(Ok(index.get(key).map(Bytes::copy_from_slice))),
            Backend::Local(pool) if inline == Inline::LocalFiles => {
                Some(pool.get(key).map_err(|e| self.sqlite_error(e, None)))
            }
            _ => None,
        }
    }

    /// The value stored for an encoded key.
    pub(crate) async fn get(self: &Arc<Self>, key: &[u8]) -> Result<Option<Bytes>> {
        match &self.backend {
            // SQLite never runs on the runtime's workers: a page that is not
            // in memory blocks on the disk, and a shard from the bucket is
            // not trusted to be cheap (its step budget bounds it, but in
            // milliseconds, not microseconds). The hop costs a few
            // microseconds; docs/performance.md has the figures.
            Backend::Local(_) | Backend::Range { .. } => {
                let key = key.to_vec();
                self.on_sqlite_pool("lookup", move |pool| pool.get(&key)).await
            }
            // The value is copied out, so that no caller's value keeps a
            // released shard's memory alive.
            Backend::Memory { index, .. } => Ok(index.get(key).map(Bytes::copy_from_slice)),
            Backend::Slate(s) => {
                let _permit = self.permit().await?;
                s.get(key).await.map_err(|e| self.slate_error("", e))
            }
        }
    }

    /// The `k` vectors of the shard nearest `query`, exactly, with their
    /// ids and payloads (see `ConnPool::vector_top_k`); on the blocking
    /// pool like every SQLite read. SlateDB shards hold no vectors.
    pub(crate) async fn vector_top_k(
        self: &Arc<Self>,
        query: Arc<[f32]>,
        metric: Metric,
        k: usize,
        max_vectors: u64,
        filter: Option<Arc<PayloadFilter>>,
    ) -> Result<Vec<VectorHit>> {
        if let Backend::Slate(_) = self.backend {
            return Err(self.read_error(
                "a SlateDB shard holds no vector index; vector snapshots use SQLite shards".into(),
                ErrorKind::Config,
                None,
            ));
        }
        let db = self.db_id.0;
        if let Backend::Memory {
            file_bytes, vectors, ..
        } = &self.backend
        {
            let arena = vectors
                .get_or_try_init(|| self.load_vectors(*file_bytes, query.len(), metric))
                .await?;
            if let Some(arena) = arena {
                return self.memory_top_k(Arc::clone(arena), query, k, filter).await;
            }
            // Too large for the memory left: read the file.
        }
        self.on_sqlite_pool("vector search", move |pool| {
            pool.vector_top_k(db, &query, metric, k, max_vectors, filter.as_deref())
        })
        .await
    }

    /// Loads a memory-mode shard's vectors into an arena (see
    /// [`vectors`]), within the reader's memory budget; `None` when they
    /// do not fit.
    async fn load_vectors(
        self: &Arc<Self>,
        file_bytes: u64,
        dim: usize,
        metric: Metric,
    ) -> Result<Option<Arc<VectorArena>>> {
        let budget = Arc::clone(&self.env.memory);
        let loaded = self
            .on_sqlite_pool("vector load", move |pool| {
                pool.with_conn(|conn| VectorArena::load(conn, &budget, file_bytes, dim, metric))
            })
            .await?;
        match &loaded {
            Some(arena) => tracing::debug!(shard = %self.db_id, vectors = arena.len(), "vectors held in memory"),
            None => {
                bump(&self.env.counters.memory_fallbacks, 1);
                tracing::info!(
                    shard = %self.db_id,
                    memory_bytes = self.env.memory.used_bytes(),
                    memory_limit_bytes = self.env.settings.memory_limit_bytes,
                    "the shard's vectors do not fit in the memory limit; searching them in the file"
                );
            }
        }
        Ok(loaded.map(Arc::new))
    }

    /// A search of a memory-mode shard's arena: inline when it is small,
    /// else on the blocking pool (a large scan takes milliseconds, which
    /// a runtime worker must not spend).
    async fn memory_top_k(
        &self,
        arena: Arc<VectorArena>,
        query: Arc<[f32]>,
        k: usize,
        filter: Option<Arc<PayloadFilter>>,
    ) -> Result<Vec<VectorHit>> {
        let db = self.db_id.0;
        let small = arena.is_small() && filter.is_none();
        let scan = move || match &filter {
            Some(f) => arena.top_k(db, &query, k, &mut |p| f.matches(p)),
            None => arena.top_k(db, &query, k, &mut |_| true),
        };
        let result = if small {
            scan()
        } else {
            tokio::task::spawn_blocking(scan)
                .await
                .map_err(|e| Error::Internal(format!("vector search task failed: {e}")))?
        };
        result.map_err(|e| self.sqlite_error(e, None))
    }

    /// Up to `limit` rows in key order, strictly after `after`.
    pub(crate) async fn scan_page(
        self: &Arc<Self>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        match &self.backend {
            Backend::Slate(s) => {
                let _permit = self.permit().await?;
                s.scan_page(after.as_deref(), limit)
                    .await
                    .map_err(|e| self.slate_error(" scan", e))
            }
            // A page reads many B-tree pages: off the runtime's workers.
            Backend::Local(_) | Backend::Memory { .. } | Backend::Range { .. } => {
                self.on_sqlite_pool("scan", move |pool| pool.scan_page(after.as_deref(), limit))
                    .await
            }
        }
    }

    /// Runs `work` on the shard's SQLite connection pool on tokio's
    /// blocking pool (holding a remote permit in range mode, where it does
    /// network I/O); `what` names the task in errors.
    async fn on_sqlite_pool<T: Send + 'static>(
        self: &Arc<Self>,
        what: &str,
        work: impl FnOnce(&ConnPool) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = match self.backend {
            Backend::Range { .. } => Some(self.permit().await?),
            _ => None,
        };
        let this = Arc::clone(self);
        spawn_sqlite(move || {
            let (pool, file) = match &this.backend {
                Backend::Local(pool) | Backend::Memory { pool, .. } => (pool, None),
                Backend::Range { pool, file, .. } => (pool, Some(file.as_ref())),
                Backend::Slate(_) => return Err(Error::Internal("a SlateDB shard has no SQLite pool".into())),
            };
            work(pool).map_err(|e| this.sqlite_error(e, file))
        })
        .await
        .map_err(|e| Error::Internal(format!("{what} task failed: {e}")))?
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.env
            .remote_permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("the reader's permits were closed".into()))
    }

    /// Values of many encoded keys, each with the position it came with.
    pub(crate) async fn get_many(
        self: &Arc<Self>,
        mut keys: Vec<(usize, Vec<u8>)>,
    ) -> Result<Vec<(usize, Option<Bytes>)>> {
        if !matches!(self.backend, Backend::Memory { .. }) {
            // In key order a B-tree's lookups walk its pages in order,
            // which keeps the pages they share hot.
            keys.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        }
        match &self.backend {
            Backend::Memory { index, .. } if keys.len() < MEMORY_PARALLEL_GROUP => Ok(memory_lookups(index, &keys)),
            Backend::Memory { index, .. } => self.memory_get_many(index, keys).await,
            Backend::Local(_) | Backend::Range { .. } => {
                self.on_sqlite_pool("lookup", move |pool| {
                    let values = pool.get_many(&keys)?;
                    Ok(keys.into_iter().map(|(slot, _)| slot).zip(values).collect())
                })
                .await
            }
            Backend::Slate(_) => {
                let mut out = Vec::with_capacity(keys.len());
                for (slot, key) in keys {
                    out.push((slot, self.get(&key).await?));
                }
                Ok(out)
            }
        }
    }

    /// Whether a group of `keys` keys on this shard is better looked up
    /// with other small groups in one blocking task than in its own.
    pub(crate) fn batches_small_groups(&self, keys: usize) -> bool {
        matches!(self.backend, Backend::Local(_)) && keys < PARALLEL_GROUP
    }

    /// Looks up small groups of keys on downloaded shards, one after the
    /// other in one task on the blocking pool: values with their positions.
    pub(crate) async fn get_small_groups(
        groups: Vec<(Arc<Self>, Vec<SlotKey>)>,
    ) -> Result<Vec<(usize, Option<Bytes>)>> {
        spawn_sqlite(move || {
            let mut out = Vec::with_capacity(groups.iter().map(|(_, keys)| keys.len()).sum());
            for (shard, mut keys) in groups {
                let Backend::Local(pool) = &shard.backend else {
                    return Err(Error::Internal(
                        "a batched lookup reached a shard that is not local".into(),
                    ));
                };
                keys.sort_unstable_by(|a, b| a.1.cmp(&b.1));
                let values = pool.get_many(&keys).map_err(|e| shard.sqlite_error(e, None))?;
                out.extend(keys.into_iter().map(|(slot, _)| slot).zip(values));
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Internal(format!("lookup task failed: {e}")))?
    }

    /// Looks `keys` up in a memory-mode shard in tasks of at most
    /// [`MEMORY_TASK_KEYS`] keys on the runtime's workers.
    async fn memory_get_many(
        &self,
        index: &Arc<MemoryShard>,
        keys: Vec<(usize, Vec<u8>)>,
    ) -> Result<Vec<(usize, Option<Bytes>)>> {
        let keys = Arc::new(keys);
        let tasks: Vec<_> = (0..keys.len())
            .step_by(MEMORY_TASK_KEYS)
            .map(|start| {
                let (index, keys) = (Arc::clone(index), Arc::clone(&keys));
                self.env.runtime.spawn(async move {
                    let end = (start + MEMORY_TASK_KEYS).min(keys.len());
                    memory_lookups(&index, &keys[start..end])
                })
            })
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for task in tasks {
            out.extend(
                task.await
                    .map_err(|e| Error::Internal(format!("memory lookup task failed: {e}")))?,
            );
        }
        Ok(out)
    }
}

/// Each key's value in a memory-mode shard, copied out, with its position.
fn memory_lookups(index: &MemoryShard, keys: &[(usize, Vec<u8>)]) -> Vec<(usize, Option<Bytes>)> {
    let mut out = Vec::with_capacity(keys.len());
    index.get_each(keys, |slot, value| out.push((slot, value.map(Bytes::copy_from_slice))));
    out
}
