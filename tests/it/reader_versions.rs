//! The reader's held versions and warm-up: snapshots a refresh replaced
//! stay open for pinned reads (up to `keep_versions`), a view reads one
//! snapshot whatever refreshes do, warm-up keys open their shards before a
//! snapshot is served, and the counters reach a `metrics` recorder.

use std::sync::OnceLock;

use sf_manifest::{Classified, Key};
use sf_reader::{Reader, ReaderSettings, RefreshOutcome, SqliteMode, Version};
use sf_tests::readers::{settings, try_open};
use sf_tests::snapshots::publish_ints;

async fn publish(prefix: &str, run: &str) {
    publish_ints(prefix, run, 4, 50, run).await;
}

async fn open(prefix: &str, cache: &std::path::Path, keep: usize, warm: &[&str]) -> Reader {
    Reader::builder(format!("{prefix}/_CURRENT"))
        .with_settings(ReaderSettings {
            keep_versions: keep,
            warmup_keys: warm.iter().map(|s| s.to_string()).collect(),
            ..settings(SqliteMode::Download, cache)
        })
        .with_metric_label("test", prefix.to_string())
        .build()
        .await
        .expect("open")
}

async fn value(view: &sf_reader::SnapshotView, k: i64) -> String {
    let v = view.get(&Key::Int(k)).await.expect("get").expect("found");
    String::from_utf8(v.to_vec()).expect("utf8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_snapshots_stay_open_for_pinned_reads() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let prefix = format!("file://{}/snap", root.path().display());
    publish(&prefix, "run1").await;
    let reader = open(&prefix, cache.path(), 2, &[]).await;
    let before = reader.current();
    for run in ["run2", "run3", "run4"] {
        publish(&prefix, run).await;
        assert!(matches!(
            reader.refresh().await.expect("refresh"),
            RefreshOutcome::Swapped { .. }
        ));
    }
    // A view taken before the swaps still reads its own snapshot.
    assert_eq!(before.run_id().as_str(), "run1");
    assert_eq!(value(&before, 7).await, "run1:7");

    let runs: Vec<String> = reader.versions().iter().map(|v| v.run_id.to_string()).collect();
    assert_eq!(
        runs,
        vec!["run4", "run3", "run2"],
        "served first, then keep_versions=2 kept"
    );
    for (offset, run) in runs.iter().enumerate() {
        let v = reader.version(&Version::Offset(offset)).expect("held");
        assert_eq!(v.run_id().as_str(), run);
        assert_eq!(value(&v, 3).await, format!("{run}:3"));
        let by_run = reader
            .version(&Version::RunId(run.parse().expect("run")))
            .expect("held");
        assert_eq!(value(&by_run, 4).await, format!("{run}:4"));
    }
    assert_eq!(
        reader.version(&Version::Current).expect("current").run_id().as_str(),
        "run4"
    );
    for gone in [Version::Offset(3), Version::RunId("run1".parse().expect("run"))] {
        let e = reader.version(&gone).expect_err("not held");
        assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
        let text = e.to_string();
        assert!(text.contains("run4, run3, run2"), "{text}");
    }
    // A multi_get through a view answers from that view's snapshot only.
    let v = reader.version(&Version::Offset(1)).expect("held");
    let keys: Vec<Key> = (0..50).map(Key::Int).collect();
    for (k, got) in v.multi_get(&keys).await.expect("multi_get").into_iter().enumerate() {
        assert_eq!(got.as_deref(), Some(format!("run3:{k}").as_bytes()));
    }

    // keep_versions = 0 keeps nothing.
    let cache0 = tempfile::tempdir().expect("cache");
    let none = open(&prefix, cache0.path(), 0, &[]).await;
    publish(&prefix, "run5").await;
    none.refresh().await.expect("refresh");
    assert_eq!(none.versions().len(), 1);
    assert!(none.version(&Version::Offset(1)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_keys_open_their_shards_before_a_swap() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let prefix = format!("file://{}/snap", root.path().display());
    publish(&prefix, "run1").await;
    let reader = open(&prefix, cache.path(), 1, &["1", "2"]).await;
    let opened = reader.info().shards_open;
    assert!(opened >= 1, "warm-up opened the shards of keys 1 and 2 at build");
    let route = |k| reader.route(&Key::Int(k), None).expect("route").db_id;
    let distinct = [route(1), route(2)]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(opened, distinct);

    publish(&prefix, "run2").await;
    reader.refresh().await.expect("refresh");
    assert_eq!(reader.info().run_id.as_str(), "run2");
    assert_eq!(
        reader.info().shards_open,
        distinct,
        "the new snapshot was warmed before the swap"
    );

    // A warm-up key that does not parse by the snapshot's key encoding
    // fails the build, naming it.
    let cache2 = tempfile::tempdir().expect("cache");
    let r = try_open(
        &prefix,
        ReaderSettings {
            warmup_keys: vec!["not-a-number".into()],
            ..settings(SqliteMode::Auto, cache2.path())
        },
    )
    .await;
    let e = r.expect_err("bad warm-up key").to_string();
    assert!(e.contains("not-a-number"), "{e}");
}

/// One recorder for the whole test binary (a process has one).
fn recorder() -> &'static metrics_util::debugging::Snapshotter {
    static SNAPSHOTTER: OnceLock<metrics_util::debugging::Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only recorder of this test binary");
        snapshotter
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_reach_the_metrics_recorder() {
    let snapshotter = recorder();
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let prefix = format!("file://{}/snap", root.path().display());
    publish(&prefix, "run1").await;
    let reader = open(&prefix, cache.path(), 1, &[]).await;
    let keys: Vec<Key> = (0..50).map(Key::Int).collect();
    reader.multi_get(&keys).await.expect("read every shard");
    publish(&prefix, "run2").await;
    reader.refresh().await.expect("refresh");
    let stats = reader.stats();
    // A snapshot of the debugging recorder resets what it read: take one.
    let all = snapshotter.snapshot().into_vec();
    let ours = |name: &str| -> Option<f64> {
        all.iter().find_map(|(key, _, _, value)| {
            let k = key.key();
            let labelled = k.labels().any(|l| l.key() == "test" && l.value() == prefix);
            (k.name() == name && labelled).then(|| match value {
                metrics_util::debugging::DebugValue::Counter(c) => *c as f64,
                metrics_util::debugging::DebugValue::Gauge(g) => g.into_inner(),
                metrics_util::debugging::DebugValue::Histogram(_) => f64::NAN,
            })
        })
    };
    assert_eq!(ours("sf_reader_shard_opens_total"), Some(stats.shard_opens as f64));
    assert!(stats.shard_opens >= 4);
    assert_eq!(ours("sf_reader_downloads_total"), Some(stats.downloads as f64));
    assert_eq!(
        ours("sf_reader_download_bytes_total"),
        Some(stats.download_bytes as f64)
    );
    assert_eq!(ours("sf_reader_swaps_total"), Some(1.0));
    assert_eq!(ours("sf_reader_refreshes_total"), Some(1.0));
    assert_eq!(ours("sf_reader_versions_held"), Some(2.0));
    let created = reader.info().created_at.as_micros() as f64 / 1e6;
    assert_eq!(ours("sf_reader_snapshot_created_seconds"), Some(created));
    // The cache's bound exists exactly when there is one: not here.
    assert_eq!(ours("sf_reader_cache_max_bytes"), None);
    for (name, _) in sf_reader::METRICS {
        if *name != "sf_reader_cache_max_bytes" {
            assert!(ours(name).is_some(), "{name} is registered");
        }
    }
}
