//! The same build embedded and on a local Ballista cluster (one
//! `sf-scheduler` and two `sf-executor` processes on 127.0.0.1, started by
//! `deploy/local/start-cluster.sh`), timed in the same run.
//!
//! `cargo bench -p sf-cli --bench cluster [-- ROWS]` (default 1,000,000)
//!
//! The job: Parquet in (random i64 keys, 100-byte values), xxh3 hash
//! routing to 8 SQLite shards, a published snapshot on local disk, which
//! every process of the cluster sees. Rounds alternate embedded and
//! cluster after one warm-up of each; the median round of each is shown
//! with its phases (plan: schema, routing check on a sample; write: the
//! shard tasks; publish: checksums, manifest, `_CURRENT`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
use sf_executor::{ClusterEngine, SchedulerUrl};
use sf_writer::config;
use sf_writer::job::{BuildOptions, BuildSummary, Embedded, Engine, Outcome, build};

const VALUE_BYTES: usize = 100;
const NUM_DBS: u32 = 8;
const ROUNDS: usize = 3;
const EXECUTORS: usize = 2;

fn input(n: usize, path: &Path) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let keys: Vec<i64> = (0..n).map(|i| ((next() >> 24) as i64) * 1_000_000 + i as i64).collect();
    let values: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| {
            let mut v = format!("{k:020}").into_bytes();
            v.resize(VALUE_BYTES, b'v');
            v
        })
        .collect();
    let file = std::fs::File::create(path).expect("create input");
    let props = datafusion::parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_size(128 * 1024)
        .build();
    let schema = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![0i64])) as ArrayRef),
        (
            "value",
            Arc::new(BinaryArray::from_iter_values([b"".as_slice()])) as ArrayRef,
        ),
    ])
    .expect("schema batch")
    .schema();
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).expect("writer");
    for (ks, vs) in keys.chunks(65_536).zip(values.chunks(65_536)) {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(ks.to_vec())) as ArrayRef),
            (
                "value",
                Arc::new(BinaryArray::from_iter_values(vs.iter().map(Vec::as_slice))) as ArrayRef,
            ),
        ])
        .expect("batch");
        w.write(&batch).expect("write");
    }
    w.close().expect("close");
}

fn job(input: &Path, prefix: &Path) -> config::JobConfig {
    let text = format!(
        "key_col = \"id\"\n[input]\nformat = \"parquet\"\npath = \"{}\"\n[value]\nbinary_col = \"value\"\n\
         [routing]\nnum_dbs = {NUM_DBS}\n[output]\nprefix = \"{}\"\nbackend = \"sqlite\"\n",
        input.display(),
        prefix.display()
    );
    config::parse(&text, "bench.toml", Path::new("/"), Vec::<(String, String)>::new()).expect("job")
}

/// The cluster's processes, stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("run folder");
        let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_sf-scheduler"))
            .parent()
            .expect("bin folder")
            .to_path_buf();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/start-cluster.sh");
        let out = Command::new(script)
            .arg("--dir")
            .arg(dir.path())
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--executors")
            .arg(EXECUTORS.to_string())
            .output()
            .expect("run start-cluster.sh");
        assert!(
            out.status.success(),
            "start-cluster.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Cluster { dir, url }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/stop-cluster.sh");
        let _ = Command::new(script).arg("--dir").arg(self.dir.path()).output();
    }
}

async fn run(engine: &dyn Engine, input: &Path, out: &Path, round: usize) -> BuildSummary {
    let prefix = out.join(format!(
        "{}-{round}",
        engine.describe().split(' ').next().unwrap_or("run")
    ));
    let outcome = build(&job(input, &prefix), engine, &BuildOptions::default()).await;
    let _ = std::fs::remove_dir_all(&prefix);
    match outcome {
        Ok(Outcome::Built(s)) => s,
        other => panic!("{}: {other:?}", engine.describe()),
    }
}

fn median(mut runs: Vec<BuildSummary>) -> (BuildSummary, Duration) {
    runs.sort_by_key(|s| s.total_time);
    let best = runs[0].total_time;
    (runs[runs.len() / 2].clone(), best)
}

fn show(name: &str, s: &BuildSummary, best: Duration, rows: usize) {
    let secs = s.total_time.as_secs_f64();
    println!(
        "{name:<9} {:>7.2} s  (best {:>5.2} s)  {:>9.0} rows/s   plan {:>5.2} s  write {:>5.2} s  publish {:>5.2} s",
        secs,
        best.as_secs_f64(),
        rows as f64 / secs,
        s.plan_time.as_secs_f64(),
        s.write_time.as_secs_f64(),
        s.publish_time.as_secs_f64()
    );
}

fn main() {
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tmp");
    let input_path = dir.path().join("input.parquet");
    input(rows, &input_path);
    let out = dir.path().join("out");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cluster = Cluster::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let embedded = Embedded::default();
    let remote = ClusterEngine::new(SchedulerUrl::parse(&cluster.url).expect("url"));
    println!(
        "{rows} rows, {VALUE_BYTES}-byte values, {NUM_DBS} SQLite shards, local disk; {cores} cores; \
         cluster: 1 scheduler + {EXECUTORS} executors x {cores} slots at {}",
        cluster.url
    );
    let (mut e_runs, mut c_runs) = (vec![], vec![]);
    runtime.block_on(async {
        run(&embedded, &input_path, &out, 0).await;
        run(&remote, &input_path, &out, 0).await;
        for round in 1..=ROUNDS {
            e_runs.push(run(&embedded, &input_path, &out, round).await);
            c_runs.push(run(&remote, &input_path, &out, round).await);
        }
    });
    let (e, e_best) = median(e_runs);
    let (c, c_best) = median(c_runs);
    println!("median of {ROUNDS} rounds (after one warm-up each):");
    show("embedded", &e, e_best, rows);
    show("cluster", &c, c_best, rows);
    println!(
        "cluster / embedded: {:.2}x the time ({:.0}% of the embedded throughput)",
        c.total_time.as_secs_f64() / e.total_time.as_secs_f64(),
        100.0 * e.total_time.as_secs_f64() / c.total_time.as_secs_f64()
    );
    drop(cluster);
}
