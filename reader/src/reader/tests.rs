//! Tests of readers as a whole, across builder, lifecycle, reads and
//! refresh: here, that the names a reader emits are exactly the catalog
//! in [`METRICS`].

use std::collections::BTreeSet;
use std::path::Path;

use metrics_util::debugging::DebuggingRecorder;
use sf_manifest::Key;

use super::Reader;
use crate::settings::{ReaderSettings, SqliteMode};
use crate::stats::METRICS;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/data/shardyfusion-v4/sqlite-bucket-golden/hash_int"
);

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read the fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

async fn open(prefix: &Path, settings: ReaderSettings) -> Reader {
    Reader::builder(format!("{}/_CURRENT", prefix.display()))
        .with_settings(settings)
        .with_metric_label("test", "catalog")
        .build()
        .await
        .expect("build")
}

/// What readers do in a life, so that every figure is emitted at least
/// once: downloads, cache hits and repairs, ranged reads, a shard that
/// stays on SQLite for want of memory, a swap, a failed refresh, close.
async fn exercise(prefix: &Path, cache: &Path) {
    let keys: Vec<Key> = (0..100).map(Key::Int).collect();
    let settings = ReaderSettings {
        cache_dir: Some(cache.to_path_buf()),
        cache_max_bytes: Some(1 << 30),
        ..ReaderSettings::default()
    };

    let reader = open(prefix, settings.clone()).await;
    assert_eq!(
        reader.get(&Key::Int(3)).await.expect("get").as_deref(),
        Some(&b"v2-3"[..])
    );
    reader.multi_get(&keys).await.expect("multi_get");
    let current = prefix.join("_CURRENT");
    let served = std::fs::read_to_string(&current).expect("_CURRENT");
    let older = served
        .replace(
            "2026-11-20T23:48:07.694769Z_run_id=goldenrun0005",
            "2026-11-20T23:48:07.144348Z_run_id=goldenrun0001",
        )
        .replace("\"run_id\":\"goldenrun0005\"", "\"run_id\":\"goldenrun0001\"");
    std::fs::write(&current, older).expect("point _CURRENT at the older run");
    reader.refresh().await.expect("swap to the older run");
    assert_eq!(reader.stats().swaps, 1);
    std::fs::remove_file(&current).expect("remove _CURRENT");
    reader.refresh().await.expect_err("a refresh without _CURRENT fails");
    assert_eq!(reader.stats().refresh_failures, 1);
    reader.close();
    std::fs::write(&current, served).expect("restore _CURRENT");

    let mut cached: Vec<_> = std::fs::read_dir(cache.join("sqlite"))
        .expect("the cache")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "db"))
        .collect();
    // The first downloaded is one of the served run's (the swap
    // downloaded the older run's after), which the next reader reads.
    cached.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).expect("mtime"));
    std::fs::write(&cached[0], b"damaged").expect("damage one cached file");
    let reader = open(prefix, settings.clone()).await;
    reader.multi_get(&keys).await.expect("multi_get from the cache");
    let stats = reader.stats();
    assert!(stats.cache_hits > 0 && stats.cache_repairs > 0, "{stats:?}");

    let reader = open(
        prefix,
        ReaderSettings {
            sqlite_mode: SqliteMode::Memory,
            memory_limit_bytes: 1,
            ..settings.clone()
        },
    )
    .await;
    reader
        .multi_get(&keys)
        .await
        .expect("multi_get beyond the memory limit");
    assert!(reader.stats().memory_fallbacks > 0);

    let reader = open(
        prefix,
        ReaderSettings {
            sqlite_mode: SqliteMode::Range,
            ..settings
        },
    )
    .await;
    reader.multi_get(&keys).await.expect("multi_get by range");
    assert!(reader.stats().range_requests > 0);
}

