//! Refresh and the snapshot a call reads, checked at the exact moments
//! that matter: a swap landing while one shard read of a `multi_get` is
//! held in the store, partly changed snapshots, `close()`, a panicking
//! refresh, a failed shard open, and range mode on a current-thread
//! runtime.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sf_manifest::{Classified, ErrorKind, Key, KeyEncoding, ManifestStore, ObjectManifestStore, RunId, StorageOptions};
use sf_reader::{Error, Reader, ReaderSettings, RefreshOutcome, SqliteMode};
use sf_tests::fault_store::{Fault, FaultStore, Gate, Op, containing, ending};
use sf_tests::s3_prefix;
use sf_tests::snapshots::{SnapshotSpec, build_snapshot, int_rows};

const KEYS: i64 = 40;

fn file_prefix(root: &tempfile::TempDir) -> String {
    format!("file://{}/snap", root.path().display())
}

fn store(prefix: &str) -> ObjectManifestStore {
    ObjectManifestStore::open(prefix, &StorageOptions::new()).expect("store")
}

fn all_keys() -> Vec<Key> {
    (0..KEYS).map(Key::Int).collect()
}

async fn reader_through(
    prefix: &str,
    store: Arc<dyn object_store::ObjectStore>,
    cache: &std::path::Path,
    mode: SqliteMode,
    refresh_interval: Option<Duration>,
) -> Reader {
    Reader::builder(format!("{prefix}/_CURRENT"))
        .with_object_store(store)
        .with_settings(ReaderSettings {
            cache_dir: Some(cache.to_path_buf()),
            sqlite_mode: mode,
            refresh_interval,
            refresh_max_backoff: Duration::from_millis(200),
            ..ReaderSettings::default()
        })
        .build()
        .await
        .expect("open the reader")
}

/// The tag (`old`, `new`, ...) of each value, checking each is its key's.
fn tags(values: &[Option<bytes::Bytes>]) -> Vec<String> {
    values
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let v = String::from_utf8(v.as_deref().unwrap_or_else(|| panic!("key {k} missing")).to_vec())
                .expect("text value");
            let (tag, key) = v.split_once(':').expect("tag:key");
            assert_eq!(key, k.to_string(), "value of key {k}");
            tag.to_string()
        })
        .collect()
}

/// A key of `db` in `reader`'s snapshot.
fn key_in(reader: &Reader, db: u32) -> i64 {
    (0..KEYS)
        .find(|k| reader.route(&Key::Int(*k), None).expect("route").db_id.map(|d| d.0) == Some(db))
        .expect("a key in that shard")
}

/// Bounded wait (a minute, polled every 5 ms) for a condition.
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..12_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("gave up waiting for {what}");
}

/// One shard read of a `multi_get` is held in the store until the test has
/// published a new snapshot and the reader has swapped to it: the call
/// still answers every key from the snapshot it started on, while calls
/// made after the swap answer from the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_multi_get_reads_one_snapshot_when_a_swap_lands_mid_call() {
    for mode in [SqliteMode::Download, SqliteMode::Range] {
        let root = tempfile::tempdir().expect("root");
        let cache = tempfile::tempdir().expect("cache");
        let prefix = file_prefix(&root);
        build_snapshot(
            &prefix,
            &SnapshotSpec::hash("old", 4, KeyEncoding::U64Be),
            &int_rows(40, "old"),
        )
        .await;
        let hooked = FaultStore::over(&prefix);
        let gate = Gate::new();
        hooked
            .at(Op::Get, containing("run_id=old/db=00002/attempt=00/shard.db"))
            .wait(&gate);
        let reader = reader_through(&prefix, hooked.clone(), cache.path(), mode, None).await;

        let in_flight = {
            let reader = reader.clone();
            tokio::spawn(async move { reader.multi_get(&all_keys()).await })
        };
        gate.entered().await;
        build_snapshot(
            &prefix,
            &SnapshotSpec::hash("new", 4, KeyEncoding::U64Be),
            &int_rows(40, "new"),
        )
        .await;
        let outcome = reader.refresh().await.expect("refresh while a read is held");
        assert!(
            matches!(outcome, RefreshOutcome::Swapped { .. }),
            "{mode:?}: {outcome:?}"
        );
        assert_eq!(reader.info().run_id.as_str(), "new");
        // Later calls read the new snapshot, the held shard included.
        let k2 = key_in(&reader, 2);
        assert_eq!(
            reader.get(&Key::Int(k2)).await.expect("get after the swap").as_deref(),
            Some(format!("new:{k2}").as_bytes())
        );
        assert!(
            !in_flight.is_finished(),
            "{mode:?}: the multi_get was held in the store"
        );
        gate.release();
        let values = in_flight.await.expect("task").expect("the held multi_get");
        let seen: BTreeSet<String> = tags(&values).into_iter().collect();
        assert_eq!(
            seen,
            BTreeSet::from(["old".to_string()]),
            "{mode:?}: the multi_get began on the old snapshot"
        );
        let after: BTreeSet<String> = tags(&reader.multi_get(&all_keys()).await.expect("multi_get"))
            .into_iter()
            .collect();
        assert_eq!(after, BTreeSet::from(["new".to_string()]), "{mode:?}");
    }
}

