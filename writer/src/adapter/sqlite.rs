//! The SQLite backend: one `shard.db` file per shard.
//!
//! Phase 1 builds the file locally with durability off (the file is a build
//! artifact until uploaded: no journal, no fsync, exclusive locking, a
//! large page cache), inserting rows in key order when the input is sorted.
//! Phase 2 uploads it as one object (multipart above a threshold). The
//! checksum is xxh3-128 over the file's bytes, and it doubles as the
//! shard's `checkpoint_id`: readers cache downloaded files by it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, BinaryArray};
use async_trait::async_trait;
use futures::StreamExt;
use object_store::{PutPayload, WriteMultipart};
use rusqlite::{Connection, ErrorCode};
use serde::{Deserialize, Serialize};
use sf_manifest::layout::SQLITE_SHARD_FILE;
use sf_manifest::{DbId, Location};
use xxhash_rust::xxh3::Xxh3;

use super::{
    AttemptTarget, BuildContext, DuplicatePolicy, ShardBackend, ShardBuilder, ShardContent, StagedShard, Uploaded,
    is_transient, show_key,
};
use crate::error::{Error, Result};
use crate::ratelimit::RateLimiter;

/// `[output.sqlite]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteSettings {
    /// Page size of shard files, in bytes (512..=65536, a power of two).
    /// 4096 matches the reference and suits ranged reads; larger pages make
    /// smaller trees for big values but cost more per ranged read.
    pub page_size: u32,
    /// Page cache of each shard being built, in MiB. Sorted inserts touch
    /// few pages; unsorted ones (`sort_within_shard = false`) want the
    /// whole tree cached. Every shard of a build may be open at once.
    pub cache_mib: u32,
    /// Files above this size, in MiB, are uploaded in parts.
    pub multipart_threshold_mib: u32,
    /// Size of each uploaded part, in MiB (at least 5, S3's minimum).
    pub part_size_mib: u32,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        SqliteSettings {
            page_size: 4096,
            cache_mib: 64,
            multipart_threshold_mib: 32,
            part_size_mib: 16,
        }
    }
}

impl SqliteSettings {
    /// Checks the settings make sense.
    pub fn validate(&self) -> Result<()> {
        if !(512..=65536).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return Err(Error::config(
                "output.sqlite.page_size",
                format!("{} is not a power of two between 512 and 65536", self.page_size),
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
}

fn sqlite_err(db_id: DbId, what: &str, e: rusqlite::Error) -> Error {
    Error::shard(db_id, None, format!("SQLite failed {what}: {e}"), false)
}

/// The DDL of the one table of a shard (FORMAT.md).
pub const KV_DDL: &str = "CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID";

#[async_trait]
impl ShardBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn builder(&self, ctx: BuildContext) -> Result<Box<dyn ShardBuilder>> {
        self.settings.validate()?;
        let path = ctx.work_dir.join(SQLITE_SHARD_FILE);
        let db_id = ctx.db_id;
        let conn = Connection::open(&path).map_err(|e| sqlite_err(db_id, "creating the shard file", e))?;
        // Durability is pointless for a file that is rebuilt from the input
        // if the process dies; speed is not.
        conn.execute_batch(&format!(
            "PRAGMA page_size = {page};
             PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -{cache_kib};
             {KV_DDL};
             BEGIN;",
            page = self.settings.page_size,
            cache_kib = u64::from(self.settings.cache_mib) * 1024,
        ))
        .map_err(|e| sqlite_err(db_id, "preparing the shard file", e))?;
        Ok(Box::new(SqliteBuilder {
            conn,
            path,
            limiter: RateLimiter::new(ctx.limits),
            rows_in: 0,
            settings: self.settings.clone(),
            ctx,
        }))
    }

    async fn verify(&self, attempt: &Location, db_id: DbId, expected: &ShardContent) -> Result<()> {
        let file = attempt.child(SQLITE_SHARD_FILE);
        let fail = |message: String| Error::Verification {
            db_id,
            url: file.url.clone(),
            message,
        };
        let res = file.store.get(&file.path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => fail("the shard file is missing".into()),
            e => Error::shard(db_id, None, format!("reading {} back: {e}", file.url), is_transient(&e)),
        })?;
        let mut hasher = Xxh3::new();
        let mut stream = res.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| Error::shard(db_id, None, format!("reading {} back: {e}", file.url), is_transient(&e)))?;
            hasher.update(&chunk);
        }
        let found = file_checksum(&hasher);
        if found != expected.checksum {
            return Err(fail(format!("checksum {found}, writer reported {}", expected.checksum)));
        }
        Ok(())
    }
}

