//! `sf-write` on a real Ballista cluster: one `sf-scheduler` and
//! `sf-executor`s as separate processes on 127.0.0.1, started and stopped
//! by `deploy/local/`, writing SQLite shards to the S3 test server.
//!
//! Every cluster snapshot is compared with the embedded run of the same
//! job: rows per shard, values, checksums.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use sf_manifest::DbId;
use sf_tests::cluster::{ClusterOptions, LocalCluster, claims, free_port, run_bounded, upload, wait_bounded};
use sf_tests::fault_proxy::{Fault, FaultProxy, Rule};
use sf_tests::s3_prefix;
use sf_tests::writer_support::{Snapshot, binary, build_embedded, list_keys, parse_job, read_snapshot, write_parquet};
use sf_writer::job::Embedded;

const NUM_DBS: u32 = 8;

/// `n` rows: id, name, and a 40-byte payload.
fn users(n: i64) -> RecordBatch {
    let ids: Vec<i64> = (0..n).collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("user-{i}")))) as ArrayRef,
        ),
        (
            "payload",
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("{i:0>40}")))) as ArrayRef,
        ),
    ])
    .expect("users batch")
}

/// Writes `n` users as Parquet and uploads them next to the test's prefix.
async fn s3_input(test: &str, n: i64, dir: &Path) -> String {
    let local = dir.join("users.parquet");
    write_parquet(&local, &[users(n)]);
    let url = format!("{}/input/users.parquet", s3_prefix(test));
    upload(&local, &url).await;
    url
}

fn job_text(input: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"key_col = "id"
[input]
format = "parquet"
path = "{input}"
[value]
json_cols = ["name", "payload"]
[routing]
strategy = "hash"
num_dbs = {NUM_DBS}
[output]
prefix = "{prefix}"
backend = "sqlite"
{extra}"#
    )
}

/// The same job, embedded, in this process: the reference.
async fn embedded_run(text: &str, dir: &Path) -> Snapshot {
    let job = parse_job(dir, text);
    build_embedded(&job).await;
    read_snapshot(&job.output.prefix).await
}

fn write_job(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(&path, text).expect("write job file");
    path
}

/// Same shards, same rows and values in each, same checksums and sizes.
fn assert_same_content(cluster: &Snapshot, embedded: &Snapshot) {
    assert_eq!(
        cluster.shards.keys().collect::<Vec<_>>(),
        embedded.shards.keys().collect::<Vec<_>>(),
        "the same shards hold rows"
    );
    for (db, rows) in &embedded.shards {
        assert_eq!(cluster.shards[db].len(), rows.len(), "rows in shard {db}");
        assert!(cluster.shards[db] == *rows, "keys and values of shard {db}");
    }
    let by_db = |s: &Snapshot| -> BTreeMap<DbId, (u64, u64, Option<String>, Option<String>)> {
        s.manifest
            .shards
            .iter()
            .map(|r| {
                (
                    r.db_id,
                    (
                        r.row_count,
                        r.db_bytes,
                        r.writer_info.checksum().map(str::to_string),
                        r.checkpoint_id.clone(),
                    ),
                )
            })
            .collect()
    };
    let (c, e) = (by_db(cluster), by_db(embedded));
    assert!(e.values().all(|v| v.2.is_some()), "the embedded run records checksums");
    assert_eq!(c, e, "row counts, sizes, checksums and checkpoint ids per shard");
    assert_eq!(cluster.manifest.build.sharding, embedded.manifest.build.sharding);
    assert_eq!(cluster.manifest.build.num_dbs, NUM_DBS);
}

/// Attempt folders under the run's shards, as `db=NNNNN/attempt=NN`.
async fn attempt_folders(prefix: &str, run_id: &str) -> BTreeSet<String> {
    let base = format!("shards/run_id={run_id}/");
    list_keys(prefix)
        .await
        .iter()
        .filter_map(|k| k.strip_prefix(&base))
        .filter_map(|k| {
            let mut parts = k.split('/');
            Some(format!("{}/{}", parts.next()?, parts.next()?))
        })
        .collect()
}

/// The winners' attempt folders, as `db=NNNNN/attempt=NN`.
fn winner_folders(snap: &Snapshot) -> BTreeSet<String> {
    snap.manifest
        .shards
        .iter()
        .map(|r| format!("db={:05}/attempt={:02}", r.db_id.0, r.attempt.0))
        .collect()
}

