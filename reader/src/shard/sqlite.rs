//! SQLite shards: a pool of read-only connections over a local cached file
//! (download mode) or a remote file through the range VFS (range mode).
//!
//! A `rusqlite::Connection` is `Send` but not `Sync`, so concurrent
//! lookups on one shard each take a connection from the pool (opening one
//! more when all are busy) and put it back afterwards. Connections open the
//! file with `immutable=1`: shard files never change once published (and
//! cached files are named by content), so SQLite takes no locks and checks
//! for no journal, which keeps a warm lookup at a few microseconds.
//!
//! SQLite never runs on the async runtime's workers: every use of a
//! connection goes through [`spawn_sqlite`], on tokio's blocking pool, so
//! that a page read from a cold disk, or a hostile shard spending its step
//! budget, never holds a worker that other requests need. Debug builds
//! assert it at every connection taken or opened.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use rusqlite::OptionalExtension;
use rusqlite::{Connection, OpenFlags};
use sf_manifest::format::kv;
use sf_manifest::format::untrusted::{self, Budget};
use sf_manifest::format::vector::{Chunk, Metric, VectorId, f32s};
use sf_router::filter::PayloadFilter;
use sf_router::vector::{Hit, TopK, distance};

/// SQLite VM steps one point lookup (or one batch of [`BATCH`] keys) may
/// take. A lookup in a real `kv` table takes a few dozen; a file whose
/// `kv` makes a lookup take more (a view, a table without its key index)
/// is not a shard, and its query is stopped with an error.
pub(crate) const LOOKUP_STEP_BUDGET: u64 = 100_000;
/// SQLite VM steps a scan may take per row of its page.
pub(crate) const SCAN_STEPS_PER_ROW: u64 = 1_000;