/// A new manifest that changes one shard of four: the refresh opens that
/// one shard (before the swap) and carries the three others over as they
/// are, without opening or downloading them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_reopens_only_the_shards_that_changed() {
    for mode in [SqliteMode::Download, SqliteMode::Range] {
        let root = tempfile::tempdir().expect("root");
        let cache = tempfile::tempdir().expect("cache");
        let prefix = file_prefix(&root);
        let one = build_snapshot(
            &prefix,
            &SnapshotSpec::hash("one", 4, KeyEncoding::U64Be),
            &int_rows(40, "one"),
        )
        .await;
        let mut spec = SnapshotSpec::hash("two", 4, KeyEncoding::U64Be);
        spec.publish = false;
        spec.run_record = false;
        let two = build_snapshot(&prefix, &spec, &int_rows(40, "two")).await;

        let reader = reader_through(
            &prefix,
            sf_manifest::resolve(&prefix, &StorageOptions::new())
                .expect("resolve")
                .store,
            cache.path(),
            mode,
            None,
        )
        .await;
        assert!(
            tags(&reader.multi_get(&all_keys()).await.expect("warm"))
                .iter()
                .all(|t| t == "one")
        );
        let before = reader.stats();
        assert_eq!(before.shard_opens, 4, "{mode:?}: {before:?}");

        // run one's manifest with shard 1 taken from run two.
        let mut mixed = one.manifest.clone();
        mixed.build.run_id = RunId::new("mixed").expect("run");
        let changed = mixed.shards.iter().position(|r| r.db_id.0 == 1).expect("shard 1 row");
        mixed.shards[changed] = two
            .manifest
            .shards
            .iter()
            .find(|r| r.db_id.0 == 1)
            .expect("row")
            .clone();
        let s = store(&prefix);
        let cur = s.load_current().await.expect("load").expect("current");
        s.publish(&mixed, Some(&cur.version)).await.expect("publish mixed");

        let outcome = reader.refresh().await.expect("refresh");
        assert!(matches!(outcome, RefreshOutcome::Swapped { .. }), "{outcome:?}");
        let after = reader.stats();
        assert_eq!(
            after.shard_opens, 5,
            "{mode:?}: only shard 1 was opened again: {after:?}"
        );
        assert_eq!(
            after.downloads,
            before.downloads + u64::from(mode == SqliteMode::Download),
            "{after:?}"
        );
        assert_eq!(reader.info().shards_open, 4, "the swap kept every shard open");
        let values = reader.multi_get(&all_keys()).await.expect("read");
        assert_eq!(reader.stats().shard_opens, 5, "reads after the swap opened nothing");
        for (k, tag) in tags(&values).iter().enumerate() {
            let db = reader
                .route(&Key::Int(k as i64), None)
                .expect("route")
                .db_id
                .expect("db")
                .0;
            assert_eq!(tag, if db == 1 { "two" } else { "one" }, "key {k} in shard {db}");
        }
    }
}

