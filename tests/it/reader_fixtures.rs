//! The reader on the reference's snapshots: every read `expected.json`
//! records, in download, range and memory modes, the pinned older run of
//! `hash_int`, categorical routing with context, and SlateDB shards read
//! without a single write to them.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sf_manifest::{DbId, Key};
use sf_reader::{ContextValue, Pin, Reader, ReaderSettings, RoutingContext, SqliteMode};
use sf_tests::fault_store::{FaultStore, Op, containing};
use sf_tests::readers::{SQLITE_MODES, in_every_mode, open_through, settings};
use sf_tests::snapshots::{fixture_copy, tree_state};
use sf_tests::{expected, fixture_dir};

/// The prefix of the reference snapshot `snap` of the SQLite fixtures.
fn golden(snap: &str) -> String {
    fixture_dir()
        .join("sqlite-bucket-golden")
        .join(snap)
        .display()
        .to_string()
}

async fn open(prefix: &str, mode: SqliteMode, pin: Pin, cache: &Path) -> Reader {
    sf_tests::readers::open(
        prefix,
        ReaderSettings {
            pin,
            ..settings(mode, cache)
        },
    )
    .await
}

/// `{"__bytes__": "..."}` or null, as expected.json writes values.
fn want(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        other => Some(other["__bytes__"].as_str().expect("__bytes__").as_bytes().to_vec()),
    }
}

fn got(v: Option<bytes::Bytes>) -> Option<Vec<u8>> {
    v.map(|b| b.to_vec())
}

/// The region of a `cel_cat` key. The fixture's rows carry a `region`
/// column the shards do not store; its shard key ranges (ap: 2..8, eu:
/// 0..6, us: 1..7, three rows each) fit exactly `["eu", "us", "ap"][k % 3]`,
/// and the reference transcript reads key 4 with `region=us`.
fn region(k: i64) -> &'static str {
    ["eu", "us", "ap"][(k % 3) as usize]
}

