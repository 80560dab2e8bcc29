//! The real `sf-serve` binary serving two snapshots, one healthy and one
//! hostile: a bad object in the bucket costs one clear error for its
//! snapshot, never the process. For each hostile object (a manifest
//! claiming 4e9 shards, an oversized `_CURRENT`, a shard whose `kv` is a
//! view over an endless query, a manifest whose `shards` is a view, a
//! truncated shard, a shard longer than declared) the hostile snapshot
//! answers a clear error (a refused current manifest: the run published
//! before it, degraded, with the reason in its listing; a refused shard:
//! an answer with an `error_id` whose log line says why), the healthy one
//! keeps answering, and `/livez` answers.

use std::time::{Duration, Instant};

use object_store::PutPayload;
use serde_json::{Value, json};
use sf_manifest::ManifestStore;
use sf_manifest::format::layout;
use sf_tests::manifest_store;
use sf_tests::serve::{LocalSnapshot, ServeProcess, call, kind};
use sf_tests::tamper::{current_manifest, point_current_at, publish_over, put_manifest_bytes};

/// `bytes` (a manifest file) with `sql` run over it.
fn tamper_sqlite(bytes: &[u8], sql: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("m.db");
    std::fs::write(&path, bytes).expect("write");
    rusqlite::Connection::open(&path)
        .expect("open")
        .execute_batch(sql)
        .expect("tamper");
    std::fs::read(&path).expect("read")
}

/// Publishes `bytes` as the manifest `_CURRENT` names under `prefix`.
async fn publish_manifest_bytes(prefix: &str, bytes: Vec<u8>) {
    let url = put_manifest_bytes(prefix, "hostile", bytes).await;
    point_current_at(prefix, &url, "hostile").await;
}

/// Replaces every shard file of the current snapshot with `f(its bytes)`.
async fn rewrite_shards(prefix: &str, f: impl Fn(Vec<u8>) -> Vec<u8>) {
    let s = manifest_store(prefix);
    let (manifest, _) = current_manifest(prefix).await;
    for row in &manifest.shards {
        let key = layout::locate(s.prefix_url(), None, row.db_url.as_deref().expect("db_url")).expect("key");
        let path = s.location().path_of(&format!("{key}/{}", layout::SQLITE_SHARD_FILE));
        let bytes = s
            .object_store()
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        s.object_store()
            .put(&path, PutPayload::from(f(bytes.to_vec())))
            .await
            .expect("put");
    }
}

/// A real SQLite file whose `kv` is a view over an endless recursive CTE.
fn endless_kv_view() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("shard.db");
    rusqlite::Connection::open(&path)
        .expect("create")
        .execute_batch(
            "CREATE VIEW kv AS WITH RECURSIVE r(k, v) AS (SELECT x'00', x'00' UNION ALL SELECT k, v FROM r) \
             SELECT k, v FROM r",
        )
        .expect("view");
    std::fs::read(&path).expect("read")
}