fn summary(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("--json summary: {e}: {text}"))
}

/// Runs `sf-write --config job --cluster URL --json` as a child process,
/// its output in files under `dir`.
fn spawn_sf_write(job: &Path, cluster: &LocalCluster, dir: &Path) -> (Child, PathBuf, PathBuf) {
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let child = Command::new(binary("sf-write"))
        .arg("--config")
        .arg(job)
        .args(["--cluster", cluster.url(), "--json", "--progress", "off"])
        .stdout(std::fs::File::create(&stdout).expect("stdout"))
        .stderr(std::fs::File::create(&stderr).expect("stderr"))
        .spawn()
        .expect("start sf-write");
    (child, stdout, stderr)
}

/// Waits (at most `bound`) until `event` holds while `child` runs; panics,
/// naming `what` and the child's stderr, if it ends first or the bound
/// passes.
fn wait_while_running(child: &mut Child, stderr: &Path, bound: Duration, what: &str, mut event: impl FnMut() -> bool) {
    let started = Instant::now();
    while !event() {
        if let Some(status) = child.try_wait().expect("poll sf-write") {
            panic!(
                "sf-write finished ({status}) before {what}: {}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        assert!(started.elapsed() < bound, "no {what} within {bound:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A build on two executors stores what the embedded build stores, and
/// both executors write shards. That needs a schedule, which the test
/// makes certain: each executor has one task slot, and the executors
/// reach S3 through a proxy that holds shard claims until two of them
/// (two shards) are held together, which only two tasks running at once,
/// one per executor, can make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_on_two_executors_matches_the_embedded_build() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = s3_input("cluster-same", 20_000, dir.path()).await;
    let reference = embedded_run(&job_text(&input, &s3_prefix("cluster-same-embedded"), ""), dir.path()).await;

    let proxy = FaultProxy::for_s3();
    proxy.add(Rule::new("PUT", "/_claim.json").times(2).fault(Fault::Gather(2)));
    let cluster = LocalCluster::start(&ClusterOptions {
        concurrent_tasks: 1,
        env: vec![("AWS_ENDPOINT".into(), proxy.url().into())],
        ..ClusterOptions::default()
    });
    let prefix = s3_prefix("cluster-same");
    let job = write_job(dir.path(), &job_text(&input, &prefix, ""));
    let (mut child, stdout, stderr) = spawn_sf_write(&job, &cluster, dir.path());
    wait_while_running(
        &mut child,
        &stderr,
        Duration::from_secs(240),
        "two shard claims held together",
        || proxy.gathered(),
    );
    let status = wait_bounded(&mut child, Duration::from_secs(300), "sf-write on the cluster");
    assert!(
        status.success(),
        "{}\n{}",
        std::fs::read_to_string(&stderr).unwrap_or_default(),
        cluster.log_tails()
    );
    let s = summary(&std::fs::read(&stdout).expect("stdout"));
    assert_eq!(s["rows"], 20_000);
    assert_eq!(s["num_dbs"], NUM_DBS);

    let snap = read_snapshot(&prefix).await;
    assert_same_content(&snap, &reference);

    // Tasks ran on both executors: the winners' claim markers name the
    // process that wrote each shard, the two claims held together first.
    let winners = winner_folders(&snap);
    let claimed = claims(&prefix).await;
    let executors: BTreeSet<u32> = cluster.executor_pids().iter().copied().collect();
    let gathered: BTreeSet<u32> = proxy
        .gathering()
        .iter()
        .map(|path| {
            // The proxy sees the request's path, `=` escaped.
            let path = path.replace("%3D", "=");
            claimed
                .iter()
                .find(|c| path.ends_with(&format!("/{}/_claim.json", c.attempt_key)))
                .unwrap_or_else(|| panic!("the held claim {path} is a winner's claim: {claimed:?}"))
                .pid
        })
        .collect();
    assert_eq!(
        gathered, executors,
        "the two claims held together were one per executor"
    );
    let writers: BTreeSet<u32> = claimed
        .iter()
        .filter(|c| winners.iter().any(|w| c.attempt_key.ends_with(w.as_str())))
        .map(|c| c.pid)
        .collect();
    assert_eq!(
        writers, executors,
        "every executor wrote shards, and only executors did"
    );

    // Ballista's task identities reached the manifest: one write stage,
    // a distinct task per shard.
    let stages: BTreeSet<Option<i64>> = snap.manifest.shards.iter().map(|r| r.writer_info.stage_id).collect();
    assert_eq!(stages.len(), 1, "{stages:?}");
    assert!(stages.iter().all(Option::is_some), "stage ids recorded");
    let tasks: BTreeSet<i64> = snap
        .manifest
        .shards
        .iter()
        .map(|r| r.writer_info.task_attempt_id.expect("task attempt id"))
        .collect();
    assert_eq!(tasks.len(), snap.manifest.shards.len(), "one task per shard");

    let run_id = snap.manifest.build.run_id.as_str().to_string();
    assert_eq!(attempt_folders(&prefix, &run_id).await, winners, "no other attempt");
}

/// An executor killed while it writes shards: the build still publishes
/// the whole snapshot, the survivor rewriting what the victim had. The
/// victim is made to stop for good right after uploading a shard (fail
/// point `upload`, in its environment only) and is killed once it says
/// so: it has claimed and written attempts whose results never reached
/// the scheduler, so those shards are unwritten for the build, whatever
/// the schedule otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_executor_mid_write_still_publishes_the_whole_snapshot() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows = 16_000;
    let input = s3_input("cluster-kill", rows, dir.path()).await;
    let reference = embedded_run(&job_text(&input, &s3_prefix("cluster-kill-embedded"), ""), dir.path()).await;

    // A lost executor is noticed after 20 s without heartbeats (beats every
    // 1 s): twenty missed beats, headroom enough for the survivor on a
    // loaded 2-core machine, where a 6 s timeout dropped it too.
    let mut cluster = LocalCluster::start(&ClusterOptions {
        executors: 1,
        scheduler_args: vec!["--executor-timeout-secs=20".into(), "--expire-check-secs=1".into()],
        executor_args: vec!["--heartbeat-interval-secs=1".into()],
        ..ClusterOptions::default()
    });
    let survivor = cluster.executor_pids()[0];
    let victim = cluster.start_executor(
        2,
        &["--heartbeat-interval-secs=1"],
        &[(sf_manifest::publish::failpoint::ENV, "upload=pause")],
    );
    let prefix = s3_prefix("cluster-kill");
    // The scheduler and a session setting come from the job file this time.
    let cluster_section = format!(
        "[cluster]\nscheduler = \"{}\"\n[cluster.session]\n\"ballista.job.name\" = \"fault test\"\n",
        cluster.url()
    );
    let job = write_job(dir.path(), &job_text(&input, &prefix, &cluster_section));
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(binary("sf-write"))
        .arg("--config")
        .arg(&job)
        .args(["--json", "--progress", "log"])
        .stdout(std::fs::File::create(&stdout).expect("stdout"))
        .stderr(std::fs::File::create(&stderr).expect("stderr"))
        .spawn()
        .expect("start sf-write");

    // The victim stops after its first upload and says so in its log.
    let victim_log = cluster.executor_log(1);
    wait_while_running(
        &mut child,
        &stderr,
        Duration::from_secs(240),
        "the second executor stopped after an upload",
        || {
            std::fs::read_to_string(&victim_log)
                .unwrap_or_default()
                .contains("sf-failpoint: paused at upload")
        },
    );
    let seen_before_kill = claims(&prefix).await;
    cluster.kill_executor(1);

    let status = wait_bounded(&mut child, Duration::from_secs(300), "sf-write after the kill");
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(status.success(), "the build survives a lost executor: {err}");
    let s = summary(&std::fs::read(&stdout).expect("stdout"));

    let snap = read_snapshot(&prefix).await;
    assert_same_content(&snap, &reference);

    // The victim's attempts were written, lost with its results, re-run in
    // new attempts on the survivor and deleted as losers.
    let victim_attempts: BTreeSet<String> = seen_before_kill
        .iter()
        .filter(|c| c.pid == victim)
        .map(|c| c.attempt_key.clone())
        .collect();
    assert!(!victim_attempts.is_empty(), "{seen_before_kill:?}");
    let survivors: BTreeSet<u32> = claims(&prefix).await.iter().map(|c| c.pid).collect();
    assert_eq!(
        survivors,
        BTreeSet::from([survivor]),
        "every remaining attempt, the winners, was written by the surviving executor"
    );
    assert!(
        s["losers_deleted"].as_u64().expect("losers_deleted") >= victim_attempts.len() as u64,
        "{s}"
    );
    assert!(
        snap.manifest.shards.iter().any(|r| r.attempt.0 >= 1),
        "a re-run shard was written into a new attempt"
    );
    let run_id = snap.manifest.build.run_id.as_str().to_string();
    assert_eq!(
        attempt_folders(&prefix, &run_id).await,
        winner_folders(&snap),
        "no losing attempt is left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_every_executor_fails_the_build_within_a_bound() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = s3_input("cluster-lost", 16_000, dir.path()).await;
    let slow = "[write]\nbatch_size = 250\nmax_writes_per_second = 800\n";
    // Executors are dropped after 10 s without a heartbeat; with none left
    // for 5 s, the scheduler fails the job.
    let mut cluster = LocalCluster::start(&ClusterOptions {
        scheduler_args: vec![
            "--executor-timeout-secs=10".into(),
            "--expire-check-secs=1".into(),
            "--lost-cluster-grace-secs=5".into(),
        ],
        executor_args: vec!["--heartbeat-interval-secs=1".into()],
        ..ClusterOptions::default()
    });
    let prefix = s3_prefix("cluster-lost");
    let job = write_job(
        dir.path(),
        &job_text(
            &input,
            &prefix,
            &format!("{slow}[cluster]\nscheduler = \"{}\"\n", cluster.url()),
        ),
    );
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(binary("sf-write"))
        .arg("--config")
        .arg(&job)
        .args(["--json", "--progress", "off"])
        .stdout(std::fs::File::create(&stdout).expect("stdout"))
        .stderr(std::fs::File::create(&stderr).expect("stderr"))
        .spawn()
        .expect("start sf-write");

    // Once shards are being written, every executor dies.
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll sf-write") {
            panic!(
                "sf-write finished ({status}) before the executors could be killed: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        if !claims(&prefix).await.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no shard attempt was claimed within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.kill_executor(0);
    cluster.kill_executor(1);

    // 10 s to notice, 5 s of grace, the driver's next poll: well inside
    // the bound, where a stock scheduler would wait for ever.
    let status = wait_bounded(&mut child, Duration::from_secs(180), "sf-write with no executor left");
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(5),
        "storage/cluster unavailable: {err}\n{}",
        cluster.log_tails()
    );
    assert!(
        err.contains("cluster unavailable") && err.contains(sf_executor::client::CLUSTER_LOST),
        "the error names the cause: {err}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stdout).expect("stdout")).expect("a JSON report on failure");
    assert_eq!(report["exit_code"], 5, "{report}");

    // Nothing became visible.
    let keys = list_keys(&prefix).await;
    assert!(
        !keys.iter().any(|k| k == "_CURRENT" || k.starts_with("manifests/")),
        "nothing published: {keys:?}"
    );
}

/// The scheduler dies while the build runs: `sf-write` loses the job's
/// status stream and exits 5 (the cluster unavailable, worth retrying),
/// naming the scheduler, within a bound, publishing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_scheduler_fails_the_build_as_unavailable() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = s3_input("cluster-no-scheduler", 16_000, dir.path()).await;
    let slow = "[write]\nbatch_size = 250\nmax_writes_per_second = 800\n";
    let cluster = LocalCluster::start(&ClusterOptions::default());
    let prefix = s3_prefix("cluster-no-scheduler");
    let job = write_job(dir.path(), &job_text(&input, &prefix, slow));
    let (mut child, stdout, stderr) = spawn_sf_write(&job, &cluster, dir.path());

    // Once shards are being written, the scheduler dies.
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll sf-write") {
            panic!(
                "sf-write finished ({status}) before the scheduler could be killed: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        if !claims(&prefix).await.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no shard attempt was claimed within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = Command::new("kill")
        .args(["-KILL", &cluster.scheduler_pid().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill the scheduler");

    let status = wait_bounded(&mut child, Duration::from_secs(120), "sf-write without its scheduler");
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(status.code(), Some(5), "the cluster unavailable: {err}");
    assert!(err.contains("scheduler"), "the error names the scheduler: {err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stdout).expect("stdout")).expect("a JSON report on failure");
    assert_eq!(report["exit_code"], 5, "{report}");
    let keys = list_keys(&prefix).await;
    assert!(
        !keys.iter().any(|k| k == "_CURRENT" || k.starts_with("manifests/")),
        "nothing published: {keys:?}"
    );
}

/// Nothing listens at the scheduler's address: `sf-write` says so and
/// exits 5 (the engine unavailable, retried like storage) at once. "At once" is measured against the connect timeout the
/// client would otherwise wait out, set here to 120 s
/// (`ballista.grpc.client.connect_timeout_seconds`): the build must end
/// within 30 s, a quarter of it, which leaves a debug build on a loaded
/// machine ample time to start, read its job and be refused (it takes
/// well under a second here).
#[test]
fn an_unreachable_scheduler_is_reported_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("users.parquet");
    write_parquet(&input, &[users(10)]);
    let out_dir = dir.path().join("out");
    let job = write_job(
        dir.path(),
        &job_text(
            &input.to_string_lossy(),
            &out_dir.to_string_lossy(),
            "[cluster.session]\n\"ballista.grpc.client.connect_timeout_seconds\" = 120\n",
        ),
    );
    let url = format!("df://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = run_bounded(
        Command::new(binary("sf-write"))
            .arg("--config")
            .arg(&job)
            .args(["--cluster", &url, "--progress", "off"]),
        Duration::from_secs(180),
        "sf-write against no scheduler",
    );
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("sf-write against no scheduler took {took:?}");
    assert!(
        took < Duration::from_secs(30),
        "the refusal took {took:?}, not at once (connect timeout 120 s): {err}"
    );
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains(&format!("cannot reach the Ballista scheduler at {url}")) && err.contains("sf-scheduler"),
        "{err}"
    );
    assert!(!out_dir.exists(), "nothing was written");
}

/// Something that is not a scheduler listens at the scheduler's address
/// (here a server that answers every connection with an HTTP/1 error, as
/// a web server or a proxy on the wrong port would): the connection
/// succeeds and the job cannot be submitted. `sf-write` exits 5 (the
/// engine unavailable, retried), naming the address and asking whether
/// it is the scheduler's port.
#[test]
fn a_server_that_is_not_a_scheduler_is_reported_as_unavailable() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("users.parquet");
    write_parquet(&input, &[users(10)]);
    let out_dir = dir.path().join("out");
    let job = write_job(
        dir.path(),
        &job_text(&input.to_string_lossy(), &out_dir.to_string_lossy(), ""),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        use std::io::Write;
                        let _ = conn
                            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        answered += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            answered
        })
    };
    let url = format!("df://127.0.0.1:{port}");
    let out = run_bounded(
        Command::new(binary("sf-write"))
            .arg("--config")
            .arg(&job)
            .args(["--cluster", &url, "--progress", "off"]),
        Duration::from_secs(180),
        "sf-write against a server that is not a scheduler",
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let answered = server.join().expect("server thread");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(answered > 0, "sf-write connected: {err}");
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("is that sf-scheduler's gRPC port?"),
        "{err}"
    );
    assert!(!out_dir.exists(), "nothing was written");
}

/// A shard task's failure on an executor exits with the code of its cause,
/// as the same failure does on the embedded engine: bad data (a duplicate
/// key with `on_duplicate = "error"`, found while the shard is written) 3,
/// a conflict (every attempt folder of a shard claimed by a stale run) 4,
/// and storage that fails under the executors (every shard upload answers
/// 503, through object_store's retries and the shard's) 5, naming the
/// storage error. The executors reach S3 through the fault proxy; the
/// driver does not, so only the tasks see the fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_tasks_failure_exits_with_the_code_of_its_cause() {
    let dir = tempfile::tempdir().expect("tmp");
    let proxy = FaultProxy::for_s3();
    let cluster = LocalCluster::start(&ClusterOptions {
        env: vec![("AWS_ENDPOINT".into(), proxy.url().into())],
        ..ClusterOptions::default()
    });
    let run = |job: &Path, what: &str| {
        let out = run_bounded(
            Command::new(binary("sf-write")).arg("--config").arg(job).args([
                "--cluster",
                cluster.url(),
                "--json",
                "--progress",
                "off",
            ]),
            Duration::from_secs(300),
            what,
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out, err)
    };

    // 3: two rows with key 7; the shard holding them refuses the second.
    let dup_dir = dir.path().join("dup");
    std::fs::create_dir_all(&dup_dir).expect("dir");
    let mut ids: Vec<i64> = (0..1_000).collect();
    ids.push(7);
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("user-{i}")))) as ArrayRef,
        ),
        (
            "payload",
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("{i:0>40}")))) as ArrayRef,
        ),
    ])
    .expect("batch");
    let local = dup_dir.join("users.parquet");
    write_parquet(&local, &[batch]);
    let input = format!("{}/input/users.parquet", s3_prefix("cluster-exit-dup"));
    upload(&local, &input).await;
    let prefix = s3_prefix("cluster-exit-dup");
    let job = write_job(
        &dup_dir,
        &job_text(&input, &prefix, "[write]\non_duplicate = \"error\"\n"),
    );
    let (out, err) = run(&job, "sf-write with a duplicate key on the cluster");
    assert_eq!(
        out.status.code(),
        Some(3),
        "bad data on an executor is bad data: {err}\n{}",
        cluster.log_tails()
    );
    assert!(
        err.contains("duplicate key 7") && err.contains("on_duplicate"),
        "the error is the shard's own: {err}"
    );
    assert_eq!(summary(&out.stdout)["exit_code"], 3);

    // 4: a stale run under the same run id left every attempt folder of
    // shard 0 claimed; the shard task cannot claim one (a conflict: clean
    // up or use a new run id, retrying will not help).
    let stale_dir = dir.path().join("stale");
    std::fs::create_dir_all(&stale_dir).expect("dir");
    let input = s3_input("cluster-exit-stale", 1_000, &stale_dir).await;
    let prefix = s3_prefix("cluster-exit-stale");
    let run_id = sf_manifest::RunId::new("stale-night").expect("run id");
    let claim = stale_dir.join("claim.json");
    std::fs::write(&claim, br#"{"run_id":"stale-night","db_id":0}"#).expect("claim");
    for a in 0..sf_writer::build::claim::MAX_ATTEMPTS {
        let key = sf_manifest::format::layout::shard_attempt_key(&run_id, DbId(0), sf_manifest::Attempt(a));
        upload(
            &claim,
            &format!("{prefix}/{key}/{}", sf_manifest::format::layout::CLAIM_FILE),
        )
        .await;
    }
    let job = write_job(&stale_dir, &job_text(&input, &prefix, "run_id = \"stale-night\"\n"));
    let (out, err) = run(&job, "sf-write whose shard's attempts are all claimed, on the cluster");
    assert_eq!(
        out.status.code(),
        Some(4),
        "a conflict on an executor is a conflict: {err}\n{}",
        cluster.log_tails()
    );
    assert!(
        err.contains("attempts of the shard are claimed"),
        "the error is the shard's own: {err}"
    );
    assert_eq!(summary(&out.stdout)["exit_code"], 4);

    // 5: every shard upload (and claim) the executors make answers 503.
    let down_dir = dir.path().join("down");
    std::fs::create_dir_all(&down_dir).expect("dir");
    let input = s3_input("cluster-exit-down", 1_000, &down_dir).await;
    let prefix = s3_prefix("cluster-exit-down");
    let job = write_job(
        &down_dir,
        &job_text(
            &input,
            &prefix,
            &format!(
                "[write]\nshard_retries = 1\nretry_backoff_ms = 10\n{}",
                sf_tests::writer_support::short_storage_retries(&prefix)
            ),
        ),
    );
    proxy.add(Rule::new("PUT", "/shards/").fault(Fault::Status(503)));
    let (out, err) = run(&job, "sf-write on executors whose storage fails");
    assert_eq!(
        out.status.code(),
        Some(5),
        "storage failing on an executor is storage unavailable: {err}\n{}",
        cluster.log_tails()
    );
    assert!(proxy.faults_served() > 0, "the executors met the fault");
    assert!(
        err.contains("503") && err.contains("/shards/"),
        "the error names the storage failure: {err}"
    );
    assert!(
        !err.contains("sf-task-error"),
        "the marker stays between the processes: {err}"
    );
    assert_eq!(summary(&out.stdout)["exit_code"], 5);
    assert!(
        !list_keys(&prefix)
            .await
            .iter()
            .any(|k| k == "_CURRENT" || k.starts_with("manifests/")),
        "nothing was published"
    );
}

