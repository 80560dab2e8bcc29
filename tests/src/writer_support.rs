//! Helpers for the writer's end-to-end tests: input files in every format,
//! job files parsed and built on the embedded engine, reading a published
//! snapshot back shard by shard, and the location of the project's
//! binaries (the fault-injecting store is [`crate::fault_store`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use object_store::ObjectStore;
use sf_manifest::{DbId, Manifest, ManifestStore, StorageOptions, format::layout};
use sf_writer::config::JobConfig;
use sf_writer::job::{BuildOptions, BuildSummary, Embedded, Outcome, build};

use crate::manifest_store;

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

/// A job file's text parsed as `sf-write` parses it, relative paths
/// against `dir`, without environment overrides.
pub fn parse_job(dir: &Path, toml: &str) -> JobConfig {
    sf_writer::config::parse(toml, "job.toml", dir, Vec::<(String, String)>::new()).expect("valid job")
}

/// The `[storage]` section of a job writing to `prefix`: on S3, one retry
/// within two seconds, so that a failing store is reported in seconds,
/// not minutes; elsewhere nothing.
pub fn short_storage_retries(prefix: &str) -> &'static str {
    if prefix.starts_with("s3://") {
        "[storage]\nmax_retries = \"1\"\nretry_timeout = \"2s\"\n"
    } else {
        ""
    }
}

/// Builds `job` on the embedded engine with the default options; panics,
/// naming the job's prefix, unless it built a snapshot.
pub async fn build_embedded(job: &JobConfig) -> BuildSummary {
    match build(job, &Embedded::default(), &BuildOptions::default()).await {
        Ok(Outcome::Built(s)) => s,
        Ok(other) => panic!("{}: expected a build, got {other:?}", job.output.prefix),
        Err(e) => panic!("{}: build failed: {e}", job.output.prefix),
    }
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
    let store = manifest_store(prefix);
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
            sf_writer::build::backend::slatedb::read_all(&loc)
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

/// Every object under `prefix` with its size, by its key relative to the
/// prefix.
pub async fn list_objects(prefix: &str) -> BTreeMap<String, u64> {
    use futures::TryStreamExt;
    let loc = sf_manifest::resolve(prefix, &StorageOptions::new()).expect("resolve");
    let n = loc.path.parts().count();
    loc.store
        .list(Some(&loc.path))
        .map_ok(|m| {
            let key = m
                .location
                .parts()
                .skip(n)
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/");
            (key, m.size)
        })
        .try_collect()
        .await
        .expect("list")
}

/// Every object key under `prefix`, relative to it, sorted.
pub async fn list_keys(prefix: &str) -> Vec<String> {
    list_objects(prefix).await.into_keys().collect()
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

/// Runs `cmd` to its end with `stdin` as its input (none: an empty one),
/// its output captured.
pub fn output_with_input(cmd: &mut std::process::Command, stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let Some(input) = stdin else {
        return cmd.output().expect("run the program");
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the program");
    // The handle is dropped after the write: the program sees the input end.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for the program")
}
