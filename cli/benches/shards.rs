//! The same rows into more and more shards: where a build's time goes,
//! what one shard costs, peak memory; and a 100,000-shard manifest built,
//! published and opened.
//!
//! `cargo bench -p sf-cli --bench shards [-- ROWS] [--shards 8,1000,10000,100000]
//! [--backend sqlite|slatedb|both] [--slatedb-max-shards N] [--memory-limit-mib N]
//! [--manifest-shards N]`
//!
//! Defaults: 1,000,000 rows of 100-byte values (random i64 keys, one
//! Parquet file), 8, 1,000, 10,000 and 100,000 shards, both backends
//! (SlateDB up to 10,000 shards: see `--slatedb-max-shards`), the default
//! settings (sorted shards, default `memory_limit_mib`), and a manifest of
//! 100,000 shards.
//!
//! - Each build is the release `sf-write` binary on a local prefix, its
//!   summary read from `--json`: time per phase and peak RSS (`VmHWM`, as
//!   the build reports it). Steps of shard tasks (build, claim, upload) are
//!   sums over shards, the rest wall time. The last column block gives
//!   what each extra shard cost against the 8-shard build of the same
//!   rows, in µs per shard.
//! - The manifest: 100,000 shard rows encoded, written create-if-absent
//!   and `_CURRENT` swapped (what a build's publish does), then a reader
//!   opening the snapshot (reads `_CURRENT`, the manifest, builds its
//!   router and shard slots; no shard is opened).

#![allow(clippy::disallowed_macros)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch};
use serde_json::Value;
use sf_manifest::{
    Attempt, BuildMeta, DbId, Key, KeyEncoding, Manifest, ManifestStore, ObjectManifestStore, RunId, ShardRow,
    ShardingSpec, StorageOptions, WriterInfo,
};

const VALUE_BYTES: usize = 100;

struct Args {
    rows: usize,
    shards: Vec<u32>,
    sqlite: bool,
    slatedb: bool,
    slatedb_max_shards: u32,
    memory_limit_mib: Option<u64>,
    manifest_shards: u32,
}

fn args() -> Args {
    let mut a = Args {
        rows: 1_000_000,
        shards: vec![8, 1_000, 10_000, 100_000],
        sqlite: true,
        slatedb: true,
        slatedb_max_shards: 10_000,
        memory_limit_mib: None,
        manifest_shards: 100_000,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, what: &str| -> u64 {
        v.and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or_else(|| panic!("{what} N"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--shards" => {
                a.shards = it
                    .next()
                    .expect("--shards 8,1000")
                    .split(',')
                    .map(|s| s.replace('_', "").parse().expect("a shard count"))
                    .collect()
            }
            "--backend" => match it.next().as_deref() {
                Some("sqlite") => a.slatedb = false,
                Some("slatedb") => a.sqlite = false,
                Some("both") => {}
                other => panic!("--backend sqlite|slatedb|both, not {other:?}"),
            },
            "--slatedb-max-shards" => a.slatedb_max_shards = number(it.next(), "--slatedb-max-shards") as u32,
            "--memory-limit-mib" => a.memory_limit_mib = Some(number(it.next(), "--memory-limit-mib")),
            "--manifest-shards" => a.manifest_shards = number(it.next(), "--manifest-shards") as u32,
            "--bench" => {}
            s if !s.starts_with('-') => a.rows = s.replace('_', "").parse().expect("ROWS is a number"),
            _ => {}
        }
    }
    a
}

fn write_parquet(path: &Path, n: usize) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut step = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let file = std::fs::File::create(path).expect("create");
    let mut w = None;
    for start in (0..n).step_by(65_536) {
        let len = 65_536.min(n - start);
        let keys: Vec<i64> = (0..len).map(|_| (step() >> 1) as i64).collect();
        let values: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| {
                let mut v = format!("{k:020}").into_bytes();
                v.resize(VALUE_BYTES, b'x');
                v
            })
            .collect();
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(keys)) as ArrayRef),
            (
                "value",
                Arc::new(BinaryArray::from_iter_values(values.iter().map(Vec::as_slice))) as ArrayRef,
            ),
        ])
        .expect("batch");
        let writer = w.get_or_insert_with(|| {
            datafusion::parquet::arrow::ArrowWriter::try_new(file.try_clone().expect("file"), batch.schema(), None)
                .expect("writer")
        });
        writer.write(&batch).expect("write");
    }
    w.expect("rows").close().expect("close");
}

fn job_file(dir: &Path, name: &str, parquet: &Path, shards: u32, backend: &str, limit: Option<u64>) -> PathBuf {
    let out = dir.join(format!("out-{name}"));
    let _ = std::fs::remove_dir_all(&out);
    let path = dir.join(format!("{name}.toml"));
    let write = limit.map_or(String::new(), |l| format!("[write]\nmemory_limit_mib = {l}\n"));
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
{write}[output]
prefix = "{}"
backend = "{backend}"
"#,
            parquet.display(),
            out.display()
        ),
    )
    .expect("job file");
    path
}

