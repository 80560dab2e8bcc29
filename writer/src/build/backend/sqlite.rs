//! The SQLite backend: one `shard.db` file per shard.
//!
//! Phase 1 builds the file locally. Sorted input (the default: each key
//! once, in key order) is written as SQLite pages directly by
//! [`SqliteFileWriter`], several times faster than SQLite inserting the
//! same rows, with fuller pages. Unsorted input goes through SQLite's
//! `INSERT OR REPLACE` with durability off (the file is a build artifact
//! until uploaded: no journal, no fsync, exclusive locking, a large page
//! cache); [`SqliteBackend::insert_builder`] takes that path for sorted
//! input too, as the reference the page writer is measured against.
//! Phase 2 uploads the file as one object (multipart above a threshold).
//! The checksum is xxh3-128 over the file's bytes, and it doubles as the
//! shard's `checkpoint_id`: readers cache downloaded files by it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::{PutPayload, WriteMultipart};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sf_manifest::format::checksum::{file_checksum, hash_file};
use sf_manifest::format::kv;
use sf_manifest::format::layout::SQLITE_SHARD_FILE;
use sf_manifest::{DbId, ErrorKind, Location};
use xxhash_rust::xxh3::Xxh3;

use super::contract::{
    AttemptTarget, BuildContext, DuplicatePolicy, Row, ShardBackend, ShardBuilder, ShardContent, StagedShard, Uploaded,
    show_key,
};
use super::page_size::{AUTO_PAGE_SIZES, PageSize, SizeStats, recommend};
use super::sqlite_insert::{Insert, InsertError};
use super::sqlite_pages::{PageError, SqliteFileWriter};
use super::sqlite_vec::VectorSpool;
use crate::build::ratelimit::RateLimiter;
use crate::error::{Error, Result};
use crate::route::envelope::split_value;

/// `[output.sqlite]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteSettings {
    /// Page size of shard files, in bytes (512..=65536, a power of two),
    /// or `"auto"`: chosen per shard from its rows (see
    /// [`page_size`](super::page_size)). 4096 matches the reference and
    /// suits ranged reads; larger pages keep big values out of overflow
    /// chains and make smaller trees, but cost more per ranged read.
    pub page_size: PageSize,
    /// Page cache of each shard built through SQLite's inserts, in MiB:
    /// that is only unsorted input (`sort_within_shard = false`), which
    /// wants the whole tree cached. Sorted input is written as pages
    /// directly and uses no cache. Every shard of a build may be open at
    /// once.
    pub cache_mib: u32,
    /// Files above this size, in MiB, are uploaded in parts.
    pub multipart_threshold_mib: u32,
    /// Size of each uploaded part, in MiB (at least 5, S3's minimum).
    pub part_size_mib: u32,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        SqliteSettings {
            page_size: PageSize::default(),
            cache_mib: 64,
            multipart_threshold_mib: 32,
            part_size_mib: 16,
        }
    }
}

impl SqliteSettings {
    /// Checks the settings make sense.
    pub fn validate(&self) -> Result<()> {
        if let PageSize::Fixed(n) = self.page_size
            && (!(512..=65536).contains(&n) || !n.is_power_of_two())
        {
            return Err(Error::config(
                "output.sqlite.page_size",
                format!("{n} is not a power of two between 512 and 65536, nor \"auto\""),
            ));
        }
        if self.cache_mib == 0 {
            return Err(Error::config("output.sqlite.cache_mib", "must be at least 1"));
        }
        if self.part_size_mib < 5 {
            return Err(Error::config(
                "output.sqlite.part_size_mib",
                "must be at least 5 (the smallest part S3 accepts)",
            ));
        }
        Ok(())
    }

