//! Read latency of the reader, in download mode and in memory mode,
//! against raw rusqlite on the same files (the ceiling of SQLite), measured
//! in the same run, and the open time of a 10,000-shard snapshot.
//!
//! `cargo bench -p sf-tests --bench read` builds a 1,000,000-key snapshot
//! in 8 SQLite shards (100-byte values) with the test helper that stands in
//! for `sf-write`, warms a download-mode reader (every shard cached and
//! open) and two memory-mode readers (every shard loaded; one with
//! transparent huge pages, the default, one with 4 KiB pages), then prints:
//!
//! - `get` p50/p99/p99.9 of the readers against a raw rusqlite lookup
//!   (prepared statement, same file, same open flags, no routing), in
//!   alternating rounds — targets: download mode at the ceiling, memory
//!   mode p99 < 1 µs;
//! - `multi_get` of 1,000 random keys against 1,000 raw lookups — targets:
//!   download mode at the ceiling, memory mode < 0.3 ms;
//! - the time to load the 8 cached shards into memory, and what they hold;
//! - the time to open (build a `Reader` for) a 10,000-shard manifest —
//!   target: < 100 ms;
//! - for scale: warm range-mode `get` and 16-task `get` throughput.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use sf_manifest::{
    Attempt, BuildMeta, DbId, Key, KeyEncoding, Manifest, ManifestStore, ObjectManifestStore, RunId, ShardRow,
    ShardingSpec, StorageOptions, WriterInfo,
};
use sf_reader::{Reader, ReaderSettings, SqliteMode};
use sf_router::{Routed, Router};
use sf_tests::snapshots::{Row, SnapshotSpec, build_sqlite_snapshot};

const KEYS: u64 = 1_000_000;
const SHARDS: u32 = 8;
const GETS: usize = 300_000;
const MULTI_ROUNDS: usize = 300;
const OPEN_ROUNDS: usize = 15;

/// Deterministic keys without another dependency.
struct Lcg(u64);

impl Lcg {
    fn next_key(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 20) % KEYS
    }
}

