//! Memory mode (`sqlite_mode = "memory"`, and `auto` below a size): shards
//! held in memory answer like SQLite does, within `memory_limit_bytes`
//! (the rest stay on SQLite, and stats say so), and a refresh or a close
//! gives the memory back. The fixtures' reads, fresh snapshots on files
//! and S3, and damaged shards in memory mode are covered with the other
//! modes in `reader_fixtures.rs`, `reader_snapshots.rs` and
//! `reader_errors.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use sf_manifest::{DbId, Key, KeyEncoding};
use sf_reader::{Error, Reader, ReaderSettings, SqliteMode};
use sf_router::{Routed, Router};
use sf_tests::readers::{open, settings};
use sf_tests::snapshots::{BuiltSnapshot, Row, SnapshotSpec, build_sqlite_snapshot, fixture_copy, int_rows};

fn prefix(root: &tempfile::TempDir, name: &str) -> String {
    format!("file://{}/{name}", root.path().display())
}

fn memory_settings(cache: &Path) -> ReaderSettings {
    settings(SqliteMode::Memory, cache)
}

/// Every stored row of `built`, as keys and values.
fn stored(built: &BuiltSnapshot, encoding: KeyEncoding) -> Vec<(Key, Vec<u8>)> {
    built
        .shards
        .values()
        .flatten()
        .map(|(k, v)| (sf_router::decode_key(k, encoding).expect("key"), v.clone()))
        .collect()
}

/// Every row by `get`, then all of them with misses in one `multi_get`.
async fn read_all(r: &Reader, rows: &[(Key, Vec<u8>)], misses: &[Key]) {
    for (k, v) in rows {
        assert_eq!(r.get(k).await.expect("get").as_deref(), Some(v.as_slice()), "{k:?}");
    }
    for k in misses {
        assert_eq!(r.get(k).await.expect("get"), None, "{k:?} is a miss");
    }
    let keys: Vec<Key> = rows
        .iter()
        .map(|(k, _)| k.clone())
        .chain(misses.iter().cloned())
        .collect();
    let values = r.multi_get(&keys).await.expect("multi_get");
    for (i, v) in values.iter().enumerate() {
        let want = rows.get(i).map(|(_, v)| v.as_slice());
        assert_eq!(v.as_deref(), want, "multi_get item {i} {:?}", keys[i]);
    }
}