    /// The page size a shard starts with: the fixed size, or under
    /// `"auto"` the size its measured rows choose (4096 when they were
    /// not measured: the build measures the finished file then).
    fn initial_page_size(&self, sizes: Option<&SizeStats>) -> u32 {
        match (self.page_size, sizes) {
            (PageSize::Fixed(n), _) => n,
            (PageSize::Auto, Some(s)) => s.choose(),
            (PageSize::Auto, None) => AUTO_PAGE_SIZES[0],
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// The SQLite [`ShardBackend`].
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    settings: SqliteSettings,
}

impl SqliteBackend {
    /// A backend with `settings`.
    pub fn new(settings: SqliteSettings) -> Self {
        SqliteBackend { settings }
    }

    /// Starts a build that goes through SQLite's inserts whatever the
    /// input order: how unsorted input is built, and, for sorted input,
    /// the reference the page writer is checked and measured against.
    pub fn insert_builder(&self, ctx: BuildContext) -> Result<Box<dyn ShardBuilder>> {
        self.settings.validate()?;
        let path = ctx.work_dir.join(SQLITE_SHARD_FILE);
        let db_id = ctx.db_id;
        let conn = Connection::open(&path).map_err(|e| sqlite_err(db_id, "creating the shard file", e))?;
        let page_size = self.settings.initial_page_size(ctx.sizes.as_ref());
        // Durability is pointless for a file that is rebuilt from the input
        // if the process dies; speed is not.
        conn.execute_batch(&format!(
            "PRAGMA page_size = {page};
             PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -{cache_kib};
             {ddl};
             BEGIN;",
            page = page_size,
            ddl = kv::DDL,
            cache_kib = u64::from(self.settings.cache_mib) * 1024,
        ))
        .map_err(|e| sqlite_err(db_id, "preparing the shard file", e))?;
        Ok(Box::new(SqliteBuilder::new(
            Sink::Insert(conn),
            path,
            page_size,
            &self.settings,
            ctx,
        )?))
    }

    /// Starts a build of sorted input written as pages.
    fn page_builder(&self, ctx: BuildContext) -> Result<Box<dyn ShardBuilder>> {
        self.settings.validate()?;
        let path = ctx.work_dir.join(SQLITE_SHARD_FILE);
        let page_size = self.settings.initial_page_size(ctx.sizes.as_ref());
        let writer = SqliteFileWriter::create(&path, page_size).map_err(|e| page_err(ctx.db_id, &path, e))?;
        Ok(Box::new(SqliteBuilder::new(
            Sink::Pages(writer),
            path,
            page_size,
            &self.settings,
            ctx,
        )?))
    }
}

fn sqlite_err(db_id: DbId, what: &str, e: rusqlite::Error) -> Error {
    Error::shard_caused(
        db_id,
        None,
        format!("SQLite failed {what}: {e}"),
        ErrorKind::Internal,
        e,
    )
}

fn page_err(db_id: DbId, path: &Path, e: PageError) -> Error {
    match e {
        PageError::Io(source) => Error::io(format!("shard {db_id}: writing {}", path.display()), source),
        // The row cannot be stored by any SQLite build; retrying is useless.
        e @ PageError::RecordTooBig { .. } => Error::Data(format!("shard {db_id}: {e}")),
        // The builder checks the order first: reaching the writer unsorted
        // is a bug.
        e @ (PageError::OutOfOrder { .. } | PageError::Duplicate { .. }) => {
            Error::Internal(format!("shard {db_id}: {e}"))
        }
        e => Error::shard(db_id, None, e.to_string(), ErrorKind::Internal),
    }
}

#[async_trait]
impl ShardBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn builder(&self, ctx: BuildContext) -> Result<Box<dyn ShardBuilder>> {
        if ctx.sorted {
            self.page_builder(ctx)
        } else {
            self.insert_builder(ctx)
        }
    }

    async fn verify(&self, attempt: &Location, db_id: DbId, expected: &ShardContent) -> Result<()> {
        if sf_manifest::publish::failpoint::sabotaged("skip-checksum-reread") {
            return Ok(());
        }
        let file = attempt.child(SQLITE_SHARD_FILE);
        let fail = |message: String| Error::Verification {
            db_id,
            url: file.url.clone(),
            message,
        };
        if let Some(path) = file.local_file() {
            // On the local file system: open, read to the end, close; no
            // metadata asked, no task per piece read.
            let found = tokio::task::spawn_blocking(move || hash_file(&path))
                .await
                .map_err(|e| Error::Internal(format!("re-reading {}: {e}", file.url)))?;
            let found = match found {
                Ok((found, _)) => found,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(fail("the shard file is missing".into()));
                }
                Err(e) => return Err(Error::io(format!("reading {} back", file.url), e)),
            };
            if found != expected.checksum {
                return Err(fail(format!("checksum {found}, writer reported {}", expected.checksum)));
            }
            return Ok(());
        }
        let res = file.store.get(&file.path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => fail("the shard file is missing".into()),
            e => Error::shard_store(db_id, None, format!("reading {} back: {e}", file.url), e),
        })?;
        let mut hasher = Xxh3::new();
        let mut stream = sf_manifest::storage::body::body_chunks(res);
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| Error::shard_store(db_id, None, format!("reading {} back: {e}", file.url), e))?;
            hasher.update(&chunk);
        }
        let found = file_checksum(&hasher);
        if found != expected.checksum {
            return Err(fail(format!("checksum {found}, writer reported {}", expected.checksum)));
        }
        Ok(())
    }
}

