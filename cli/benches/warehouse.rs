//! A point lookup through SQL against a full-scan filter on the same
//! warehouse table, measured in the same run.
//!
//! `cargo bench -p sf-cli --bench warehouse [-- ROWS]` (default 1,000,000)
//!
//! The table: `id` (Int64 key), `name` (text), `score` (Int64), saved with
//! `save_as_table` into 8 SQLite shards on local disk. Both queries go
//! through `Warehouse::sql` on one warm session (shards downloaded and
//! open), so both pay SQL parsing, planning and result collection:
//!
//! - point lookup: `SELECT * FROM wh.bench.users WHERE id = <k>` for random
//!   keys (a `ShardLookupExec` reading one shard);
//! - full-scan filter: `SELECT * FROM wh.bench.users WHERE name = '<name>'`,
//!   the same row found by scanning every shard in parallel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::prelude::SessionContext;
use sf_warehouse::{Catalogs, SaveMode, Warehouse};
use sf_writer::job::Embedded;

const LOOKUPS: usize = 2_000;
const SCANS: usize = 5;

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
        (
            "score",
            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i * 7 % 1000))) as ArrayRef,
        ),
    ])
    .expect("batch")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn one_row(wh: &Warehouse, ctx: &SessionContext, sql: &str) -> Duration {
    let t = Instant::now();
    let batches = wh.sql(ctx, sql).await.expect("query").collect().await.expect("rows");
    let d = t.elapsed();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 1, "{sql}");
    d
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("ROWS is a number"))
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().join("warehouse").display());
        let catalogs = Catalogs::from_settings([("sf.catalog.wh.warehouse", url.as_str())]).expect("catalogs");
        let wh = Warehouse::new(catalogs, Arc::new(Embedded::default())).with_reader_cache(dir.path().join("cache"));
        println!("saving a {n}-row table in 8 SQLite shards...");
        let t = Instant::now();
        let ctx = wh.session_context();
        let df = ctx.read_batch(table(n)).expect("frame");
        wh.save_as_table(df, "wh.bench.users", SaveMode::Error, "id", 8)
            .await
            .expect("save");
        println!("  saved in {:.1} s", t.elapsed().as_secs_f64());

        // Warm: every shard downloaded and open.
        one_row(&wh, &ctx, "SELECT * FROM wh.bench.users WHERE name = 'user-00000000'").await;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n as u64
        };
        for _ in 0..50 {
            let k = next();
            one_row(&wh, &ctx, &format!("SELECT * FROM wh.bench.users WHERE id = {k}")).await;
        }

        let mut lookups: Vec<Duration> = Vec::with_capacity(LOOKUPS);
        for _ in 0..LOOKUPS {
            let k = next();
            lookups.push(one_row(&wh, &ctx, &format!("SELECT * FROM wh.bench.users WHERE id = {k}")).await);
        }
        let mut scans: Vec<Duration> = Vec::with_capacity(SCANS);
        for _ in 0..SCANS {
            let k = next();
            scans.push(
                one_row(
                    &wh,
                    &ctx,
                    &format!("SELECT * FROM wh.bench.users WHERE name = 'user-{k:08}'"),
                )
                .await,
            );
        }
        lookups.sort();
        scans.sort();
        let (lp50, lp99) = (percentile(&lookups, 0.5), percentile(&lookups, 0.99));
        let sp50 = percentile(&scans, 0.5);
        println!("\nSQL over a {n}-row table, 8 shards, warm:");
        println!(
            "  point lookup (WHERE id = k)         p50 {:>9.3} ms  p99 {:>9.3} ms   ({LOOKUPS} queries)",
            lp50.as_secs_f64() * 1e3,
            lp99.as_secs_f64() * 1e3
        );
        println!(
            "  full-scan filter (WHERE name = ..)  p50 {:>9.3} ms                    ({SCANS} queries)",
            sp50.as_secs_f64() * 1e3
        );
        println!(
            "  ratio: a point lookup takes {:.4} of a full scan ({:.0}x faster)",
            lp50.as_secs_f64() / sp50.as_secs_f64(),
            sp50.as_secs_f64() / lp50.as_secs_f64()
        );
    });
}
