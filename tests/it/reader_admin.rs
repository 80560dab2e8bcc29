//! Rollback and cleanup, on the local file system and on S3: rollback is a
//! compare-and-swap to a run, ref or offset; cleanup removes losing
//! attempts, old runs and abandoned runs, and never anything `_CURRENT` or
//! a kept manifest references.

use sf_manifest::Classified;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sf_manifest::{
    CurrentPointer, ErrorKind, Key, KeyEncoding, Manifest, ManifestStore, RunId, RunRecord, RunStatus, Timestamp,
    format::layout,
};
use sf_reader::{Admin, CleanupOptions, Pin, ReaderSettings, RemovalReason, RollbackTarget, SqliteMode};
use sf_tests::fault_store::{FaultStore, Op, containing, ending};
use sf_tests::readers::{open, settings};
use sf_tests::snapshots::{SnapshotSpec, build_snapshot, int_rows};
use sf_tests::tamper::point_current_at;
use sf_tests::writer_support::list_keys;
use sf_tests::{history_runs, manifest_store, s3_prefix};

/// A reader of `prefix` pinned to `pin` reads every key 0..40 with values
/// tagged `tag`.
async fn read_all(prefix: &str, pin: Pin, tag: &str, cache: &std::path::Path) {
    let r = open(
        prefix,
        ReaderSettings {
            pin,
            ..settings(SqliteMode::Auto, cache)
        },
    )
    .await;
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

/// Cleanup keeping the `n` newest manifests (and `_CURRENT`'s).
fn keep_last(n: usize) -> CleanupOptions {
    CleanupOptions {
        keep_last: Some(n),
        ..CleanupOptions::default()
    }
}

/// A run that wrote data and a run record but never published.
async fn unpublished_run(prefix: &str, run: &str, record: Option<RunRecord>) {
    let mut spec = SnapshotSpec::hash(run, 2, KeyEncoding::U64Be);
    spec.publish = false;
    spec.run_record = false;
    let built = build_snapshot(prefix, &spec, &int_rows(10, run)).await;
    let store = manifest_store(prefix);
    // Unpublished runs leave no manifest behind.
    let key = layout::locate(store.prefix_url(), None, &built.manifest_ref).expect("key");
    sf_manifest::publish::gc::delete_prefix(&store, key.trim_end_matches("/manifest"))
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
    let store = manifest_store(prefix);
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
    let before = list_keys(prefix).await;
    let dry = admin
        .cleanup(&CleanupOptions {
            dry_run: true,
            ..CleanupOptions::default()
        })
        .await
        .expect("dry run");
    assert_eq!(list_keys(prefix).await, before, "a dry run deletes nothing");
    let stale: Vec<_> = dry.of(RemovalReason::StaleAttempt).collect();
    assert_eq!(stale.len(), 3 * 4, "attempt=01 of 4 shards of run1..run3: {stale:?}");
    assert!(stale.iter().all(|r| r.key.ends_with("attempt=01")));
    assert_eq!(dry.removals.len(), stale.len(), "{:?}", dry.removals);
    let real = admin.cleanup(&CleanupOptions::default()).await.expect("cleanup");
    assert_eq!(real.removals, dry.removals);
    assert_eq!(real.objects_deleted, 3 * 4 * 2, "shard.db and _claim.json of each");
    let after = list_keys(prefix).await;
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
            dry_run: true,
            ..keep_last(1)
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
    assert_eq!(list_keys(prefix).await, after, "the plan deleted nothing");

    let done = admin.cleanup(&keep_last(1)).await.expect("cleanup old runs");
    assert_eq!(done.removals, plan.removals);
    let left = list_keys(prefix).await;
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
    let history = history_runs(prefix).await;
    assert_eq!(history, vec!["shared", "run2"]);
    read_all(prefix, Pin::Current, "two", cache.path()).await;
    // The kept `shared` manifest still reads: its shard 0 is run1's.
    let r = open(
        prefix,
        ReaderSettings {
            pin: Pin::Offset(0),
            ..settings(SqliteMode::Auto, cache.path())
        },
    )
    .await;
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
    // keep_last 0 is refused as a bad setting, naming it, and deletes nothing.
    let before_zero = list_keys(prefix).await;
    let e = admin.cleanup(&keep_last(0)).await.expect_err("keep_last 0");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("keep_last"), "{e}");
    assert_eq!(
        list_keys(prefix).await,
        before_zero,
        "a refused cleanup deletes nothing"
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

/// What `_CURRENT` names now.
async fn current(prefix: &str) -> CurrentPointer {
    manifest_store(prefix)
        .load_current()
        .await
        .expect("load")
        .expect("current")
        .pointer
}

/// The admin of `prefix`, reaching storage through `store`.
fn admin_through(prefix: &str, store: Arc<FaultStore>) -> Admin {
    Admin::builder(format!("{prefix}/_CURRENT"))
        .with_object_store(store)
        .build()
        .expect("admin")
}

/// A hook for [`FaultStore`] rules: another publisher moves `_CURRENT` to
/// `manifest_ref` before the call goes on.
fn another_publisher_moves_current(
    prefix: &str,
    manifest_ref: &str,
    run: &str,
) -> impl Fn(object_store::path::Path) -> BoxFuture<'static, ()> + Send + Sync + 'static {
    let (prefix, manifest_ref, run) = (prefix.to_string(), manifest_ref.to_string(), run.to_string());
    move |_| {
        let (prefix, manifest_ref, run) = (prefix.clone(), manifest_ref.clone(), run.clone());
        async move { point_current_at(&prefix, &manifest_ref, &run).await }.boxed()
    }
}

/// Another publisher moves `_CURRENT` between the rollback's read of it
/// and its compare-and-swap: the rollback fails as a conflict naming
/// `_CURRENT`, and `_CURRENT` keeps what the other publisher wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_loses_to_a_publish_that_lands_first_and_overwrites_nothing() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let spec = SnapshotSpec::hash("run1", 2, KeyEncoding::U64Be);
    build_snapshot(&prefix, &spec, &int_rows(10, "one")).await;
    build_snapshot(
        &prefix,
        &SnapshotSpec {
            run_id: "run2".into(),
            ..spec.clone()
        },
        &int_rows(10, "two"),
    )
    .await;
    let run3 = build_snapshot(
        &prefix,
        &SnapshotSpec {
            run_id: "run3".into(),
            publish: false,
            ..spec.clone()
        },
        &int_rows(10, "three"),
    )
    .await;
    let hooked = FaultStore::over(&prefix);
    hooked
        .at(Op::Put, ending("_CURRENT"))
        .run(another_publisher_moves_current(&prefix, &run3.manifest_ref, "run3"));
    let admin = admin_through(&prefix, hooked.clone());
    let e = admin
        .rollback(&RollbackTarget::RunId(RunId::new("run1").expect("run")))
        .await
        .expect_err("a publish landed first");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains(&format!("{prefix}/_CURRENT")), "{e}");
    let now = current(&prefix).await;
    assert_eq!(
        now.manifest_ref, run3.manifest_ref,
        "the other publisher's write stands"
    );
    assert_eq!(now.run_id.as_str(), "run3");

    // Tried again with nothing racing, it goes through from run3.
    let r = admin
        .rollback(&RollbackTarget::RunId(RunId::new("run1").expect("run")))
        .await
        .expect("rollback");
    assert!(r.changed);
    assert_eq!(r.from_run_id.as_ref().map(RunId::as_str), Some("run3"));
    let now = current(&prefix).await;
    assert_eq!(now.run_id.as_str(), "run1");
}