/// Where a build's rows go.
enum Sink {
    /// SQLite's inserts, in any order.
    Insert(Connection),
    /// Pages written directly; sorted input only.
    Pages(SqliteFileWriter),
}

struct SqliteBuilder {
    sink: Sink,
    path: PathBuf,
    limiter: RateLimiter,
    rows_in: u64,
    /// First and last key added (sorted input only: they are min and max).
    first_key: Option<Vec<u8>>,
    last_key: Vec<u8>,
    settings: SqliteSettings,
    ctx: BuildContext,
    /// A unified build's vectors, waiting for the kv rows to be written.
    vectors: Option<VectorSpool>,
    /// The file's page size so far.
    page_size: u32,
}

impl SqliteBuilder {
    fn new(sink: Sink, path: PathBuf, page_size: u32, settings: &SqliteSettings, ctx: BuildContext) -> Result<Self> {
        let vectors = match ctx.vector {
            Some(layout) => Some(VectorSpool::create(&ctx.work_dir, layout)?),
            None => None,
        };
        Ok(SqliteBuilder {
            vectors,
            sink,
            path,
            limiter: RateLimiter::new(ctx.limits),
            rows_in: 0,
            first_key: None,
            last_key: Vec::new(),
            settings: settings.clone(),
            ctx,
            page_size,
        })
    }

    /// The insert for this build. Sorted input has each key once, so a
    /// plain insert suffices; `OR REPLACE` would cost a second B-tree seek
    /// per row.
    fn insert_sql(&self) -> &'static str {
        match (self.ctx.sorted, self.ctx.on_duplicate) {
            (false, DuplicatePolicy::LastWins) => kv::INSERT_OR_REPLACE,
            _ => kv::INSERT,
        }
    }

    /// Checks sorted input really is strictly ascending (a broken sort
    /// would otherwise store a shard whose recorded key range is wrong).
    fn check_order(&mut self, key: &[u8]) -> Result<()> {
        if self.first_key.is_none() {
            self.first_key = Some(key.to_vec());
        } else if key <= self.last_key.as_slice() {
            return Err(Error::Internal(format!(
                "shard {}: rows arrived out of key order although sorted ({} after {})",
                self.ctx.db_id,
                show_key(key, self.ctx.key_encoding),
                show_key(&self.last_key, self.ctx.key_encoding),
            )));
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        Ok(())
    }
}

