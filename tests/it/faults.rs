//! Builds against object-store faults of every class the world produces
//! (a dropped connection, a timeout, a 5xx answer, a missing object, a
//! lost precondition, a refused permission), injected by
//! [`FaultStore`] at chosen calls, on the in-memory store and on S3; and
//! the concurrent publish made exact by a hook that moves `_CURRENT` the
//! moment the build claims its first attempt.
//!
//! Each test checks what the docs promise: which faults are retried,
//! the error's class (from which the exit code follows), that nothing
//! becomes visible, and what remains on storage.

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use object_store::path::Path as ObjPath;
use sf_manifest::{Classified, ErrorKind, ManifestStore, RunStatus, StorageOptions};
use sf_tests::fault_store::{Fault, FaultStore, Op, Registered, ending};
use sf_tests::scenario::{attempt_folders, referenced_folders};
use sf_tests::writer_support::{build_embedded, parse_job, read_snapshot, write_parquet};
use sf_tests::{history_runs, manifest_store, s3_prefix};
use sf_writer::job::{BuildOptions, BuildSummary, Embedded, Outcome, build};

const ROWS: i64 = 90;
const NUM_DBS: u32 = 3;

/// A fault store over a fresh prefix of `backend` ("memory" or "s3"), and
/// a job folder whose builds write the test's users there.
struct Site {
    store: Arc<FaultStore>,
    prefix: String,
    dir: tempfile::TempDir,
    _registered: Registered,
}

async fn site(backend: &str, name: &str) -> Site {
    let (inner, path): (Arc<dyn object_store::ObjectStore>, String) = match backend {
        "memory" => (Arc::new(object_store::memory::InMemory::new()), "snap".to_string()),
        "s3" => {
            let loc = sf_manifest::resolve(&s3_prefix(name), &StorageOptions::new()).expect("S3 prefix");
            (loc.store, loc.path.to_string())
        }
        other => panic!("no backend {other}"),
    };
    let store = FaultStore::new(inner);
    let registered = store.register();
    Site {
        prefix: format!("{}/{path}", registered.base()),
        store,
        dir: tempfile::tempdir().expect("job folder"),
        _registered: registered,
    }
}

impl Site {
    /// The test job of run `run_id` built on the embedded engine with the
    /// default options.
    async fn build(&self, run_id: &str) -> sf_writer::Result<Outcome> {
        build(
            &job(self.dir.path(), &self.prefix, run_id),
            &Embedded::default(),
            &BuildOptions::default(),
        )
        .await
    }

    /// [`Site::build`], which must build and publish.
    async fn publish(&self, run_id: &str) -> BuildSummary {
        build_embedded(&job(self.dir.path(), &self.prefix, run_id)).await
    }
}

fn users() -> RecordBatch {
    let ids: Vec<i64> = (0..ROWS).collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("user-{i}")))) as ArrayRef,
        ),
    ])
    .expect("users")
}

/// A job writing `ROWS` users into `prefix` as run `run_id`: 3 shards,
/// 2 retries per shard with a 1 ms backoff.
fn job(dir: &std::path::Path, prefix: &str, run_id: &str) -> sf_writer::config::JobConfig {
    write_parquet(&dir.join("users.parquet"), &[users()]);
    let text = format!(
        "key_col = \"id\"\n[input]\nformat = \"parquet\"\npath = \"users.parquet\"\n[value]\njson_cols = [\"name\"]\n\
         [routing]\nnum_dbs = {NUM_DBS}\n[write]\nshard_retries = 2\nretry_backoff_ms = 1\n\
         [output]\nprefix = \"{prefix}\"\nrun_id = \"{run_id}\"\n"
    );
    parse_job(dir, &text)
}

async fn run_status(prefix: &str, run_id: &str) -> Vec<RunStatus> {
    let store = manifest_store(prefix);
    store
        .list_run_records()
        .await
        .expect("run records")
        .into_iter()
        .filter(|(_, r)| r.run_id.as_str() == run_id)
        .map(|(_, r)| r.status)
        .collect()
}

