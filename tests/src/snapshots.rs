//! Builds real snapshots for reader tests and benchmarks: SQLite shard
//! files or SlateDB databases, a manifest, `_CURRENT`, a run record, on
//! any store URL (`file://`, `s3://`, `memory://`).
//!
//! It writes without running `sf-write`, so a test sets up in
//! milliseconds what a build would not leave (losing attempts, a manifest
//! never published), following the writer's conventions: rows routed by
//! `sf-router`; shards in `shards/run_id=R/db=NNNNN/attempt=AA/` with a
//! `_claim.json` marker; SQLite shards as `shard.db` (`kv` table, page
//! size 4096) with `writer_info["checksum"] = "xxh3_128:<hex>"` over the
//! file and `checkpoint_id` = that hex; SlateDB shards rooted at the
//! attempt folder with `"xxh3_128-kv:<hex>"` over the ordered (u32 LE len,
//! key, u32 LE len, value) stream.

use std::collections::BTreeMap;

use object_store::PutPayload;
use sf_manifest::{
    Attempt, BuildMeta, DbId, Key, KeyEncoding, Manifest, ManifestStore, RunId, RunRecord, ShardRow, ShardingSpec,
    Timestamp, WriterInfo, format::layout,
};
use sf_router::{ContextValue, KEY_VARIABLE, Routed, Router, decode_key, key_as_context};
use xxhash_rust::xxh3::Xxh3;

use crate::manifest_store;

/// Which backend writes the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One `shard.db` per shard.
    Sqlite,
    /// One SlateDB database per shard.
    SlateDb,
}

/// One input row.
#[derive(Debug, Clone)]
pub struct Row {
    /// The key.
    pub key: Key,
    /// The value.
    pub value: Vec<u8>,
    /// Values of routing columns other than the key (CEL).
    pub context: BTreeMap<String, ContextValue>,
}

impl Row {
    /// A row routed by its key alone.
    pub fn new(key: Key, value: impl Into<Vec<u8>>) -> Self {
        Row {
            key,
            value: value.into(),
            context: BTreeMap::new(),
        }
    }

