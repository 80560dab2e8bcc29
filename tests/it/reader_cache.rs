//! Lazy, single opens and the shared download cache: one open per shard
//! however many callers arrive at once; cached files reused by other
//! readers; damaged cached files detected and fetched again; range mode
//! downloads nothing.

use std::sync::Arc;

use sf_manifest::{Key, KeyEncoding};
use sf_reader::{Reader, SqliteMode};
use sf_tests::readers::{PAGED_MODES, in_every_mode, open, settings};
use sf_tests::snapshots::{SnapshotSpec, build_snapshot, int_rows, publish_ints};

/// A reader in download mode sharing `cache` with the others.
async fn download_reader(prefix: &str, cache: &std::path::Path) -> Reader {
    open(prefix, settings(SqliteMode::Download, cache)).await
}

fn cached_files(cache: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(cache.join("sqlite"))
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_first_callers_share_one_open_per_shard() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    publish_ints(&prefix, "r1", 4, 400, "v").await;
    in_every_mode(&PAGED_MODES, async |mode| {
        let cache = tempfile::tempdir().expect("cache");
        let reader = open(&prefix, settings(mode, cache.path())).await;
        assert_eq!(reader.stats().shard_opens, 0, "building a reader opens no shard");
        assert_eq!(reader.info().shards_open, 0);
        // 64 callers of one shard, released at once.
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let r = reader.clone();
                let b = Arc::clone(&barrier);
                tokio::spawn(async move {
                    b.wait().await;
                    r.get(&Key::Int(7)).await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task").expect("get").as_deref(), Some(&b"v:7"[..]));
        }
        let s = reader.stats();
        assert_eq!(s.shard_opens, 1, "{mode:?}: {s:?}");
        assert_eq!(reader.info().shards_open, 1);
        // Then every shard at once, from many multi_gets.
        let keys: Vec<Key> = (0..400).map(Key::Int).collect();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let r = reader.clone();
                let keys = keys.clone();
                tokio::spawn(async move { r.multi_get(&keys).await })
            })
            .collect();
        for t in tasks {
            let values = t.await.expect("task").expect("multi_get");
            for (k, v) in values.iter().enumerate() {
                assert_eq!(v.as_deref(), Some(format!("v:{k}").as_bytes()));
            }
        }
        let s = reader.stats();
        assert_eq!(s.shard_opens, 4, "{mode:?}: {s:?}");
        match mode {
            SqliteMode::Download => assert_eq!(s.downloads, 4, "{s:?}"),
            _ => {
                assert_eq!(s.downloads, 0, "{s:?}");
                assert!(s.range_requests > 0 && s.block_cache_bytes > 0, "{s:?}");
                assert!(
                    cached_files(cache.path(), "db").is_empty(),
                    "range mode downloads nothing"
                );
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_files_are_reused_and_damage_is_repaired() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    // One snapshot with checksums (ours), one without (like the reference's).
    for checksums in [true, false] {
        let prefix = format!("file://{}/snap-{checksums}", root.path().display());
        let mut spec = SnapshotSpec::hash("r1", 2, KeyEncoding::U64Be);
        spec.checksums = checksums;
        build_snapshot(&prefix, &spec, &int_rows(100, "v")).await;
        let keys: Vec<Key> = (0..100).map(Key::Int).collect();
        let check = |values: Vec<Option<bytes::Bytes>>| {
            for (k, v) in values.iter().enumerate() {
                assert_eq!(v.as_deref(), Some(format!("v:{k}").as_bytes()), "key {k}");
            }
        };

        let first = download_reader(&prefix, cache.path()).await;
        check(first.multi_get(&keys).await.expect("first"));
        assert_eq!(first.stats().downloads, 2);
        let files = cached_files(cache.path(), "db");

        // Another reader on the same cache reuses the files.
        let second = download_reader(&prefix, cache.path()).await;
        check(second.multi_get(&keys).await.expect("second"));
        let s = second.stats();
        assert_eq!((s.downloads, s.cache_hits, s.cache_repairs), (0, 2, 0), "{s:?}");

        // Damage: one flipped byte in one file, and another file cut short.
        assert_eq!(files.len(), 2, "{files:?}");
        let ours = &files;
        let mut bytes = std::fs::read(&ours[0]).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&ours[0], &bytes).expect("flip a byte");
        let f = std::fs::OpenOptions::new().write(true).open(&ours[1]).expect("open");
        f.set_len(4096).expect("truncate");
        drop(f);
        let third = download_reader(&prefix, cache.path()).await;
        check(third.multi_get(&keys).await.expect("third"));
        let s = third.stats();
        assert_eq!((s.downloads, s.cache_repairs), (2, 2), "{s:?}");

        // A missing digest file makes the copy untrusted too.
        for sum in cached_files(cache.path(), "sum") {
            if files.iter().any(|f| f.with_extension("sum") == sum) {
                std::fs::remove_file(sum).expect("remove digest");
            }
        }
        let fourth = download_reader(&prefix, cache.path()).await;
        check(fourth.multi_get(&keys).await.expect("fourth"));
        let s = fourth.stats();
        if checksums {
            // The manifest's checksum vouches for the files.
            assert_eq!((s.downloads, s.cache_hits), (0, 2), "{s:?}");
        } else {
            assert_eq!((s.downloads, s.cache_repairs), (2, 2), "{s:?}");
        }
        for f in &files {
            std::fs::remove_file(f).ok();
        }
    }
}

/// Files left in the cache folder whose names start with `.tmp-`.
fn temp_files(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache.join("sqlite"))
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".tmp-")))
        .collect()
}