fn ctx(region: &str) -> RoutingContext {
    RoutingContext::from([("region".to_string(), ContextValue::Str(region.to_string()))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_expected_read_holds_in_download_range_and_memory_modes() {
    let exp = expected();
    in_every_mode(&SQLITE_MODES, async |mode| {
        let cache = tempfile::tempdir().expect("cache");
        let read = &exp["read"];
        let current = async |snap: &str| open(&golden(snap), mode, Pin::Current, cache.path()).await;
        hash_int_reads(&current("hash_int").await, read, mode).await;
        older_run_reads(&exp, mode, cache.path()).await;
        hash_str_reads(&current("hash_str").await, read).await;
        cel_direct_reads(&current("cel_direct").await, read).await;
        let cel_cat = current("cel_cat").await;
        cel_cat_reads(&cel_cat, read).await;
        the_mode_read_as_it_says(&cel_cat, mode, cache.path());
    })
    .await;
}

/// `hash_int`, current run: gets, a `multi_get`, routes and the info line.
async fn hash_int_reads(r: &Reader, read: &Value, mode: SqliteMode) {
    assert_eq!(
        got(r.get(&Key::Int(3)).await.expect("get")),
        want(&read["hash_int_get_3"])
    );
    assert_eq!(
        got(r.get(&Key::Int(999)).await.expect("get")),
        want(&read["hash_int_get_999"])
    );
    let multi = read["hash_int_multi"].as_object().expect("multi");
    let keys: Vec<Key> = multi.keys().map(|k| Key::Int(k.parse().expect("int"))).collect();
    let values = r.multi_get(&keys).await.expect("multi_get");
    for ((k, v), got_v) in multi.iter().zip(values) {
        assert_eq!(got(got_v), want(v), "{mode:?} hash_int multi {k}");
    }
    for (k, db) in read["hash_int_route"].as_object().expect("routes") {
        let route = r.route(&r.parse_key(k).expect("key"), None).expect("route");
        assert_eq!(route.db_id, Some(DbId(db.as_u64().expect("db") as u32)), "{k}");
    }
    let info = r.info();
    let text = read["hash_int_info"].as_str().expect("info text");
    assert!(text.contains(&format!("run_id='{}'", info.run_id)), "{text}");
    assert!(text.contains(&format!("num_dbs={}", info.num_dbs)));
    assert!(text.contains(&format!("manifest_ref='{}'", info.manifest_ref)));
    assert!(text.contains(&format!("row_count={}", info.row_count)));
    assert!(text.contains("'u64be'") && text.contains("'xxh3_64'"));
    assert_eq!(info.created_at.to_iso(), "2026-11-20T23:48:07.686971Z");
}

/// `hash_int`, the older run, pinned by history offset and by ref.
async fn older_run_reads(exp: &Value, mode: SqliteMode, cache: &Path) {
    let run1 = exp["write"]["hash_int"]["manifest_ref"]
        .as_str()
        .expect("ref")
        .to_string();
    for pin in [Pin::Offset(1), Pin::Ref(run1.clone())] {
        let old = open(&golden("hash_int"), mode, pin.clone(), cache).await;
        assert_eq!(old.info().run_id.as_str(), "goldenrun0001", "{pin:?}");
        for k in 0..10 {
            assert_eq!(
                got(old.get(&Key::Int(k)).await.expect("get")),
                Some(format!("value-{k}").into_bytes()),
                "{pin:?} key {k}"
            );
        }
        assert_eq!(old.get(&Key::Int(10)).await.expect("get"), None);
        // A pinned reader stays where it is.
        assert!(matches!(
            old.refresh().await.expect("refresh"),
            sf_reader::RefreshOutcome::Pinned { .. }
        ));
    }
}

/// `hash_str`: utf8 keys.
async fn hash_str_reads(r: &Reader, read: &Value) {
    for (k, v) in read["hash_str_range_get"].as_object().expect("gets") {
        assert_eq!(got(r.get(&Key::Str(k.clone())).await.expect("get")), want(v), "{k}");
    }
    for (k, db) in read["hash_str_route"].as_object().expect("routes") {
        let route = r.route(&Key::Str(k.clone()), None).expect("route");
        assert_eq!(route.db_id, Some(DbId(db.as_u64().expect("db") as u32)), "{k}");
    }
}

/// `cel_direct`: `shard_hash(key) % 4u` routes from the key alone.
async fn cel_direct_reads(r: &Reader, read: &Value) {
    assert!(!r.needs_context());
    for (k, v) in read["cel_direct_get"].as_object().expect("gets") {
        let key = r.parse_key(k).expect("key");
        assert_eq!(got(r.get(&key).await.expect("get")), want(v), "{k}");
    }
    for (k, db) in read["cel_direct_route"].as_object().expect("routes") {
        let route = r.route(&r.parse_key(k).expect("key"), None).expect("route");
        assert_eq!(route.db_id, Some(DbId(db.as_u64().expect("db") as u32)), "{k}");
    }
}

/// `cel_cat`: categorical on a `region` column.
async fn cel_cat_reads(r: &Reader, read: &Value) {
    assert!(r.needs_context());
    for (k, v) in read["cel_cat_get_ctx"].as_object().expect("gets") {
        let k: i64 = k.parse().expect("int");
        assert_eq!(
            got(r.get_with_context(&Key::Int(k), &ctx(region(k))).await.expect("get")),
            want(v),
            "cel_cat {k}"
        );
        for other in ["eu", "us", "ap"].into_iter().filter(|r| *r != region(k)) {
            assert_eq!(
                r.get_with_context(&Key::Int(k), &ctx(other)).await.expect("get"),
                None,
                "{k} is not in {other}"
            );
        }
    }
    // An unknown token is a miss, not an error.
    assert_eq!(
        got(r
            .get_with_context(&Key::Int(4), &ctx("mars"))
            .await
            .expect("unknown token")),
        want(&read["cel_cat_unknown_token"])
    );
    assert_eq!(r.route(&Key::Int(4), Some(&ctx("mars"))).expect("route").db_id, None);
    let items: Vec<(Key, RoutingContext)> = (0..9).map(|k| (Key::Int(k), ctx(region(k)))).collect();
    let values = r.multi_get_with_context(&items).await.expect("multi_get");
    for (k, v) in values.iter().enumerate() {
        assert_eq!(got(v.clone()), Some(format!("c{k}").into_bytes()));
    }
    // Without its context a lookup cannot be routed; the error says so.
    let e = r.get(&Key::Int(4)).await.expect_err("needs context").to_string();
    assert!(e.contains("region") && e.contains("routing context"), "{e}");
}

/// What a reader in `mode` fetched (`r`'s stats, and the files every
/// reader of the mode left in `cache`) and how it opened `r`'s shards.
fn the_mode_read_as_it_says(r: &Reader, mode: SqliteMode, cache: &Path) {
    let stats = r.stats();
    let cached_files = std::fs::read_dir(cache.join("sqlite"))
        .expect("cache dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "db"))
        })
        .count();
    match mode {
        SqliteMode::Download | SqliteMode::Memory => {
            assert!(stats.downloads > 0 && stats.range_requests == 0, "{stats:?}");
            assert!(cached_files > 0);
            let in_memory = if mode == SqliteMode::Memory {
                r.shards().len()
            } else {
                0
            };
            assert_eq!(stats.memory_shards, in_memory as u64, "{stats:?}");
            let backend = if mode == SqliteMode::Memory {
                "sqlite-memory"
            } else {
                "sqlite-download"
            };
            assert!(
                r.shards().iter().all(|s| s.opened_as == Some(backend)),
                "{:?}",
                r.shards()
            );
        }
        _ => {
            assert!(stats.downloads == 0 && stats.range_requests > 0, "{stats:?}");
            assert_eq!(cached_files, 0, "range mode downloads nothing");
        }
    }
}

/// The SlateDB fixture reads through a read-only reader: every stored key
/// is found where the router says, misses are misses, and not one file of
/// the snapshot is created, changed or removed. The reader reads through a
/// store that records every call; once the reader is dropped and the last
/// holder of that store (the shards' closing tasks included) has let go
/// of it, nothing can write through it any more: then no write was made
/// and the files are as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slatedb_fixture_reads_without_writing() {
    let (_dir, snap) = fixture_copy("slatedb-bucket-goldenslate/hash_int");
    let prefix = snap.display().to_string();
    let before = tree_state(&snap);
    let cache = tempfile::tempdir().expect("cache");
    let recorded = FaultStore::over(&prefix);
    {
        let r = open_through(&prefix, recorded.clone(), settings(SqliteMode::Auto, cache.path())).await;
        let info = r.info();
        assert_eq!(info.run_id.as_str(), "slaterun0001");
        assert_eq!(info.row_count, 6);
        for k in 0..6 {
            assert_eq!(
                got(r.get(&Key::Int(k)).await.expect("get")),
                Some(format!("s{k}").into_bytes()),
                "key {k}"
            );
        }
        for k in [6, 7, 100, 9_999_999] {
            assert_eq!(r.get(&Key::Int(k)).await.expect("miss"), None);
        }
        let keys: Vec<Key> = (0..8).map(Key::Int).collect();
        let values = r.multi_get(&keys).await.expect("multi_get");
        assert_eq!(values.iter().filter(|v| v.is_some()).count(), 6);
        // Each key lies within the key range the manifest records for the
        // shard the router names.
        let shards = r.shards();
        for k in 0..6 {
            let db = r.route(&Key::Int(k), None).expect("route").db_id.expect("db");
            let s = shards.iter().find(|s| s.db_id == db).expect("shard row");
            assert!(s.min_key <= Some(Key::Int(k)) && Some(Key::Int(k)) <= s.max_key);
            assert_eq!(s.opened_as, Some("slatedb"));
        }
        assert_eq!(r.stats().downloads, 0);
        assert!(
            recorded.calls(Op::Get, &containing("")) > 0,
            "the reader read through the recording store"
        );
    }
    // Dropped: its shards close in tasks of their own, each holding the
    // store until it is done. Wait (bounded) until ours is the only
    // reference left.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Arc::strong_count(&recorded) > 1 {
        assert!(
            Instant::now() < deadline,
            "the dropped reader still holds the store ({} references) after 120 s",
            Arc::strong_count(&recorded)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for op in [Op::Put, Op::Delete, Op::Copy] {
        assert_eq!(
            recorded.calls(op, &containing("")),
            0,
            "{op:?} calls reached the snapshot's store"
        );
    }
    assert_eq!(tree_state(&snap), before, "the reader wrote into the snapshot");
}