struct SqliteBuilder {
    conn: Connection,
    path: PathBuf,
    limiter: RateLimiter,
    rows_in: u64,
    settings: SqliteSettings,
    ctx: BuildContext,
}

impl ShardBuilder for SqliteBuilder {
    fn add(&mut self, keys: &BinaryArray, values: &BinaryArray) -> Result<()> {
        let db_id = self.ctx.db_id;
        let bytes = (keys.value_data().len() + values.value_data().len()) as u64;
        self.limiter.acquire_blocking(keys.len() as u64, bytes);
        let sql = match self.ctx.on_duplicate {
            DuplicatePolicy::LastWins => "INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)",
            DuplicatePolicy::Error => "INSERT INTO kv (k, v) VALUES (?1, ?2)",
        };
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(|e| sqlite_err(db_id, "preparing the insert", e))?;
        for i in 0..keys.len() {
            let key = keys.value(i);
            stmt.raw_bind_parameter(1, key)
                .and_then(|_| stmt.raw_bind_parameter(2, values.value(i)))
                .map_err(|e| sqlite_err(db_id, "binding a row", e))?;
            if let Err(e) = stmt.raw_execute() {
                return Err(match e.sqlite_error_code() {
                    Some(ErrorCode::ConstraintViolation) => Error::DuplicateKey {
                        db_id,
                        key: show_key(key, self.ctx.key_encoding),
                    },
                    _ => sqlite_err(db_id, "inserting a row", e),
                });
            }
        }
        self.rows_in += keys.len() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Arc<dyn StagedShard>> {
        let db_id = self.ctx.db_id;
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| sqlite_err(db_id, "committing the shard", e))?;
        let (row_count, min_key, max_key): (i64, Option<Vec<u8>>, Option<Vec<u8>>) = self
            .conn
            .query_row("SELECT count(*), min(k), max(k) FROM kv", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| sqlite_err(db_id, "counting rows", e))?;
        self.conn
            .close()
            .map_err(|(_, e)| sqlite_err(db_id, "closing the shard file", e))?;
        let (checksum, size) = checksum_file(&self.path).map_err(|e| Error::io("hashing the shard file", e))?;
        let row_count = u64::try_from(row_count).unwrap_or(0);
        Ok(Arc::new(StagedSqlite {
            path: self.path,
            size,
            settings: self.settings,
            content: ShardContent {
                row_count,
                duplicates: self.rows_in.saturating_sub(row_count),
                min_key,
                max_key,
                checksum,
            },
        }))
    }
}

fn file_checksum(h: &Xxh3) -> String {
    format!("xxh3_128:{:032x}", h.digest128())
}