/// The listing entry of snapshot `name`.
async fn listed(s: &ServeProcess, name: &str) -> Value {
    let (st, _, list) = call(s.get("/v1/snapshots")).await;
    assert_eq!(st, 200, "{list}");
    list["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
        .clone()
}

/// Waits (at most 60 s) until `good` is open and `bad` is open or has an
/// open error.
async fn settle(s: &ServeProcess) {
    let started = Instant::now();
    loop {
        let good = listed(s, "good").await;
        let bad = listed(s, "bad").await;
        if good["open"] != false && (bad["open"] != false || bad["open_error"].is_string()) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not settled: {good} {bad}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serves `good` and the damaged `bad` side by side; checks the healthy
/// snapshot answers, `/livez` answers, and returns the hostile snapshot's
/// answer to a lookup of key 7 (status and body), its listing and the
/// server's log.
async fn serve_both(good: &LocalSnapshot, bad: &LocalSnapshot) -> (u16, Value, Value, String) {
    let mut s = ServeProcess::serving(
        &[("good", &good.prefix), ("bad", &bad.prefix)],
        &["--sqlite-mode", "download"],
    );
    settle(&s).await;
    let (st, _, bad_answer) = call(s.get("/v1/snapshots/bad/keys/7")).await;
    // Twice: the second lookup meets the same clear error, not a hang.
    let (st2, _, _) = call(s.get("/v1/snapshots/bad/keys/7")).await;
    assert_eq!(st, st2);
    for k in [1, 7, 150] {
        let (st, run, body) = call(s.get(&format!("/v1/snapshots/good/keys/{k}"))).await;
        assert_eq!((st, run.as_deref()), (200, Some("run1")), "{body}");
    }
    assert_eq!(s.get("/livez").send().await.expect("livez").status(), 200);
    let listing = listed(&s, "bad").await;
    assert!(s.running(), "the process is alive");
    assert!(s.terminate().success());
    (st, bad_answer, listing, s.stderr())
}

/// Asserts the hostile snapshot's current manifest (or `_CURRENT`) was
/// refused and the snapshot serves run1, the one published before, its
/// listing degraded with a reason containing `want`.
fn assert_fell_back(st: u16, body: &Value, listing: &Value, want: &[&str]) {
    assert_eq!((st, body), (200, &Value::String("run1:7".into())), "served from run1");
    assert_eq!(
        (&listing["state"], &listing["run_id"]),
        (&json!("degraded"), &json!("run1")),
        "{listing}"
    );
    let reason = listing["degraded"].as_str().expect("a reason");
    for w in want {
        assert!(reason.contains(w), "{w:?} not in {reason}");
    }
}

/// Asserts the hostile snapshot opened but its shards answer 503
/// `shard_unavailable` with a generic message and an `error_id`, the log
/// holding that id with `want`.
fn assert_shard_refused(st: u16, body: &Value, log: &str, want: &str) {
    assert_eq!((st, kind(body)), (503, "shard_unavailable"), "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(!message.contains(want), "{want:?} told to the client: {message}");
    let id = body["error"]["error_id"].as_str().expect("an error id");
    assert!(
        log.lines().any(|l| l.contains(id) && l.contains(want)),
        "no log line with {id} and {want:?}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_claiming_four_billion_shards_costs_one_error() {
    let (good, bad) = (
        LocalSnapshot::with_runs(&["run1"]).await,
        LocalSnapshot::with_runs(&["run1"]).await,
    );
    let (_, bytes) = current_manifest(&bad.prefix).await;
    publish_manifest_bytes(
        &bad.prefix,
        tamper_sqlite(&bytes, "UPDATE build_meta SET num_dbs = 4000000000"),
    )
    .await;
    let (st, body, listing, _) = serve_both(&good, &bad).await;
    assert_fell_back(st, &body, &listing, &["num_dbs 4000000000 is out of range"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_current_costs_one_error() {
    let (good, bad) = (
        LocalSnapshot::with_runs(&["run1"]).await,
        LocalSnapshot::with_runs(&["run1"]).await,
    );
    std::fs::write(bad.folder().join("snap").join("_CURRENT"), vec![b' '; 1 << 20]).expect("write");
    let (st, body, listing, _) = serve_both(&good, &bad).await;
    assert_fell_back(st, &body, &listing, &["_CURRENT", "cap of 65536 bytes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_whose_shards_is_a_view_costs_one_error() {
    let (good, bad) = (
        LocalSnapshot::with_runs(&["run1"]).await,
        LocalSnapshot::with_runs(&["run1"]).await,
    );
    let (_, bytes) = current_manifest(&bad.prefix).await;
    let hostile = tamper_sqlite(
        &bytes,
        "ALTER TABLE shards RENAME TO real_shards; \
         CREATE VIEW shards AS WITH RECURSIVE r(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM r) \
         SELECT n AS db_id, NULL AS db_url, 0 AS attempt, 0 AS row_count, 0 AS db_bytes, NULL AS min_key, \
         NULL AS max_key, NULL AS checkpoint_id, '{}' AS writer_info FROM r;",
    );
    publish_manifest_bytes(&bad.prefix, hostile).await;
    let (st, body, listing, _) = serve_both(&good, &bad).await;
    assert_fell_back(st, &body, &listing, &["shards is a view"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_kv_is_an_endless_view_costs_one_error() {
    let (good, bad) = (
        LocalSnapshot::with_runs(&["run1"]).await,
        LocalSnapshot::with_runs(&["run1"]).await,
    );
    let view = endless_kv_view();
    rewrite_shards(&bad.prefix, |_| view.clone()).await;
    // A manifest that declares the view files as they are (size, no
    // checksum, a fresh identity), so only the file's schema can refuse it.
    let (mut manifest, _) = current_manifest(&bad.prefix).await;
    for row in &mut manifest.shards {
        row.db_bytes = view.len() as u64;
        row.checkpoint_id = None;
        row.writer_info
            .extra
            .remove(sf_manifest::format::manifest::CHECKSUM_KEY);
    }
    publish_over(&bad.prefix, &manifest).await;
    let (st, body, _, log) = serve_both(&good, &bad).await;
    assert_shard_refused(st, &body, &log, "kv is a view");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_shard_costs_one_error() {
    let (good, bad) = (
        LocalSnapshot::with_runs(&["run1"]).await,
        LocalSnapshot::with_runs(&["run1"]).await,
    );
    rewrite_shards(&bad.prefix, |mut b| {
        b.truncate(b.len() / 2);
        b
    })
    .await;
    let (st, body, _, log) = serve_both(&good, &bad).await;
    assert_shard_refused(st, &body, &log, "the manifest records db_bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_longer_than_declared_costs_one_error() {
    let (good, bad) = (
        LocalSnapshot::with_runs(&["run1"]).await,
        LocalSnapshot::with_runs(&["run1"]).await,
    );
    rewrite_shards(&bad.prefix, |mut b| {
        b.extend(std::iter::repeat_n(0u8, 1 << 20));
        b
    })
    .await;
    let (st, body, _, log) = serve_both(&good, &bad).await;
    assert_shard_refused(st, &body, &log, "the manifest records db_bytes");
}
