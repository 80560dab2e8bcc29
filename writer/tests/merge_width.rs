//! A merge never holds more than [`MAX_FAN_IN`] sources open, measured
//! from the outside: the process's open file descriptors while a shard of
//! many spilled runs drains (passes and the final merge). One test in
//! this file, so that no other test opens files in the same process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::BinaryArray;
use sf_manifest::{DbId, KeyEncoding};
use sf_writer::build::backend::DuplicatePolicy;
use sf_writer::build::merge::{MAX_FAN_IN, Order};
use sf_writer::route::budget::MemoryBudget;
use sf_writer::route::collect::{CollectorSettings, RowCollector};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists the open files")
        .count()
}

#[test]
fn merges_never_open_more_runs_than_their_width() {
    let dir = tempfile::tempdir().expect("tmp");
    let settings = CollectorSettings {
        order: Order::Key,
        on_duplicate: DuplicatePolicy::LastWins,
        key_encoding: KeyEncoding::Raw,
        chunk_bytes: 2048,
        spill_dir: dir.path().join("spill"),
    };
    // A budget of a few chunks: the shard spills again and again.
    let budget = MemoryBudget::new(24_000);
    let mut c = RowCollector::new(settings, Arc::clone(&budget), 0, 1);
    let mut want = BTreeMap::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for batch in 0..40u64 {
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for i in 0..500u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = (x % 1_000_000).to_be_bytes().to_vec();
            let value = format!("row-{batch}-{i}").into_bytes();
            want.insert(key.clone(), value.clone());
            keys.push(key);
            values.push(value);
        }
        let dbs = vec![0u32; keys.len()];
        let keys = BinaryArray::from_iter_values(keys.iter().map(Vec::as_slice));
        let values = BinaryArray::from_iter_values(values.iter().map(Vec::as_slice));
        for (db, mut chunk) in c.push(&dbs, &keys, &values).expect("push") {
            chunk
                .sort(DbId(db), DuplicatePolicy::LastWins, KeyEncoding::Raw)
                .expect("sort");
            c.put_sealed(db, chunk).expect("sealed");
        }
    }
    let rows = c.take_shard(0).expect("take").expect("the shard holds rows");

    // Watch the open descriptors from another thread for the whole drain.
    let baseline = open_fds();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(baseline));
    let watcher = {
        let (done, peak) = (Arc::clone(&done), Arc::clone(&peak));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                peak.fetch_max(open_fds(), Ordering::Relaxed);
            }
        })
    };
    let mut in_final_merge = 0usize;
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let stats = rows
        .drain(&dir.path().join("merge"), &mut |slice| {
            // Called during the final merge, with its sources open.
            in_final_merge = in_final_merge.max(open_fds());
            out.extend(slice.iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
            Ok(())
        })
        .expect("drain");
    done.store(true, Ordering::Release);
    watcher.join().expect("watcher");

    assert!(
        stats.spilled_runs as usize > 3 * MAX_FAN_IN,
        "the shard spilled many runs ({}), more than a merge may open",
        stats.spilled_runs
    );
    assert!(out == want.into_iter().collect::<Vec<_>>(), "every key once, in order");
    // The descriptors a merge may add: its sources, and the run a pass
    // writes (the watcher's own listing is in the baseline as well).
    let extra = peak.load(Ordering::Relaxed).max(in_final_merge) - baseline;
    assert!(
        extra <= MAX_FAN_IN + 1,
        "{extra} files open at once, more than {MAX_FAN_IN} sources and one output"
    );
    // And the measure sees the merge's files: the final merge reads
    // several runs from disk.
    assert!(
        in_final_merge >= baseline + 2,
        "the final merge holds its runs open ({in_final_merge} against {baseline})"
    );
}
