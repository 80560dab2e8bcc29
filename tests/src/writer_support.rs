//! Helpers for the writer's end-to-end tests: input files in every format,
//! reading a published snapshot back shard by shard, a store wrapper that
//! fails chosen calls, and the location of the project's binaries.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult,
};
use sf_manifest::{DbId, Manifest, ManifestStore, ObjectManifestStore, StorageOptions, layout};

/// Writes `batches` as one Parquet file.
pub fn write_parquet(path: &Path, batches: &[RecordBatch]) {
    let file = std::fs::File::create(path).expect("create parquet file");
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), None).expect("writer");
    for b in batches {
        w.write(b).expect("write parquet");
    }
    w.close().expect("close parquet");
}

/// Writes `batches` as one CSV file with a header.
pub fn write_csv(path: &Path, batches: &[RecordBatch]) {
    let file = std::fs::File::create(path).expect("create csv file");
    let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(file);
    for b in batches {
        w.write(b).expect("write csv");
    }
}

/// Writes `batches` as newline-delimited JSON.
pub fn write_json(path: &Path, batches: &[RecordBatch]) {
    let file = std::fs::File::create(path).expect("create json file");
    let mut w = arrow::json::LineDelimitedWriter::new(file);
    for b in batches {
        w.write(b).expect("write json");
    }
    w.finish().expect("finish json");
}

/// One shard's stored (key, value) pairs in key order.
pub type ShardRows = Vec<(Vec<u8>, Vec<u8>)>;

/// A published snapshot, read back completely.
#[derive(Debug)]
pub struct Snapshot {
    /// Its manifest.
    pub manifest: Manifest,
    /// Every stored (key, value) per shard, in key order.
    pub shards: BTreeMap<DbId, ShardRows>,
}

impl Snapshot {
    /// All rows, whichever shard holds them.
    pub fn rows(&self) -> BTreeMap<Vec<u8>, (DbId, Vec<u8>)> {
        let mut out = BTreeMap::new();
        for (db, rows) in &self.shards {
            for (k, v) in rows {
                assert!(out.insert(k.clone(), (*db, v.clone())).is_none(), "key stored twice");
            }
        }
        out
    }
}

/// Reads the snapshot `_CURRENT` under `prefix` points at: SQLite shards by
/// downloading `shard.db`, SlateDB shards with a read-only scan.
pub async fn read_snapshot(prefix: &str) -> Snapshot {
    let store = ObjectManifestStore::open(prefix, &StorageOptions::new()).expect("open store");
    let current = store.load_current().await.expect("load _CURRENT").expect("published");
    let manifest = store
        .load_manifest(&current.pointer.manifest_ref)
        .await
        .expect("load manifest");
    let slatedb = manifest
        .build
        .custom
        .get("shardforge")
        .and_then(|c| c.get("backend"))
        .and_then(|b| b.as_str())
        == Some("slatedb");
    let mut shards = BTreeMap::new();
    for row in &manifest.shards {
        let url = row.db_url.as_deref().expect("db_url");
        let loc = store
            .locate(url, Some(&manifest.build.s3_prefix))
            .expect("locate shard");
        let rows = if slatedb {
            sf_writer::adapter::slatedb::read_all(&loc)
                .await
                .expect("read slatedb shard")
        } else {
            let file = loc.child(layout::SQLITE_SHARD_FILE);
            let bytes = file
                .store
                .get(&file.path)
                .await
                .expect("get shard.db")
                .bytes()
                .await
                .expect("bytes");
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("shard.db");
            std::fs::write(&path, &bytes).expect("write local copy");
            let conn = rusqlite::Connection::open(&path).expect("open shard");
            let mut stmt = conn.prepare("SELECT k, v FROM kv ORDER BY k").expect("prepare");
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .map(|r| r.expect("row"))
                .collect()
        };
        assert_eq!(rows.len() as u64, row.row_count, "row_count of shard {}", row.db_id);
        shards.insert(row.db_id, rows);
    }
    Snapshot { manifest, shards }
}

/// Every object key under `prefix`, relative to it, sorted.
pub async fn list_keys(prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let loc = sf_manifest::resolve(prefix, &StorageOptions::new()).expect("resolve");
    let n = loc.path.parts().count();
    let mut keys: Vec<String> = loc
        .store
        .list(Some(&loc.path))
        .map_ok(|m| {
            m.location
                .parts()
                .skip(n)
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
        .try_collect()
        .await
        .expect("list");
    keys.sort();
    keys
}

/// Which calls a [`FlakyStore`] fails.
pub type FailWhen = dyn Fn(&str, &ObjPath) -> bool + Send + Sync;

/// Wraps a store and fails the first `budget` calls that `when(op, path)`
/// selects with a transient error (what a dropped connection looks like).
pub struct FlakyStore {
    inner: Arc<dyn ObjectStore>,
    when: Box<FailWhen>,
    budget: AtomicUsize,
    /// How many calls were failed.
    pub failed: AtomicUsize,
}

impl FlakyStore {
    /// Fails the first `budget` selected calls.
    pub fn new(inner: Arc<dyn ObjectStore>, budget: usize, when: Box<FailWhen>) -> Self {
        FlakyStore {
            inner,
            when,
            budget: AtomicUsize::new(budget),
            failed: AtomicUsize::new(0),
        }
    }

    fn trip(&self, op: &str, path: &ObjPath) -> object_store::Result<()> {
        if (self.when)(op, path)
            && self
                .budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                .is_ok()
        {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "FlakyStore",
                source: format!("injected failure of {op} {path}").into(),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for FlakyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlakyStore({})", self.inner)
    }
}

impl fmt::Display for FlakyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlakyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FlakyStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.trip("put", location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.trip("put", location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> object_store::Result<GetResult> {
        self.trip("get", location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &ObjPath, range: Range<u64>) -> object_store::Result<Bytes> {
        self.trip("get", location)?;
        self.inner.get_range(location, range).await
    }

    async fn head(&self, location: &ObjPath) -> object_store::Result<ObjectMeta> {
        self.trip("head", location)?;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &ObjPath) -> object_store::Result<()> {
        self.trip("delete", location)?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// Path of one of the project's binaries (`sf-write`, `sf-read`, ...).
///
/// `./scripts/test.sh` builds them before running the tests; a test run
/// without them fails here, saying so.
pub fn binary(name: &str) -> PathBuf {
    // `scripts/test.sh` links the binaries it just built aside, so that
    // another clone sharing the target folder cannot swap them mid-run.
    if let Some(dir) = std::env::var_os("SHARDFORGE_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target profile folder");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `./scripts/test.sh`, which builds the binaries first \
         (or `cargo build --workspace --bins`)",
        path.display()
    );
    path
}
