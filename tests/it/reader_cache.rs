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