/// `_CURRENT` moves after cleanup has planned (while it reads the kept
/// manifests): nothing is deleted, the error is a conflict naming
/// `_CURRENT`, and the next cleanup plans against the new `_CURRENT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_nothing_when_current_moves_after_its_plan() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let mut spec = SnapshotSpec::hash("run1", 4, KeyEncoding::U64Be);
    spec.losing_attempts = true;
    let run1 = build_snapshot(&prefix, &spec, &int_rows(40, "one")).await;
    spec.run_id = "run2".into();
    build_snapshot(&prefix, &spec, &int_rows(40, "two")).await;

    let hooked = FaultStore::over(&prefix);
    hooked
        .at(Op::Get, containing("/manifests/"))
        .run(another_publisher_moves_current(&prefix, &run1.manifest_ref, "run1"));
    let admin = admin_through(&prefix, hooked.clone());
    let before = list_keys(&prefix).await;
    assert_eq!(before.iter().filter(|k| k.contains("attempt=01")).count(), 2 * 4 * 2);
    let e = admin.cleanup(&keep_last(1)).await.expect_err("_CURRENT moved");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains(&format!("{prefix}/_CURRENT")), "{e}");
    assert_eq!(list_keys(&prefix).await, before, "nothing was deleted");
    let now = current(&prefix).await;
    assert_eq!(now.run_id.as_str(), "run1");

    // Run again: it keeps what _CURRENT names now (run1) and the newest
    // manifest (run2), so only the losing attempts go.
    let done = admin.cleanup(&keep_last(1)).await.expect("cleanup again");
    assert_eq!(done.current_run_id.as_str(), "run1");
    assert_eq!(
        done.of(RemovalReason::StaleAttempt).count(),
        2 * 4,
        "{:?}",
        done.removals
    );
    assert_eq!(done.removals.len(), 2 * 4, "{:?}", done.removals);
    let after = list_keys(&prefix).await;
    assert!(!after.iter().any(|k| k.contains("attempt=01")), "{after:?}");
    let cache = tempfile::tempdir().expect("cache");
    read_all(&prefix, Pin::Current, "one", cache.path()).await;
    read_all(&prefix, Pin::Offset(0), "two", cache.path()).await;
}

