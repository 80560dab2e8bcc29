//! End-to-end write throughput of `sf-write` against raw ceilings measured
//! in the same run, and the build's peak memory.
//!
//! `cargo bench -p sf-cli --bench write [-- ROWS] [--shards N] [--rounds R] [--backend sqlite|slatedb|both]`
//!
//! Defaults: 10,000,000 rows of 100-byte values (random i64 keys, Parquet
//! in), 16 shards, 2 alternating rounds (best of each), both backends.
//!
//! - Decode ceiling, the ceiling of the whole path: DataFusion reading the
//!   same Parquet file with the same batch size and one partition per
//!   core, every batch dropped: no routing, no sorting, no writing.
//! - SQLite, the INSERT loop (the reference point): the same rows, sorted
//!   by key, split into one contiguous chunk per core, each inserted by
//!   its own thread into its own `kv` table (`WITHOUT ROWID`, the writer's
//!   pragmas); no routing, no input decoding, no copy into a snapshot.
//! - SQLite, the page writer: the same sorted chunks written as pages by
//!   the shard builder's page writer, one file per core.
//! - SlateDB ceiling: the same sorted chunks, one local SlateDB database per
//!   core, put in write batches of 8,192 rows with the writer's settings
//!   (no WAL, no compactor), flushed and closed.
//! - ShardForge: the release `sf-write` binary, Parquet in, snapshot
//!   published on local disk (read, route, collect, sort, build, place in
//!   the snapshot folder, re-read checksums, publish), with the time of
//!   each phase as the build reports it. SlateDB shards skip the final
//!   compaction here so both sides do the same work; one more run with
//!   the default settings shows what compaction costs.
//! - Peak memory: the `sf-write` process's peak resident set (`VmHWM`, as
//!   the build reports it), at full size and at a quarter of the rows,
//!   with the default `memory_limit_mib` and with 1024 MiB: rows beyond
//!   the limit spill as sorted runs, so memory follows the limit, not the
//!   shards' size.

#![allow(clippy::disallowed_macros)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use sf_writer::build::backend::SlateDbSettings;
use sf_writer::build::backend::sqlite_pages::SqliteFileWriter;

const VALUE_BYTES: usize = 100;
const SLATE_BATCH: usize = 8192;

struct Args {
    rows: usize,
    shards: u32,
    rounds: usize,
    sqlite: bool,
    slatedb: bool,
}

fn args() -> Args {
    let mut a = Args {
        rows: 10_000_000,
        shards: 16,
        rounds: 2,
        sqlite: true,
        slatedb: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--shards" => a.shards = it.next().and_then(|v| v.parse().ok()).expect("--shards N"),
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            "--backend" => match it.next().as_deref() {
                Some("sqlite") => a.slatedb = false,
                Some("slatedb") => a.sqlite = false,
                Some("both") => {}
                other => panic!("--backend sqlite|slatedb|both, not {other:?}"),
            },
            "--bench" => {}
            s if !s.starts_with('-') => a.rows = s.parse().expect("ROWS is a number"),
            _ => {}
        }
    }
    a
}

/// Distinct random keys in random order and their values.
fn rows(n: usize) -> (Vec<i64>, Vec<Vec<u8>>) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut step = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut keys: Vec<i64> = (0..n).map(|_| (step() >> 1) as i64).collect();
    keys.sort_unstable();
    keys.dedup();
    for i in (1..keys.len()).rev() {
        keys.swap(i, (step() % (i as u64 + 1)) as usize);
    }
    let values = keys
        .iter()
        .map(|k| {
            let mut v = format!("{k:020}").into_bytes();
            v.resize(VALUE_BYTES, b'x');
            v
        })
        .collect();
    (keys, values)
}

fn write_parquet(path: &Path, keys: &[i64], values: &[Vec<u8>]) {
    let file = std::fs::File::create(path).expect("create");
    let batch = |r: std::ops::Range<usize>| {
        RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(keys[r.clone()].to_vec())) as ArrayRef),
            (
                "value",
                Arc::new(BinaryArray::from_iter_values(values[r].iter().map(Vec::as_slice))) as ArrayRef,
            ),
        ])
        .expect("batch")
    };
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, batch(0..1).schema(), None).expect("writer");
    for start in (0..keys.len()).step_by(65_536) {
        w.write(&batch(start..(start + 65_536).min(keys.len()))).expect("write");
    }
    w.close().expect("close");
}