/// One build's figures, in seconds unless named otherwise.
#[derive(Debug, Clone, Default)]
struct Figures {
    total: f64,
    plan: f64,
    input: f64,
    build_wall: f64,
    build_sum: f64,
    claim_sum: f64,
    upload_sum: f64,
    verify: f64,
    publish: f64,
    cleanup: f64,
    peak_mib: f64,
    spilled_runs: u64,
}

fn sf_write(job: &Path) -> Option<Figures> {
    let out = Command::new(env!("CARGO_BIN_EXE_sf-write"))
        .args(["--config", job.to_str().expect("path"), "--progress", "off", "--json"])
        .output()
        .expect("start sf-write");
    if !out.status.success() {
        println!(
            "  sf-write FAILED on {} ({}): {}",
            job.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("sf-write --json prints one object");
    let f = |path: &[&str]| {
        let mut x = &v;
        for p in path {
            x = &x[*p];
        }
        x.as_f64().unwrap_or(0.0)
    };
    let input = f(&["steps", "input"]);
    Some(Figures {
        total: f(&["seconds", "total"]),
        plan: f(&["seconds", "plan"]),
        input,
        build_wall: f(&["seconds", "write"]) - input,
        build_sum: f(&["steps", "build_sum"]),
        claim_sum: f(&["steps", "claim_sum"]),
        upload_sum: f(&["steps", "upload_sum"]),
        verify: f(&["steps", "verify"]),
        publish: f(&["steps", "publish"]),
        cleanup: f(&["steps", "cleanup"]),
        peak_mib: f(&["peak_rss_bytes"]) / (1024.0 * 1024.0),
        spilled_runs: f(&["spilled_runs"]) as u64,
    })
}

fn print_table(backend: &str, runs: &[(u32, Figures)], rows: usize) {
    println!("{backend}: {rows} rows");
    let header: Vec<String> = runs.iter().map(|(n, _)| format!("{n} shards")).collect();
    println!(
        "  {:<34}{}",
        "",
        header.iter().map(|h| format!("{h:>15}")).collect::<String>()
    );
    let line = |name: &str, get: &dyn Fn(&Figures) -> f64, unit: &str| {
        let cells: String = runs
            .iter()
            .map(|(_, f)| format!("{:>15}", format!("{:.3}{unit}", get(f))))
            .collect();
        println!("  {name:<34}{cells}");
    };
    line("total (s)", &|f| f.total, "");
    line("  plan", &|f| f.plan, "");
    line("  read, route, collect input", &|f| f.input, "");
    line("  build and upload shards (wall)", &|f| f.build_wall, "");
    line("    build, summed", &|f| f.build_sum, "");
    line("    claim, summed", &|f| f.claim_sum, "");
    line("    upload/place, summed", &|f| f.upload_sum, "");
    line("  verify checksums", &|f| f.verify, "");
    line("  manifest + _CURRENT", &|f| f.publish, "");
    line("  loser scan", &|f| f.cleanup, "");
    line("rows/s (M)", &|f| rows as f64 / f.total / 1e6, "");
    line("peak RSS (MiB)", &|f| f.peak_mib, "");
    line("spilled runs", &|f| f.spilled_runs as f64, "");
    let Some((base_n, base)) = runs.iter().find(|(n, _)| *n == runs[0].0).cloned() else {
        return;
    };
    println!("  extra cost per shard against {base_n} shards (µs per shard):");
    let per_shard = |name: &str, get: &dyn Fn(&Figures) -> f64| {
        let cells: String = runs
            .iter()
            .map(|(n, f)| {
                if *n == base_n {
                    format!("{:>15}", "-")
                } else {
                    let us = (get(f) - get(&base)) / f64::from(n - base_n) * 1e6;
                    format!("{:>15}", format!("{us:.0}"))
                }
            })
            .collect();
        println!("    {name:<32}{cells}");
    };
    per_shard("total", &|f| f.total);
    per_shard("build and upload (wall)", &|f| f.build_wall);
    per_shard("build (summed)", &|f| f.build_sum);
    per_shard("claim (summed)", &|f| f.claim_sum);
    per_shard("upload/place (summed)", &|f| f.upload_sum);
    per_shard("verify", &|f| f.verify);
    per_shard("manifest + _CURRENT", &|f| f.publish);
    per_shard("loser scan", &|f| f.cleanup);
    if let Some((n, f)) = runs.iter().find(|(n, _)| *n == 10_000) {
        println!(
            "  {n} shards against {base_n}: total {:.1}x (target <= 10x), manifest + _CURRENT {:.3} s (target < 1 s)",
            f.total / base.total,
            f.publish
        );
    }
}

fn manifest_bench(dir: &Path, shards: u32) {
    let prefix = format!("file://{}/manifest-{shards}", dir.display());
    let store = ObjectManifestStore::open(&prefix, &StorageOptions::new()).expect("store");
    let run = RunId::new("bench-manifest").expect("run id");
    let started = Instant::now();
    let rows: Vec<ShardRow> = (0..shards)
        .map(|i| {
            let mut extra = BTreeMap::new();
            extra.insert(
                sf_manifest::format::manifest::CHECKSUM_KEY.to_string(),
                Value::from(format!("xxh3_128:{:032x}", u128::from(i) * 7919)),
            );
            ShardRow {
                db_id: DbId(i),
                db_url: Some(format!(
                    "{prefix}/{}",
                    sf_manifest::format::layout::shard_attempt_key(&run, DbId(i), Attempt(0))
                )),
                attempt: Attempt(0),
                row_count: 10,
                db_bytes: 8192,
                min_key: Some(Key::Int(i64::from(i) * 1000)),
                max_key: Some(Key::Int(i64::from(i) * 1000 + 999)),
                checkpoint_id: Some(format!("{:032x}", u128::from(i) * 7919)),
                writer_info: WriterInfo {
                    attempt: 0,
                    duration_ms: 3,
                    stage_id: None,
                    task_attempt_id: None,
                    extra,
                },
            }
        })
        .collect();
    let manifest = Manifest {
        build: BuildMeta::new(run, shards, &prefix, "id", ShardingSpec::hash(), KeyEncoding::U64Be),
        shards: rows,
    };
    let made = started.elapsed();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let encode_started = Instant::now();
    let bytes = manifest.to_sqlite_bytes().expect("encode").len();
    let encode = encode_started.elapsed();
    let publish_started = Instant::now();
    runtime.block_on(store.publish(&manifest, None)).expect("publish");
    let publish = publish_started.elapsed();
    let open_started = Instant::now();
    let reader = runtime
        .block_on(sf_reader::Reader::builder(format!("{prefix}/_CURRENT")).build())
        .expect("reader opens");
    let open = open_started.elapsed();
    assert_eq!(reader.info().shards_in_manifest, shards as usize);
    let list_started = Instant::now();
    let listed = reader.shard_infos().count();
    let list = list_started.elapsed();
    assert_eq!(listed, shards as usize);
    reader.close();
    println!(
        "manifest of {shards} shards ({:.1} MiB)",
        bytes as f64 / (1024.0 * 1024.0)
    );
    println!("  rows made in memory:                 {:>8.3} s", made.as_secs_f64());
    println!("  encoded (SQLite file):               {:>8.3} s", encode.as_secs_f64());
    println!(
        "  published (encode, write, _CURRENT): {:>8.3} s  (target < 5 s)",
        publish.as_secs_f64()
    );
    println!(
        "  reader open (_CURRENT, manifest):    {:>8.3} s  (target < 1 s)",
        open.as_secs_f64()
    );
    println!("  every shard listed (shard_infos):    {:>8.3} s", list.as_secs_f64());
}

fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tmp");
    let parquet = dir.path().join("input.parquet");
    write_parquet(&parquet, a.rows);
    println!(
        "{} rows, {VALUE_BYTES}-byte values, {:.0} MiB of Parquet, {} cores; memory_limit_mib = {}",
        a.rows,
        std::fs::metadata(&parquet).expect("input").len() as f64 / (1024.0 * 1024.0),
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        a.memory_limit_mib.map_or_else(
            || format!("{} (default)", sf_writer::config::default_memory_limit_mib()),
            |l| l.to_string()
        )
    );
    let backends: Vec<&str> = [("sqlite", a.sqlite), ("slatedb", a.slatedb)]
        .into_iter()
        .filter_map(|(b, on)| on.then_some(b))
        .collect();
    for backend in backends {
        let mut runs = Vec::new();
        for &n in &a.shards {
            if backend == "slatedb" && n > a.slatedb_max_shards {
                println!(
                    "  (slatedb: {n} shards skipped; --slatedb-max-shards {})",
                    a.slatedb_max_shards
                );
                continue;
            }
            let job = job_file(
                dir.path(),
                &format!("{backend}-{n}"),
                &parquet,
                n,
                backend,
                a.memory_limit_mib,
            );
            let started = Instant::now();
            let figures = sf_write(&job);
            println!("  {backend}, {n} shards: {:.1} s", started.elapsed().as_secs_f64());
            if let Some(f) = figures {
                runs.push((n, f));
            }
            let _ = std::fs::remove_dir_all(dir.path().join(format!("out-{backend}-{n}")));
        }
        print_table(backend, &runs, a.rows);
    }
    if a.manifest_shards > 0 {
        manifest_bench(dir.path(), a.manifest_shards);
    }
}
