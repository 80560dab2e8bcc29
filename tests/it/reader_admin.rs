//! Rollback and cleanup, on the local file system and on S3: rollback is a
//! compare-and-swap to a run, ref or offset; cleanup removes losing
//! attempts, old runs and abandoned runs, and never anything `_CURRENT` or
//! a kept manifest references.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::TryStreamExt;
use sf_manifest::{
    Key, KeyEncoding, Manifest, ManifestStore, ObjectManifestStore, RunId, RunRecord, StorageOptions, layout,
};
use sf_reader::{Admin, CleanupOptions, Pin, Reader, ReaderSettings, RemovalReason, RollbackTarget};
use sf_tests::s3_prefix;
use sf_tests::snapshots::{SnapshotSpec, build_snapshot, int_rows};

async fn all_keys(prefix: &str) -> BTreeSet<String> {
    let store = ObjectManifestStore::open(prefix, &StorageOptions::new()).expect("store");
    let base = store.location().path.clone();
    let n = base.parts().count();
    store
        .object_store()
        .list(Some(&base))
        .map_ok(|m| {
            m.location
                .parts()
                .skip(n)
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
        .try_collect()
        .await
        .expect("list")
}

async fn read_all(prefix: &str, pin: Pin, tag: &str, cache: &std::path::Path) {
    let r = Reader::builder(format!("{prefix}/_CURRENT"))
        .with_settings(ReaderSettings {
            cache_dir: Some(cache.to_path_buf()),
            pin,
            ..ReaderSettings::default()
        })
        .build()
        .await
        .expect("open");
    let keys: Vec<Key> = (0..40).map(Key::Int).collect();
    let values = r.multi_get(&keys).await.expect("read every shard");
    for (k, v) in values.iter().enumerate() {
        assert_eq!(
            v.as_deref(),
            Some(format!("{tag}:{k}").as_bytes()),
            "{prefix} {tag} key {k}"
        );
    }
}

/// A run that wrote data and a run record but never published.
async fn unpublished_run(prefix: &str, run: &str, record: Option<RunRecord>) {
    let mut spec = SnapshotSpec::hash(run, 2, KeyEncoding::U64Be);
    spec.publish = false;
    spec.run_record = false;
    let built = build_snapshot(prefix, &spec, &int_rows(10, run)).await;
    let store = ObjectManifestStore::open(prefix, &StorageOptions::new()).expect("store");
    // Unpublished runs leave no manifest behind.
    let key = layout::locate(store.prefix_url(), None, &built.manifest_ref).expect("key");
    sf_manifest::gc::delete_prefix(&store, key.trim_end_matches("/manifest"))
        .await
        .expect("drop manifest");
    if let Some(r) = record {
        let key = layout::run_record_key(r.started_at, &r.run_id, &uuid::Uuid::new_v4().simple().to_string());
        store.put_run_record(&key, &r).await.expect("record");
    }
}

async fn scenario(prefix: &str) {
    let cache = tempfile::tempdir().expect("cache");
    let mut spec = SnapshotSpec::hash("run1", 4, KeyEncoding::U64Be);
    spec.losing_attempts = true;
    let run1 = build_snapshot(prefix, &spec, &int_rows(40, "one")).await;
    spec.run_id = "run2".into();
    let run2 = build_snapshot(prefix, &spec, &int_rows(40, "two")).await;
    spec.run_id = "run3".into();
    let run3 = build_snapshot(prefix, &spec, &int_rows(40, "three")).await;

    // A manifest (not published) whose shard 0 reuses run1's winning
    // attempt: run1's data for it must survive run1's removal while this
    // manifest is kept.
    let store = ObjectManifestStore::open(prefix, &StorageOptions::new()).expect("store");
    let mut shared: Manifest = run3.manifest.clone();
    shared.build.run_id = RunId::new("shared").expect("run");
    shared.shards[0] = run1.manifest.shards[0].clone();
    store.put_manifest(&shared).await.expect("put shared manifest");

    // A failed run (deletable), a live one and one nobody knows about.
    let mut failed = RunRecord::start(RunId::new("failed").expect("run"), prefix, Duration::from_secs(60));
    failed.fail("Boom", "it broke");
    unpublished_run(prefix, "failed", Some(failed)).await;
    let live = RunRecord::start(RunId::new("live").expect("run"), prefix, Duration::from_secs(3600));
    unpublished_run(prefix, "live", Some(live)).await;
    unpublished_run(prefix, "unknown", None).await;

    let admin = Admin::builder(format!("{prefix}/_CURRENT")).build().expect("admin");

    // Rollback by run id, then by offset and ref; a no-op is reported.
    let r = admin
        .rollback(&RollbackTarget::RunId(RunId::new("run2").expect("run")))
        .await
        .expect("rollback");
    assert!(r.changed);
    assert_eq!(r.from_run_id.as_ref().map(RunId::as_str), Some("run3"));
    assert_eq!(r.run_id.as_str(), "run2");
    read_all(prefix, Pin::Current, "two", cache.path()).await;
    let r = admin
        .rollback(&RollbackTarget::RunId(RunId::new("run2").expect("run")))
        .await
        .expect("again");
    assert!(!r.changed, "already there");
    // History: shared (newest), run3, run2, run1.
    let r = admin.rollback(&RollbackTarget::Offset(3)).await.expect("offset");
    assert_eq!(r.run_id.as_str(), "run1");
    read_all(prefix, Pin::Current, "one", cache.path()).await;
    let r = admin
        .rollback(&RollbackTarget::Ref(run2.manifest_ref.clone()))
        .await
        .expect("ref");
    assert_eq!(r.run_id.as_str(), "run2");
    let e = admin
        .rollback(&RollbackTarget::RunId(RunId::new("nope").expect("run")))
        .await
        .expect_err("unknown run");
    assert!(e.to_string().contains("run nope"), "{e}");

    // Cleanup with no age rules: only losing attempts of kept runs, and
    // the dry run deletes nothing.
    let before = all_keys(prefix).await;
    let dry = admin
        .cleanup(&CleanupOptions {
            dry_run: true,
            ..CleanupOptions::default()
        })
        .await
        .expect("dry run");
    assert_eq!(all_keys(prefix).await, before, "a dry run deletes nothing");
    let stale: Vec<_> = dry.of(RemovalReason::StaleAttempt).collect();
    assert_eq!(stale.len(), 3 * 4, "attempt=01 of 4 shards of run1..run3: {stale:?}");
    assert!(stale.iter().all(|r| r.key.ends_with("attempt=01")));
    assert_eq!(dry.removals.len(), stale.len(), "{:?}", dry.removals);
    let real = admin.cleanup(&CleanupOptions::default()).await.expect("cleanup");
    assert_eq!(real.removals, dry.removals);
    assert_eq!(real.objects_deleted, 3 * 4 * 2, "shard.db and _claim.json of each");
    let after = all_keys(prefix).await;
    assert!(after.iter().all(|k| !k.contains("attempt=01")));
    for (pin, tag) in [
        (Pin::Offset(1), "three"),
        (Pin::Offset(3), "one"),
        (Pin::Current, "two"),
    ] {
        read_all(prefix, pin, tag, cache.path()).await;
    }

    // Keep the newest manifest only (`shared`); _CURRENT's (run2) stays as
    // well. run1 and run3 go, except the shards `shared` references: run1's
    // shard 0 and run3's shards 1..3.
    let plan = admin
        .cleanup(&CleanupOptions {
            keep_last: Some(1),
            dry_run: true,
            ..CleanupOptions::default()
        })
        .await
        .expect("plan");
    let old_manifests: BTreeSet<&str> = plan.of(RemovalReason::OldManifest).map(|r| r.run_id.as_str()).collect();
    assert_eq!(old_manifests, BTreeSet::from(["run1", "run3"]));
    let old_data: BTreeSet<&str> = plan.of(RemovalReason::OldRun).map(|r| r.key.as_str()).collect();
    let run1_shard0 =
        layout::locate(prefix, None, run1.manifest.shards[0].db_url.as_deref().expect("url")).expect("key");
    assert!(
        !old_data.contains(run1_shard0.as_str()),
        "a kept manifest references it"
    );
    let run3_shard0 =
        layout::locate(prefix, None, run3.manifest.shards[0].db_url.as_deref().expect("url")).expect("key");
    assert_eq!(
        old_data.len(),
        3 + 1,
        "run1's shards 1..3 and run3's shard 0: {old_data:?}"
    );
    assert!(old_data.contains(run3_shard0.as_str()));
    let abandoned: Vec<&str> = plan
        .of(RemovalReason::AbandonedRun)
        .map(|r| r.run_id.as_str())
        .collect();
    assert_eq!(abandoned, vec!["failed", "failed"], "both shards of the failed run");
    assert_eq!(plan.unknown_runs, vec![RunId::new("unknown").expect("run")]);
    let records: BTreeSet<&str> = plan.of(RemovalReason::RunRecord).map(|r| r.run_id.as_str()).collect();
    assert_eq!(records, BTreeSet::from(["failed", "run1", "run3"]));
    assert_eq!(all_keys(prefix).await, after, "the plan deleted nothing");

    let done = admin
        .cleanup(&CleanupOptions {
            keep_last: Some(1),
            ..CleanupOptions::default()
        })
        .await
        .expect("cleanup old runs");
    assert_eq!(done.removals, plan.removals);
    let left = all_keys(prefix).await;
    assert!(left.iter().any(|k| k.starts_with(&run1_shard0)), "shared shard kept");
    assert!(
        !left.iter().any(|k| k.starts_with(&run3_shard0)),
        "run3's unreferenced shard gone: {left:?}"
    );
    assert!(
        left.iter().any(|k| k.contains("run_id=run3/db=00001/attempt=00")),
        "referenced by `shared`"
    );
    assert!(!left.iter().any(|k| k.contains("run_id=failed")));
    assert!(left.iter().any(|k| k.contains("run_id=live")), "live run untouched");
    assert!(
        left.iter().any(|k| k.contains("run_id=unknown")),
        "unknown run untouched"
    );
    let history: Vec<String> = store
        .history()
        .await
        .expect("history")
        .iter()
        .map(|h| h.run_id.to_string())
        .collect();
    assert_eq!(history, vec!["shared", "run2"]);
    read_all(prefix, Pin::Current, "two", cache.path()).await;
    // The kept `shared` manifest still reads: its shard 0 is run1's.
    let r = Reader::builder(format!("{prefix}/_CURRENT"))
        .with_settings(ReaderSettings {
            cache_dir: Some(cache.path().to_path_buf()),
            pin: Pin::Offset(0),
            ..ReaderSettings::default()
        })
        .build()
        .await
        .expect("open shared");
    for k in 0..40 {
        let v = r.get(&Key::Int(k)).await.expect("get").expect("present");
        assert!(v.starts_with(b"one:") || v.starts_with(b"three:"), "{v:?}");
    }
    // Rolling back to a manifest cleanup removed is refused.
    let e = admin
        .rollback(&RollbackTarget::Ref(run1.manifest_ref.clone()))
        .await
        .expect_err("gone");
    assert!(e.to_string().contains(&run1.manifest_ref), "{e}");
    // keep_last 0 is refused.
    assert!(
        admin
            .cleanup(&CleanupOptions {
                keep_last: Some(0),
                ..CleanupOptions::default()
            })
            .await
            .is_err()
    );

    // --older-than: nothing is that old.
    let none = admin
        .cleanup(&CleanupOptions {
            older_than: Some(Duration::from_secs(3600)),
            ..CleanupOptions::default()
        })
        .await
        .expect("older than");
    assert!(none.of(RemovalReason::OldManifest).next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_cleanup_on_the_file_system() {
    let root = tempfile::tempdir().expect("root");
    scenario(&format!("file://{}/snap", root.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_cleanup_on_s3() {
    scenario(&s3_prefix("reader-admin")).await;
}
