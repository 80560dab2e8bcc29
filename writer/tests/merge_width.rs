//! A merge never holds more than [`MAX_FAN_IN`] sources open, measured
//! exactly by the kernel: the process's limit on open files is set just
//! above what it holds before the drain, so every open the drain makes is
//! checked against it as it happens (an open past the limit fails with
//! "Too many open files"). At `MAX_FAN_IN + 1` more files (the sources of
//! a merge pass and the run it writes) the drain of a shard of many
//! spilled runs succeeds; at one fewer it fails, so the merge does reach
//! that width and the limit is what is measured. One test in this file,
//! so that no other test opens files in the same process.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::BinaryArray;
use sf_manifest::{DbId, KeyEncoding};
use sf_writer::build::backend::DuplicatePolicy;
use sf_writer::build::merge::{MAX_FAN_IN, Order, ShardRows};
use sf_writer::route::budget::MemoryBudget;
use sf_writer::route::collect::{CollectorSettings, RowCollector};

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// One shard of 20,000 rows collected under a budget of a few chunks, so
/// that it spilled many runs; and its rows as the drain must hand them on
/// (in key order, the last of each key).
fn spilled_shard(dir: &Path) -> (ShardRows, Rows) {
    let settings = CollectorSettings {
        order: Order::Key,
        on_duplicate: DuplicatePolicy::LastWins,
        key_encoding: KeyEncoding::Raw,
        chunk_bytes: 2048,
        spill_dir: dir.join("spill"),
    };
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
    (rows, want.into_iter().collect())
}

/// The process's open-file limit: (soft, hard).
fn nofile() -> (u64, String) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (fields[0].parse().expect("soft limit"), fields[1].to_string())
}

/// Sets the soft open-file limit of this process (with util-linux's
/// `prlimit`).
fn set_soft_nofile(soft: u64) {
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={soft}:"))
        .status()
        .expect("run prlimit (util-linux) to set the open-file limit");
    assert!(status.success(), "prlimit --nofile={soft}: {status}");
    assert_eq!(nofile().0, soft, "the limit took");
}

/// The highest open file descriptor, the listing's own left out.
fn highest_open() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let n: i32 = e.file_name().to_str()?.parse().ok()?;
            // The listing's own descriptor is the /proc/<pid>/fd folder.
            let target = std::fs::read_link(e.path()).ok()?;
            let listing = target.starts_with("/proc") && target.ends_with("fd");
            (!listing).then_some(n)
        })
        .max()
        .unwrap_or(2)
}

/// The number of the next file descriptor the process gets, once every
/// lower number is taken: holes below the highest open descriptor are
/// filled with files held in `fillers`. Then exactly `limit - next` more
/// files can be open at once under a soft limit of `limit` (a new
/// descriptor gets the lowest free number, and the limit bounds numbers).
fn next_descriptor(fillers: &mut Vec<File>) -> u64 {
    let highest = highest_open();
    loop {
        let f = File::open("/dev/null").expect("open /dev/null");
        let fd = f.as_raw_fd();
        if fd > highest {
            assert_eq!(fd, highest + 1, "every lower descriptor is taken");
            return fd as u64;
        }
        fillers.push(f);
    }
}

/// Drains `rows` with at most `extra` more files open at once than the
/// process holds now.
fn drain_within(rows: ShardRows, merge_dir: &Path, extra: u64) -> (sf_writer::Result<u32>, Rows) {
    let mut fillers = Vec::new();
    let next = next_descriptor(&mut fillers);
    let (soft, _) = nofile();
    let mut out: Rows = Vec::new();
    set_soft_nofile(next + extra);
    let stats = rows.drain(merge_dir, &mut |slice| {
        out.extend(slice.iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
        Ok(())
    });
    set_soft_nofile(soft);
    drop(fillers);
    (stats.map(|s| s.spilled_runs), out)
}

#[test]
fn merges_never_open_more_runs_than_their_width() {
    let dir = tempfile::tempdir().expect("tmp");
    let width = MAX_FAN_IN as u64 + 1;

    // One file fewer than a merge of MAX_FAN_IN runs writing its output
    // needs: the drain fails at the open that would go past.
    let (rows, _) = spilled_shard(&dir.path().join("a"));
    let (failed, _) = drain_within(rows, &dir.path().join("a/merge"), width - 1);
    let e = failed.expect_err("a merge of MAX_FAN_IN runs and its output needs MAX_FAN_IN + 1 files");
    assert!(
        e.to_string().contains("Too many open files"),
        "the drain failed for want of a file: {e}"
    );

    // MAX_FAN_IN sources and one output: enough, for every pass and the
    // final merge.
    let (rows, want) = spilled_shard(&dir.path().join("b"));
    let (spilled_runs, out) = drain_within(rows, &dir.path().join("b/merge"), width);
    let spilled_runs = spilled_runs.expect("the drain holds at most MAX_FAN_IN runs and its output open");
    assert!(
        spilled_runs as usize > 3 * MAX_FAN_IN,
        "the shard spilled many runs ({spilled_runs}), more than a merge may open"
    );
    assert!(out == want, "every key once, in order");
}
