//! Refresh and the snapshot a call reads, checked at the exact moments
//! that matter: a swap landing while one shard read of a `multi_get` is
//! held in the store, partly changed snapshots, `close()`, a panicking
//! refresh, a failed shard open, and range mode on a current-thread
//! runtime.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sf_manifest::{Classified, ErrorKind, Key, KeyEncoding, RunId, StorageOptions};
use sf_reader::{Error, Reader, ReaderSettings, RefreshOutcome, SqliteMode};
use sf_tests::fault_store::{Fault, FaultStore, Gate, Op, containing, ending};
use sf_tests::readers::{PAGED_MODES, in_every_mode, key_in, open, open_through, settings};
use sf_tests::s3_prefix;
use sf_tests::snapshots::{BuiltSnapshot, SnapshotSpec, build_snapshot, int_rows, publish_ints};
use sf_tests::tamper::publish_over;

const KEYS: i64 = 40;

/// A snapshot published in a scratch folder, and a cache for its readers.
struct Site {
    _root: tempfile::TempDir,
    cache: tempfile::TempDir,
    prefix: String,
    built: BuiltSnapshot,
}

impl Site {
    /// Run `run` of `KEYS` keys tagged `tag` over `shards` shards.
    async fn publish(run: &str, shards: u32, tag: &str) -> Site {
        let root = tempfile::tempdir().expect("root");
        let prefix = format!("file://{}/snap", root.path().display());
        let built = publish_ints(&prefix, run, shards, KEYS as u64, tag).await;
        Site {
            _root: root,
            cache: tempfile::tempdir().expect("cache"),
            prefix,
            built,
        }
    }

    /// A reader in `mode` reading through `store`, refreshing itself every
    /// `refresh_interval` when one is given.
    async fn reader_through(
        &self,
        store: Arc<dyn object_store::ObjectStore>,
        mode: SqliteMode,
        refresh_interval: Option<Duration>,
    ) -> Reader {
        let settings = ReaderSettings {
            refresh_interval,
            refresh_max_backoff: Duration::from_millis(200),
            ..settings(mode, self.cache.path())
        };
        open_through(&self.prefix, store, settings).await
    }
}

fn all_keys() -> Vec<Key> {
    (0..KEYS).map(Key::Int).collect()
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
    in_every_mode(&PAGED_MODES, async |mode| {
        let site = Site::publish("old", 4, "old").await;
        let hooked = FaultStore::over(&site.prefix);
        let gate = Gate::new();
        hooked
            .at(Op::Get, containing("run_id=old/db=00002/attempt=00/shard.db"))
            .wait(&gate);
        let reader = site.reader_through(hooked.clone(), mode, None).await;

        let in_flight = {
            let reader = reader.clone();
            tokio::spawn(async move { reader.multi_get(&all_keys()).await })
        };
        gate.entered().await;
        publish_ints(&site.prefix, "new", 4, KEYS as u64, "new").await;
        let outcome = reader.refresh().await.expect("refresh while a read is held");
        assert!(
            matches!(outcome, RefreshOutcome::Swapped { .. }),
            "{mode:?}: {outcome:?}"
        );
        assert_eq!(reader.info().run_id.as_str(), "new");
        // Later calls read the new snapshot, the held shard included.
        let k2 = key_in(&reader, 2, KEYS);
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
    })
    .await;
}

/// A new manifest that changes one shard of four: the refresh opens that
/// one shard (before the swap) and carries the three others over as they
/// are, without opening or downloading them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_reopens_only_the_shards_that_changed() {
    in_every_mode(&PAGED_MODES, async |mode| {
        let site = Site::publish("one", 4, "one").await;
        let mut spec = SnapshotSpec::hash("two", 4, KeyEncoding::U64Be);
        spec.publish = false;
        spec.run_record = false;
        let two = build_snapshot(&site.prefix, &spec, &int_rows(40, "two")).await;

        let plain = sf_manifest::resolve(&site.prefix, &StorageOptions::new())
            .expect("resolve")
            .store;
        let reader = site.reader_through(plain, mode, None).await;
        assert!(
            tags(&reader.multi_get(&all_keys()).await.expect("warm"))
                .iter()
                .all(|t| t == "one")
        );
        let before = reader.stats();
        assert_eq!(before.shard_opens, 4, "{mode:?}: {before:?}");

        // run one's manifest with shard 1 taken from run two.
        let mut mixed = site.built.manifest.clone();
        mixed.build.run_id = RunId::new("mixed").expect("run");
        let changed = mixed.shards.iter().position(|r| r.db_id.0 == 1).expect("shard 1 row");
        mixed.shards[changed] = two
            .manifest
            .shards
            .iter()
            .find(|r| r.db_id.0 == 1)
            .expect("row")
            .clone();
        publish_over(&site.prefix, &mixed).await;

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
    })
    .await;
}