thread_local! {
    /// Set while a [`spawn_sqlite`] task runs on this thread.
    static SQLITE_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work`, which uses SQLite, on tokio's blocking pool.
pub(crate) fn spawn_sqlite<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> tokio::task::JoinHandle<T> {
    /// Clears the mark when the task ends, even by a panic: a blocking-pool
    /// thread may later become a runtime worker.
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            SQLITE_TASK.with(|m| m.set(false));
        }
    }
    tokio::task::spawn_blocking(move || {
        SQLITE_TASK.with(|m| m.set(true));
        let _mark = Mark;
        work()
    })
}

/// Whether SQLite may run on this thread: in a [`spawn_sqlite`] task, or
/// on a thread outside any runtime (tests, tools).
pub(crate) fn sqlite_may_run_here() -> bool {
    SQLITE_TASK.with(Cell::get) || tokio::runtime::Handle::try_current().is_err()
}

/// Where connections come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// A local file (download mode), memory-mapped up to `mmap_bytes`.
    Local { path: PathBuf, mmap_bytes: u64 },
    /// A registered remote file, opened through the range VFS.
    Remote { uri: String },
}

/// Connections over one shard file; see the module docs.
#[derive(Debug)]
pub(crate) struct ConnPool {
    source: Source,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

/// SQLite's `file:` URI of a local path (`%`, `?` and `#` escaped).
fn file_uri(path: &Path) -> String {
    let mut out = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out.push_str("?immutable=1");
    out
}

impl ConnPool {
    pub(crate) fn new(source: Source, max_idle: usize) -> Self {
        ConnPool {
            source,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // Connections left in a poisoned pool are still whole: a panic
        // cannot happen while one is being pushed or popped.
        sf_manifest::sync::lock(&self.idle)
    }

    /// Opens a connection, hardened for a file from the bucket
    /// ([`untrusted::harden`]), and checks the file is a shard: `kv` is a
    /// table with columns `k` and `v`.
    pub(crate) fn open_connection(&self) -> rusqlite::Result<Connection> {
        debug_assert!(sqlite_may_run_here(), "a shard opened on an async runtime worker");
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let mut conn = match &self.source {
            Source::Local { path, mmap_bytes } => {
                let conn = Connection::open_with_flags(file_uri(path), flags)?;
                // Memory-mapped reads skip a copy and a syscall per page.
                conn.execute_batch(&format!("PRAGMA mmap_size = {mmap_bytes}; PRAGMA query_only = 1;"))?;
                conn
            }
            Source::Remote { uri } => {
                let conn = Connection::open_with_flags_and_vfs(uri, flags, super::vfs::VFS_NAME)?;
                conn.execute_batch("PRAGMA query_only = 1;")?;
                conn
            }
        };
        untrusted::harden(&mut conn)?;
        if let Some(reason) = untrusted::check_table(&conn, kv::TABLE, &[kv::KEY_COLUMN, kv::VALUE_COLUMN])? {
            return Err(not_a_shard(reason));
        }
        conn.prepare_cached(kv::LOOKUP)?;
        Ok(conn)
    }

    fn take(&self) -> rusqlite::Result<Connection> {
        debug_assert!(sqlite_may_run_here(), "a shard lookup on an async runtime worker");
        let pooled = self.idle().pop();
        match pooled {
            Some(c) => Ok(c),
            None => self.open_connection(),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Runs `work` on a connection of the pool (kept for reuse when it
    /// succeeds).
    pub(crate) fn with_conn<T>(&self, work: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let conn = self.take()?;
        let out = work(&conn)?;
        self.give_back(conn);
        Ok(out)
    }

    /// Adds an already opened connection to the pool.
    pub(crate) fn seed(&self, conn: Connection) {
        self.give_back(conn);
    }

    /// The value stored for `key`.
    pub(crate) fn get(&self, key: &[u8]) -> rusqlite::Result<Option<Bytes>> {
        let conn = self.take()?;
        let result = {
            let _budget = Budget::start(LOOKUP_STEP_BUDGET);
            lookup(&conn, key)
        };
        // A connection whose query failed (an I/O error in range mode) is
        // dropped rather than reused.
        if result.is_ok() {
            self.give_back(conn);
        }
        result
    }

    /// Looks up every key of `(slot, key)` on one connection; the values
    /// come back in the same order.
    ///
    /// Keys go in batches of [`BATCH`] through one `k IN (...)` statement:
    /// SQLite then seeks them in one pass of its VM, about twice as fast as
    /// a statement run per key.
    pub(crate) fn get_many(&self, keys: &[(usize, Vec<u8>)]) -> rusqlite::Result<Vec<Option<Bytes>>> {
        let conn = self.take()?;
        let mut values = Vec::with_capacity(keys.len());
        {
            let mut stmt = conn.prepare_cached(batch_sql())?;
            let mut found: Vec<(Vec<u8>, Bytes)> = Vec::with_capacity(BATCH);
            for chunk in keys.chunks(BATCH) {
                let _budget = Budget::start(LOOKUP_STEP_BUDGET);
                for i in 0..BATCH {
                    match chunk.get(i) {
                        Some((_, key)) => stmt.raw_bind_parameter(i + 1, key.as_slice())?,
                        // NULL matches nothing.
                        None => stmt.raw_bind_parameter(i + 1, rusqlite::types::Null)?,
                    }
                }
                found.clear();
                let mut rows = stmt.raw_query();
                while let Some(row) = rows.next()? {
                    found.push((
                        row.get_ref(0)?.as_blob()?.to_vec(),
                        Bytes::copy_from_slice(row.get_ref(1)?.as_blob()?),
                    ));
                }
                drop(rows);
                // SQL promises no order; sorting what is nearly sorted is cheap.
                found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                for (_, key) in chunk {
                    values.push(
                        found
                            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
                            .ok()
                            .map(|i| found[i].1.clone()),
                    );
                }
            }
        }
        self.give_back(conn);
        Ok(values)
    }
}

impl ConnPool {
    /// Up to `limit` rows in key order, strictly after `after` (from the
    /// first key when `None`).
    pub(crate) fn scan_page(&self, after: Option<&[u8]>, limit: usize) -> rusqlite::Result<Vec<(Bytes, Bytes)>> {
        let conn = self.take()?;
        let mut out = Vec::with_capacity(limit.min(65_536));
        {
            let _budget =
                Budget::start(LOOKUP_STEP_BUDGET.saturating_add(SCAN_STEPS_PER_ROW.saturating_mul(limit as u64)));
            // `kv.k` is the primary key: both statements walk its index.
            let mut stmt = match after {
                Some(_) => conn.prepare_cached(kv::SCAN_AFTER)?,
                None => conn.prepare_cached(kv::SCAN_FIRST)?,
            };
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            match after {
                Some(k) => {
                    stmt.raw_bind_parameter(1, k)?;
                    stmt.raw_bind_parameter(2, limit)?;
                }
                None => stmt.raw_bind_parameter(1, limit)?,
            }
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next()? {
                out.push((
                    Bytes::copy_from_slice(row.get_ref(0)?.as_blob()?),
                    Bytes::copy_from_slice(row.get_ref(1)?.as_blob()?),
                ));
            }
        }
        self.give_back(conn);
        Ok(out)
    }
}

/// One hit of a vector search in a shard: where, how near, and the id and
/// payload text stored for it.
#[derive(Debug)]
pub(crate) struct VectorHit {
    pub(crate) hit: Hit,
    pub(crate) id: VectorId,
    pub(crate) payload: Option<String>,
}

/// The live vectors of a `vec0` table, chunk by chunk, read from its
/// shadow tables (no extension needed).
const VECTOR_CHUNKS: &str = "SELECT c.validity, c.rowids, v.vectors FROM vec_index_chunks c \
     JOIN vec_index_vector_chunks00 v ON v.rowid = c.chunk_id";
const VECTOR_ID: &str = "SELECT original_id FROM vec_id_map WHERE internal_id = ?1";
const VECTOR_PAYLOAD: &str = "SELECT payload FROM vec_payloads WHERE rowid = ?1";

impl ConnPool {
    /// The `k` vectors of the shard nearest `query` (exact: every live
    /// vector is scored), with their ids and payloads. `max_vectors` (the
    /// manifest's row count) bounds the SQLite steps the scan may take.
    pub(crate) fn vector_top_k(
        &self,
        shard: u32,
        query: &[f32],
        metric: Metric,
        k: usize,
        max_vectors: u64,
        filter: Option<&PayloadFilter>,
    ) -> rusqlite::Result<Vec<VectorHit>> {
        let conn = self.take()?;
        let out = vector_top_k(&conn, shard, query, metric, k, max_vectors, filter)?;
        self.give_back(conn);
        Ok(out)
    }
}

fn vector_top_k(
    conn: &Connection,
    shard: u32,
    query: &[f32],
    metric: Metric,
    k: usize,
    max_vectors: u64,
    filter: Option<&PayloadFilter>,
) -> rusqlite::Result<Vec<VectorHit>> {
    let chunks = max_vectors / 1024 + 2;
    // A filter reads the payload of each candidate that would enter the
    // top k: at most one lookup per vector.
    let filtered = if filter.is_some() {
        SCAN_STEPS_PER_ROW.saturating_mul(max_vectors.saturating_add(1024))
    } else {
        0
    };
    let _budget = Budget::start(
        LOOKUP_STEP_BUDGET
            .saturating_mul(k as u64 + 1)
            .saturating_add(SCAN_STEPS_PER_ROW.saturating_mul(chunks))
            .saturating_add(filtered),
    );
    let mut top = TopK::new(k);
    let mut vector = Vec::with_capacity(query.len());
    {
        let mut stmt = conn.prepare_cached(VECTOR_CHUNKS).map_err(|e| match e.to_string() {
            m if m.contains("no such table") => not_a_shard(format!("it holds no vector index ({m})")),
            _ => e,
        })?;
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next()? {
            let chunk = Chunk::new(
                row.get_ref(0)?.as_blob()?,
                row.get_ref(1)?.as_blob()?,
                row.get_ref(2)?.as_blob()?,
                query.len(),
            )
            .map_err(|e| not_a_shard(format!("vec_index: {e}")))?;
            for (rowid, bytes) in chunk.live() {
                vector.clear();
                vector.extend(f32s(bytes));
                let hit = Hit {
                    shard,
                    rowid,
                    score: distance(metric, query, &vector),
                };
                if let Some(filter) = filter {
                    if !top.admits(&hit) {
                        continue;
                    }
                    let mut payloads = conn.prepare_cached(VECTOR_PAYLOAD)?;
                    let payload = payloads.query_row([rowid], |r| r.get::<_, String>(0)).optional()?;
                    if !filter.matches(payload.as_deref()) {
                        continue;
                    }
                }
                top.push(hit);
            }
        }
    }
    let hits = top.into_sorted();
    let mut out = Vec::with_capacity(hits.len());
    let mut ids = conn.prepare_cached(VECTOR_ID)?;
    let mut payloads = conn.prepare_cached(VECTOR_PAYLOAD)?;
    for hit in hits {
        // A rowid the id map lacks is its own id, as the reference reads it.
        let id = match ids.query_row([hit.rowid], |r| r.get::<_, String>(0)).optional()? {
            Some(text) => {
                VectorId::decode(&text).map_err(|e| not_a_shard(format!("vec_id_map row {}: {e}", hit.rowid)))?
            }
            None => VectorId::Int(hit.rowid),
        };
        let payload = payloads.query_row([hit.rowid], |r| r.get::<_, String>(0)).optional()?;
        out.push(VectorHit { hit, id, payload });
    }
    Ok(out)
}

/// The error for a file that is not a shard.
pub(crate) fn not_a_shard(reason: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        Some(format!("not a shard: {reason}")),
    )
}

/// Keys per batched lookup.
const BATCH: usize = 64;

fn batch_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| kv::lookup_many(BATCH))
}

fn lookup(conn: &Connection, key: &[u8]) -> rusqlite::Result<Option<Bytes>> {
    let mut stmt = conn.prepare_cached(kv::LOOKUP)?;
    stmt.raw_bind_parameter(1, key)?;
    let mut rows = stmt.raw_query();
    match rows.next()? {
        Some(row) => Ok(Some(Bytes::copy_from_slice(row.get_ref(0)?.as_blob()?))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn shard_file(dir: &Path) -> PathBuf {
        let path = dir.join("odd ?#% name.db");
        let conn = Connection::open(&path).expect("create");
        conn.execute_batch(kv::DDL).expect("ddl");
        for i in 0u64..100 {
            conn.execute(
                "INSERT INTO kv VALUES (?1, ?2)",
                (i.to_be_bytes().to_vec(), format!("v{i}").into_bytes()),
            )
            .expect("insert");
        }
        path
    }

    fn local_pool(path: PathBuf) -> Arc<ConnPool> {
        Arc::new(ConnPool::new(
            Source::Local {
                path,
                mmap_bytes: 1 << 20,
            },
            2,
        ))
    }

    #[test]
    fn lookups_run_in_sqlite_tasks_off_the_runtime() {
        let dir = tempfile::tempdir().expect("tmp");
        let pool = local_pool(shard_file(dir.path()));
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let value = rt
            .block_on(async { spawn_sqlite(move || pool.get(&7u64.to_be_bytes())).await })
            .expect("task")
            .expect("get");
        assert_eq!(value.as_deref(), Some(&b"v7"[..]));
        assert!(sqlite_may_run_here(), "outside any runtime");
        let inside = rt.block_on(async { sqlite_may_run_here() });
        assert!(!inside, "a runtime's own thread is not a place for SQLite");
        let after = rt.block_on(async { spawn_sqlite(sqlite_may_run_here).await.expect("task") });
        assert!(after);
    }

    /// The debug assertion that keeps SQLite off the runtime's workers
    /// bites: a lookup made inline in a task panics in debug builds.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "async runtime worker")]
    fn a_lookup_inline_on_a_runtime_worker_is_caught() {
        let dir = tempfile::tempdir().expect("tmp");
        let pool = local_pool(shard_file(dir.path()));
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("rt");
        let _ = rt.block_on(async { pool.get(&7u64.to_be_bytes()) });
    }

    #[test]
    fn pooled_lookups_on_a_local_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = shard_file(dir.path());
        let pool = ConnPool::new(
            Source::Local {
                path,
                mmap_bytes: 1 << 20,
            },
            2,
        );
        assert_eq!(pool.get(&7u64.to_be_bytes()).expect("get").as_deref(), Some(&b"v7"[..]));
        assert_eq!(pool.get(&700u64.to_be_bytes()).expect("miss"), None);
        let keys: Vec<(usize, Vec<u8>)> = [3u64, 500, 99, 3]
            .iter()
            .chain(&(0..150u64).collect::<Vec<_>>())
            .enumerate()
            .map(|(i, k)| (i, k.to_be_bytes().to_vec()))
            .collect();
        let out = pool.get_many(&keys).expect("many");
        assert_eq!(out.len(), keys.len());
        assert_eq!(out[0].as_deref(), Some(&b"v3"[..]));
        assert_eq!(out[1], None);
        assert_eq!(out[2].as_deref(), Some(&b"v99"[..]));
        assert_eq!(out[3].as_deref(), Some(&b"v3"[..]), "a repeated key");
        for (i, v) in out[4..].iter().enumerate() {
            let want = (i < 100).then(|| format!("v{i}").into_bytes());
            assert_eq!(v.as_deref(), want.as_deref(), "key {i}");
        }
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let pool = &pool;
                s.spawn(move || {
                    for i in 0..200u64 {
                        let k = (i + t) % 100;
                        let v = pool.get(&k.to_be_bytes()).expect("get").expect("hit");
                        assert_eq!(v.as_ref(), format!("v{k}").as_bytes());
                    }
                });
            }
        });
        assert!(pool.idle().len() <= 2);
    }

    #[test]
    fn a_file_without_kv_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("x.db");
        Connection::open(&path)
            .expect("create")
            .execute_batch("CREATE TABLE other (a)")
            .expect("ddl");
        let pool = ConnPool::new(Source::Local { path, mmap_bytes: 0 }, 1);
        let e = pool.open_connection().expect_err("no kv").to_string();
        assert!(e.contains("kv"), "{e}");
    }

    #[test]
    fn a_kv_view_over_an_endless_query_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("view.db");
        Connection::open(&path)
            .expect("create")
            .execute_batch(
                "CREATE VIEW kv AS WITH RECURSIVE r(k, v) AS (SELECT x'00', x'00' UNION ALL SELECT k, v FROM r) \
                 SELECT k, v FROM r",
            )
            .expect("ddl");
        let pool = ConnPool::new(Source::Local { path, mmap_bytes: 0 }, 1);
        let e = pool.open_connection().expect_err("a view").to_string();
        assert!(e.contains("kv is a view"), "{e}");
    }

    #[test]
    fn a_lookup_that_passes_its_step_budget_is_stopped() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("unkeyed.db");
        let mut conn = Connection::open(&path).expect("create");
        conn.execute_batch("CREATE TABLE kv (k BLOB, v BLOB)").expect("ddl");
        let tx = conn.transaction().expect("tx");
        for i in 0u64..50_000 {
            tx.execute("INSERT INTO kv VALUES (?1, x'00')", [i.to_be_bytes().to_vec()])
                .expect("insert");
        }
        tx.commit().expect("commit");
        drop(conn);
        let pool = ConnPool::new(Source::Local { path, mmap_bytes: 0 }, 1);
        let e = pool.get(&u64::MAX.to_be_bytes()).expect_err("a full scan");
        assert!(untrusted::is_interrupted(&e), "{e}");
    }
}
