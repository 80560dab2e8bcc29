//! Bad inputs give clear errors naming the object, and a reader whose
//! refresh meets one keeps serving the last good snapshot.

use sf_manifest::Classified;
use std::time::Duration;

use sf_manifest::{ErrorKind, Key, KeyEncoding, RunId, format::layout};
use sf_reader::{Error, Reader, ReaderSettings, SqliteMode};
use sf_tests::manifest_store;
use sf_tests::readers::{SQLITE_MODES, in_every_mode, key_in, open, settings, try_open};
use sf_tests::snapshots::{Backend, SnapshotSpec, build_snapshot, int_rows, publish_ints};
use sf_tests::tamper::{damage_shard, delete_shard, point_current_at, publish_over, put_manifest_bytes};

fn prefix(root: &tempfile::TempDir, name: &str) -> String {
    format!("file://{}/{name}", root.path().display())
}

/// A reader of `prefix`; without the history fallback, so that the error
/// of each broken current manifest is what the start returns.
async fn reader(prefix: &str, cache: &std::path::Path, mode: SqliteMode) -> sf_reader::Result<Reader> {
    let settings = ReaderSettings {
        history_fallback: false,
        ..settings(mode, cache)
    };
    try_open(prefix, settings).await
}

fn assert_names(e: &Error, parts: &[&str]) {
    let text = e.to_string();
    for p in parts {
        assert!(text.contains(p), "error {text:?} should name {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshots_are_named_in_errors() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");

    // No _CURRENT.
    let p = prefix(&root, "empty");
    let e = reader(&p, cache.path(), SqliteMode::Auto)
        .await
        .expect_err("no _CURRENT");
    assert!(matches!(e, Error::NoCurrent { .. }), "{e:?}");
    assert_names(&e, &[&format!("{p}/_CURRENT"), "nothing has been published"]);

    // _CURRENT pointing at a manifest that is not there.
    let p = prefix(&root, "dangling");
    let missing = format!("{p}/manifests/2026-01-01T00:00:00.000000Z_run_id=gone/manifest");
    point_current_at(&p, &missing, "gone").await;
    let e = reader(&p, cache.path(), SqliteMode::Auto)
        .await
        .expect_err("missing manifest");
    assert!(matches!(e, Error::ManifestMissing { .. }), "{e:?}");
    assert_names(&e, &[&missing, "_CURRENT"]);

    // A manifest that is not SQLite.
    let p = prefix(&root, "garbage");
    let bad = put_manifest_bytes(&p, "junk", b"{\"this is\": \"json, not SQLite\"}".to_vec()).await;
    point_current_at(&p, &bad, "junk").await;
    let e = reader(&p, cache.path(), SqliteMode::Auto)
        .await
        .expect_err("not SQLite");
    assert_eq!(e.kind(), ErrorKind::Data);
    assert_names(&e, &[&bad, "not a SQLite database"]);

    // format_version 5.
    let p = prefix(&root, "future");
    let built = publish_ints(&p, "v4run", 2, 10, "v").await;
    let mut m = built.manifest.clone();
    m.build.format_version = 5;
    let v5 = put_manifest_bytes(&p, "v5run", m.to_sqlite_bytes().expect("encode")).await;
    point_current_at(&p, &v5, "v5run").await;
    let e = reader(&p, cache.path(), SqliteMode::Auto).await.expect_err("v5");
    assert_names(&e, &[&v5, "format_version 5", "format_version 4"]);

    // A missing shard file: the shard's reads fail naming it; others work.
    in_every_mode(&SQLITE_MODES, async |mode| {
        let p = prefix(&root, &format!("noshard-{mode:?}"));
        let built = publish_ints(&p, "r1", 4, 40, "v").await;
        let victim = &built.manifest.shards[1];
        let url = victim.db_url.clone().expect("db_url");
        delete_shard(&p, &url).await;
        let r = reader(&p, cache.path(), mode).await.expect("the manifest is fine");
        let (in_victim, elsewhere): (Vec<i64>, Vec<i64>) =
            (0..40).partition(|k| r.route(&Key::Int(*k), None).expect("route").db_id == Some(victim.db_id));
        let e = r.get(&Key::Int(in_victim[0])).await.expect_err("missing shard");
        assert!(matches!(e, Error::ShardOpen { .. }), "{e:?}");
        assert_names(&e, &[&format!("shard {}", victim.db_id), &url, "missing"]);
        assert!(r.get(&Key::Int(elsewhere[0])).await.expect("other shards").is_some());
        let e = r
            .multi_get(&[Key::Int(elsewhere[0]), Key::Int(in_victim[0])])
            .await
            .expect_err("multi");
        assert_names(&e, &[&format!("shard {}", victim.db_id), &url]);
    })
    .await;

    // A checksum mismatch: same size, one byte different.
    in_every_mode(&SQLITE_MODES, async |mode| {
        let p = prefix(&root, &format!("damaged-{mode:?}"));
        let built = publish_ints(&p, "r1", 2, 40, "v").await;
        let victim = &built.manifest.shards[0];
        damage_shard(&p, victim.db_url.as_deref().expect("url")).await;
        let r = reader(&p, cache.path(), mode).await.expect("open");
        let k = key_in(&r, victim.db_id.0, 40);
        let e = r.get(&Key::Int(k)).await.expect_err("checksum");
        assert!(matches!(e, Error::ChecksumMismatch { .. }), "{mode:?}: {e:?}");
        assert_names(
            &e,
            &[
                &format!("shard {}", victim.db_id),
                victim.writer_info.checksum().expect("checksum"),
            ],
        );
    })
    .await;

    // A SlateDB shard whose content does not match its recorded checksum.
    let p = prefix(&root, "damaged-slatedb");
    let mut spec = SnapshotSpec::hash("r1", 2, KeyEncoding::U64Be);
    spec.backend = Backend::SlateDb;
    let built = build_snapshot(&p, &spec, &int_rows(20, "v")).await;
    let mut m = built.manifest.clone();
    m.build.run_id = RunId::new("r2").expect("run");
    m.shards[0].writer_info.extra.insert(
        "checksum".into(),
        serde_json::Value::from("xxh3_128-kv:00000000000000000000000000000000"),
    );
    publish_over(&p, &m).await;
    let r = reader(&p, cache.path(), SqliteMode::Auto).await.expect("open");
    let k = key_in(&r, m.shards[0].db_id.0, 20);
    let e = r.get(&Key::Int(k)).await.expect_err("kv checksum");
    assert!(matches!(e, Error::ChecksumMismatch { .. }), "{e:?}");
    assert_names(&e, &[&format!("shard {}", m.shards[0].db_id), "xxh3_128-kv:0000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_the_wrong_type_are_refused_before_any_read() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let p = prefix(&root, "ints");
    publish_ints(&p, "r1", 2, 10, "v").await;
    let r = reader(&p, cache.path(), SqliteMode::Auto).await.expect("open");
    let e = r.get(&Key::Str("abc".into())).await.expect_err("text key");
    assert_eq!(e.kind(), ErrorKind::Data);
    assert_names(&e, &["u64be", "abc"]);
    let e = r.parse_key("abc").expect_err("parse");
    assert_names(&e, &["abc", "u64be", "integer"]);
    let e = r.get(&Key::Int(-1)).await.expect_err("negative");
    assert_names(&e, &["-1", "u64be"]);
    let e = r
        .multi_get(&[Key::Int(1), Key::Bytes(vec![0xff, 0x02])])
        .await
        .expect_err("bytes key");
    // The bad key among the good ones is named.
    assert_names(&e, &["u64be", "hex:ff02"]);
    assert_eq!(r.stats().shard_opens, 0, "nothing was opened for bad keys");

    let p = prefix(&root, "texts");
    let rows = vec![sf_tests::snapshots::Row::new(Key::Str("a".into()), "x")];
    build_snapshot(&p, &SnapshotSpec::hash("r1", 2, KeyEncoding::Utf8), &rows).await;
    let r = reader(&p, cache.path(), SqliteMode::Auto).await.expect("open");
    let e = r.get(&Key::Int(3)).await.expect_err("int key");
    assert_names(&e, &["utf8", "integer 3"]);
    assert_eq!(
        r.get(&Key::Str("a".into())).await.expect("get").as_deref(),
        Some(&b"x"[..])
    );
}

/// Every kind of bad new snapshot makes `refresh` fail and leaves the old
/// one serving; a good one afterwards is picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_refreshes_keep_the_last_good_snapshot() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let p = prefix(&root, "refresh");
    let good = publish_ints(&p, "good", 4, 50, "good").await;
    let r = reader(&p, cache.path(), SqliteMode::Download).await.expect("open");
    // Open every shard, so a refresh must open the new ones before swapping.
    let keys: Vec<Key> = (0..50).map(Key::Int).collect();
    assert!(r.multi_get(&keys).await.expect("warm").iter().all(Option::is_some));

    let serving_good = |values: Vec<Option<bytes::Bytes>>| {
        values
            .iter()
            .enumerate()
            .all(|(k, v)| v.as_deref() == Some(format!("good:{k}").as_bytes()))
    };

    // 1. Garbage manifest.
    let junk = put_manifest_bytes(&p, "junk", b"junk".to_vec()).await;
    point_current_at(&p, &junk, "junk").await;
    let e = r.refresh().await.expect_err("garbage");
    assert_names(&e, &[&junk]);
    // 2. A manifest that is not there.
    let gone = format!("{p}/manifests/2030-01-01T00:00:00.000000Z_run_id=gone/manifest");
    point_current_at(&p, &gone, "gone").await;
    let e = r.refresh().await.expect_err("missing");
    assert_names(&e, &[&gone]);
    // 3. A snapshot whose shards are missing (caught by opening them
    //    before the swap).
    let mut spec = SnapshotSpec::hash("broken", 4, KeyEncoding::U64Be);
    spec.publish = true;
    let broken = build_snapshot(&p, &spec, &int_rows(50, "broken")).await;
    let s = manifest_store(&p);
    sf_manifest::publish::gc::delete_prefix(&s, &layout::run_shards_key(&RunId::new("broken").expect("run")))
        .await
        .expect("delete data");
    let e = r.refresh().await.expect_err("missing shards");
    assert_names(&e, &["shard", "missing", "shards/run_id=broken/db="]);
    assert!(serving_good(r.multi_get(&keys).await.expect("still serving")));
    let status = r.refresh_status();
    assert_eq!(status.consecutive_failures, 3);
    assert!(
        status.last_error.as_deref().is_some_and(|e| e.contains("missing")),
        "{status:?}"
    );
    // 4. A format_version 5 manifest.
    let mut v5 = good.manifest.clone();
    v5.build.run_id = RunId::new("v5run").expect("run");
    v5.build.format_version = 5;
    let v5_ref = put_manifest_bytes(&p, "v5run", v5.to_sqlite_bytes().expect("encode")).await;
    point_current_at(&p, &v5_ref, "v5run").await;
    let e = r.refresh().await.expect_err("format_version 5");
    assert_names(&e, &[&v5_ref, "format_version 5"]);
    assert!(serving_good(r.multi_get(&keys).await.expect("still serving")));
    // 5. A shard whose content does not match its checksum (caught when
    //    the refresh opens it, before the swap).
    let damaged = publish_ints(&p, "damaged", 4, 50, "damaged").await;
    let victim = &damaged.manifest.shards[0];
    damage_shard(&p, victim.db_url.as_deref().expect("url")).await;
    let e = r.refresh().await.expect_err("checksum mismatch");
    assert!(matches!(e, Error::ChecksumMismatch { .. }), "{e:?}");
    assert_names(
        &e,
        &[
            &format!("shard {}", victim.db_id),
            victim.db_url.as_deref().expect("url"),
            victim.writer_info.checksum().expect("checksum"),
        ],
    );
    assert!(serving_good(r.multi_get(&keys).await.expect("still serving")));
    // 6. `_CURRENT` deleted.
    let s = manifest_store(&p);
    s.object_store()
        .delete(&s.location().path_of(layout::CURRENT))
        .await
        .expect("delete _CURRENT");
    let e = r.refresh().await.expect_err("no _CURRENT");
    assert!(matches!(e, Error::NoCurrent { .. }), "{e:?}");
    assert_names(&e, &[&format!("{p}/_CURRENT")]);
    assert!(serving_good(r.multi_get(&keys).await.expect("still serving")));
    let status = r.refresh_status();
    assert_eq!(status.consecutive_failures, 6);
    assert!(
        status.last_error.as_deref().is_some_and(|e| e.contains("_CURRENT")),
        "{status:?}"
    );
    assert_eq!(r.info().manifest_ref, good.manifest_ref);
    assert!(r.health(Duration::from_secs(3600)).refresh.last_error.is_some());
    drop(broken);

    // A good snapshot is picked up by the next refresh.
    let next = publish_ints(&p, "next", 4, 50, "next").await;
    assert!(matches!(
        r.refresh().await.expect("refresh"),
        sf_reader::RefreshOutcome::Swapped { .. }
    ));
    assert_eq!(r.info().manifest_ref, next.manifest_ref);
    assert_eq!(r.get(&Key::Int(7)).await.expect("get").as_deref(), Some(&b"next:7"[..]));
    assert_eq!(r.refresh_status().consecutive_failures, 0);
    assert_eq!(r.stats().refresh_failures, 6);
}

/// The background refresh survives failures and recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_refresh_keeps_retrying_after_failures_and_recovers() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let p = prefix(&root, "background");
    publish_ints(&p, "one", 2, 20, "one").await;
    let r = open(
        &p,
        ReaderSettings {
            refresh_interval: Some(Duration::from_millis(20)),
            refresh_max_backoff: Duration::from_millis(100),
            ..settings(SqliteMode::Auto, cache.path())
        },
    )
    .await;
    let junk = put_manifest_bytes(&p, "junk", b"junk".to_vec()).await;
    point_current_at(&p, &junk, "junk").await;
    // Bounded wait for several failed rounds (a minute: the rounds come
    // every 20 to 100 ms, but a loaded machine may starve the loop).
    let mut failures = 0;
    for _ in 0..6_000 {
        failures = r.refresh_status().consecutive_failures;
        if failures >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failures >= 3, "the background refresh kept trying");
    assert_eq!(
        r.get(&Key::Int(3)).await.expect("still serving").as_deref(),
        Some(&b"one:3"[..])
    );

    publish_ints(&p, "two", 2, 20, "two").await;
    let mut swapped = false;
    for _ in 0..6_000 {
        if r.info().run_id.as_str() == "two" {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(swapped, "the background refresh recovered after the failures");
    assert_eq!(r.get(&Key::Int(3)).await.expect("get").as_deref(), Some(&b"two:3"[..]));
    assert_eq!(r.refresh_status().consecutive_failures, 0);
}
