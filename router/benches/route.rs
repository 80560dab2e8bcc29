//! Hash-routing throughput of the Arrow kernel against plain xxh3 over the
//! same buffers (the ceiling), measured in the same run.
//!
//! `cargo bench -p sf-router --bench route` prints rows/s for both and the
//! ratio (target: >= 0.5).

// A benchmark's output is its figures.
#![allow(clippy::disallowed_macros)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use sf_manifest::KeyEncoding;
use sf_router::Router;
use xxhash_rust::xxh3::xxh3_64;

const ROWS: usize = 10_000_000;
const ROUNDS: usize = 11;

/// Best time of each of two functions, measured alternately so that both
/// see the same machine (these machines are shared and noisy).
fn best_of_pair(mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let mut best = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        a();
        best.0 = best.0.min(t.elapsed());
        let t = Instant::now();
        b();
        best.1 = best.1.min(t.elapsed());
    }
    best
}

fn report(name: &str, kernel: Duration, ceiling: Duration) {
    let rate = |d: Duration| ROWS as f64 / d.as_secs_f64();
    println!(
        "{name:<28} kernel {:>7.1} M rows/s   plain xxh3 {:>7.1} M rows/s   ratio {:.2}",
        rate(kernel) / 1e6,
        rate(ceiling) / 1e6,
        ceiling.as_secs_f64() / kernel.as_secs_f64()
    );
}

fn main() {
    // A simple LCG keeps the data deterministic without another dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x
    };
    let ints: Vec<i64> = (0..ROWS).map(|_| (next() >> 1) as i64).collect();
    let strs: Vec<String> = (0..ROWS).map(|_| format!("{:016x}", next())).collect();
    let int_batch =
        RecordBatch::try_from_iter([("k", Arc::new(Int64Array::from(ints)) as Arc<dyn Array>)]).expect("int batch");
    let str_batch =
        RecordBatch::try_from_iter([("k", Arc::new(StringArray::from(strs)) as Arc<dyn Array>)]).expect("string batch");

    println!("hash routing, {ROWS} rows, best of {ROUNDS}");
    for num_dbs in [8u32, 100] {
        let router = Router::hash(num_dbs, KeyEncoding::U64Be).expect("router");

        let int_keys = int_batch.column(0).as_any().downcast_ref::<Int64Array>().expect("ints");
        let (kernel, ceiling) = best_of_pair(
            || {
                black_box(router.route_batch(&int_batch, "k").expect("route ints"));
            },
            || {
                let out: Vec<u64> = int_keys.values().iter().map(|v| xxh3_64(&v.to_le_bytes())).collect();
                black_box(out);
            },
        );
        report(&format!("Int64, num_dbs={num_dbs}"), kernel, ceiling);

        let str_keys = str_batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        let (kernel, ceiling) = best_of_pair(
            || {
                black_box(router.route_batch(&str_batch, "k").expect("route strings"));
            },
            || {
                let out: Vec<u64> = (0..str_keys.len())
                    .map(|i| xxh3_64(str_keys.value(i).as_bytes()))
                    .collect();
                black_box(out);
            },
        );
        report(&format!("16-byte Utf8, num_dbs={num_dbs}"), kernel, ceiling);
    }
}
