//! Vector snapshots: build throughput and search speed and recall, each
//! against a ceiling measured in the same run.
//!
//! `cargo bench -p sf-cli --bench vector [-- VECTORS] [--dim D] [--shards N] [--queries Q] [--rounds R] [--keep DIR] [--npy FILE]`
//!
//! Defaults: 1,000,000 vectors of dimension 128 in 64 Gaussian clusters
//! (made here, seeded), 16 shards, 200 queries (stored vectors with a
//! little noise), `l2`, best of 2 alternating rounds.
//!
//! - Build, unified: the release `sf-write` binary, Parquet in (an `Int64`
//!   key, a 16-byte value, the vector as `FixedSizeList<Float32>`), a
//!   unified snapshot published on local disk. Vector-only: the same
//!   vectors with `sharding = "cluster"` (centroids trained on 100,000).
//!   Ceiling: a plain insert loop into one `vec0` table per core (the
//!   vectors split evenly, one transaction each, the writer's pragmas),
//!   the cost of building through sqlite-vec alone.
//! - Search, top 10, one query at a time on a 2-thread runtime: the
//!   reader in download mode (each shard's vec0 chunks scanned from the
//!   file) and in memory mode (each shard's vectors in one `f32` arena),
//!   against a brute-force scan of all vectors in one `Vec<f32>` in this
//!   process (the exact ceiling).
//! - Recall@10 of the vector-only CLUSTER snapshot with 1, 2 and 4 probes
//!   against the exact answer.
//!
//! `--npy FILE` takes the vectors from a two-dimensional NumPy file instead
//! (a real embedding set: every row, its own dimension; `VECTORS` and
//! `--dim` are then ignored).
//!
//! `--keep DIR` works in `DIR` and leaves the input, the snapshots
//! (`out-unified`, `out-cluster`) and the queries (`queries.json`) there,
//! for another reader to be measured on the same files.

#![allow(clippy::disallowed_macros)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, BinaryArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field};
use sf_reader::{Reader, ReaderSettings, SearchOptions, SqliteMode};

struct Args {
    vectors: usize,
    dim: usize,
    shards: u32,
    queries: usize,
    rounds: usize,
    keep: Option<PathBuf>,
    npy: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        vectors: 1_000_000,
        dim: 128,
        shards: 16,
        queries: 200,
        rounds: 2,
        keep: None,
        npy: None,
    };
    let mut it = std::env::args().skip(1).filter(|s| s != "--bench");
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--dim" => a.dim = num("--dim"),
            "--shards" => a.shards = num("--shards") as u32,
            "--queries" => a.queries = num("--queries"),
            "--rounds" => a.rounds = num("--rounds").max(1),
            "--npy" => a.npy = Some(PathBuf::from(it.next().expect("--npy needs a file"))),
            "--keep" => a.keep = Some(PathBuf::from(it.next().expect("--keep needs a folder"))),
            n => a.vectors = n.replace('_', "").parse().expect("VECTORS is a number"),
        }
    }
    a
}

/// xorshift64* with Box-Muller: seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

const CLUSTERS: usize = 64;
const TOP_K: usize = 10;

/// `n` vectors around `CLUSTERS` Gaussian centres, row after row.
fn clustered(n: usize, dim: usize) -> Vec<f32> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let centres: Vec<f32> = (0..CLUSTERS * dim).map(|_| rng.normal() * 1.5).collect();
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = (rng.next() % CLUSTERS as u64) as usize;
        out.extend((0..dim).map(|j| centres[c * dim + j] + rng.normal()));
    }
    out
}