/// A stock Ballista executor rejects ShardForge's tasks; the build fails
/// at the first rejection, with the reason. "At once" is measured against
/// what stock Ballista does instead, launching the tasks again at the
/// executor's next heartbeat: the executor beats every 90 s here (and is
/// not timed out before 10 minutes), and the build must end within 30 s,
/// a third of that, long before any second launch, which leaves this
/// build (under a second here) ample room on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_without_the_extension_fails_the_build_with_the_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = s3_input("cluster-plain", 1_000, dir.path()).await;
    // `--without-extension` runs Ballista's executor exactly as stock
    // Ballista configures it: default codecs, runtime and config.
    let cluster = LocalCluster::start(&ClusterOptions {
        executors: 1,
        scheduler_args: vec!["--executor-timeout-secs=600".into()],
        executor_args: vec!["--without-extension".into(), "--heartbeat-interval-secs=90".into()],
        ..ClusterOptions::default()
    });
    let prefix = s3_prefix("cluster-plain");
    let job = write_job(dir.path(), &job_text(&input, &prefix, ""));
    let started = Instant::now();
    let out = run_bounded(
        Command::new(binary("sf-write")).arg("--config").arg(&job).args([
            "--cluster",
            cluster.url(),
            "--progress",
            "off",
        ]),
        Duration::from_secs(180),
        "sf-write on an executor without the extension",
    );
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("sf-write on an executor without the extension took {took:?}");
    assert!(
        took < Duration::from_secs(30),
        "the build failed after {took:?}, not at the first rejection: {err}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("lacks ShardForge's extension") && err.contains("Run sf-executor"),
        "the error names the cause and the fix: {err}"
    );
    assert!(
        !list_keys(&prefix).await.iter().any(|k| k == "_CURRENT"),
        "nothing was published"
    );
}