/// A time far before any test runs: 2001-01-01.
fn long_ago() -> Timestamp {
    Timestamp::from_micros(978_307_200_000_000).expect("a valid time")
}

/// `older_than`: manifests published before the cutoff go with their
/// runs' data, and runs that never published go only if their record was
/// last updated before the cutoff; everything newer stays and reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_older_than_deletes_what_was_published_before_the_cutoff() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let s = manifest_store(&prefix);
    // `ancient`: a manifest published in 2001, with its shards.
    let mut spec = SnapshotSpec::hash("ancient", 2, KeyEncoding::U64Be);
    spec.publish = false;
    spec.run_record = false;
    let ancient = build_snapshot(&prefix, &spec, &int_rows(40, "ancient")).await;
    let now_key = layout::locate(s.prefix_url(), None, &ancient.manifest_ref).expect("key");
    sf_manifest::publish::gc::delete_prefix(&s, now_key.trim_end_matches("/manifest"))
        .await
        .expect("drop today's copy");
    let ancient_ref = s
        .put_manifest_at(&ancient.manifest, long_ago())
        .await
        .expect("manifest of 2001")
        .manifest_ref;
    // `recent`: published now, _CURRENT.
    let recent = build_snapshot(
        &prefix,
        &SnapshotSpec::hash("recent", 2, KeyEncoding::U64Be),
        &int_rows(40, "recent"),
    )
    .await;
    // Two failed runs that never published: one long ago, one just now.
    let mut old_failure = RunRecord::start(
        RunId::new("failed-long-ago").expect("run"),
        &prefix,
        Duration::from_secs(60),
    );
    old_failure.fail("Boom", "it broke");
    old_failure.started_at = long_ago();
    old_failure.updated_at = long_ago();
    old_failure.lease_expires_at = long_ago();
    unpublished_run(&prefix, "failed-long-ago", Some(old_failure)).await;
    let mut new_failure = RunRecord::start(RunId::new("failed-now").expect("run"), &prefix, Duration::from_secs(60));
    new_failure.fail("Boom", "it broke");
    unpublished_run(&prefix, "failed-now", Some(new_failure)).await;

    let admin = Admin::builder(format!("{prefix}/_CURRENT")).build().expect("admin");
    let done = admin
        .cleanup(&CleanupOptions {
            older_than: Some(Duration::from_secs(24 * 3600)),
            ..CleanupOptions::default()
        })
        .await
        .expect("cleanup older than a day");
    let runs = |reason| done.of(reason).map(|r| r.run_id.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        runs(RemovalReason::OldManifest),
        BTreeSet::from(["ancient".to_string()])
    );
    assert_eq!(runs(RemovalReason::OldRun), BTreeSet::from(["ancient".to_string()]));
    assert_eq!(done.of(RemovalReason::OldRun).count(), 2, "both shards of ancient");
    assert_eq!(
        runs(RemovalReason::AbandonedRun),
        BTreeSet::from(["failed-long-ago".to_string()])
    );
    assert!(done.objects_deleted > 0);

    let left = list_keys(&prefix).await;
    assert!(!left.iter().any(|k| k.contains("run_id=ancient")), "{left:?}");
    assert!(!left.iter().any(|k| k.contains("run_id=failed-long-ago")), "{left:?}");
    assert!(
        left.iter().any(|k| k.contains("shards/run_id=failed-now/")),
        "too recent to go"
    );
    assert!(left.iter().any(|k| k.contains("shards/run_id=recent/")));
    let history: Vec<String> = s
        .history()
        .await
        .expect("history")
        .iter()
        .map(|h| h.manifest_ref.clone())
        .collect();
    assert_eq!(history, vec![recent.manifest_ref.clone()]);
    assert!(!history.contains(&ancient_ref));
    let cache = tempfile::tempdir().expect("cache");
    read_all(&prefix, Pin::Current, "recent", cache.path()).await;
}