fn write_parquet(path: &Path, vectors: &[f32], dim: usize) {
    let n = vectors.len() / dim;
    let file = std::fs::File::create(path).expect("create");
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let batch = |r: std::ops::Range<usize>| {
        let emb = FixedSizeListArray::try_new(
            Arc::clone(&item),
            dim as i32,
            Arc::new(Float32Array::from(vectors[r.start * dim..r.end * dim].to_vec())),
            None,
        )
        .expect("vectors");
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(r.clone().map(|i| i as i64))) as ArrayRef,
            ),
            (
                "value",
                Arc::new(BinaryArray::from_iter_values(r.clone().map(|i| format!("{i:016}")))) as ArrayRef,
            ),
            ("emb", Arc::new(emb) as ArrayRef),
        ])
        .expect("batch")
    };
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, batch(0..1).schema(), None).expect("writer");
    for start in (0..n).step_by(16_384) {
        w.write(&batch(start..(start + 16_384).min(n))).expect("write");
    }
    w.close().expect("close");
}

fn job(dir: &Path, name: &str, parquet: &Path, a: &Args, vector_only: bool) -> (PathBuf, PathBuf) {
    let out = dir.join(format!("out-{name}"));
    let _ = std::fs::remove_dir_all(&out);
    let path = dir.join(format!("{name}.toml"));
    let (head, extra) = if vector_only {
        ("", "id_column = \"id\"\nsharding = \"cluster\"\nnum_probes = 1\n")
    } else {
        ("key_col = \"id\"\n", "")
    };
    let value = if vector_only {
        ""
    } else {
        "[value]\nbinary_col = \"value\"\n"
    };
    std::fs::write(
        &path,
        format!(
            "{head}[input]\nformat = \"parquet\"\npath = \"{}\"\n{value}[routing]\nnum_dbs = {}\n[output]\nprefix = \"{}\"\n\
             [vector]\ncolumn = \"emb\"\ndim = {}\nmetric = \"l2\"\n{extra}",
            parquet.display(),
            a.shards,
            out.display(),
            a.dim
        ),
    )
    .expect("job file");
    (path, out)
}