/// A caller that gives up while a shard's first download is held does not
/// stop it: the download finishes in the background, leaves no temporary
/// file, and the next caller reads the finished file without fetching it
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_during_a_first_open_leaves_no_temp_file_and_the_next_read_uses_the_download() {
    use sf_tests::fault_store::{FaultStore, Gate, Op, ending};
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    publish_ints(&prefix, "r1", 1, 50, "v").await;
    let cache = tempfile::tempdir().expect("cache");
    let hooked = FaultStore::over(&prefix);
    let gate = Gate::new();
    hooked.at(Op::Get, ending("shard.db")).wait(&gate);
    let reader =
        sf_tests::readers::open_through(&prefix, hooked.clone(), settings(SqliteMode::Download, cache.path())).await;

    let given_up = tokio::time::timeout(std::time::Duration::from_millis(50), reader.get(&Key::Int(7))).await;
    assert!(given_up.is_err(), "the read waits for the held download");
    gate.entered().await;
    gate.release();
    // The download goes on without its caller; wait (bounded) for it.
    let mut landed = false;
    for _ in 0..600 {
        if cached_files(cache.path(), "db").len() == 1 && temp_files(cache.path()).is_empty() {
            landed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        landed,
        "the abandoned download finished: {:?}",
        std::fs::read_dir(cache.path().join("sqlite")).map(|d| d.count())
    );
    assert_eq!(
        reader.get(&Key::Int(7)).await.expect("get").as_deref(),
        Some(&b"v:7"[..])
    );
    assert_eq!(hooked.calls(Op::Get, &ending("shard.db")), 1, "one download in all");
    let s = reader.stats();
    assert_eq!((s.shard_opens, s.downloads), (1, 1), "{s:?}");
    assert!(temp_files(cache.path()).is_empty());
}

/// Two snapshots whose manifests claim the same `checkpoint_id`s (the
/// second has no checksums, so a shared file would not be caught by
/// verification) each read their own shards from files of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_snapshots_claiming_one_checkpoint_id_read_their_own_bytes() {
    use sf_tests::tamper::{current_manifest, publish_over};
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let (a, b) = (
        format!("file://{}/a", root.path().display()),
        format!("file://{}/b", root.path().display()),
    );
    build_snapshot(&a, &SnapshotSpec::hash("ra", 2, KeyEncoding::U64Be), &int_rows(60, "a")).await;
    let mut spec = SnapshotSpec::hash("rb", 2, KeyEncoding::U64Be);
    spec.checksums = false;
    build_snapshot(&b, &spec, &int_rows(60, "b")).await;
    let (ma, _) = current_manifest(&a).await;
    let (mut mb, _) = current_manifest(&b).await;
    for row in &mut mb.shards {
        let theirs = ma.shards.iter().find(|r| r.db_id == row.db_id).expect("same shard");
        row.checkpoint_id = theirs.checkpoint_id.clone();
    }
    assert!(mb.shards.iter().all(|r| r.checkpoint_id.is_some()));
    publish_over(&b, &mb).await;

    let keys: Vec<Key> = (0..60).map(Key::Int).collect();
    let ra = download_reader(&a, cache.path()).await;
    let rb = download_reader(&b, cache.path()).await;
    for (reader, tag) in [(&ra, "a"), (&rb, "b"), (&ra, "a")] {
        let values = reader.multi_get(&keys).await.expect("multi_get");
        for (k, v) in values.iter().enumerate() {
            assert_eq!(v.as_deref(), Some(format!("{tag}:{k}").as_bytes()), "{tag} key {k}");
        }
    }
    assert_eq!(
        cached_files(cache.path(), "db").len(),
        4,
        "a file per shard per snapshot"
    );
    for r in [&ra, &rb] {
        let s = r.stats();
        assert_eq!((s.downloads, s.cache_repairs), (2, 0), "{s:?}");
    }
}