/// The rows sorted by key, in one contiguous chunk per core.
fn sorted_chunks<'a>(keys: &[i64], values: &'a [Vec<u8>], cores: usize) -> Vec<Vec<(u64, &'a [u8])>> {
    let mut pairs: Vec<(u64, &[u8])> = keys
        .iter()
        .zip(values)
        .map(|(k, v)| (*k as u64, v.as_slice()))
        .collect();
    pairs.sort_unstable_by_key(|p| p.0);
    let chunk = pairs.len().div_ceil(cores);
    pairs.chunks(chunk).map(<[_]>::to_vec).collect()
}

fn sqlite_ceiling(chunks: &[Vec<(u64, &[u8])>], dir: &Path) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for (i, part) in chunks.iter().enumerate() {
            let path = dir.join(format!("ceiling-{i}.db"));
            s.spawn(move || {
                let _ = std::fs::remove_file(&path);
                let conn = rusqlite::Connection::open(&path).expect("open");
                conn.execute_batch(
                    "PRAGMA page_size = 4096; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
                     PRAGMA locking_mode = EXCLUSIVE; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -65536;
                     CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID; BEGIN;",
                )
                .expect("pragmas");
                {
                    let mut stmt = conn.prepare("INSERT INTO kv (k, v) VALUES (?1, ?2)").expect("prepare");
                    for (k, v) in part {
                        stmt.raw_bind_parameter(1, &k.to_be_bytes()[..]).expect("bind");
                        stmt.raw_bind_parameter(2, *v).expect("bind");
                        stmt.raw_execute().expect("insert");
                    }
                }
                conn.execute_batch("COMMIT").expect("commit");
            });
        }
    });
    start.elapsed()
}

/// The same sorted chunks written by the page writer, one file per core.
fn page_writer_ceiling(chunks: &[Vec<(u64, &[u8])>], dir: &Path) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for (i, part) in chunks.iter().enumerate() {
            let path = dir.join(format!("pages-{i}.db"));
            s.spawn(move || {
                let _ = std::fs::remove_file(&path);
                let mut w = SqliteFileWriter::create(&path, 4096).expect("create");
                for (k, v) in part {
                    w.push(&k.to_be_bytes(), v).expect("push");
                }
                w.finish().expect("finish");
            });
        }
    });
    start.elapsed()
}

/// DataFusion decoding the Parquet file, one partition per core, batches
/// dropped: the ceiling of the whole path.
fn decode_ceiling(runtime: &tokio::runtime::Runtime, parquet: &Path, cores: usize) -> (Duration, usize) {
    runtime.block_on(async {
        let config = SessionConfig::new().with_target_partitions(cores).with_batch_size(8192);
        let ctx = SessionContext::new_with_config(config);
        let start = Instant::now();
        let df = ctx
            .read_parquet(parquet.to_str().expect("path"), ParquetReadOptions::default())
            .await
            .expect("read parquet");
        let streams = df.execute_stream_partitioned().await.expect("execute");
        let counts = futures::future::join_all(streams.into_iter().map(|mut s| {
            tokio::spawn(async move {
                let mut rows = 0usize;
                while let Some(b) = s.next().await {
                    rows += b.expect("batch").num_rows();
                }
                rows
            })
        }))
        .await;
        let rows = counts.into_iter().map(|r| r.expect("task")).sum();
        (start.elapsed(), rows)
    })
}

fn slatedb_ceiling(runtime: &tokio::runtime::Runtime, chunks: &[Vec<(u64, &[u8])>], dir: &Path) -> Duration {
    let root = dir.join("slate-ceiling");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("mkdir");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&root).expect("store"));
    let settings = SlateDbSettings::default().db_settings();
    let start = Instant::now();
    runtime.block_on(async {
        let tasks = chunks.iter().enumerate().map(|(i, part)| {
            let store = Arc::clone(&store);
            let settings = settings.clone();
            async move {
                let db = slatedb::Db::builder(format!("db{i}"), store)
                    .with_settings(settings)
                    .with_db_cache_disabled()
                    .build()
                    .await
                    .expect("open");
                let options = slatedb::config::WriteOptions {
                    await_durable: false,
                    ..Default::default()
                };
                for batch in part.chunks(SLATE_BATCH) {
                    let mut b = slatedb::WriteBatch::new();
                    for (k, v) in batch {
                        b.put(k.to_be_bytes(), v);
                    }
                    db.write_with_options(b, &options).await.expect("write");
                }
                db.flush().await.expect("flush");
                db.close().await.expect("close");
            }
        });
        futures::future::join_all(tasks).await;
    });
    start.elapsed()
}