    /// A row with a routing column.
    pub fn with(mut self, column: &str, value: ContextValue) -> Self {
        self.context.insert(column.to_string(), value);
        self
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct SnapshotSpec {
    /// The run id.
    pub run_id: String,
    /// Number of shards.
    pub num_dbs: u32,
    /// Key encoding.
    pub key_encoding: KeyEncoding,
    /// Routing.
    pub sharding: ShardingSpec,
    /// Backend.
    pub backend: Backend,
    /// Record content checksums in `writer_info` (our writer does).
    pub checksums: bool,
    /// Swap `_CURRENT` to the new manifest (compare-and-swap against what
    /// is there); otherwise the manifest is only added to the history.
    pub publish: bool,
    /// Also write a losing attempt (`attempt=01`, same content) per shard.
    pub losing_attempts: bool,
    /// Write a succeeded run record.
    pub run_record: bool,
}

impl SnapshotSpec {
    /// Hash routing over `num_dbs` SQLite shards, with checksums, published.
    pub fn hash(run_id: &str, num_dbs: u32, key_encoding: KeyEncoding) -> Self {
        SnapshotSpec {
            run_id: run_id.to_string(),
            num_dbs,
            key_encoding,
            sharding: ShardingSpec::hash(),
            backend: Backend::Sqlite,
            checksums: true,
            publish: true,
            losing_attempts: false,
            run_record: true,
        }
    }
}

/// What was built.
#[derive(Debug, Clone)]
pub struct BuiltSnapshot {
    /// The manifest written.
    pub manifest: Manifest,
    /// Its URL.
    pub manifest_ref: String,
    /// Encoded key -> value, per db id, as stored.
    pub shards: BTreeMap<u32, BTreeMap<Vec<u8>, Vec<u8>>>,
}

/// Builds a snapshot of SQLite shards under `prefix_url`; see the module docs.
pub async fn build_sqlite_snapshot(prefix_url: &str, spec: &SnapshotSpec, rows: &[Row]) -> BuiltSnapshot {
    let spec = SnapshotSpec {
        backend: Backend::Sqlite,
        ..spec.clone()
    };
    build_snapshot(prefix_url, &spec, rows).await
}

/// Builds a snapshot of SlateDB shards under `prefix_url`.
pub async fn build_slatedb_snapshot(prefix_url: &str, spec: &SnapshotSpec, rows: &[Row]) -> BuiltSnapshot {
    let spec = SnapshotSpec {
        backend: Backend::SlateDb,
        ..spec.clone()
    };
    build_snapshot(prefix_url, &spec, rows).await
}

/// Routes `rows` like a writer: by key, or by the routing context (with
/// the key added when the expression reads it).
pub fn route_rows(router: &Router, rows: &[Row]) -> BTreeMap<u32, BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut shards: BTreeMap<u32, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
    for row in rows {
        let routed = if router.needs_context() {
            let cel = router.cel().expect("context routing is CEL");
            let mut ctx = row.context.clone();
            if let Some(ty) = cel.columns().get(KEY_VARIABLE) {
                ctx.entry(KEY_VARIABLE.to_string())
                    .or_insert_with(|| key_as_context(&row.key, *ty).expect("key fits its CEL type"));
            }
            router.route_context(&ctx).expect("route row")
        } else {
            router.route_key(&row.key).expect("route row")
        };
        let Routed::Db(db) = routed else {
            panic!("row {:?} routes to an unknown token", row.key);
        };
        shards
            .entry(db)
            .or_default()
            .insert(router.encode_key(&row.key).expect("encode key"), row.value.clone());
    }
    shards
}

/// Builds a snapshot with the backend `spec` names.
pub async fn build_snapshot(prefix_url: &str, spec: &SnapshotSpec, rows: &[Row]) -> BuiltSnapshot {
    let store = manifest_store(prefix_url);
    let run = RunId::new(spec.run_id.clone()).expect("run id");
    let router = Router::new(&spec.sharding, spec.num_dbs, spec.key_encoding).expect("router");
    let started = Timestamp::now();
    let shards = route_rows(&router, rows);
    let work = tempfile::tempdir().expect("work dir");
    let mut shard_rows = Vec::new();
    for (db, kv) in &shards {
        let db_id = DbId(*db);
        let attempts: &[u32] = if spec.losing_attempts { &[0, 1] } else { &[0] };
        let mut winner: Option<ShardRow> = None;
        for attempt in attempts {
            let key = layout::shard_attempt_key(&run, db_id, Attempt(*attempt));
            let location = store.location().child(&key);
            location
                .store
                .put(
                    &location.child("_claim.json").path,
                    PutPayload::from(format!("{{\"attempt\":{attempt}}}").into_bytes()),
                )
                .await
                .expect("claim");
            let (db_bytes, checksum, checkpoint_id) = match spec.backend {
                Backend::Sqlite => {
                    let bytes = sqlite_file(work.path(), *db, kv);
                    let mut h = Xxh3::new();
                    h.update(&bytes);
                    let hex = format!("{:032x}", h.digest128());
                    let len = bytes.len() as u64;
                    location
                        .store
                        .put(&location.child(layout::SQLITE_SHARD_FILE).path, PutPayload::from(bytes))
                        .await
                        .expect("upload shard.db");
                    (len, format!("xxh3_128:{hex}"), hex)
                }
                Backend::SlateDb => {
                    let db = slatedb::Db::open(location.path.clone(), std::sync::Arc::clone(&location.store))
                        .await
                        .expect("open SlateDB shard");
                    let mut h = Xxh3::new();
                    // Batches: a single put waits for its WAL flush.
                    let mut batch = slatedb::WriteBatch::new();
                    for (i, (k, v)) in kv.iter().enumerate() {
                        batch.put(k, v);
                        h.update(&(k.len() as u32).to_le_bytes());
                        h.update(k);
                        h.update(&(v.len() as u32).to_le_bytes());
                        h.update(v);
                        if i % 10_000 == 9_999 {
                            db.write(std::mem::take(&mut batch)).await.expect("write batch");
                        }
                    }
                    db.write(batch).await.expect("write batch");
                    db.flush().await.expect("flush");
                    db.close().await.expect("close");
                    (
                        0,
                        format!("xxh3_128-kv:{:032x}", h.digest128()),
                        uuid::Uuid::new_v4().simple().to_string(),
                    )
                }
            };
            let mut writer_info = WriterInfo {
                attempt: *attempt,
                duration_ms: 1,
                stage_id: Some(0),
                task_attempt_id: Some(i64::from(*attempt)),
                extra: BTreeMap::new(),
            };
            if spec.checksums {
                writer_info
                    .extra
                    .insert("checksum".into(), serde_json::Value::from(checksum));
            }
            if winner.is_none() {
                winner = Some(ShardRow {
                    db_id,
                    db_url: Some(location.url.clone()),
                    attempt: Attempt(*attempt),
                    row_count: kv.len() as u64,
                    db_bytes,
                    min_key: kv.keys().next().map(|k| decode_key(k, spec.key_encoding).expect("key")),
                    max_key: kv
                        .keys()
                        .next_back()
                        .map(|k| decode_key(k, spec.key_encoding).expect("key")),
                    checkpoint_id: Some(checkpoint_id),
                    writer_info,
                });
            }
        }
        shard_rows.push(winner.expect("attempt 0 wins"));
    }
    let build = BuildMeta::new(
        run.clone(),
        spec.num_dbs,
        store.prefix_url(),
        "id",
        spec.sharding.clone(),
        spec.key_encoding,
    );
    let manifest = Manifest {
        build,
        shards: shard_rows,
    };
    let manifest_ref = if spec.publish {
        let expected = store.load_current().await.expect("load _CURRENT").map(|c| c.version);
        store
            .publish(&manifest, expected.as_ref())
            .await
            .expect("publish")
            .manifest
            .manifest_ref
    } else {
        store.put_manifest(&manifest).await.expect("put manifest").manifest_ref
    };
    if spec.run_record {
        let mut record = RunRecord::start(run.clone(), store.prefix_url(), std::time::Duration::from_secs(60));
        record.started_at = started;
        record.succeed(manifest_ref.clone());
        let key = layout::run_record_key(started, &run, &uuid::Uuid::new_v4().simple().to_string());
        store.put_run_record(&key, &record).await.expect("run record");
    }
    BuiltSnapshot {
        manifest,
        manifest_ref,
        shards,
    }
}

/// A shard file with `kv` sorted by key, as bytes.
fn sqlite_file(dir: &std::path::Path, db: u32, kv: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let path = dir.join(format!("{db:05}-{}.db", uuid::Uuid::new_v4().simple()));
    let mut conn = rusqlite::Connection::open(&path).expect("create shard file");
    conn.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
         CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
    )
    .expect("ddl");
    let tx = conn.transaction().expect("tx");
    {
        let mut stmt = tx.prepare("INSERT INTO kv (k, v) VALUES (?1, ?2)").expect("prepare");
        for (k, v) in kv {
            stmt.execute((k, v)).expect("insert");
        }
    }
    tx.commit().expect("commit");
    drop(conn);
    let bytes = std::fs::read(&path).expect("read shard file");
    let _ = std::fs::remove_file(&path);
    bytes
}