impl ShardBuilder for SqliteBuilder {
    fn add(&mut self, rows: &[Row<'_>]) -> Result<()> {
        let Some(spool) = &mut self.vectors else {
            return self.add_kv(rows);
        };
        // Each value carries its row's vector; a vector-only shard stores
        // the vectors alone.
        let (dim, vector_only) = self.ctx.vector.map_or((0, false), |v| (v.dim as usize, v.vector_only));
        let mut kv_rows = Vec::with_capacity(if vector_only { 0 } else { rows.len() });
        for (key, value) in rows {
            let (kv, vector) =
                split_value(value, dim).map_err(|e| Error::Internal(format!("shard {}: {e}", self.ctx.db_id)))?;
            if let Some(v) = vector {
                spool.push(v)?;
            }
            if !vector_only {
                kv_rows.push((*key, kv));
            }
        }
        if vector_only {
            let bytes = rows.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() as u64;
            self.limiter.acquire_blocking(rows.len() as u64, bytes);
            return Ok(());
        }
        self.add_kv(&kv_rows)
    }

    fn finish(self: Box<Self>) -> Result<Arc<dyn StagedShard>> {
        self.finish_shard()
    }
}

impl SqliteBuilder {
    fn add_kv(&mut self, rows: &[Row<'_>]) -> Result<()> {
        let db_id = self.ctx.db_id;
        let bytes = rows.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() as u64;
        self.limiter.acquire_blocking(rows.len() as u64, bytes);
        if self.ctx.sorted {
            for (key, _) in rows {
                self.check_order(key)?;
            }
        }
        let sql = self.insert_sql();
        let conn = match &mut self.sink {
            Sink::Pages(writer) => {
                for (key, value) in rows {
                    writer.push(key, value).map_err(|e| page_err(db_id, &self.path, e))?;
                }
                self.rows_in += rows.len() as u64;
                return Ok(());
            }
            Sink::Insert(conn) => conn,
        };
        let failed = |what: &str, e: InsertError| {
            Error::shard(
                db_id,
                None,
                format!("SQLite failed {what}: {}", e.message),
                ErrorKind::Internal,
            )
        };
        let mut insert = Insert::prepare(conn, sql).map_err(|e| failed("preparing the insert", e))?;
        for (key, value) in rows {
            if let Err(e) = insert.insert(key, value) {
                return Err(if e.is_constraint() {
                    Error::DuplicateKey {
                        db_id,
                        key: show_key(key, self.ctx.key_encoding),
                    }
                } else {
                    failed("inserting a row", e)
                });
            }
        }
        self.rows_in += rows.len() as u64;
        Ok(())
    }

    fn finish_shard(self: Box<Self>) -> Result<Arc<dyn StagedShard>> {
        let mut this = *self;
        let db_id = this.ctx.db_id;
        // Under "auto" without sizes measured beforehand (unsorted input),
        // the finished file is measured and rewritten if another size wins.
        let settle = this.settings.page_size == PageSize::Auto && this.ctx.sizes.is_none();
        // The page writer hashes the file it just wrote through the same
        // open file, unless the vector tables are still to be added.
        let mut hashed = None;
        let counted = match this.sink {
            Sink::Pages(writer) if this.vectors.is_none() && !settle => {
                let (summary, checksum) = writer.finish_hashed().map_err(|e| page_err(db_id, &this.path, e))?;
                hashed = Some((checksum, summary.bytes));
                None
            }
            Sink::Pages(writer) => {
                writer.finish().map_err(|e| page_err(db_id, &this.path, e))?;
                None
            }
            Sink::Insert(conn) => {
                conn.execute_batch("COMMIT")
                    .map_err(|e| sqlite_err(db_id, "committing the shard", e))?;
                let counted = if this.ctx.sorted {
                    None
                } else {
                    // Rows replaced each other in arrival order: ask the table.
                    let (count, min, max): (i64, Option<Vec<u8>>, Option<Vec<u8>>) = conn
                        .query_row(kv::STATS, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .map_err(|e| sqlite_err(db_id, "counting rows", e))?;
                    Some((u64::try_from(count).unwrap_or(0), min, max))
                };
                conn.close()
                    .map_err(|(_, e)| sqlite_err(db_id, "closing the shard file", e))?;
                counted
            }
        };
        if settle {
            this.page_size = repage(&this.path, db_id, this.page_size)?;
        }
        // The vector tables go into the finished file, before it is
        // hashed: the checksum and size cover the shard as uploaded.
        let vectors = match this.vectors {
            Some(spool) => Some(spool.write_tables(&this.path, db_id)?),
            None => None,
        };
        let (row_count, min_key, max_key) = match (vectors, this.ctx.vector) {
            // A vector-only shard's rows are its vectors; it has no keys.
            (Some(n), Some(v)) if v.vector_only => (n, None, None),
            _ => counted.unwrap_or_else(|| {
                let max = this.first_key.is_some().then_some(this.last_key);
                (this.rows_in, this.first_key, max)
            }),
        };
        // One sequential read of a file just written (so in the page
        // cache). The page writer cannot hash as it writes: pages 1 and 2
        // come first in the file but are known only at the end.
        let (checksum, size) = match hashed {
            Some(h) => h,
            None => hash_file(&this.path).map_err(|e| Error::io("hashing the shard file", e))?,
        };
        Ok(Arc::new(StagedSqlite {
            path: this.path,
            size,
            settings: this.settings,
            content: ShardContent {
                row_count,
                duplicates: this.rows_in.saturating_sub(row_count),
                min_key,
                max_key,
                checksum,
                objects_checksum: None,
                page_size: Some(this.page_size),
            },
        }))
    }
}

/// The reference's way to settle `"auto"` on a finished file: measure its
/// rows (95th-percentile value length, longest key) and, when they choose
/// a page size other than the file's `current` one, rewrite the file at
/// that size (`VACUUM`). Returns the file's page size.
fn repage(path: &Path, db_id: DbId, current: u32) -> Result<u32> {
    let conn = Connection::open(path).map_err(|e| sqlite_err(db_id, "reopening the shard file", e))?;
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
        .map_err(|e| sqlite_err(db_id, "counting rows", e))?;
    if rows == 0 {
        return Ok(current);
    }
    // Nearest rank: ceil(0.95 * n), 1-based.
    let offset = ((rows as u64 * 95).div_ceil(100) - 1) as i64;
    let (p95, max_key): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT length(v) FROM kv ORDER BY length(v) LIMIT 1 OFFSET ?1), (SELECT max(length(k)) FROM kv)",
            [offset],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| sqlite_err(db_id, "measuring rows", e))?;
    let target = recommend(p95.max(0) as u64, max_key.max(0) as u64);
    if target != current {
        conn.execute_batch(&format!("PRAGMA page_size = {target}; VACUUM;"))
            .map_err(|e| sqlite_err(db_id, "rewriting the shard file at its chosen page size", e))?;
    }
    conn.close()
        .map_err(|(_, e)| sqlite_err(db_id, "closing the shard file", e))?;
    Ok(target)
}

#[derive(Debug)]
struct StagedSqlite {
    path: PathBuf,
    size: u64,
    settings: SqliteSettings,
    content: ShardContent,
}

#[async_trait]
impl StagedShard for StagedSqlite {
    fn content(&self) -> &ShardContent {
        &self.content
    }

