//! End-to-end write throughput against the raw SQLite ceiling, measured in
//! the same run.
//!
//! `cargo bench -p sf-writer --bench write [-- ROWS]`
//!
//! - ceiling: the same rows, sorted by key, split in one contiguous chunk
//!   per core, each chunk inserted by its own thread into its own
//!   `WITHOUT ROWID` SQLite table with the writer's pragmas; no routing,
//!   no I/O beyond the files;
//! - ShardForge: `sf-write`'s job from a Parquet file to a published
//!   snapshot on local disk (read, route, repartition, sort, build, copy
//!   into the snapshot folder, verify checksums, publish).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
use sf_writer::config;
use sf_writer::job::{BuildOptions, Embedded, Outcome, build};

const VALUE_BYTES: usize = 100;

fn rows(n: usize) -> (Vec<i64>, Vec<Vec<u8>>) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut keys: Vec<i64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 1) as i64
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    // Shuffle back into input order (the input is not sorted).
    let mut shuffled = keys.clone();
    for i in (1..shuffled.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        shuffled.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let values = shuffled
        .iter()
        .map(|k| {
            let mut v = format!("{k:020}").into_bytes();
            v.resize(VALUE_BYTES, b'x');
            v
        })
        .collect();
    (shuffled, values)
}

fn ceiling(keys: &[i64], values: &[Vec<u8>], dir: &std::path::Path, cores: usize) -> Duration {
    let mut pairs: Vec<(u64, &[u8])> = keys
        .iter()
        .zip(values)
        .map(|(k, v)| (*k as u64, v.as_slice()))
        .collect();
    pairs.sort_unstable_by_key(|p| p.0);
    let chunk = pairs.len().div_ceil(cores);
    let start = Instant::now();
    std::thread::scope(|s| {
        for (i, part) in pairs.chunks(chunk).enumerate() {
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

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let dir = tempfile::tempdir().expect("tmp");
    let (keys, values) = rows(n);
    let n = keys.len();
    let batch_size = 65_536;
    let parquet = dir.path().join("input.parquet");
    {
        let file = std::fs::File::create(&parquet).expect("create");
        let schema = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![0i64])) as ArrayRef),
            (
                "value",
                Arc::new(BinaryArray::from_vec(vec![b"x".as_slice()])) as ArrayRef,
            ),
        ])
        .expect("schema")
        .schema();
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None).expect("writer");
        for start in (0..n).step_by(batch_size) {
            let end = (start + batch_size).min(n);
            let b = RecordBatch::try_from_iter([
                ("id", Arc::new(Int64Array::from(keys[start..end].to_vec())) as ArrayRef),
                (
                    "value",
                    Arc::new(BinaryArray::from_iter_values(
                        values[start..end].iter().map(|v| v.as_slice()),
                    )) as ArrayRef,
                ),
            ])
            .expect("batch");
            w.write(&b).expect("write");
        }
        w.close().expect("close");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("{n} rows, {VALUE_BYTES}-byte values, {cores} cores, best of 3 alternating rounds");
    let mut best_ceiling = Duration::MAX;
    let mut best_job = Duration::MAX;
    for round in 0..3 {
        best_ceiling = best_ceiling.min(ceiling(&keys, &values, dir.path(), cores));
        let toml = format!(
            r#"
key_col = "id"
[input]
format = "parquet"
path = "{}"
[value]
binary_col = "value"
[routing]
num_dbs = 8
[output]
prefix = "{}/out-{round}"
[write]
batch_size = 8192
"#,
            parquet.display(),
            dir.path().display()
        );
        let job = config::parse(&toml, "bench", dir.path(), Vec::<(String, String)>::new()).expect("job");
        let start = Instant::now();
        let outcome = runtime
            .block_on(build(&job, &Embedded::default(), &BuildOptions::default()))
            .expect("build");
        let took = start.elapsed();
        match outcome {
            Outcome::Built(s) => assert_eq!(s.rows as usize, n),
            Outcome::DryRun(_) => unreachable!("not a dry run"),
        }
        best_job = best_job.min(took);
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "raw SQLite ceiling ({cores} tables):  {:>9.0} rows/s  ({:.2}s)",
        rate(best_ceiling),
        best_ceiling.as_secs_f64()
    );
    println!(
        "ShardForge, parquet -> published:  {:>9.0} rows/s  ({:.2}s)",
        rate(best_job),
        best_job.as_secs_f64()
    );
    println!(
        "ratio: {:.2} (target >= 0.70)",
        best_ceiling.as_secs_f64() / best_job.as_secs_f64()
    );
}