/// After `close()`: every read and refresh is refused naming the prefix,
/// health says closed, and the background refresh stops (a snapshot
/// published afterwards is never picked up, `_CURRENT` is not read again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_refuses_reads_and_stops_the_background_refresh() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let prefix = file_prefix(&root);
    build_snapshot(
        &prefix,
        &SnapshotSpec::hash("old", 2, KeyEncoding::U64Be),
        &int_rows(40, "old"),
    )
    .await;
    let hooked = FaultStore::over(&prefix);
    let current_reads = || hooked.calls(Op::Get, &ending("_CURRENT"));
    let interval = Duration::from_millis(10);
    let reader = reader_through(
        &prefix,
        hooked.clone(),
        cache.path(),
        SqliteMode::Download,
        Some(interval),
    )
    .await;
    assert_eq!(
        reader.get(&Key::Int(1)).await.expect("get").as_deref(),
        Some(&b"old:1"[..])
    );
    wait_until("the background refresh to run twice", || current_reads() >= 2).await;

    reader.close();
    let closed = |e: Error| {
        assert!(matches!(e, Error::Closed { .. }), "{e:?}");
        assert!(e.to_string().contains(&prefix), "{e}");
        assert_eq!(e.kind(), ErrorKind::Config);
    };
    closed(reader.get(&Key::Int(1)).await.expect_err("get after close"));
    closed(reader.multi_get(&all_keys()).await.expect_err("multi_get after close"));
    closed(
        reader
            .scan_shard(sf_manifest::DbId(0), None, 10)
            .await
            .expect_err("scan after close"),
    );
    closed(reader.refresh().await.expect_err("refresh after close"));
    closed(
        reader
            .clone()
            .get(&Key::Int(2))
            .await
            .expect_err("a clone is closed too"),
    );
    assert!(reader.health(Duration::from_secs(3600)).is_closed);

    build_snapshot(
        &prefix,
        &SnapshotSpec::hash("new", 2, KeyEncoding::U64Be),
        &int_rows(40, "new"),
    )
    .await;
    // Nothing to wait for when a loop has stopped: a window of fifty
    // intervals, in which a live loop would read `_CURRENT` again and swap.
    // A round that was past its check when close() came ends at its next
    // await, so the count is taken after a first window.
    tokio::time::sleep(interval * 50).await;
    let settled = current_reads();
    tokio::time::sleep(interval * 50).await;
    assert_eq!(current_reads(), settled, "_CURRENT was read after close()");
    assert_eq!(reader.info().run_id.as_str(), "old", "no swap after close()");
    assert_eq!(reader.stats().swaps, 0);
}

/// A background refresh that panics (here, inside the object store) is
/// caught: the reader keeps serving, the failure shows in the refresh
/// status and health, and the loop goes on to pick up the next snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_background_refresh_is_caught_recorded_and_retried() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let prefix = file_prefix(&root);
    build_snapshot(
        &prefix,
        &SnapshotSpec::hash("old", 2, KeyEncoding::U64Be),
        &int_rows(40, "old"),
    )
    .await;
    let hooked = FaultStore::over(&prefix);
    let reader = reader_through(
        &prefix,
        hooked.clone(),
        cache.path(),
        SqliteMode::Download,
        Some(Duration::from_millis(20)),
    )
    .await;
    hooked
        .at(Op::Get, ending("_CURRENT"))
        .run(|_| async { panic!("injected panic while reading _CURRENT") });
    wait_until("the panicking round to be recorded", || {
        reader.refresh_status().last_error.is_some()
    })
    .await;
    let status = reader.refresh_status();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("panicked") && e.contains("injected panic")),
        "{status:?}"
    );
    assert!(status.consecutive_failures >= 1, "{status:?}");
    assert!(reader.stats().refresh_failures >= 1);
    assert!(reader.health(Duration::from_secs(3600)).refresh.last_error.is_some());
    assert_eq!(
        reader.get(&Key::Int(3)).await.expect("still serving").as_deref(),
        Some(&b"old:3"[..])
    );

    build_snapshot(
        &prefix,
        &SnapshotSpec::hash("new", 2, KeyEncoding::U64Be),
        &int_rows(40, "new"),
    )
    .await;
    wait_until("the loop to swap after the panic", || {
        reader.info().run_id.as_str() == "new"
    })
    .await;
    assert_eq!(
        reader.get(&Key::Int(3)).await.expect("get").as_deref(),
        Some(&b"new:3"[..])
    );
    let status = reader.refresh_status();
    assert_eq!((status.consecutive_failures, status.last_error), (0, None));
    // A manual refresh works too: nothing was left locked by the panic.
    assert!(matches!(
        reader.refresh().await.expect("refresh"),
        RefreshOutcome::Unchanged { .. }
    ));
}