async fn current_version(prefix: &str) -> Option<String> {
    let store = manifest_store(prefix);
    store
        .load_current()
        .await
        .expect("load _CURRENT")
        .map(|c| format!("{:?}", c.version))
}

/// A failed build left nothing visible and nothing of its own: no
/// `_CURRENT` change, no manifest of the run, no attempt folders beyond
/// what the manifests reference, and its run record says `failed`.
async fn nothing_left(prefix: &str, run_id: &str, current_before: Option<String>) {
    assert_eq!(current_version(prefix).await, current_before, "_CURRENT untouched");
    let runs = history_runs(prefix).await;
    assert!(!runs.iter().any(|r| r == run_id), "no manifest of {run_id}: {runs:?}");
    assert_eq!(
        attempt_folders(prefix).await,
        referenced_folders(prefix).await,
        "the failed build swept its shard data"
    );
    assert_eq!(run_status(prefix, run_id).await, vec![RunStatus::Failed]);
}

#[test]
fn every_fault_class_is_classified_as_the_docs_say() {
    let path = ObjPath::from("snap/_CURRENT");
    for fault in Fault::ALL {
        let e = fault.error(Op::Put, &path);
        assert_eq!(sf_manifest::store_error_kind(&e), fault.kind(), "{fault:?}: {e}");
        let w = sf_writer::Error::storage("writing", fault.error(Op::Put, &path));
        assert_eq!(w.kind(), fault.kind(), "{fault:?} through the writer");
        assert_eq!(
            w.is_retryable(),
            fault.kind() == ErrorKind::Unavailable,
            "{fault:?}: only unavailable storage is retried"
        );
        assert!(w.to_string().contains("snap/_CURRENT"), "names the object: {w}");
    }
}