    async fn upload(&self, target: &AttemptTarget) -> Result<Uploaded> {
        let file = target.location.child(SQLITE_SHARD_FILE);
        let fail = |e: object_store::Error| {
            Error::shard_store(
                target.db_id,
                Some(target.attempt),
                format!("uploading {}: {e}", file.url),
                e,
            )
        };
        let read_err = |e: std::io::Error| Error::io(format!("reading {}", self.path.display()), e);
        if let Some(dest) = file.local_file() {
            let (from, url) = (self.path.clone(), file.url.clone());
            tokio::task::spawn_blocking(move || place_local_file(&from, &dest))
                .await
                .map_err(|e| Error::Internal(format!("placing {url}: {e}")))?
                .map_err(|e| {
                    let kind = sf_manifest::error::io_error_kind(&e);
                    Error::shard_caused(
                        target.db_id,
                        Some(target.attempt),
                        format!("placing {}: {e}", file.url),
                        kind,
                        e,
                    )
                })?;
        } else if self.size <= u64::from(self.settings.multipart_threshold_mib) * MIB {
            let bytes = tokio::fs::read(&self.path).await.map_err(read_err)?;
            file.store
                .put(&file.path, PutPayload::from(bytes))
                .await
                .map_err(fail)?;
        } else {
            let part = (u64::from(self.settings.part_size_mib) * MIB) as usize;
            let upload = file.store.put_multipart(&file.path).await.map_err(fail)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
            let mut f = tokio::fs::File::open(&self.path).await.map_err(read_err)?;
            let mut buf = vec![0u8; part];
            loop {
                use tokio::io::AsyncReadExt;
                let n = f.read(&mut buf).await.map_err(read_err)?;
                if n == 0 {
                    break;
                }
                // Bounded memory: at most a few parts in flight.
                writer.wait_for_capacity(4).await.map_err(fail)?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map_err(fail)?;
        }
        Ok(Uploaded {
            db_bytes: self.size,
            checkpoint_id: self.content.checksum.trim_start_matches("xxh3_128:").to_string(),
            objects_checksum: None,
        })
    }
}

/// Puts the staged file at `dest` on the same machine: a hard link when
/// both are on one file system (no bytes copied; one system call into the
/// claimed attempt folder), a copy otherwise. The file appears under its
/// name complete or not at all, as with a store's put: a link names a
/// finished file, and a copy is written to a staging name in the same
/// folder and renamed. A link never replaces an existing `dest`. The
/// staged file is never written again, so sharing it is safe.
fn place_local_file(from: &Path, dest: &Path) -> std::io::Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no parent folder", dest.display())))?;
    match std::fs::hard_link(from, dest) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(e),
        // The attempt folder is claimed, so it exists; create it anyway
        // when it does not (a target nobody claimed).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            if std::fs::hard_link(from, dest).is_ok() {
                return Ok(());
            }
        }
        // Another file system: copy.
        Err(_) => {}
    }
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("shard");
    let staging = dir.join(format!(".{name}.{}.partial", crate::build::hostname::pid()));
    let _ = std::fs::remove_file(&staging);
    std::fs::copy(from, &staging)?;
    std::fs::rename(&staging, dest).inspect_err(|_| {
        let _ = std::fs::remove_file(&staging);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::backend::contract::DuplicatePolicy;
    use crate::build::ratelimit::RateLimits;
    use sf_manifest::{Attempt, KeyEncoding, StorageOptions};

    fn ctx(dir: &Path, on_duplicate: DuplicatePolicy, sorted: bool) -> BuildContext {
        BuildContext {
            db_id: DbId(3),
            work_dir: dir.to_path_buf(),
            on_duplicate,
            sorted,
            limits: RateLimits::default(),
            key_encoding: KeyEncoding::U64Be,
            vector: None,
            sizes: None,
        }
    }

    fn rows(keys: &[u64], tag: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        keys.iter()
            .map(|k| (k.to_be_bytes().to_vec(), format!("{tag}-{k}").into_bytes()))
            .collect()
    }

    fn add(b: &mut Box<dyn ShardBuilder>, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let refs: Vec<Row<'_>> = rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        b.add(&refs)
    }

    fn read_rows(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let c = Connection::open(path).expect("open");
        let mut s = c.prepare("SELECT k, v FROM kv ORDER BY k").expect("prepare");
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    }

    fn target(root: &str, attempt: &str) -> AttemptTarget {
        let root = sf_manifest::resolve(root, &StorageOptions::new()).expect("resolve");
        AttemptTarget {
            db_id: DbId(3),
            attempt: Attempt(0),
            location: root.child(attempt),
            limits: RateLimits::default(),
        }
    }

    #[tokio::test]
    async fn builds_uploads_and_verifies_a_shard() {
        let work = tempfile::tempdir().expect("tmp");
        let out = tempfile::tempdir().expect("tmp");
        let backend = SqliteBackend::new(SqliteSettings {
            multipart_threshold_mib: 1,
            part_size_mib: 5,
            ..SqliteSettings::default()
        });
        let mut b = backend
            .builder(ctx(work.path(), DuplicatePolicy::Error, true))
            .expect("builder");
        let all: Vec<u64> = (0..60_000).collect();
        for chunk in all.chunks(7_000) {
            add(&mut b, &rows(chunk, "v")).expect("add");
        }
        let staged = b.finish().expect("finish");
        let c = staged.content().clone();
        assert_eq!(c.row_count, 60_000);
        assert_eq!(c.duplicates, 0);
        assert_eq!(c.min_key, Some(0u64.to_be_bytes().to_vec()));
        assert_eq!(c.max_key, Some(59_999u64.to_be_bytes().to_vec()));
        assert!(c.checksum.starts_with("xxh3_128:") && c.checksum.len() == 9 + 32);

        // On the local file system the file is placed, not copied.
        let local = target(&format!("file://{}", out.path().display()), "attempt=00");
        let up = staged.upload(&local).await.expect("upload");
        assert!(up.db_bytes > MIB, "big enough to go multipart: {}", up.db_bytes);
        assert_eq!(up.checkpoint_id.len(), 32);
        let file = out.path().join("attempt=00/shard.db");
        assert_eq!(std::fs::metadata(&file).expect("uploaded").len(), up.db_bytes);
        let names: Vec<_> = std::fs::read_dir(out.path().join("attempt=00"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["shard.db"], "no staging file is left behind");
        let stored = read_rows(&file);
        assert_eq!(stored.len(), 60_000);
        assert_eq!(stored[6].1, b"v-6");
        backend.verify(&local.location, DbId(3), &c).await.expect("verify");

        // Elsewhere it goes through the store, in parts.
        let remote = target("memory://sqlite-upload-test/snap", "attempt=01");
        let up_remote = staged.upload(&remote).await.expect("upload to a store");
        assert_eq!(up_remote, up);
        backend.verify(&remote.location, DbId(3), &c).await.expect("verify");

        // A tampered file fails verification, naming the shard.
        std::fs::remove_file(&file).expect("unlink the placed file");
        std::fs::copy(staged_path(&work), &file).expect("an own copy");
        let conn = Connection::open(&file).expect("open");
        conn.execute("UPDATE kv SET v = x'00' WHERE k = ?1", [6u64.to_be_bytes().to_vec()])
            .expect("tamper");
        drop(conn);
        let e = backend
            .verify(&local.location, DbId(3), &c)
            .await
            .expect_err("tampered");
        assert!(
            e.to_string().contains("shard 3") && e.to_string().contains("checksum"),
            "{e}"
        );
    }

    fn staged_path(work: &tempfile::TempDir) -> PathBuf {
        work.path().join(SQLITE_SHARD_FILE)
    }

    #[test]
    fn unsorted_rows_replace_in_arrival_order() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SqliteBackend::new(SqliteSettings::default());
        let mut b = backend
            .builder(ctx(work.path(), DuplicatePolicy::LastWins, false))
            .expect("builder");
        add(&mut b, &rows(&[9, 2, 5, 7], "v")).expect("add");
        add(&mut b, &rows(&[5, 1, 7], "new")).expect("duplicates replace");
        let c = b.finish().expect("finish").content().clone();
        assert_eq!((c.row_count, c.duplicates), (5, 2));
        assert_eq!(c.min_key, Some(1u64.to_be_bytes().to_vec()));
        assert_eq!(c.max_key, Some(9u64.to_be_bytes().to_vec()));
        let stored = read_rows(&staged_path(&work));
        assert_eq!(stored[2], (5u64.to_be_bytes().to_vec(), b"new-5".to_vec()));
        assert_eq!(stored[3], (7u64.to_be_bytes().to_vec(), b"new-7".to_vec()));
    }

    #[test]
    fn duplicate_keys_fail_when_asked() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SqliteBackend::new(SqliteSettings::default());
        let mut b = backend
            .builder(ctx(work.path(), DuplicatePolicy::Error, false))
            .expect("builder");
        add(&mut b, &rows(&[1, 2, 3], "v")).expect("add");
        let e = add(&mut b, &rows(&[4, 2], "v")).expect_err("duplicate");
        assert_eq!(
            e.to_string(),
            "shard 3: duplicate key 2 (on_duplicate = \"error\"; use \"last_wins\" to keep the last row)"
        );
    }

    #[test]
    fn sorted_input_out_of_order_is_refused() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SqliteBackend::new(SqliteSettings::default());
        let mut b = backend
            .builder(ctx(work.path(), DuplicatePolicy::LastWins, true))
            .expect("builder");
        add(&mut b, &rows(&[1, 2, 3], "v")).expect("add");
        let e = add(&mut b, &rows(&[3], "v")).expect_err("not strictly ascending");
        assert!(
            e.to_string().contains("out of key order") && e.to_string().contains("3 after 3"),
            "{e}"
        );
    }

    #[test]
    fn sorted_input_is_written_as_pages_holding_what_inserts_hold() {
        let (pages_dir, insert_dir) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        let backend = SqliteBackend::new(SqliteSettings::default());
        let mut pages = backend
            .builder(ctx(pages_dir.path(), DuplicatePolicy::Error, true))
            .expect("builder");
        let mut inserts = backend
            .insert_builder(ctx(insert_dir.path(), DuplicatePolicy::Error, true))
            .expect("insert builder");
        let all: Vec<u64> = (0..20_000).map(|i| i * 3).collect();
        for chunk in all.chunks(4096) {
            let rows = rows(chunk, "value");
            add(&mut pages, &rows).expect("add pages");
            add(&mut inserts, &rows).expect("add inserts");
        }
        let pages = pages.finish().expect("finish pages").content().clone();
        let inserts = inserts.finish().expect("finish inserts").content().clone();
        assert_eq!(pages.row_count, 20_000);
        assert_eq!(
            (pages.row_count, pages.duplicates, &pages.min_key, &pages.max_key),
            (
                inserts.row_count,
                inserts.duplicates,
                &inserts.min_key,
                &inserts.max_key
            )
        );
        let (pages_file, insert_file) = (staged_path(&pages_dir), staged_path(&insert_dir));
        assert_eq!(read_rows(&pages_file), read_rows(&insert_file));
        let (checksum, size) = hash_file(&pages_file).expect("hash");
        assert_eq!(pages.checksum, checksum);
        // Inserts leave pages partly empty; pages are written full.
        let insert_size = std::fs::metadata(&insert_file).expect("insert file").len();
        assert!(
            size < insert_size,
            "{size} bytes as pages, {insert_size} through inserts"
        );
        let c = Connection::open(&pages_file).expect("open");
        let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("check");
        assert_eq!(check, "ok");
    }

    #[test]
    fn a_row_too_big_for_sqlite_is_a_data_error() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SqliteBackend::new(SqliteSettings::default());
        let mut b = backend
            .builder(ctx(work.path(), DuplicatePolicy::Error, true))
            .expect("builder");
        // Never read, so never touched: calloc'd pages cost no memory.
        let huge = vec![0u8; 1_000_000_000];
        let e = b.add(&[(&7u64.to_be_bytes()[..], &huge[..])]).expect_err("too big");
        assert!(matches!(e, Error::Data(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("shard 3: row 1: its record would be 1000000015 bytes"),
            "{e}"
        );
    }

    #[test]
    fn auto_chooses_the_page_size_from_the_rows_on_either_path() {
        // 3000-byte values: 16 KiB keeps them whole (8 KiB holds 2030).
        let rows: Vec<(Vec<u8>, Vec<u8>)> = (0..300u64)
            .map(|k| {
                (
                    k.to_be_bytes().to_vec(),
                    vec![(k % 251) as u8; if k % 50 == 0 { 70_000 } else { 3000 }],
                )
            })
            .collect();
        let mut sizes = SizeStats::default();
        rows.iter().for_each(|(k, v)| sizes.add(k.len(), v.len()));
        assert_eq!(sizes.choose(), 16384);
        let backend = SqliteBackend::new(SqliteSettings {
            page_size: PageSize::Auto,
            ..SqliteSettings::default()
        });
        let sorted = |dir: &Path, sizes: Option<SizeStats>| BuildContext {
            sizes,
            ..ctx(dir, DuplicatePolicy::Error, true)
        };
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
        let builders = [
            // Measured beforehand: pages of the chosen size from the start.
            backend.builder(sorted(dirs[0].path(), Some(sizes))).expect("pages"),
            // Not measured: the finished file is measured and rewritten.
            backend.builder(sorted(dirs[1].path(), None)).expect("pages"),
            backend
                .builder(ctx(dirs[2].path(), DuplicatePolicy::Error, false))
                .expect("inserts"),
        ];
        for (mut b, dir) in builders.into_iter().zip(&dirs) {
            add(&mut b, &rows).expect("add");
            let content = b.finish().expect("finish").content().clone();
            assert_eq!(content.page_size, Some(16384));
            let file = staged_path(dir);
            assert_eq!(read_rows(&file), rows);
            let c = Connection::open(&file).expect("open");
            let (size, check): (i64, String) = c
                .query_row("SELECT * FROM pragma_page_size, pragma_integrity_check", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .expect("pragmas");
            assert_eq!((size, check.as_str()), (16384, "ok"));
            assert_eq!(content.checksum, hash_file(&file).expect("hash").0);
        }
        // An empty shard keeps the reference's 4096.
        let dir = tempfile::tempdir().expect("tmp");
        let b = backend
            .builder(sorted(dir.path(), Some(SizeStats::default())))
            .expect("empty");
        assert_eq!(b.finish().expect("finish").content().page_size, Some(4096));
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let s = SqliteSettings {
            page_size: PageSize::Fixed(1000),
            ..SqliteSettings::default()
        };
        assert!(s.validate().expect_err("page size").to_string().contains("page_size"));
    }
}