/// What one `sf-write` run reported.
#[derive(Debug, Clone, Default)]
struct Run {
    wall: Duration,
    peak: u64,
    summary: serde_json::Value,
}

/// Runs `sf-write --json` on `job`: its wall time, peak RSS in bytes (as
/// the build reports it) and summary.
fn sf_write(job: &Path) -> Run {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sf-write"))
        .args(["--config", job.to_str().expect("path"), "--progress", "off", "--json"])
        .output()
        .expect("run sf-write");
    let wall = start.elapsed();
    if !out.status.success() {
        println!(
            "  sf-write FAILED on {} ({}): {}",
            job.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return Run {
            wall: Duration::MAX,
            ..Run::default()
        };
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    Run {
        wall,
        peak: summary["peak_rss_bytes"].as_u64().unwrap_or(0),
        summary,
    }
}

/// The phases of a build, as its summary reports them.
fn phases(run: &Run) -> String {
    let s = &run.summary;
    let f = |a: &str, b: &str| s[a][b].as_f64().unwrap_or(0.0);
    format!(
        "plan {:.2} s, read+route+collect {:.2} s, build+upload {:.2} s (builds {:.2} s summed over {} shards), \
         verify {:.2} s, manifest+_CURRENT {:.2} s, cleanup {:.2} s; {} spilled runs",
        f("seconds", "plan"),
        f("steps", "input"),
        f("seconds", "write") - f("steps", "input"),
        f("steps", "build_sum"),
        s["steps"]["shards_built"],
        f("steps", "verify"),
        f("steps", "publish"),
        f("steps", "cleanup"),
        s["spilled_runs"],
    )
}

fn job_file(dir: &Path, name: &str, parquet: &Path, shards: u32, backend: &str, extra: &str) -> PathBuf {
    let out = dir.join(format!("out-{name}"));
    let _ = std::fs::remove_dir_all(&out);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"key_col = "id"
[input]
format = "parquet"
path = "{}"
[value]
binary_col = "value"
[routing]
num_dbs = {shards}
[output]
prefix = "{}"
backend = "{backend}"
{extra}"#,
            parquet.display(),
            out.display()
        ),
    )
    .expect("job file");
    path
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() {
    let a = args();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let dir = tempfile::tempdir().expect("tmp");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (keys, values) = rows(a.rows);
    let n = keys.len();
    let parquet = dir.path().join("input.parquet");
    write_parquet(&parquet, &keys, &values);
    let quarter = dir.path().join("quarter.parquet");
    write_parquet(&quarter, &keys[..n / 4], &values[..n / 4]);
    let input_mib = mib(std::fs::metadata(&parquet).expect("input").len());
    let chunks = sorted_chunks(&keys, &values, cores);
    println!(
        "{n} rows, {VALUE_BYTES}-byte values ({input_mib:.0} MiB of Parquet), {} shards, {cores} cores, \
         best of {} alternating rounds",
        a.shards, a.rounds
    );
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let report = |what: &str, ceiling: Duration, job: &Run| {
        println!("{what}");
        println!(
            "  raw ceiling ({cores} writers):         {:>9.0} rows/s  ({:.2} s)",
            rate(ceiling),
            ceiling.as_secs_f64()
        );
        println!(
            "  sf-write, parquet -> published:      {:>9.0} rows/s  ({:.2} s, peak RSS {:.0} MiB)",
            rate(job.wall),
            job.wall.as_secs_f64(),
            mib(job.peak)
        );
        println!("  ratio: {:.2}", ceiling.as_secs_f64() / job.wall.as_secs_f64());
        println!("  phases: {}", phases(job));
    };

    if a.sqlite {
        let job = job_file(dir.path(), "sqlite", &parquet, a.shards, "sqlite", "");
        let (mut decode, mut inserts, mut pages) = (Duration::MAX, Duration::MAX, Duration::MAX);
        let mut best = Run {
            wall: Duration::MAX,
            ..Run::default()
        };
        let mut peak = 0;
        for _ in 0..a.rounds {
            let (d, decoded) = decode_ceiling(&runtime, &parquet, cores);
            assert_eq!(decoded, n, "the decode ceiling reads every row");
            decode = decode.min(d);
            inserts = inserts.min(sqlite_ceiling(&chunks, dir.path()));
            pages = pages.min(page_writer_ceiling(&chunks, dir.path()));
            let run = sf_write(&job);
            peak = peak.max(run.peak);
            if run.wall < best.wall {
                best = run;
            }
        }
        println!("SQLite");
        println!(
            "  decode only (ceiling of the path):   {:>9.0} rows/s  ({:.2} s)",
            rate(decode),
            decode.as_secs_f64()
        );
        println!(
            "  INSERT loop, sorted, {cores} writers:      {:>9.0} rows/s  ({:.2} s)",
            rate(inserts),
            inserts.as_secs_f64()
        );
        println!(
            "  page writer, sorted, {cores} writers:      {:>9.0} rows/s  ({:.2} s; {:.1}x the INSERT loop, target >= 5x)",
            rate(pages),
            pages.as_secs_f64(),
            inserts.as_secs_f64() / pages.as_secs_f64()
        );
        println!(
            "  sf-write, parquet -> published:      {:>9.0} rows/s  ({:.2} s, peak RSS {:.0} MiB; target >= 1,500,000 rows/s: {})",
            rate(best.wall),
            best.wall.as_secs_f64(),
            mib(peak),
            if rate(best.wall) >= 1_500_000.0 {
                "met"
            } else {
                "missed"
            }
        );
        println!(
            "  sf-write against the decode ceiling: {:.2}; against the INSERT loop alone: {:.2}",
            decode.as_secs_f64() / best.wall.as_secs_f64(),
            inserts.as_secs_f64() / best.wall.as_secs_f64()
        );
        println!("  phases: {}", phases(&best));
        let small = job_file(dir.path(), "sqlite-quarter", &quarter, a.shards, "sqlite", "");
        let quarter_run = sf_write(&small);
        println!(
            "  peak RSS, default memory limit: {:.0} MiB at {n} rows, {:.0} MiB at {} rows",
            mib(peak),
            mib(quarter_run.peak),
            n / 4
        );
        let limit = "[write]\nmemory_limit_mib = 1024\n";
        let limited = job_file(dir.path(), "sqlite-1024", &parquet, a.shards, "sqlite", limit);
        let limited_run = sf_write(&limited);
        let limited_quarter = job_file(dir.path(), "sqlite-1024-quarter", &quarter, a.shards, "sqlite", limit);
        let limited_quarter_run = sf_write(&limited_quarter);
        println!(
            "  memory_limit_mib = 1024: {:.0} rows/s, peak RSS {:.0} MiB at {n} rows, {:.0} MiB at {} rows",
            rate(limited_run.wall),
            mib(limited_run.peak),
            mib(limited_quarter_run.peak),
            n / 4
        );
        println!("    phases: {}", phases(&limited_run));
    }
    if a.slatedb {
        let no_compaction = "[output.slatedb]\nfinal_compaction = false\n";
        let job = job_file(dir.path(), "slatedb", &parquet, a.shards, "slatedb", no_compaction);
        let mut ceiling = Duration::MAX;
        let mut best = Run {
            wall: Duration::MAX,
            ..Run::default()
        };
        for _ in 0..a.rounds {
            ceiling = ceiling.min(slatedb_ceiling(&runtime, &chunks, dir.path()));
            let run = sf_write(&job);
            if run.wall < best.wall {
                best = run;
            }
        }
        report("SlateDB (no final compaction on either side)", ceiling, &best);
        let default = job_file(dir.path(), "slatedb-default", &parquet, a.shards, "slatedb", "");
        let run = sf_write(&default);
        println!(
            "  with the default final compaction: {:.0} rows/s ({:.2} s, peak RSS {:.0} MiB)",
            rate(run.wall),
            run.wall.as_secs_f64(),
            mib(run.peak)
        );
    }
}