/// A job that writes a warehouse table runs its shard tasks on the
/// cluster too, and the table reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_job_runs_on_the_cluster() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = s3_input("cluster-table", 5_000, dir.path()).await;
    let warehouse = s3_prefix("cluster-warehouse");
    let text = format!(
        r#"key_col = "id"
[input]
format = "parquet"
path = "{input}"
[routing]
num_dbs = 4
[output]
table = "lake.app.users"
mode = "overwrite"
[sf.catalog.lake]
warehouse = "{warehouse}"
"#
    );
    let job = write_job(dir.path(), &text);
    let cluster = LocalCluster::start(&ClusterOptions::default());
    // Overwrite, then append the same rows: the append reads the old
    // table on the executors (the table and its scan travel through the
    // codecs) and replaces every duplicate key.
    let mut runs = Vec::new();
    for (round, mode) in ["overwrite", "append"].into_iter().enumerate() {
        let out = run_bounded(
            Command::new(binary("sf-write"))
                .arg("--config")
                .arg(&job)
                .args(["--cluster", cluster.url(), "--json", "--progress", "off"])
                .env("SF_OUTPUT__MODE", mode),
            Duration::from_secs(300),
            "sf-write of a table on the cluster",
        );
        assert!(
            out.status.success(),
            "round {round}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.log_tails()
        );
        let s = summary(&out.stdout);
        assert_eq!(
            s["rows"], 5_000,
            "round {round}: the appended keys replace the old ones"
        );
        runs.push(s["run_id"].as_str().expect("run id").to_string());
    }
    assert_ne!(runs[0], runs[1], "the append published a new run");
    let prefix = format!("{warehouse}/app/users");
    let claimed = claims(&prefix).await;
    let executors: BTreeSet<u32> = cluster.executor_pids().iter().copied().collect();
    assert!(
        !claimed.is_empty() && claimed.iter().all(|c| executors.contains(&c.pid)),
        "executors wrote the table's shards"
    );

    let catalogs =
        sf_warehouse::Catalogs::from_settings([("sf.catalog.lake.warehouse", warehouse.as_str())]).expect("catalogs");
    let wh = sf_warehouse::Warehouse::new(catalogs, Arc::new(Embedded::default()))
        .with_reader_cache(dir.path().join("cache"));
    let ctx = wh.session_context();
    let batches = wh
        .sql(&ctx, "SELECT count(*) AS n, max(name) AS top FROM app.users")
        .await
        .expect("query")
        .collect()
        .await
        .expect("rows");
    let out = arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string();
    assert!(out.contains("5000") && out.contains("user-999"), "{out}");
}
