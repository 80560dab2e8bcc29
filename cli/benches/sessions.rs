//! Point lookups through a driver's pooled sessions against a new session
//! for every query, measured in the same run.
//!
//! `cargo bench -p sf-cli --bench sessions [-- ROWS]` (default 100,000)
//!
//! The table: `id` (Int64 key), `name` (text), saved with `save_as_table`
//! into 8 SQLite shards on local disk through an embedded driver. Then
//! 8 concurrent callers run 250 point lookups each
//! (`SELECT * FROM wh.bench.users WHERE id = <k>`), every query in a
//! session borrowed from the driver for that query alone:
//!
//! - pooled, size 8 and size 2: the session goes back to the pool after
//!   the query and is lent again (with size 2, callers also wait their
//!   turn);
//! - a new session per query: the same driver, the session thrown away
//!   (`discard`) after each query, so every borrow makes a session
//!   (settings applied, catalogs and global views registered).
//!
//! The time of one query counts from the borrow to the last row, waiting
//! for a session included.

// A benchmark's output is its figures.
#![allow(clippy::disallowed_macros)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use sf_warehouse::{Driver, SaveMode, Source};

const CALLERS: usize = 8;
const QUERIES_PER_CALLER: usize = 250;

fn table(n: usize) -> RecordBatch {
    let ids: Vec<i64> = (0..n as i64).collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("user-{i:08}")),
            )) as ArrayRef,
        ),
    ])
    .expect("batch")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn driver(url: &str, cache: &std::path::Path, size: usize) -> Driver {
    Driver::builder()
        .with_pool_size(size)
        .with_setting("sf.catalog.wh.warehouse", url)
        .with_reader_cache(cache)
        .build()
        .expect("driver")
}

/// Every caller's lookups; `discard` throws each session away after its query.
async fn run(driver: &Driver, n: usize, discard: bool) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let driver = driver.clone();
        tasks.spawn(async move {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (caller as u64 + 1);
            let mut times = Vec::with_capacity(QUERIES_PER_CALLER);
            for _ in 0..QUERIES_PER_CALLER {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = x % n as u64;
                let t = Instant::now();
                let session = driver.session().await.expect("borrow");
                let batches = session
                    .sql(&format!("SELECT * FROM wh.bench.users WHERE id = {k}"))
                    .await
                    .expect("query")
                    .collect()
                    .await
                    .expect("rows");
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                assert_eq!(rows, 1, "key {k}");
                if discard {
                    session.discard();
                } else {
                    drop(session);
                }
                times.push(t.elapsed());
            }
            times
        });
    }
    let mut all = Vec::with_capacity(CALLERS * QUERIES_PER_CALLER);
    while let Some(times) = tasks.join_next().await {
        all.extend(times.expect("caller"));
    }
    let wall = started.elapsed();
    all.sort();
    (all, wall)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("ROWS is a number"))
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().join("warehouse").display());
        let cache = dir.path().join("cache");
        println!("saving a {n}-row table in 8 SQLite shards...");
        let seed = driver(&url, &cache, 1);
        {
            let session = seed.session().await.expect("session");
            let df = session.context().read_batch(table(n)).expect("frame");
            session
                .save_as_table(&Source::from_dataframe(df), "wh.bench.users", SaveMode::Error, "id", 8)
                .await
                .expect("save");
        }
        seed.close().await;

        let total = CALLERS * QUERIES_PER_CALLER;
        println!("\n{CALLERS} callers x {QUERIES_PER_CALLER} point lookups, a session borrowed per query:");
        for (label, size, discard) in [
            ("pooled, size 8", 8, false),
            ("pooled, size 2", 2, false),
            ("a new session per query", 8, true),
        ] {
            let driver = driver(&url, &cache, size);
            // Warm: shards downloaded and open, the pool filled.
            run(&driver, n, false).await;
            let before = driver.stats().created;
            let (times, wall) = run(&driver, n, discard).await;
            let made = driver.stats().created - before;
            println!(
                "  {label:<24} p50 {:>8.3} ms  p99 {:>8.3} ms  {:>7.0} queries/s  ({total} queries, {made} sessions made)",
                percentile(&times, 0.5).as_secs_f64() * 1e3,
                percentile(&times, 0.99).as_secs_f64() * 1e3,
                total as f64 / wall.as_secs_f64(),
            );
            driver.close().await;
        }
    });
}