struct Percentiles {
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

/// Anonymous memory of this process backed by transparent huge pages, in
/// KiB (0 where the kernel does not say).
fn anon_huge_kib() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("AnonHugePages:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    }
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn value_of(k: u64) -> Vec<u8> {
    let mut v = format!("value-{k:012}-").into_bytes();
    v.resize(100, b'x');
    v
}

/// The ceiling: one read-only connection per shard file with its prepared
/// statement, opened like the reader opens them.
struct Raw {
    conns: Vec<Connection>,
}

impl Raw {
    fn open(files: &[std::path::PathBuf]) -> Raw {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conns = files
            .iter()
            .map(|f| {
                let size = std::fs::metadata(f).expect("size").len();
                let c = Connection::open_with_flags(format!("file:{}?immutable=1", f.display()), flags).expect("open");
                c.execute_batch(&format!("PRAGMA mmap_size = {size};")).expect("mmap");
                c
            })
            .collect();
        Raw { conns }
    }

    fn get(&self, stmts: &mut [rusqlite::CachedStatement<'_>], db: usize, key: &[u8]) -> Option<Vec<u8>> {
        let _ = &self.conns;
        let stmt = &mut stmts[db];
        stmt.raw_bind_parameter(1, key).expect("bind");
        let mut rows = stmt.raw_query();
        rows.next()
            .expect("step")
            .map(|r| r.get_ref(0).expect("col").as_blob().expect("blob").to_vec())
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let work = tempfile::tempdir().expect("work dir");
    let prefix = format!("file://{}/snap", work.path().display());
    let cache = work.path().join("cache");

    println!("building {KEYS} keys in {SHARDS} SQLite shards (100-byte values)...");
    let t = Instant::now();
    let rows: Vec<Row> = (0..KEYS).map(|k| Row::new(Key::Int(k as i64), value_of(k))).collect();
    let spec = SnapshotSpec::hash("bench", SHARDS, KeyEncoding::U64Be);
    let built = rt.block_on(build_sqlite_snapshot(&prefix, &spec, &rows));
    drop(rows);
    println!("  built in {:.1} s", t.elapsed().as_secs_f64());

    let reader = rt
        .block_on(
            Reader::builder(format!("{prefix}/_CURRENT"))
                .with_settings(ReaderSettings {
                    cache_dir: Some(cache.clone()),
                    sqlite_mode: SqliteMode::Download,
                    ..ReaderSettings::default()
                })
                .build(),
        )
        .expect("reader");
    // Warm: every shard downloaded, opened, and its pages in the OS cache.
    rt.block_on(async {
        let all: Vec<Key> = (0..KEYS).step_by(7).map(|k| Key::Int(k as i64)).collect();
        for chunk in all.chunks(10_000) {
            reader.multi_get(chunk).await.expect("warm");
        }
    });
    let stats = reader.stats();
    assert_eq!(stats.downloads, u64::from(SHARDS));

    // Memory mode over the same cache: no download, 8 shards loaded; once
    // with huge pages (the default) and once without, to show what they buy.
    let anon_huge_before = anon_huge_kib();
    let open_memory = |huge_pages: bool| {
        rt.block_on(async {
            let memory = Reader::builder(format!("{prefix}/_CURRENT"))
                .with_settings(ReaderSettings {
                    cache_dir: Some(cache.clone()),
                    sqlite_mode: SqliteMode::Memory,
                    memory_huge_pages: huge_pages,
                    ..ReaderSettings::default()
                })
                .build()
                .await?;
            let one_per_shard: Vec<Key> = (0..1000).map(Key::Int).collect();
            memory.multi_get(&one_per_shard).await?;
            Ok::<_, sf_reader::Error>(memory)
        })
        .expect("memory reader")
    };
    let t = Instant::now();
    let memory = open_memory(true);
    let load_time = t.elapsed();
    let anon_huge = anon_huge_kib().saturating_sub(anon_huge_before);
    let memory_small = open_memory(false);
    let ms_stats = memory.stats();
    assert_eq!(
        (ms_stats.memory_shards, ms_stats.downloads),
        (u64::from(SHARDS), 0),
        "{ms_stats:?}"
    );
    let file_bytes: u64 = built.manifest.shards.iter().map(|s| s.db_bytes).sum();
    println!();
    println!(
        "memory mode: {SHARDS} cached shards ({:.1} MiB of files) loaded in {:.2} s ({:.2} M rows/s), holding {:.1} MiB",
        file_bytes as f64 / 1048576.0,
        load_time.as_secs_f64(),
        KEYS as f64 / load_time.as_secs_f64() / 1e6,
        ms_stats.memory_bytes as f64 / 1048576.0
    );
    println!(
        "  of which backed by transparent huge pages: {:.1} MiB (AnonHugePages; 0 where the kernel has them off)",
        anon_huge as f64 / 1024.0
    );

    // The same bytes for the ceiling (the published shard files, which
    // the cache holds copies of), and the same routing precomputed.
    let files: Vec<std::path::PathBuf> = built
        .manifest
        .shards
        .iter()
        .map(|s| {
            let folder = s.db_url.as_deref().expect("db_url");
            let folder = folder.strip_prefix("file://").expect("a local prefix");
            std::path::Path::new(folder).join(sf_manifest::format::layout::SQLITE_SHARD_FILE)
        })
        .collect();
    let raw = Raw::open(&files);
    let router = Router::for_build(&built.manifest.build).expect("router");
    let shard_of = |k: u64| match router.route_key(&Key::Int(k as i64)).expect("route") {
        Routed::Db(d) => built
            .manifest
            .shards
            .iter()
            .position(|s| s.db_id == DbId(d))
            .expect("shard row"),
        Routed::UnknownToken => unreachable!("hash routing"),
    };
    let mut stmts: Vec<_> = raw
        .conns
        .iter()
        .map(|c| c.prepare_cached("SELECT v FROM kv WHERE k = ?1").expect("prepare"))
        .collect();

    // get: both readers and raw, alternating rounds so all see the same machine.
    let mut lcg = Lcg(42);
    let keys: Vec<u64> = (0..GETS).map(|_| lcg.next_key()).collect();
    let key_objs: Vec<Key> = keys.iter().map(|k| Key::Int(*k as i64)).collect();
    let encoded: Vec<(usize, [u8; 8])> = keys.iter().map(|k| (shard_of(*k), k.to_be_bytes())).collect();
    let mut reader_samples = Vec::with_capacity(GETS);
    let mut memory_samples = Vec::with_capacity(GETS);
    let mut small_page_samples = Vec::with_capacity(GETS);
    let mut raw_samples = Vec::with_capacity(GETS);
    rt.block_on(async {
        for round in keys.chunks(10_000).enumerate() {
            let (i, chunk) = round;
            let base = i * 10_000;
            for (j, k) in chunk.iter().enumerate() {
                let key = &key_objs[base + j];
                let t = Instant::now();
                let v = reader.get(key).await.expect("get");
                reader_samples.push(t.elapsed());
                debug_assert_eq!(v.as_deref(), Some(value_of(*k).as_slice()));
                black_box(v);
            }
            for (j, k) in chunk.iter().enumerate() {
                let key = &key_objs[base + j];
                let t = Instant::now();
                let v = memory.get(key).await.expect("get");
                memory_samples.push(t.elapsed());
                debug_assert_eq!(v.as_deref(), Some(value_of(*k).as_slice()));
                black_box(v);
            }
            for (j, k) in chunk.iter().enumerate() {
                let key = &key_objs[base + j];
                let t = Instant::now();
                let v = memory_small.get(key).await.expect("get");
                small_page_samples.push(t.elapsed());
                debug_assert_eq!(v.as_deref(), Some(value_of(*k).as_slice()));
                black_box(v);
            }
            for (db, enc) in &encoded[base..base + chunk.len()] {
                let t = Instant::now();
                let v = raw.get(&mut stmts, *db, enc);
                raw_samples.push(t.elapsed());
                black_box(v);
            }
        }
    });
    let g = percentiles(reader_samples);
    let mg = percentiles(memory_samples);
    let sg = percentiles(small_page_samples);
    let c = percentiles(raw_samples);
    println!();
    println!("get, warm ({GETS} random keys of {KEYS}):");
    println!(
        "  reader, download mode   p50 {:>10}  p99 {:>10}  p99.9 {:>10}",
        us(g.p50),
        us(g.p99),
        us(g.p999)
    );
    println!(
        "  reader, memory mode     p50 {:>10}  p99 {:>10}  p99.9 {:>10}",
        us(mg.p50),
        us(mg.p99),
        us(mg.p999)
    );
    println!(
        "    the same, 4 KiB pages p50 {:>10}  p99 {:>10}  p99.9 {:>10}",
        us(sg.p50),
        us(sg.p99),
        us(sg.p999)
    );
    println!(
        "  raw rusqlite            p50 {:>10}  p99 {:>10}  p99.9 {:>10}   (SQLite's ceiling: no routing, no pool)",
        us(c.p50),
        us(c.p99),
        us(c.p999)
    );
    println!("  targets: download mode at the ceiling; memory mode p99 < 1 µs");

    // multi_get(1000) vs 1000 raw lookups.
    let mut multi = Vec::with_capacity(MULTI_ROUNDS);
    let mut memory_multi = Vec::with_capacity(MULTI_ROUNDS);
    let mut small_page_multi = Vec::with_capacity(MULTI_ROUNDS);
    let mut raw_multi = Vec::with_capacity(MULTI_ROUNDS);
    rt.block_on(async {
        for _ in 0..MULTI_ROUNDS {
            let ks: Vec<u64> = (0..1000).map(|_| lcg.next_key()).collect();
            let objs: Vec<Key> = ks.iter().map(|k| Key::Int(*k as i64)).collect();
            let enc: Vec<(usize, [u8; 8])> = ks.iter().map(|k| (shard_of(*k), k.to_be_bytes())).collect();
            let t = Instant::now();
            let v = reader.multi_get(&objs).await.expect("multi_get");
            multi.push(t.elapsed());
            assert_eq!(v.iter().filter(|x| x.is_some()).count(), 1000);
            let t = Instant::now();
            let v = memory.multi_get(&objs).await.expect("multi_get");
            memory_multi.push(t.elapsed());
            assert_eq!(v.iter().filter(|x| x.is_some()).count(), 1000);
            let t = Instant::now();
            let v = memory_small.multi_get(&objs).await.expect("multi_get");
            small_page_multi.push(t.elapsed());
            assert_eq!(v.iter().filter(|x| x.is_some()).count(), 1000);
            let t = Instant::now();
            for (db, e) in &enc {
                black_box(raw.get(&mut stmts, *db, e));
            }
            raw_multi.push(t.elapsed());
        }
    });
    let m = percentiles(multi);
    let mm = percentiles(memory_multi);
    let sm = percentiles(small_page_multi);
    let rm = percentiles(raw_multi);
    println!();
    println!("multi_get of 1,000 random keys, warm ({MULTI_ROUNDS} rounds):");
    println!("  reader, download mode   p50 {:>10}  p99 {:>10}", ms(m.p50), ms(m.p99));
    println!(
        "  reader, memory mode     p50 {:>10}  p99 {:>10}",
        ms(mm.p50),
        ms(mm.p99)
    );
    println!(
        "    the same, 4 KiB pages p50 {:>10}  p99 {:>10}",
        ms(sm.p50),
        ms(sm.p99)
    );
    println!(
        "  raw rusqlite            p50 {:>10}  p99 {:>10}   (1,000 sequential lookups, one thread)",
        ms(rm.p50),
        ms(rm.p99)
    );
    println!("  targets: download mode at the ceiling; memory mode < 0.3 ms");

    // Throughput with 16 tasks sharing a reader.
    let per_task = 50_000;
    let throughput = |reader: &Reader| {
        let t = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..16u64)
                .map(|i| {
                    let r = reader.clone();
                    tokio::spawn(async move {
                        let mut l = Lcg(i + 7);
                        for _ in 0..per_task {
                            black_box(r.get(&Key::Int(l.next_key() as i64)).await.expect("get"));
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
        });
        (16 * per_task) as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    println!();
    println!(
        "16 tasks on 2 worker threads: download mode {:.2} M gets/s, memory mode {:.2} M gets/s",
        throughput(&reader),
        throughput(&memory)
    );

    // Range mode, warm block cache (for scale; no target).
    let range = rt
        .block_on(
            Reader::builder(format!("{prefix}/_CURRENT"))
                .with_settings(ReaderSettings {
                    cache_dir: Some(work.path().join("range-cache")),
                    sqlite_mode: SqliteMode::Range,
                    page_cache_bytes: 1 << 30,
                    ..ReaderSettings::default()
                })
                .build(),
        )
        .expect("range reader");
    let sample: Vec<Key> = (0..20_000).map(|_| Key::Int(lcg.next_key() as i64)).collect();
    let mut range_samples = Vec::with_capacity(sample.len());
    rt.block_on(async {
        for k in &sample {
            range.get(k).await.expect("cold");
        }
        for k in &sample {
            let t = Instant::now();
            black_box(range.get(k).await.expect("warm"));
            range_samples.push(t.elapsed());
        }
    });
    let r = percentiles(range_samples);
    let rs = range.stats();
    println!();
    println!(
        "get, range mode, warm block cache: p50 {}  p99 {}   ({} ranged GETs, {:.1} MiB fetched, no download)",
        us(r.p50),
        us(r.p99),
        rs.range_requests,
        rs.range_bytes as f64 / 1048576.0
    );

    // Opening a 10,000-shard snapshot: _CURRENT, the manifest, the router,
    // 10,000 shard slots; no shard opens.
    let big = format!("file://{}/big", work.path().display());
    let open_time = rt.block_on(async {
        let store = ObjectManifestStore::open(&big, &StorageOptions::new()).expect("store");
        let run = RunId::new("big").expect("run");
        let n = 10_000u32;
        let shards = (0..n)
            .map(|d| ShardRow {
                db_id: DbId(d),
                db_url: Some(format!("{big}/shards/run_id=big/db={d:05}/attempt=00")),
                attempt: Attempt(0),
                row_count: 100,
                db_bytes: 8192,
                min_key: Some(Key::Int(i64::from(d))),
                max_key: Some(Key::Int(i64::from(d) + 1_000_000)),
                checkpoint_id: Some(format!("{:032x}", u128::from(d))),
                writer_info: WriterInfo {
                    attempt: 0,
                    duration_ms: 12,
                    stage_id: Some(1),
                    task_attempt_id: Some(i64::from(d)),
                    extra: [(
                        "checksum".to_string(),
                        serde_json::Value::from(format!("xxh3_128:{:032x}", u128::from(d))),
                    )]
                    .into(),
                },
            })
            .collect();
        let build = BuildMeta::new(run, n, &big, "id", ShardingSpec::hash(), KeyEncoding::U64Be);
        store
            .publish(&Manifest { build, shards }, None)
            .await
            .expect("publish 10,000-shard manifest");
        let mut times = Vec::new();
        for _ in 0..OPEN_ROUNDS {
            let t = Instant::now();
            let r = Reader::builder(format!("{big}/_CURRENT"))
                .with_settings(ReaderSettings {
                    cache_dir: Some(cache.clone()),
                    ..ReaderSettings::default()
                })
                .build()
                .await
                .expect("open 10,000 shards");
            times.push(t.elapsed());
            assert_eq!(r.info().num_dbs, n);
            black_box(r);
        }
        percentiles(times)
    });
    println!();
    println!(
        "open a 10,000-shard snapshot ({OPEN_ROUNDS} rounds): p50 {}  max {}   target < 100 ms",
        ms(open_time.p50),
        ms(open_time.p999)
    );
}