/// Builds and publishes the snapshot most reader tests start from: run
/// `run`, hash routed over `num_dbs` SQLite shards, keys `0..rows`
/// (`u64be`) with values `"{tag}:{k}"`.
pub async fn publish_ints(prefix_url: &str, run: &str, num_dbs: u32, rows: u64, tag: &str) -> BuiltSnapshot {
    build_snapshot(
        prefix_url,
        &SnapshotSpec::hash(run, num_dbs, KeyEncoding::U64Be),
        &int_rows(rows, tag),
    )
    .await
}

/// `n` integer keys `0..n` with values `"{tag}:{k}"`.
pub fn int_rows(n: u64, tag: &str) -> Vec<Row> {
    (0..n)
        .map(|k| Row::new(Key::Int(k as i64), format!("{tag}:{k}")))
        .collect()
}

/// Copies a folder tree (fixtures into a scratch folder a test may damage).
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create target");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Every file under `root` with its size and modification time, to show
/// that nothing was written there.
pub fn tree_state(root: &std::path::Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string();
                out.insert(rel, (meta.len(), meta.modified().expect("mtime")));
            }
        }
    }
    out
}

/// A copy of one fixture snapshot (`sqlite-bucket-golden/hash_int`, ...)
/// in a scratch folder; returns the folder guard and the snapshot's path.
pub fn fixture_copy(relative: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("scratch dir");
    let target = dir.path().join("snap");
    copy_tree(&crate::fixture_dir().join(relative), &target);
    (dir, target)
}