fn sf_write(job: &Path) -> Duration {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sf-write"))
        .args(["--config", job.to_str().expect("path"), "--progress", "off", "--json"])
        .output()
        .expect("run sf-write");
    let wall = start.elapsed();
    assert!(
        out.status.success(),
        "sf-write failed on {}: {}",
        job.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    wall
}

/// One `vec0` table per core, the vectors split evenly, inserted in one
/// transaction each: the ceiling of building through sqlite-vec.
fn vec0_ceiling(vectors: &[f32], dim: usize, dir: &Path, cores: usize) -> Duration {
    let n = vectors.len() / dim;
    let per = n.div_ceil(cores);
    let start = Instant::now();
    std::thread::scope(|s| {
        for c in 0..cores {
            let part = &vectors[(c * per).min(n) * dim..((c + 1) * per).min(n) * dim];
            let path = dir.join(format!("vec0-{c}.db"));
            let _ = std::fs::remove_file(&path);
            s.spawn(move || {
                let conn = rusqlite::Connection::open(&path).expect("open");
                sf_writer::build::backend::vec0::load(&conn).expect("vec0");
                conn.execute_batch(&format!(
                    "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA locking_mode=EXCLUSIVE;
                     CREATE VIRTUAL TABLE vec_index USING vec0(embedding float[{dim}] distance_metric=l2);
                     BEGIN;"
                ))
                .expect("create");
                {
                    let mut insert = conn
                        .prepare("INSERT INTO vec_index(rowid, embedding) VALUES (?1, ?2)")
                        .expect("prepare");
                    let mut blob = Vec::with_capacity(dim * 4);
                    for (i, v) in part.chunks_exact(dim).enumerate() {
                        blob.clear();
                        for x in v {
                            blob.extend_from_slice(&x.to_le_bytes());
                        }
                        insert.execute(rusqlite::params![i as i64, blob]).expect("insert");
                    }
                }
                conn.execute_batch("COMMIT").expect("commit");
            });
        }
    });
    start.elapsed()
}

fn squared(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The exact top 10 of `q` over every vector: ids, nearest first.
fn brute_force(vectors: &[f32], dim: usize, q: &[f32]) -> Vec<u64> {
    let mut best: Vec<(f32, u64)> = Vec::with_capacity(TOP_K + 1);
    for (i, v) in vectors.chunks_exact(dim).enumerate() {
        let d = squared(v, q);
        if best.len() < TOP_K || d < best[best.len() - 1].0 {
            let at = best.partition_point(|(b, _)| *b <= d);
            best.insert(at, (d, i as u64));
            best.truncate(TOP_K);
        }
    }
    best.into_iter().map(|(_, i)| i).collect()
}

struct Timing {
    qps: f64,
    p50: Duration,
    p99: Duration,
}

fn timing(mut samples: Vec<Duration>) -> Timing {
    let total: Duration = samples.iter().sum();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Timing {
        qps: samples.len() as f64 / total.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn show(name: &str, t: &Timing, ceiling: f64) {
    println!(
        "  {name:<34} {:>9.1} queries/s  p50 {:>8.2} ms  p99 {:>8.2} ms  {:.2} of the brute-force scan",
        t.qps,
        t.p50.as_secs_f64() * 1e3,
        t.p99.as_secs_f64() * 1e3,
        t.qps / ceiling
    );
}

fn ids(hits: &sf_reader::SearchResults) -> Vec<u64> {
    hits.hits
        .iter()
        .map(|h| match &h.id {
            sf_manifest::format::vector::VectorId::Int(i) => *i as u64,
            other => panic!("an integer id, not {other}"),
        })
        .collect()
}

fn recall(got: &[u64], want: &[u64]) -> f64 {
    got.iter().filter(|g| want.contains(g)).count() as f64 / want.len() as f64
}

fn main() {
    let mut a = args();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let temp = tempfile::tempdir().expect("work dir");
    let dir_path = match &a.keep {
        Some(keep) => {
            std::fs::create_dir_all(keep).expect("--keep folder");
            keep.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let dir = dir_path.as_path();
    let vectors = match &a.npy {
        Some(path) => {
            let bytes = std::fs::read(path).expect("--npy file");
            let m = sf_manifest::format::npy::read(&bytes, &path.display().to_string()).expect("a 2-d .npy");
            (a.vectors, a.dim) = (m.rows, m.cols);
            m.values
        }
        None => clustered(a.vectors, a.dim),
    };
    let source = match &a.npy {
        Some(path) => format!("from {}", path.display()),
        None => format!("in {CLUSTERS} Gaussian clusters"),
    };
    println!(
        "{} vectors of dimension {} {source}, {} shards, {} queries, top {TOP_K}, l2, {cores} cores",
        a.vectors, a.dim, a.shards, a.queries
    );
    let parquet = dir.join("in.parquet");
    write_parquet(&parquet, &vectors, a.dim);
    let mut noise = Rng(7);
    let queries: Vec<Vec<f32>> = (0..a.queries)
        .map(|i| {
            let at = (i * 7919) % a.vectors;
            vectors[at * a.dim..(at + 1) * a.dim]
                .iter()
                .map(|x| x + noise.normal() * 0.1)
                .collect()
        })
        .collect();
    std::fs::write(dir.join("queries.json"), serde_json::to_vec(&queries).expect("json")).expect("queries.json");

    println!("\nbuild (best of {} alternating rounds):", a.rounds);
    let (mut ceiling, mut unified, mut only) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let (unified_job, unified_out) = job(dir, "unified", &parquet, &a, false);
    let (only_job, only_out) = job(dir, "cluster", &parquet, &a, true);
    for _ in 0..a.rounds {
        ceiling = ceiling.min(vec0_ceiling(&vectors, a.dim, dir, cores));
        let _ = std::fs::remove_dir_all(&unified_out);
        unified = unified.min(sf_write(&unified_job));
        let _ = std::fs::remove_dir_all(&only_out);
        only = only.min(sf_write(&only_job));
    }
    let rate = |d: Duration| a.vectors as f64 / d.as_secs_f64();
    println!(
        "  vec0 insert loop, {cores} tables (ceiling) {:>10.0} vectors/s ({:.2} s)",
        rate(ceiling),
        ceiling.as_secs_f64()
    );
    for (name, d) in [("sf-write, unified", unified), ("sf-write, vector-only cluster", only)] {
        println!(
            "  {name:<34} {:>10.0} vectors/s ({:.2} s), {:.2} of the ceiling",
            rate(d),
            d.as_secs_f64(),
            rate(d) / rate(ceiling)
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let open = |prefix: &Path, mode: SqliteMode| {
        let url = format!("file://{}/_CURRENT", prefix.display());
        let cache = dir.join(format!("cache-{mode:?}"));
        rt.block_on(
            Reader::builder(url)
                .with_settings(ReaderSettings {
                    cache_dir: Some(cache),
                    sqlite_mode: mode,
                    ..ReaderSettings::default()
                })
                .build(),
        )
        .expect("reader")
    };
    let download = open(&unified_out, SqliteMode::Download);
    let memory = open(&unified_out, SqliteMode::Memory);
    let options = SearchOptions {
        top_k: TOP_K,
        ..SearchOptions::default()
    };
    // Warm: every shard downloaded and opened, the arenas loaded; and the
    // answers checked against the exact ones.
    let exact: Vec<Vec<u64>> = queries.iter().map(|q| brute_force(&vectors, a.dim, q)).collect();
    for r in [&download, &memory] {
        for (q, want) in queries.iter().zip(&exact).take(5) {
            let got = rt.block_on(r.search(q, &options)).expect("search");
            assert_eq!(recall(&ids(&got), want), 1.0, "an exact search finds the exact answer");
        }
    }

    println!(
        "\nsearch, top {TOP_K}, one query at a time (best of {} rounds):",
        a.rounds
    );
    let (mut brute, mut dl, mut mem) = (Vec::new(), Vec::new(), Vec::new());
    let best = |slot: &mut Vec<Duration>, samples: Vec<Duration>| {
        let t: Duration = samples.iter().sum();
        if slot.is_empty() || t < slot.iter().sum::<Duration>() {
            *slot = samples;
        }
    };
    for _ in 0..a.rounds {
        let samples = queries
            .iter()
            .map(|q| {
                let t = Instant::now();
                std::hint::black_box(brute_force(&vectors, a.dim, q));
                t.elapsed()
            })
            .collect();
        best(&mut brute, samples);
        for (slot, r) in [(&mut dl, &download), (&mut mem, &memory)] {
            let samples = queries
                .iter()
                .map(|q| {
                    let t = Instant::now();
                    std::hint::black_box(rt.block_on(r.search(q, &options)).expect("search"));
                    t.elapsed()
                })
                .collect();
            best(slot, samples);
        }
    }
    let brute = timing(brute);
    show("brute-force scan, one Vec<f32>", &brute, brute.qps);
    show("reader, download mode (vec0 chunks)", &timing(dl), brute.qps);
    show("reader, memory mode (f32 arenas)", &timing(mem), brute.qps);

    println!("\nrecall@{TOP_K}, vector-only CLUSTER snapshot, {} shards:", a.shards);
    let cluster = open(&only_out, SqliteMode::Memory);
    for probes in [1u32, 2, 4] {
        let opts = SearchOptions {
            top_k: TOP_K,
            num_probes: Some(probes),
            ..SearchOptions::default()
        };
        let mut sum = 0.0;
        let mut samples = Vec::new();
        for (q, want) in queries.iter().zip(&exact) {
            let t = Instant::now();
            let got = rt.block_on(cluster.search(q, &opts)).expect("search");
            samples.push(t.elapsed());
            sum += recall(&ids(&got), want);
        }
        let t = timing(samples);
        println!(
            "  {probes} probe(s): recall@{TOP_K} {:.4}, {:.1} queries/s, p50 {:.2} ms",
            sum / queries.len() as f64,
            t.qps,
            t.p50.as_secs_f64() * 1e3
        );
    }
    if a.keep.is_some() {
        println!(
            "\nkept: {} and {}, queries in {}",
            unified_out.display(),
            only_out.display(),
            dir.join("queries.json").display()
        );
    }
}