fn opened_as(r: &Reader) -> BTreeMap<DbId, Option<&'static str>> {
    r.shards().into_iter().map(|s| (s.db_id, s.opened_as)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_beyond_the_memory_limit_stay_on_sqlite() {
    let root = tempfile::tempdir().expect("root");
    let p = prefix(&root, "limit");
    let rows: Vec<Row> = (0..4000).map(|k| Row::new(Key::Int(k), format!("{k:0>200}"))).collect();
    let built = build_sqlite_snapshot(&p, &SnapshotSpec::hash("limit", 8, KeyEncoding::U64Be), &rows).await;
    let all = stored(&built, KeyEncoding::U64Be);
    let total: u64 = built.manifest.shards.iter().map(|s| s.db_bytes).sum();
    let misses = [Key::Int(4000), Key::Int(1 << 40)];

    // Room for about half the shards.
    let cache = tempfile::tempdir().expect("cache");
    let limit = total / 2;
    let r = open(
        &p,
        ReaderSettings {
            memory_limit_bytes: limit,
            ..memory_settings(cache.path())
        },
    )
    .await;
    read_all(&r, &all, &misses).await;
    let s = r.stats();
    assert!(s.memory_shards >= 1 && s.memory_shards < 8, "{s:?}");
    assert_eq!(s.memory_shards + s.memory_fallbacks, 8, "{s:?}");
    assert!(s.memory_bytes > 0 && s.memory_bytes <= limit, "{s:?}");
    assert_eq!(s.downloads, 8, "every shard is downloaded and verified first");
    let backends = opened_as(&r);
    let in_memory = backends.values().filter(|b| **b == Some("sqlite-memory")).count();
    let on_sqlite = backends.values().filter(|b| **b == Some("sqlite-download")).count();
    assert_eq!(
        (in_memory as u64, on_sqlite as u64),
        (s.memory_shards, s.memory_fallbacks)
    );

    // No memory at all: every shard stays on SQLite and still answers.
    let r = open(
        &p,
        ReaderSettings {
            memory_limit_bytes: 0,
            ..memory_settings(cache.path())
        },
    )
    .await;
    read_all(&r, &all, &misses).await;
    let s = r.stats();
    assert_eq!(
        (s.memory_shards, s.memory_bytes, s.memory_fallbacks),
        (0, 0, 8),
        "{s:?}"
    );
    assert_eq!(s.cache_hits, 8, "the files cached by the first reader serve");
    assert!(opened_as(&r).values().all(|b| *b == Some("sqlite-download")));

    // Room for all: each shard holds about what its file takes.
    let r = open(&p, memory_settings(cache.path())).await;
    read_all(&r, &all, &misses).await;
    let s = r.stats();
    assert_eq!((s.memory_shards, s.memory_fallbacks), (8, 0), "{s:?}");
    assert!(
        s.memory_bytes > total / 2 && s.memory_bytes < total * 2,
        "{} bytes held for {total} bytes of files",
        s.memory_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_and_close_give_the_memory_back() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let p = prefix(&root, "refresh");
    let spec = |run: &str| SnapshotSpec::hash(run, 4, KeyEncoding::U64Be);
    build_sqlite_snapshot(&p, &spec("big"), &int_rows(3000, "big")).await;
    // Without kept versions: a replaced snapshot is let go at the swap
    // (with `keep_versions`, it stays open for pinned reads until close).
    let r = open(
        &p,
        ReaderSettings {
            keep_versions: 0,
            ..memory_settings(cache.path())
        },
    )
    .await;
    let keys: Vec<Key> = (0..3000).map(Key::Int).collect();
    assert!(r.multi_get(&keys).await.expect("read").iter().all(Option::is_some));
    let big = r.stats();
    assert_eq!(big.memory_shards, 4, "{big:?}");

    // A smaller snapshot: every shard changed, so each is loaded anew
    // before the swap and the old ones are let go after it.
    build_sqlite_snapshot(&p, &spec("small"), &int_rows(300, "small")).await;
    assert!(matches!(
        r.refresh().await.expect("refresh"),
        sf_reader::RefreshOutcome::Swapped { .. }
    ));
    let small = r.stats();
    assert_eq!(small.memory_shards, 4, "{small:?}");
    assert!(
        small.memory_bytes < big.memory_bytes / 4,
        "after the swap {} bytes held, {} before",
        small.memory_bytes,
        big.memory_bytes
    );
    assert_eq!(
        r.get(&Key::Int(7)).await.expect("get").as_deref(),
        Some(&b"small:7"[..])
    );
    assert_eq!(r.get(&Key::Int(2000)).await.expect("get"), None);

    // Clones share the reader: a close through one lets go for all.
    let clone = r.clone();
    r.close();
    let closed = clone.stats();
    assert_eq!((closed.memory_shards, closed.memory_bytes), (0, 0), "{closed:?}");
    assert!(matches!(clone.get(&Key::Int(7)).await, Err(Error::Closed { .. })));
    assert_eq!(clone.info().run_id.as_str(), "small");
    assert_eq!(clone.info().shards_open, 0);

    // With the default `keep_versions`, the replaced snapshot stays held
    // for pinned reads, and a close lets go of it too.
    let kept = open(&p, memory_settings(cache.path())).await;
    let few: Vec<Key> = (0..300).map(Key::Int).collect();
    assert!(kept.multi_get(&few).await.expect("read").iter().all(Option::is_some));
    build_sqlite_snapshot(&p, &spec("again"), &int_rows(300, "again")).await;
    kept.refresh().await.expect("refresh");
    assert!(kept.multi_get(&few).await.expect("read").iter().all(Option::is_some));
    assert_eq!(kept.stats().memory_shards, 8, "the served and the kept snapshot");
    kept.close();
    let closed = kept.stats();
    assert_eq!((closed.memory_shards, closed.memory_bytes), (0, 0), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_holds_shards_below_the_threshold_or_whole_snapshots_that_fit_in_memory() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let p = prefix(&root, "auto");
    let spec = SnapshotSpec::hash("auto", 4, KeyEncoding::U64Be);
    // Shard 0's values are 50 times longer: its file is the large one.
    let router = Router::new(&spec.sharding, spec.num_dbs, spec.key_encoding).expect("router");
    let rows: Vec<Row> = (0..2000)
        .map(|k| {
            let key = Key::Int(k);
            let long = router.route_key(&key).expect("route") == Routed::Db(0);
            Row::new(key, vec![b'v'; if long { 1000 } else { 20 }])
        })
        .collect();
    let built = build_sqlite_snapshot(&p, &spec, &rows).await;
    let sizes: BTreeMap<DbId, u64> = built.manifest.shards.iter().map(|s| (s.db_id, s.db_bytes)).collect();
    let threshold = sizes
        .iter()
        .filter(|(d, _)| d.0 != 0)
        .map(|(_, b)| *b)
        .max()
        .expect("shards");
    assert!(sizes[&DbId(0)] > threshold, "{sizes:?}");

    let r = open(
        &p,
        ReaderSettings {
            cache_dir: Some(cache.path().to_path_buf()),
            sqlite_mode: SqliteMode::Auto,
            auto_memory_threshold_bytes: threshold,
            ..ReaderSettings::default()
        },
    )
    .await;
    read_all(&r, &stored(&built, KeyEncoding::U64Be), &[Key::Int(1 << 40)]).await;
    for (db, backend) in opened_as(&r) {
        let want = if db.0 == 0 { "sqlite-download" } else { "sqlite-memory" };
        assert_eq!(backend, Some(want), "shard {db} of {} bytes", sizes[&db]);
    }
    let s = r.stats();
    assert_eq!((s.memory_shards, s.memory_fallbacks), (3, 0), "{s:?}");

    // The default threshold, 0, holds nothing in memory.
    let r = open(
        &p,
        ReaderSettings {
            cache_dir: Some(cache.path().to_path_buf()),
            ..ReaderSettings::default()
        },
    )
    .await;
    read_all(&r, &stored(&built, KeyEncoding::U64Be), &[]).await;
    assert!(opened_as(&r).values().all(|b| *b == Some("sqlite-download")));
    assert_eq!(r.stats().memory_bytes, 0);

    // A whole snapshot that fits its share of the limit is held in memory,
    // the large shard too; one that does not stays on SQLite whole.
    let files: u64 = sizes.values().sum();
    // The estimate is the files plus a few bytes a row and the tables:
    // above the files' size, below one and a half times it here.
    for (limit, keep_versions, want) in [
        (3 * files, 1, "sqlite-memory"),
        (2 * files, 1, "sqlite-download"),
        // The same limit shared by three versions instead of two.
        (3 * files, 2, "sqlite-download"),
    ] {
        let r = open(
            &p,
            ReaderSettings {
                cache_dir: Some(cache.path().to_path_buf()),
                auto_memory_when_fits: true,
                memory_limit_bytes: limit,
                keep_versions,
                ..ReaderSettings::default()
            },
        )
        .await;
        read_all(&r, &stored(&built, KeyEncoding::U64Be), &[Key::Int(1 << 40)]).await;
        let modes = opened_as(&r);
        assert!(
            modes.values().all(|b| *b == Some(want)),
            "limit {limit}, keep {keep_versions}: {modes:?}"
        );
        assert_eq!(r.stats().memory_fallbacks, 0);
    }
}

/// Large `multi_get`s, split into tasks per shard and per 2,048 keys,
/// and small ones, looked up on the caller's thread with their values in
/// one buffer, with repeated keys and misses, answer in input order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_multi_gets_answer_in_input_order() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    for (name, shards) in [("one", 1), ("eight", 8)] {
        let p = prefix(&root, name);
        let spec = SnapshotSpec::hash(name, shards, KeyEncoding::U64Be);
        build_sqlite_snapshot(&p, &spec, &int_rows(20_000, name)).await;
        let r = open(&p, memory_settings(cache.path())).await;
        // Every key twice (once as a miss beyond the rows), shuffled by a
        // stride coprime with the count.
        let n = 50_000i64;
        let keys: Vec<Key> = (0..n).map(|i| Key::Int((i * 7919) % n)).collect();
        let values = r.multi_get(&keys).await.expect("multi_get");
        let check = |keys: &[Key], values: &[Option<bytes::Bytes>]| {
            assert_eq!(keys.len(), values.len());
            for (k, v) in keys.iter().zip(values) {
                let Key::Int(i) = k else { unreachable!("int keys") };
                let want = (*i < 20_000).then(|| format!("{name}:{i}").into_bytes());
                assert_eq!(v.as_deref(), want.as_deref(), "{name}: key {i}");
            }
        };
        check(&keys, &values);
        // Batches of 1,000 with every key of the first batch again in the
        // last; the first batch's values outlive the batches after it.
        let mut batches: Vec<Vec<Key>> = keys[..10_000].chunks(1_000).map(<[Key]>::to_vec).collect();
        batches.push(batches[0].iter().chain(&batches[0][..500]).cloned().collect());
        let first = r.multi_get(&batches[0]).await.expect("first batch");
        for batch in &batches {
            check(batch, &r.multi_get(batch).await.expect("batch"));
        }
        check(&batches[0], &first);
        assert_eq!(r.stats().memory_shards, u64::from(shards));
    }
}

/// Keys and values at the edges: the empty key, empty values, values
/// spilling into overflow pages; read the same in memory as from SQLite,
/// and scanned (through SQLite) in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_rows_read_alike_in_memory_and_on_sqlite() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let p = prefix(&root, "edges");
    let rows = vec![
        Row::new(Key::Bytes(vec![]), "the empty key"),
        Row::new(Key::Bytes(vec![0]), ""),
        Row::new(Key::Bytes(vec![0, 0]), vec![0u8; 1]),
        Row::new(Key::Bytes(vec![0xff; 5000]), "a key on overflow pages"),
        Row::new(Key::Bytes(b"big".to_vec()), vec![0xa5u8; 300_000]),
        Row::new(Key::Bytes(b"text".to_vec()), "h\u{e9}llo"),
    ];
    let built = build_sqlite_snapshot(&p, &SnapshotSpec::hash("edges", 2, KeyEncoding::Raw), &rows).await;
    let all = stored(&built, KeyEncoding::Raw);
    assert_eq!(all.len(), rows.len());
    let misses = [Key::Bytes(vec![0, 0, 0]), Key::Bytes(vec![0xff; 4999])];
    let memory = open(&p, memory_settings(cache.path())).await;
    let download = open(
        &p,
        ReaderSettings {
            sqlite_mode: SqliteMode::Download,
            ..memory_settings(cache.path())
        },
    )
    .await;
    read_all(&memory, &all, &misses).await;
    read_all(&download, &all, &misses).await;
    assert_eq!(memory.stats().memory_shards, 2);
    assert_eq!(download.stats().memory_shards, 0);
    for (db, kv) in &built.shards {
        let mut scanned = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = memory.scan_shard(DbId(*db), after.as_deref(), 2).await.expect("scan");
            let Some(last) = page.last() else { break };
            after = Some(last.0.to_vec());
            scanned.extend(page.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
        }
        let want: Vec<(Vec<u8>, Vec<u8>)> = kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(scanned, want, "shard {db}");
    }
}

/// `sf-read --sqlite-mode memory` answers as the default mode does.
#[test]
fn sf_read_reads_in_memory_mode() {
    let (_dir, snap) = fixture_copy("sqlite-bucket-golden/hash_int");
    let cache = tempfile::tempdir().expect("cache");
    let current = format!("{}/_CURRENT", snap.display());
    let run = |mode: &str, args: &[&str]| {
        let out = std::process::Command::new(sf_tests::writer_support::binary("sf-read"))
            .args(["--current-url", &current, "--sqlite-mode", mode])
            .args(args)
            .env("SF_CACHE_DIR", cache.path())
            .output()
            .expect("run sf-read");
        assert!(
            out.status.success(),
            "sf-read {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    for args in [&["get", "3"][..], &["get", "999"], &["multiget", "0", "42", "1"]] {
        assert_eq!(run("memory", args), run("auto", args), "{args:?}");
    }
    assert_eq!(
        run("memory", &["get", "3"]).trim(),
        r#"{"op": "get", "key": "3", "found": true, "value": "v2-3"}"#
    );
}