/// `include_abandoned` on its own: shard data and records of runs that
/// never published and are over (failed, or running with an expired
/// lease) go; a run with a live lease and a run with no record stay, and
/// no manifest or published run is touched. Without it, nothing goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_abandoned_alone_deletes_failed_and_expired_runs_and_keeps_live_and_unknown_ones() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let mut spec = SnapshotSpec::hash("run1", 2, KeyEncoding::U64Be);
    spec.losing_attempts = false;
    build_snapshot(&prefix, &spec, &int_rows(40, "one")).await;
    spec.run_id = "run2".into();
    build_snapshot(&prefix, &spec, &int_rows(40, "two")).await;

    let mut failed = RunRecord::start(RunId::new("failed").expect("run"), &prefix, Duration::from_secs(60));
    failed.fail("Boom", "it broke");
    unpublished_run(&prefix, "failed", Some(failed)).await;
    let mut expired = RunRecord::start(RunId::new("expired").expect("run"), &prefix, Duration::from_secs(60));
    expired.lease_expires_at =
        Timestamp::from_micros(Timestamp::now().as_micros() - 3_600_000_000).expect("an hour ago");
    assert_eq!(expired.status, RunStatus::Running);
    unpublished_run(&prefix, "expired", Some(expired)).await;
    let live = RunRecord::start(RunId::new("live").expect("run"), &prefix, Duration::from_secs(3600));
    unpublished_run(&prefix, "live", Some(live)).await;
    unpublished_run(&prefix, "unknown", None).await;

    let admin = Admin::builder(format!("{prefix}/_CURRENT")).build().expect("admin");
    let before = list_keys(&prefix).await;
    let plain = admin.cleanup(&CleanupOptions::default()).await.expect("plain cleanup");
    assert!(plain.removals.is_empty(), "{:?}", plain.removals);
    assert_eq!(
        list_keys(&prefix).await,
        before,
        "without include_abandoned nothing goes"
    );

    let done = admin
        .cleanup(&CleanupOptions {
            include_abandoned: true,
            ..CleanupOptions::default()
        })
        .await
        .expect("cleanup abandoned");
    let runs = |reason| done.of(reason).map(|r| r.run_id.to_string()).collect::<BTreeSet<_>>();
    let gone = BTreeSet::from(["expired".to_string(), "failed".to_string()]);
    assert_eq!(runs(RemovalReason::AbandonedRun), gone);
    assert_eq!(done.of(RemovalReason::AbandonedRun).count(), 2 * 2, "two shards each");
    assert_eq!(runs(RemovalReason::RunRecord), gone);
    assert_eq!(
        done.removals.len(),
        2 * 2 + 2,
        "no manifest, old run or attempt: {:?}",
        done.removals
    );
    assert_eq!(done.unknown_runs, vec![RunId::new("unknown").expect("run")]);

    let left = list_keys(&prefix).await;
    for run in ["failed", "expired"] {
        assert!(
            !left
                .iter()
                .any(|k| k.contains(&format!("run_id={run}/")) || k.contains(&format!("run_id={run}_"))),
            "{run}: {left:?}"
        );
    }
    for run in ["live", "unknown", "run1", "run2"] {
        assert!(
            left.iter().any(|k| k.contains(&format!("shards/run_id={run}/"))),
            "{run} stays"
        );
    }
    assert!(
        left.iter()
            .any(|k| k.starts_with("runs/") && k.contains("run_id=live_")),
        "{left:?}"
    );
    let history = history_runs(&prefix).await;
    assert_eq!(history, vec!["run2", "run1"]);
}