/// Under `cache_max_bytes`, files of snapshots no reader holds any more
/// are evicted, least recently used first; those of held snapshots never
/// are, even when that leaves the folder above the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_evicts_files_no_held_snapshot_needs_and_never_held_ones() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let keys: Vec<Key> = (0..80).map(Key::Int).collect();
    let folder_bytes = || -> u64 {
        std::fs::read_dir(cache.path().join("sqlite"))
            .expect("cache dir")
            .map(|e| e.expect("entry").metadata().expect("meta").len())
            .sum()
    };
    let prefixes: Vec<String> = (0..2)
        .map(|i| format!("file://{}/snap{i}", root.path().display()))
        .collect();
    for (i, p) in prefixes.iter().enumerate() {
        publish_ints(p, &format!("r{i}"), 2, 80, &format!("s{i}")).await;
    }
    // Bound 0: nothing unheld may stay; held files do.
    let bounded = |p: &str| {
        let p = p.to_string();
        let cache = cache.path().to_path_buf();
        async move {
            open(
                &p,
                sf_reader::ReaderSettings {
                    cache_max_bytes: Some(0),
                    ..settings(SqliteMode::Download, &cache)
                },
            )
            .await
        }
    };
    let first = bounded(&prefixes[0]).await;
    first.multi_get(&keys).await.expect("first");
    let one_snapshot = folder_bytes();
    assert_eq!(cached_files(cache.path(), "db").len(), 2);
    let s = first.stats();
    assert!(
        s.cache_over_bound > 0 && s.cache_evictions == 0,
        "held files stay: {s:?}"
    );
    assert_eq!(s.cache_bytes, one_snapshot);

    let second = bounded(&prefixes[1]).await;
    second.multi_get(&keys).await.expect("second");
    assert_eq!(cached_files(cache.path(), "db").len(), 4, "both snapshots are held");
    drop(first);
    // The first reader's files go once it is dropped (a pass runs then).
    let mut gone = false;
    for _ in 0..600 {
        if cached_files(cache.path(), "db").len() == 2 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "{:?}", cached_files(cache.path(), "db"));
    let values = second.multi_get(&keys).await.expect("second again");
    assert_eq!(values[3].as_deref(), Some(&b"s1:3"[..]));
    assert_eq!(second.stats().downloads, 2, "the held files were never fetched again");
    assert_eq!(cached_files(cache.path(), "db").len(), 2);
}
