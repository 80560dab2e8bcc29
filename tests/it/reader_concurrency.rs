//! Many tasks reading while the background refresh swaps snapshots: no
//! errors, every answer from the old or the new snapshot, and no
//! `multi_get` that mixes the two.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sf_manifest::{Key, KeyEncoding};
use sf_reader::{ReaderSettings, SqliteMode};
use sf_tests::readers::{open, settings};
use sf_tests::snapshots::{Backend, SnapshotSpec, build_snapshot, int_rows};

const KEYS: u64 = 2_000;
const TASKS: usize = 16;

/// Which snapshot a value came from, checking it is the key's value there.
fn tag_of(key: u64, value: Option<&[u8]>) -> &'static str {
    match value {
        Some(v) if v == format!("old:{key}").as_bytes() => "old",
        Some(v) if v == format!("new:{key}").as_bytes() => "new",
        other => panic!("key {key}: {other:?} is from neither snapshot"),
    }
}

/// Bounded wait (two minutes: the machine may be loaded) for a condition
/// polled every 5 ms.
async fn wait_for(what: &str, f: impl FnMut() -> bool) {
    wait_for_or(what, f, String::new).await
}

/// [`wait_for`], with a description of the state when it gives up.
async fn wait_for_or(what: &str, mut f: impl FnMut() -> bool, state: impl Fn() -> String) {
    for _ in 0..24_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("gave up waiting for {what} {}", state());
}

/// One `multi_get` of 64 keys spread from `start`: every value from the
/// same snapshot.
async fn check_one_snapshot(reader: &sf_reader::Reader, start: u64) {
    let keys: Vec<Key> = (0..64).map(|j| Key::Int(((start + j * 31) % KEYS) as i64)).collect();
    let values = reader.multi_get(&keys).await.expect("multi_get");
    let tags: Vec<&str> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| match k {
            Key::Int(k) => tag_of(*k as u64, v.as_deref()),
            _ => unreachable!(),
        })
        .collect();
    assert!(
        tags.iter().all(|t| *t == tags[0]),
        "one multi_get mixed snapshots: {tags:?}"
    );
}

async fn swap_under_load(backend: Backend, mode: SqliteMode, gets_per_task: usize) {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let prefix = format!("file://{}/snap", root.path().display());
    let mut spec = SnapshotSpec::hash("old", 8, KeyEncoding::U64Be);
    spec.backend = backend;
    build_snapshot(&prefix, &spec, &int_rows(KEYS, "old")).await;
    let reader = open(
        &prefix,
        ReaderSettings {
            refresh_interval: Some(Duration::from_millis(20)),
            ..settings(mode, cache.path())
        },
    )
    .await;

    let done = Arc::new(AtomicUsize::new(0));
    let swapped = Arc::new(AtomicBool::new(false));

    // Publishes the new snapshot once a quarter of the reads are done.
    let publisher = {
        let done = Arc::clone(&done);
        let prefix = prefix.clone();
        let mut spec = spec.clone();
        spec.run_id = "new".into();
        tokio::spawn(async move {
            wait_for("a quarter of the reads", || {
                done.load(Ordering::Relaxed) >= TASKS * gets_per_task / 4
            })
            .await;
            build_snapshot(&prefix, &spec, &int_rows(KEYS, "new")).await;
        })
    };
    // Notices the swap.
    let watcher = {
        let reader = reader.clone();
        let swapped = Arc::clone(&swapped);
        tokio::spawn(async move {
            wait_for_or(
                "the background refresh to swap",
                || reader.info().run_id.as_str() == "new",
                || format!("{:?} {:?}", reader.refresh_status(), reader.stats()),
            )
            .await;
            swapped.store(true, Ordering::SeqCst);
        })
    };

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let reader = reader.clone();
            let done = Arc::clone(&done);
            let swapped = Arc::clone(&swapped);
            tokio::spawn(async move {
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (t as u64);
                let mut seen = [0usize; 2];
                for i in 0..gets_per_task {
                    if i == gets_per_task / 2 {
                        // Half the reads before the swap is seen, half after.
                        // While waiting, multi_gets run back to back, so that
                        // the swap lands in the middle of some of them.
                        let mut waited = 0;
                        while !swapped.load(Ordering::SeqCst) {
                            assert!(waited < 100_000, "gave up waiting for the swap");
                            waited += 1;
                            check_one_snapshot(&reader, x >> 33).await;
                        }
                    }
                    let after_swap = swapped.load(Ordering::SeqCst);
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let key = (x >> 33) % KEYS;
                    let v = reader.get(&Key::Int(key as i64)).await.expect("get");
                    let tag = tag_of(key, v.as_deref());
                    assert!(!(after_swap && tag == "old"), "an old value after the swap was seen");
                    seen[usize::from(tag == "new")] += 1;
                    if i % 250 == 0 {
                        check_one_snapshot(&reader, key).await;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();
    let mut totals = [0usize; 2];
    for t in tasks {
        let seen = t.await.expect("reader task");
        totals[0] += seen[0];
        totals[1] += seen[1];
    }
    publisher.await.expect("publisher");
    watcher.await.expect("watcher");
    assert_eq!(totals[0] + totals[1], TASKS * gets_per_task);
    assert!(
        totals[0] >= TASKS * gets_per_task / 4,
        "old answers before the publish: {totals:?}"
    );
    assert!(
        totals[1] >= TASKS * gets_per_task / 2,
        "new answers after the swap: {totals:?}"
    );
    let stats = reader.stats();
    assert!(stats.swaps >= 1, "{stats:?}");
    assert_eq!(reader.refresh_status().last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tasks_of_ten_thousand_gets_across_a_swap() {
    swap_under_load(Backend::Sqlite, SqliteMode::Download, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_mode_reads_across_a_swap() {
    swap_under_load(Backend::Sqlite, SqliteMode::Range, 1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slatedb_reads_across_a_swap() {
    swap_under_load(Backend::SlateDb, SqliteMode::Auto, 500).await;
}