/// A shard whose open fails (its file cannot be read for a while) fails
/// the calls that need it, naming the shard and its URL, without poisoning
/// it: the next caller opens it again and reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shard_open_is_retried_by_the_next_caller() {
    for mode in [SqliteMode::Download, SqliteMode::Range] {
        let root = tempfile::tempdir().expect("root");
        let cache = tempfile::tempdir().expect("cache");
        let prefix = file_prefix(&root);
        let built = build_snapshot(
            &prefix,
            &SnapshotSpec::hash("r1", 4, KeyEncoding::U64Be),
            &int_rows(40, "v"),
        )
        .await;
        let flaky = FaultStore::over(&prefix);
        flaky
            .at(Op::Get, ending("db=00001/attempt=00/shard.db"))
            .every()
            .fail(Fault::Generic);
        let reader = reader_through(&prefix, flaky.clone(), cache.path(), mode, None).await;
        let k = key_in(&reader, 1);
        let url = built
            .manifest
            .shards
            .iter()
            .find(|r| r.db_id.0 == 1)
            .expect("row")
            .db_url
            .clone()
            .expect("url");
        let e = reader.get(&Key::Int(k)).await.expect_err("the shard cannot be read");
        assert!(
            matches!(e, Error::ShardOpen { .. } | Error::ShardRead { .. }),
            "{mode:?}: {e:?}"
        );
        assert!(
            e.to_string().contains("shard 1") && e.to_string().contains(&url),
            "{mode:?}: {e}"
        );
        assert!(flaky.fired() >= 1);
        // Other shards are not affected.
        let k0 = key_in(&reader, 0);
        assert_eq!(
            reader.get(&Key::Int(k0)).await.expect("shard 0").as_deref(),
            Some(format!("v:{k0}").as_bytes())
        );

        flaky.clear();
        assert_eq!(
            reader
                .get(&Key::Int(k))
                .await
                .expect("the next caller opens it")
                .as_deref(),
            Some(format!("v:{k}").as_bytes()),
            "{mode:?}"
        );
        assert!(
            tags(&reader.multi_get(&all_keys()).await.expect("all"))
                .iter()
                .all(|t| t == "v")
        );
        assert_eq!(reader.info().shards_open, 4);
    }
}

/// Range mode's blocking object-store calls run off the runtime: on a
/// current-thread runtime (one thread, which a blocking call on it would
/// hang) every key still reads, within a minute.
async fn range_reads_on_one_thread(prefix: &str) {
    let cache = tempfile::tempdir().expect("cache");
    build_snapshot(
        prefix,
        &SnapshotSpec::hash("r1", 4, KeyEncoding::U64Be),
        &int_rows(40, "v"),
    )
    .await;
    let work = async {
        let reader = Reader::builder(format!("{prefix}/_CURRENT"))
            .with_settings(ReaderSettings {
                cache_dir: Some(cache.path().to_path_buf()),
                sqlite_mode: SqliteMode::Range,
                ..ReaderSettings::default()
            })
            .build()
            .await
            .expect("open");
        for k in 0..KEYS {
            assert_eq!(
                reader.get(&Key::Int(k)).await.expect("get").as_deref(),
                Some(format!("v:{k}").as_bytes())
            );
        }
        assert!(
            tags(&reader.multi_get(&all_keys()).await.expect("multi_get"))
                .iter()
                .all(|t| t == "v")
        );
        reader.stats()
    };
    let stats = tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("range reads on a current-thread runtime hung");
    assert_eq!(stats.downloads, 0, "{stats:?}");
    assert!(stats.range_requests > 0, "{stats:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn range_mode_reads_on_a_current_thread_runtime() {
    let root = tempfile::tempdir().expect("root");
    range_reads_on_one_thread(&file_prefix(&root)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn range_mode_reads_on_a_current_thread_runtime_on_s3() {
    range_reads_on_one_thread(&s3_prefix("range-one-thread")).await;
}