/// After `close()`: every read and refresh is refused naming the prefix,
/// health says closed, and the background refresh stops (a snapshot
/// published afterwards is never picked up, `_CURRENT` is not read again).
///
/// The loop is caught in the middle of a round: its read of `_CURRENT` is
/// held in the store, announcing itself, with a guard that tells when the
/// held call is dropped. `close()` must end the loop's task, which drops
/// the held round; a loop left running would hold it for ever, and the
/// bounded wait for the drop fails. With the task gone nothing can read
/// `_CURRENT` again, which the counts then confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_refuses_reads_and_stops_the_background_refresh() {
    let site = Site::publish("old", 2, "old").await;
    let prefix = &site.prefix;
    let hooked = FaultStore::over(prefix);
    let current_reads = || hooked.calls(Op::Get, &ending("_CURRENT"));
    let interval = Duration::from_millis(10);
    let reader = site
        .reader_through(hooked.clone(), SqliteMode::Download, Some(interval))
        .await;
    assert_eq!(
        reader.get(&Key::Int(1)).await.expect("get").as_deref(),
        Some(&b"old:1"[..])
    );
    wait_until("the background refresh to run twice", || current_reads() >= 2).await;

    // The next read of `_CURRENT` (the loop's: nothing else reads it now)
    // is held for good; the guard reports when its future is dropped.
    struct Dropped(std::sync::mpsc::Sender<&'static str>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.0.send("dropped");
        }
    }
    let (tx, events) = std::sync::mpsc::channel::<&'static str>();
    let tx = std::sync::Mutex::new(tx);
    hooked.at(Op::Get, ending("_CURRENT")).run(move |_| {
        let tx = sf_manifest::sync::lock(&tx).clone();
        async move {
            let guard = Dropped(tx.clone());
            let _ = tx.send("held");
            std::future::pending::<()>().await;
            drop(guard);
        }
    });
    let next = |what: &str| {
        events
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no event within 60 s: {what}"))
    };
    assert_eq!(next("the loop's next round reading _CURRENT"), "held");
    let reads_at_close = current_reads();

    reader.close();
    assert_eq!(
        next("close() ending the background loop, which drops its held round"),
        "dropped"
    );
    let closed = |e: Error| {
        assert!(matches!(e, Error::Closed { .. }), "{e:?}");
        assert!(e.to_string().contains(prefix.as_str()), "{e}");
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

    publish_ints(prefix, "new", 2, KEYS as u64, "new").await;
    assert_eq!(current_reads(), reads_at_close, "_CURRENT was read after close()");
    assert_eq!(reader.info().run_id.as_str(), "old", "no swap after close()");
    assert_eq!(reader.stats().swaps, 0);
}

/// A background refresh that panics (here, inside the object store) is
/// caught: the reader keeps serving, the failure shows in the refresh
/// status and health, and the loop goes on to pick up the next snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_background_refresh_is_caught_recorded_and_retried() {
    let site = Site::publish("old", 2, "old").await;
    let hooked = FaultStore::over(&site.prefix);
    let reader = site
        .reader_through(hooked.clone(), SqliteMode::Download, Some(Duration::from_millis(20)))
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

    publish_ints(&site.prefix, "new", 2, KEYS as u64, "new").await;
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
    in_every_mode(&PAGED_MODES, async |mode| {
        let site = Site::publish("r1", 4, "v").await;
        let flaky = FaultStore::over(&site.prefix);
        flaky
            .at(Op::Get, ending("db=00001/attempt=00/shard.db"))
            .every()
            .fail(Fault::Generic);
        let reader = site.reader_through(flaky.clone(), mode, None).await;
        let k = key_in(&reader, 1, KEYS);
        let url = site
            .built
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
        let k0 = key_in(&reader, 0, KEYS);
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
    })
    .await;
}

/// Range mode's blocking object-store calls run off the runtime: on a
/// current-thread runtime (one thread, which a blocking call on it would
/// hang) every key still reads, within a minute.
async fn range_reads_on_one_thread(prefix: &str) {
    let cache = tempfile::tempdir().expect("cache");
    publish_ints(prefix, "r1", 4, KEYS as u64, "v").await;
    let work = async {
        let reader = open(prefix, settings(SqliteMode::Range, cache.path())).await;
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
    range_reads_on_one_thread(&format!("file://{}/snap", root.path().display())).await;
}

#[tokio::test(flavor = "current_thread")]
async fn range_mode_reads_on_a_current_thread_runtime_on_s3() {
    range_reads_on_one_thread(&s3_prefix("range-one-thread")).await;
}
