//! The publish protocol, as one conformance function run against every
//! backend: memory, the local file system and S3 (the moto server started
//! by `scripts/test.sh`).

use std::sync::Arc;

use sf_manifest::{
    Attempt, BuildMeta, CurrentPointer, CurrentVersion, DbId, Error, ErrorKind, Key, KeyEncoding, Manifest,
    ManifestStore, ObjectManifestStore, RunId, RunRecord, RunStatus, ShardRow, ShardingSpec, StorageOptions, Timestamp,
    WriterInfo,
};
use sf_tests::{memory_prefix, s3_prefix};

fn manifest(store: &ObjectManifestStore, run: &str, rows: u64) -> Manifest {
    let mut build = BuildMeta::new(
        RunId::new(run).expect("run id"),
        4,
        store.prefix_url(),
        "id",
        ShardingSpec::hash(),
        KeyEncoding::U64Be,
    );
    build.custom.insert("note".into(), serde_json::json!(run));
    Manifest {
        build,
        shards: vec![ShardRow {
            db_id: DbId(2),
            db_url: Some(format!(
                "{}/shards/run_id={run}/db=00002/attempt=00",
                store.prefix_url()
            )),
            attempt: Attempt(0),
            row_count: rows,
            db_bytes: 8192,
            min_key: Some(Key::Int(1)),
            max_key: Some(Key::Int(rows as i64)),
            checkpoint_id: Some("0123456789abcdef0123456789abcdef".into()),
            writer_info: WriterInfo::default(),
        }],
    }
}

fn assert_conflict<T: std::fmt::Debug>(r: sf_manifest::Result<T>) {
    match r {
        Err(e @ Error::Conflict { .. }) => assert_eq!(e.kind(), ErrorKind::Conflict),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Everything the protocol promises, on one backend.
async fn conformance(prefix: &str) {
    let store = ObjectManifestStore::open(prefix, &StorageOptions::new()).expect("open store");
    assert_eq!(
        store.load_current().await.expect("load"),
        None,
        "fresh prefix has no _CURRENT"
    );
    assert!(store.history().await.expect("history").is_empty());

    // First publish creates _CURRENT.
    let m1 = manifest(&store, "run1", 10);
    let p1 = store.publish(&m1, None).await.expect("first publish");
    let cur = store.load_current().await.expect("load").expect("published");
    assert_eq!(cur.pointer, p1.pointer);
    assert_eq!(cur.version, p1.version);
    assert_eq!(
        store
            .load_manifest(&p1.pointer.manifest_ref)
            .await
            .expect("load manifest"),
        m1
    );

    // A publisher that saw no _CURRENT now loses, and writes nothing.
    let m2 = manifest(&store, "run2", 20);
    assert_conflict(store.publish(&m2, None).await);
    assert_eq!(
        store.history().await.expect("history").len(),
        1,
        "a stale publish writes no manifest"
    );
    assert_eq!(
        store.load_current().await.expect("load").expect("current").pointer,
        p1.pointer
    );

    // With the version it saw, it wins.
    let p2 = store.publish(&m2, Some(&p1.version)).await.expect("second publish");
    let history = store.history().await.expect("history");
    let runs: Vec<_> = history.iter().map(|h| h.run_id.as_str().to_string()).collect();
    assert_eq!(runs, vec!["run2", "run1"], "history is newest first");
    assert_eq!(history[0].offset, 0);
    assert_eq!(history[0].manifest_ref, p2.manifest.manifest_ref);

    // Swaps against a stale version fail; against the current one they win.
    let back = CurrentPointer::new(p1.manifest.manifest_ref.clone(), m1.build.run_id.clone());
    assert_conflict(store.swap_current(&back, Some(&p1.version)).await);
    assert_conflict(store.swap_current(&back, None).await);
    let v3 = store.swap_current(&back, Some(&p2.version)).await.expect("rollback");
    assert_ne!(v3, p2.version);
    let cur = store.load_current().await.expect("load").expect("current");
    assert_eq!(cur.pointer.run_id.as_str(), "run1");
    assert_eq!(cur.version, v3);

    // Manifests are created only if absent.
    let at = Timestamp::now();
    store.put_manifest_at(&m1, at).await.expect("first write");
    match store.put_manifest_at(&m1, at).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => panic!("a second manifest at the same key must fail, got {other:?}"),
    }

    // Run records round-trip.
    let key = sf_manifest::layout::run_record_key(at, &m1.build.run_id, "0123456789abcdef0123456789abcdef");
    let mut rec = RunRecord::start(
        m1.build.run_id.clone(),
        store.prefix_url(),
        std::time::Duration::from_secs(30),
    );
    store.put_run_record(&key, &rec).await.expect("put run record");
    rec.succeed(p1.manifest.manifest_ref.clone());
    store.put_run_record(&key, &rec).await.expect("rewrite run record");
    let all = store.list_run_records().await.expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, key);
    assert_eq!(all[0].1.status, RunStatus::Succeeded);

    race(prefix).await;
}