async fn transient_faults_are_retried(backend: &str) {
    for fault in [Fault::Generic, Fault::Timeout, Fault::ServerError] {
        let site = site(backend, &format!("faults-transient-{fault:?}")).await;
        site.store.at(Op::Put, ending("shard.db")).fail(fault);
        let s = site.publish("r1").await;
        assert_eq!(site.store.fired(), 1, "{fault:?}");
        assert_eq!(s.retries, 1, "{backend} {fault:?}: the failed upload was retried");
        assert_eq!(s.rows, ROWS as u64);
        let snap = read_snapshot(&site.prefix).await;
        assert_eq!(snap.rows().len(), ROWS as usize, "{backend} {fault:?}");
        assert_eq!(
            attempt_folders(&site.prefix).await,
            referenced_folders(&site.prefix).await,
            "{backend} {fault:?}: the failed attempt was deleted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_into_new_attempts() {
    transient_faults_are_retried("memory").await;
    transient_faults_are_retried("s3").await;
}

/// Every shard upload of a build fails with `fault`: the build fails and
/// leaves nothing behind. Returns its error and how many uploads it tried.
async fn every_upload_fails(backend: &str, name: &str, fault: Fault) -> (sf_writer::Error, usize) {
    let site = site(backend, name).await;
    site.store.at(Op::Put, ending("shard.db")).every().fail(fault);
    let e = site.build("r1").await.expect_err("every upload fails");
    let puts = site.store.calls(Op::Put, &ending("shard.db"));
    nothing_left(&site.prefix, "r1", None).await;
    (e, puts)
}

async fn retries_run_out(backend: &str) {
    let (e, puts) = every_upload_fails(backend, "faults-exhausted", Fault::ServerError).await;
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{backend}: exit 5: {e}");
    assert!(e.to_string().contains("503"), "{backend}: the cause is named: {e}");
    assert!(
        (3..=NUM_DBS as usize * 3).contains(&puts),
        "{backend}: 1 try and 2 retries per shard at most, and a shard used them all: {puts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_running_out_fail_the_build_as_unavailable() {
    retries_run_out("memory").await;
    retries_run_out("s3").await;
}

async fn permission_refused(backend: &str) {
    let (e, puts) = every_upload_fails(backend, "faults-denied", Fault::PermissionDenied).await;
    assert_eq!(e.kind(), ErrorKind::Config, "{backend}: exit 2: {e}");
    assert!(e.to_string().contains("shard.db"), "{backend}: names the object: {e}");
    assert!(
        puts <= NUM_DBS as usize,
        "{backend}: a refused permission is not retried ({puts} uploads for {NUM_DBS} shards)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_permission_is_not_retried_and_is_a_configuration_error() {
    permission_refused("memory").await;
    permission_refused("s3").await;
}

async fn lost_swap(backend: &str) {
    let site = site(backend, "faults-swap").await;
    site.publish("r1").await;
    let before = current_version(&site.prefix).await;
    assert!(before.is_some());

    site.store.at(Op::Put, ending("_CURRENT")).fail(Fault::Precondition);
    let e = site.build("r2").await.expect_err("the swap loses");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{backend}: exit 4: {e}");
    assert_eq!(
        current_version(&site.prefix).await,
        before,
        "{backend}: _CURRENT untouched"
    );
    // Whatever the history holds still reads: every folder it references
    // is there.
    let present = attempt_folders(&site.prefix).await;
    let referenced = referenced_folders(&site.prefix).await;
    assert!(!referenced.is_empty(), "{backend}: the history references shards");
    assert!(
        referenced.is_subset(&present),
        "{backend}: referenced {referenced:?}, present {present:?}"
    );
    assert_eq!(read_snapshot(&site.prefix).await.rows().len(), ROWS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_compare_and_swap_is_a_conflict_and_current_stays() {
    lost_swap("memory").await;
    lost_swap("s3").await;
}

async fn lost_manifest_answer(backend: &str) {
    let site = site(backend, "faults-lost-manifest").await;
    site.publish("r1").await;
    let before = current_version(&site.prefix).await;

    // The second build's manifest lands, but its answer is lost.
    site.store
        .at(
            Op::Put,
            ending(&format!("/{}", sf_manifest::format::layout::MANIFEST_FILE)),
        )
        .fail_after(Fault::Timeout);
    let e = site
        .build("r2")
        .await
        .expect_err("the manifest write reports a failure");
    assert_eq!(site.store.fired(), 1, "{backend}: the fault fired");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{backend}: {e}");
    assert_eq!(
        current_version(&site.prefix).await,
        before,
        "{backend}: _CURRENT untouched"
    );
    let runs = history_runs(&site.prefix).await;
    assert!(
        runs.iter().any(|r| r == "r2"),
        "{backend}: the manifest is in the history: {runs:?}"
    );
    // The failure sweep kept every shard that manifest references.
    let present = attempt_folders(&site.prefix).await;
    let referenced = referenced_folders(&site.prefix).await;
    assert!(
        referenced.is_subset(&present),
        "{backend}: referenced {referenced:?}, present {present:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_whose_answer_was_lost_keeps_its_shards() {
    lost_manifest_answer("memory").await;
    lost_manifest_answer("s3").await;
}

async fn concurrent_publish(backend: &str) {
    let site = site(backend, "faults-concurrent").await;
    site.publish("r1").await;
    let kept = attempt_folders(&site.prefix).await;

    // The other publisher points `_CURRENT` at the same manifest again (a
    // new version) the moment the second build claims its first attempt.
    let moved: Arc<Mutex<Option<String>>> = Arc::default();
    let (prefix, seen) = (site.prefix.clone(), Arc::clone(&moved));
    site.store
        .at(Op::Put, ending(sf_manifest::format::layout::CLAIM_FILE))
        .run(move |_| {
            let (prefix, seen) = (prefix.clone(), Arc::clone(&seen));
            async move {
                let store = manifest_store(&prefix);
                let now = store.load_current().await.expect("load").expect("current");
                let p = sf_manifest::CurrentPointer::new(now.pointer.manifest_ref.clone(), now.pointer.run_id.clone());
                let v = store
                    .swap_current(&p, Some(&now.version))
                    .await
                    .expect("the other publisher wins");
                *seen.lock().expect("moved") = Some(format!("{v:?}"));
            }
        });
    let e = site.build("r2").await.expect_err("conflict");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{backend}: exit 4: {e}");
    let other = moved.lock().expect("moved").clone();
    assert!(other.is_some(), "{backend}: the hook ran");
    assert_eq!(
        current_version(&site.prefix).await,
        other,
        "{backend}: the other publisher's _CURRENT stands"
    );
    nothing_left(&site.prefix, "r2", other).await;
    assert_eq!(
        attempt_folders(&site.prefix).await,
        kept,
        "{backend}: run r1's shards stay"
    );
    assert_eq!(read_snapshot(&site.prefix).await.rows().len(), ROWS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_publish_wins_and_the_loser_sweeps_its_data() {
    concurrent_publish("memory").await;
    concurrent_publish("s3").await;
}

async fn corrupted_after_upload(backend: &str) {
    let site = site(backend, "faults-corrupt").await;
    // Between a shard's upload and its re-read, the object is overwritten
    // with other bytes of the same length (damage in transit or at rest).
    let inner = site.store.inner();
    site.store.at(Op::Get, ending("shard.db")).run(move |path| {
        let inner = Arc::clone(&inner);
        async move {
            let bytes = inner.get(&path).await.expect("uploaded").bytes().await.expect("bytes");
            let mut damaged = bytes.to_vec();
            let at = damaged.len() / 2;
            damaged[at] ^= 0xff;
            inner.put(&path, damaged.into()).await.expect("overwrite");
        }
    });
    let e = site.build("r1").await.expect_err("the re-read catches the damage");
    assert_eq!(site.store.fired(), 1, "{backend}: the hook ran");
    assert_eq!(e.kind(), ErrorKind::Data, "{backend}: exit 3: {e}");
    let text = e.to_string();
    assert!(
        text.contains("shard") && text.contains("verification"),
        "{backend}: names the shard: {text}"
    );
    nothing_left(&site.prefix, "r1", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_damaged_after_upload_is_caught_before_publishing() {
    corrupted_after_upload("memory").await;
    corrupted_after_upload("s3").await;
}

/// The guard of every shard task: a row that reaches the wrong partition
/// (a broken repartition) fails the task before anything is claimed or
/// written, naming the partition, the row's shard and the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_in_the_wrong_partition_fails_its_shard_task() {
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::ExecutionPlan;
    use futures::TryStreamExt;

    let dir = tempfile::tempdir().expect("tmp");
    let prefix = format!("file://{}/out", dir.path().display());
    let j = job(dir.path(), &prefix, "r1");
    let prepared = sf_writer::job::prepare(&j, &Embedded::default())
        .await
        .expect("prepare");
    let spec = Arc::new(prepared.spec.clone());

    // Partition 1 holds a row of shard 0 after two of its own.
    let batch = |ids: &[i64], shards: &[u32]| {
        RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef),
            (
                "name",
                Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("user-{i}")))) as ArrayRef,
            ),
            (
                spec.shard_id_col.as_str(),
                Arc::new(arrow::array::UInt32Array::from(shards.to_vec())) as ArrayRef,
            ),
        ])
        .expect("batch")
    };
    let partitions = vec![vec![batch(&[1], &[0])], vec![batch(&[2, 3, 4], &[1, 1, 0])], vec![]];
    let schema = partitions[0][0].schema();
    let input = MemorySourceConfig::try_new_exec(&partitions, schema, None).expect("memory input");
    let write = sf_writer::build::shard_task::ShardWriteExec::new(Arc::clone(&spec), input);
    let stream = write.execute(1, prepared.ctx.task_ctx()).expect("the task starts");
    let e = stream
        .try_collect::<Vec<_>>()
        .await
        .expect_err("the guard fails the task");
    let text = e.to_string();
    assert!(
        text.contains("partition 1 received a row of shard 0 (row 2 of a batch)")
            && text.contains("partitioning is broken"),
        "{text}"
    );
    assert!(
        attempt_folders(&prefix).await.is_empty(),
        "nothing claimed or written for the shard"
    );
}