#[test]
fn the_reader_emits_exactly_the_names_of_the_catalog() {
    let root = tempfile::tempdir().expect("root");
    let prefix = root.path().join("snap");
    let cache = root.path().join("cache");
    copy_dir(Path::new(FIXTURE), &prefix);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A reader registers its figures when it is built (here, on this
    // thread, where the local recorder is in force); every figure
    // after goes through those registrations.
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(exercise(&prefix, &cache))
    });

    let recorded: BTreeSet<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, ..)| key.key().name().to_string())
        .collect();
    let catalog: BTreeSet<String> = METRICS.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(catalog.len(), METRICS.len(), "every name is listed once");
    let strays: Vec<&String> = recorded.difference(&catalog).collect();
    assert!(strays.is_empty(), "emitted but not in METRICS: {strays:?}");
    assert_eq!(recorded, catalog, "every name in METRICS is emitted");
}

/// The manifest file of `run` in the copied fixture at `prefix`.
fn manifest_file(prefix: &Path, run: &str) -> std::path::PathBuf {
    let dir = std::fs::read_dir(prefix.join("manifests"))
        .expect("manifests")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().ends_with(&format!("_run_id={run}")))
        .expect("the run's manifest folder");
    dir.join("manifest")
}

#[tokio::test]
async fn a_reader_whose_current_manifest_is_corrupt_falls_back_to_the_history_until_a_refresh_reads_it() {
    let root = tempfile::tempdir().expect("root");
    let prefix = root.path().join("snap");
    copy_dir(Path::new(FIXTURE), &prefix);
    let current = manifest_file(&prefix, "goldenrun0005");
    let good = std::fs::read(&current).expect("the current manifest");
    std::fs::write(&current, b"not a manifest").expect("corrupt the current manifest");

    let reader = open(&prefix, ReaderSettings::default()).await;
    assert_eq!(
        reader.info().run_id.as_str(),
        "goldenrun0001",
        "the previous run is served"
    );
    let why = reader.degraded().expect("the reader says it is degraded");
    assert!(why.contains("goldenrun0001") && why.contains("cannot be read"), "{why}");
    assert_eq!(reader.info().degraded.as_deref(), Some(why.as_str()));
    assert_eq!(
        reader.health(std::time::Duration::MAX).degraded.as_deref(),
        Some(why.as_str())
    );
    assert_eq!(
        reader.get(&Key::Int(3)).await.expect("get").as_deref(),
        Some(&b"value-3"[..]),
        "reads come from the previous run"
    );

    // Still corrupt: the refresh fails and the reader stays degraded.
    reader
        .refresh()
        .await
        .expect_err("the current manifest is still corrupt");
    assert!(reader.degraded().is_some());
    // Repaired: the refresh swaps to it and the reader is whole again.
    std::fs::write(&current, good).expect("repair the current manifest");
    reader.refresh().await.expect("refresh");
    assert_eq!(reader.info().run_id.as_str(), "goldenrun0005");
    assert_eq!(
        reader.get(&Key::Int(3)).await.expect("get").as_deref(),
        Some(&b"v2-3"[..])
    );
    assert_eq!(reader.degraded(), None);
    assert_eq!(reader.info().degraded, None);
}

#[tokio::test]
async fn a_reader_without_a_readable_manifest_in_reach_fails_with_the_current_ones_error() {
    let root = tempfile::tempdir().expect("root");
    let prefix = root.path().join("snap");
    copy_dir(Path::new(FIXTURE), &prefix);
    for run in ["goldenrun0005", "goldenrun0001"] {
        std::fs::write(manifest_file(&prefix, run), b"not a manifest").expect("corrupt");
    }
    let e = Reader::builder(format!("{}/_CURRENT", prefix.display()))
        .build()
        .await
        .expect_err("nothing readable");
    let text = sf_manifest::chain(&e);
    assert!(text.contains("goldenrun0005"), "names the current manifest: {text}");

    // A store error that is not about the stored bytes does not fall back:
    // `_CURRENT` that is not there at all is no reason to serve history.
    std::fs::remove_file(prefix.join("_CURRENT")).expect("remove _CURRENT");
    let e = Reader::builder(format!("{}/_CURRENT", prefix.display()))
        .build()
        .await
        .expect_err("no _CURRENT");
    assert!(matches!(e, crate::Error::NoCurrent { .. }), "{e}");
}