/// Two publishers on one prefix: every compare-and-swap has exactly one
/// winner, and no update is lost.
async fn race(prefix: &str) {
    let race_prefix = format!("{prefix}/race");
    let a = Arc::new(ObjectManifestStore::open(&race_prefix, &StorageOptions::new()).expect("a"));
    let b = Arc::new(ObjectManifestStore::open(&race_prefix, &StorageOptions::new()).expect("b"));

    // Head-to-head rounds: both saw the same version; one wins.
    let mut seen: Option<CurrentVersion> = None;
    for round in 0..12 {
        let ma = manifest(&a, &format!("a{round}"), 1);
        let mb = manifest(&b, &format!("b{round}"), 1);
        let (ra, rb) = tokio::join!(a.publish(&ma, seen.as_ref()), b.publish(&mb, seen.as_ref()));
        let winners = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(
            winners, 1,
            "round {round}: exactly one publisher wins ({ra:?} / {rb:?})"
        );
        let won = ra.or(rb).expect("one won");
        let cur = a.load_current().await.expect("load").expect("current");
        assert_eq!(cur.pointer, won.pointer, "round {round}: _CURRENT holds the winner");
        seen = Some(won.version);
    }

    // Retrying publishers: each lands every update; the chain of replaced
    // pointers is linear, so none was overwritten blindly.
    async fn publish_all(store: Arc<ObjectManifestStore>, name: &'static str, n: usize) -> Vec<(String, String)> {
        let mut chain = Vec::new();
        for i in 0..n {
            let m = manifest(&store, &format!("{name}{i}"), 1);
            let mut tries = 0;
            loop {
                tries += 1;
                assert!(tries <= 200, "{name}{i}: no progress after {tries} tries");
                let cur = store.load_current().await.expect("load").expect("current");
                match store.publish(&m, Some(&cur.version)).await {
                    Ok(_) => {
                        chain.push((cur.pointer.run_id.to_string(), m.build.run_id.to_string()));
                        break;
                    }
                    Err(Error::Conflict { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("{name}{i}: {e}"),
                }
            }
        }
        chain
    }
    let start = a
        .load_current()
        .await
        .expect("load")
        .expect("current")
        .pointer
        .run_id
        .to_string();
    let (ca, cb) = tokio::join!(
        tokio::spawn(publish_all(Arc::clone(&a), "x", 8)),
        tokio::spawn(publish_all(Arc::clone(&b), "y", 8))
    );
    let mut edges: Vec<(String, String)> = ca.expect("x").into_iter().chain(cb.expect("y")).collect();
    assert_eq!(edges.len(), 16);
    // Walk the chain from the starting pointer: each update replaced the
    // previous one, and every update appears exactly once.
    let mut at = start;
    let mut walked = 0;
    while let Some(pos) = edges.iter().position(|(from, _)| *from == at) {
        at = edges.remove(pos).1;
        walked += 1;
    }
    assert_eq!(walked, 16, "updates form one linear chain; left over: {edges:?}");
    let cur = a.load_current().await.expect("load").expect("current");
    assert_eq!(
        cur.pointer.run_id.as_str(),
        at,
        "_CURRENT is the last update of the chain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_protocol_on_memory() {
    conformance(&memory_prefix("publish")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_protocol_on_local_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(&format!("file://{}/snap", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_protocol_on_s3() {
    conformance(&s3_prefix("publish")).await;
}

/// Errors name the object and never leak storage option values.
#[tokio::test]
async fn load_errors_name_the_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = format!("file://{}/snap", dir.path().display());
    let store = ObjectManifestStore::open(&prefix, &StorageOptions::new()).expect("open");
    let missing = format!("{prefix}/manifests/2026-01-01T00:00:00.000000Z_run_id=r/manifest");
    let e = store.load_manifest(&missing).await.expect_err("missing manifest");
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains(&missing), "{e}");

    std::fs::create_dir_all(dir.path().join("snap/manifests/2026-01-01T00:00:00.000000Z_run_id=r")).expect("mkdir");
    std::fs::write(
        dir.path()
            .join("snap/manifests/2026-01-01T00:00:00.000000Z_run_id=r/manifest"),
        b"{}",
    )
    .expect("write");
    let e = store.load_manifest(&missing).await.expect_err("not sqlite");
    assert!(e.to_string().contains("not a SQLite database"), "{e}");
    assert!(e.to_string().contains(&missing), "{e}");
}