/// xxh3-128 of a file's bytes as `xxh3_128:<hex>`, and its size.
pub fn checksum_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((file_checksum(&h), size))
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
            Error::shard(
                target.db_id,
                Some(target.attempt),
                format!("uploading {}: {e}", file.url),
                is_transient(&e),
            )
        };
        let read_err = |e: std::io::Error| Error::io(format!("reading {}", self.path.display()), e);
        if self.size <= u64::from(self.settings.multipart_threshold_mib) * MIB {
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::DuplicatePolicy;
    use crate::ratelimit::RateLimits;
    use sf_manifest::{Attempt, KeyEncoding, StorageOptions};

    fn ctx(dir: &Path, on_duplicate: DuplicatePolicy) -> BuildContext {
        BuildContext {
            db_id: DbId(3),
            work_dir: dir.to_path_buf(),
            on_duplicate,
            sorted: true,
            limits: RateLimits::default(),
            key_encoding: KeyEncoding::U64Be,
        }
    }

    fn rows(keys: &[u64], tag: &str) -> (BinaryArray, BinaryArray) {
        let k: Vec<Vec<u8>> = keys.iter().map(|k| k.to_be_bytes().to_vec()).collect();
        let v: Vec<Vec<u8>> = keys.iter().map(|k| format!("{tag}-{k}").into_bytes()).collect();
        (
            BinaryArray::from_iter_values(k.iter().map(|x| x.as_slice())),
            BinaryArray::from_iter_values(v.iter().map(|x| x.as_slice())),
        )
    }

    fn read_rows(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let c = Connection::open(path).expect("open");
        let mut s = c.prepare("SELECT k, v FROM kv ORDER BY k").expect("prepare");
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
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
            .builder(ctx(work.path(), DuplicatePolicy::LastWins))
            .expect("builder");
        let all: Vec<u64> = (0..60_000).collect();
        for chunk in all.chunks(7_000) {
            let (k, v) = rows(chunk, "v");
            b.add(&k, &v).expect("add");
        }
        let (k, v) = rows(&[5, 7], "new");
        b.add(&k, &v).expect("duplicates replace");
        let staged = b.finish().expect("finish");
        let c = staged.content().clone();
        assert_eq!(c.row_count, 60_000);
        assert_eq!(c.duplicates, 2);
        assert_eq!(c.min_key, Some(0u64.to_be_bytes().to_vec()));
        assert_eq!(c.max_key, Some(59_999u64.to_be_bytes().to_vec()));
        assert!(c.checksum.starts_with("xxh3_128:") && c.checksum.len() == 9 + 32);

        let root =
            sf_manifest::resolve(&format!("file://{}", out.path().display()), &StorageOptions::new()).expect("resolve");
        let target = AttemptTarget {
            db_id: DbId(3),
            attempt: Attempt(0),
            location: root.child("attempt=00"),
            limits: RateLimits::default(),
        };
        let up = staged.upload(&target).await.expect("upload");
        assert!(up.db_bytes > MIB, "big enough to go multipart: {}", up.db_bytes);
        assert_eq!(up.checkpoint_id.len(), 32);
        let file = out.path().join("attempt=00/shard.db");
        assert_eq!(std::fs::metadata(&file).expect("uploaded").len(), up.db_bytes);
        let stored = read_rows(&file);
        assert_eq!(stored.len(), 60_000);
        assert_eq!(stored[5].1, b"new-5");
        assert_eq!(stored[6].1, b"v-6");
        backend.verify(&target.location, DbId(3), &c).await.expect("verify");

        // A tampered file fails verification, naming the shard.
        let conn = Connection::open(&file).expect("open");
        conn.execute("UPDATE kv SET v = x'00' WHERE k = ?1", [6u64.to_be_bytes().to_vec()])
            .expect("tamper");
        drop(conn);
        let e = backend
            .verify(&target.location, DbId(3), &c)
            .await
            .expect_err("tampered");
        assert!(
            e.to_string().contains("shard 3") && e.to_string().contains("checksum"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_keys_fail_when_asked() {
        let work = tempfile::tempdir().expect("tmp");
        let backend = SqliteBackend::new(SqliteSettings::default());
        let mut b = backend
            .builder(ctx(work.path(), DuplicatePolicy::Error))
            .expect("builder");
        let (k, v) = rows(&[1, 2, 3], "v");
        b.add(&k, &v).expect("add");
        let (k, v) = rows(&[4, 2], "v");
        let e = b.add(&k, &v).expect_err("duplicate");
        assert_eq!(
            e.to_string(),
            "shard 3: duplicate key 2 (on_duplicate = \"error\"; use \"last_wins\" to keep the last row)"
        );
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let s = SqliteSettings {
            page_size: 1000,
            ..SqliteSettings::default()
        };
        assert!(s.validate().expect_err("page size").to_string().contains("page_size"));
    }
}
