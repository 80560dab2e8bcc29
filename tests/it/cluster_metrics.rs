//! What `sf-scheduler --metrics-listen` and `sf-executor --metrics-listen`
//! export, scraped from the real processes of a local cluster while real
//! builds run on it: the executors alive, jobs ended by outcome, tasks
//! running, pending and ended, and a failed task's kind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use sf_tests::cluster::{ClusterOptions, LocalCluster, free_port, run_bounded, upload, wait_bounded};
use sf_tests::s3_prefix;
use sf_tests::writer_support::{binary, write_parquet};

/// `ids` as users (id, name), as Parquet on the S3 test server.
async fn s3_users(test: &str, ids: Vec<i64>, dir: &Path) -> String {
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("user-{i}")))) as ArrayRef,
        ),
    ])
    .expect("users batch");
    let local = dir.join(format!("{test}.parquet"));
    write_parquet(&local, &[batch]);
    let url = format!("{}/input/users.parquet", s3_prefix(test));
    upload(&local, &url).await;
    url
}

/// A job file over `input` writing 4 shards under `prefix`; a duplicate
/// key fails its shard.
fn job(dir: &Path, name: &str, input: &str, prefix: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"key_col = "id"
[input]
format = "parquet"
path = "{input}"
[value]
json_cols = ["name"]
[routing]
strategy = "hash"
num_dbs = 4
[output]
prefix = "{prefix}"
backend = "sqlite"
[write]
on_duplicate = "error"
"#
    );
    std::fs::write(&path, text).expect("write job file");
    path
}

/// The samples of a Prometheus text exposition: `name{labels}` to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// `GET http://127.0.0.1:port/metrics`, parsed.
async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("scraping 127.0.0.1:{port}: {e}"));
    assert_eq!(resp.status(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    samples(&resp.text().await.expect("metrics text"))
}

/// Scrapes `port` until `holds` is true of the samples (at most 60 s:
/// the scheduler samples its gauges every second); panics with the last
/// scrape and the cluster's logs otherwise.
async fn wait_for(
    cluster: &LocalCluster,
    port: u16,
    what: &str,
    holds: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let started = Instant::now();
    loop {
        let s = scrape(port).await;
        if holds(&s) {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: not within 60 s; last scrape:\n{s:#?}\n{}",
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn get(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("{series} is not exported: {s:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_and_executor_export_jobs_tasks_and_failures() {
    let dir = tempfile::tempdir().expect("tmp");
    let (sched, exec) = (free_port(), free_port());
    let cluster = LocalCluster::start(&ClusterOptions {
        executors: 1,
        scheduler_args: vec![format!("--metrics-listen=127.0.0.1:{sched}")],
        executor_args: vec![format!("--metrics-listen=127.0.0.1:{exec}")],
        ..ClusterOptions::default()
    });

    // Every series is there, at zero, before any job.
    let before = scrape(exec).await;
    assert_eq!(
        get(&before, "shardforge_executor_tasks_total{outcome=\"completed\"}"),
        0.0
    );
    assert_eq!(
        get(&before, "shardforge_executor_task_failures_total{kind=\"data\"}"),
        0.0
    );
    assert_eq!(get(&before, "shardforge_executor_tasks_running"), 0.0);
    let s = wait_for(&cluster, sched, "one executor alive", |s| {
        s.get("shardforge_scheduler_executors_alive") == Some(&1.0)
    })
    .await;
    assert_eq!(get(&s, "shardforge_scheduler_jobs_total{outcome=\"completed\"}"), 0.0);
    assert_eq!(get(&s, "shardforge_scheduler_jobs_total{outcome=\"failed\"}"), 0.0);
    assert_eq!(get(&s, "shardforge_scheduler_tasks_pending"), 0.0);

    // A build that publishes: its job completed, its tasks completed on
    // the executor (stage 1's and the 4 shards' at least).
    let input = s3_users("cluster-metrics-ok", (0..2_000).collect(), dir.path()).await;
    let ok = job(dir.path(), "ok", &input, &s3_prefix("cluster-metrics-ok"));
    cluster.sf_write_json(&ok, Duration::from_secs(300));
    let s = wait_for(&cluster, sched, "the job counted completed, nothing running", |s| {
        s.get("shardforge_scheduler_jobs_total{outcome=\"completed\"}")
            .is_some_and(|v| *v >= 1.0)
            && s.get("shardforge_scheduler_jobs_running") == Some(&0.0)
            && s.get("shardforge_scheduler_tasks_running") == Some(&0.0)
    })
    .await;
    assert_eq!(get(&s, "shardforge_scheduler_jobs_total{outcome=\"failed\"}"), 0.0);
    assert_eq!(get(&s, "shardforge_scheduler_executors_alive"), 1.0);
    let jobs_completed = get(&s, "shardforge_scheduler_jobs_total{outcome=\"completed\"}");
    let e = scrape(exec).await;
    let completed = get(&e, "shardforge_executor_tasks_total{outcome=\"completed\"}");
    assert!(completed >= 5.0, "stage 1 and 4 shard tasks at least: {e:#?}");
    assert_eq!(get(&e, "shardforge_executor_tasks_total{outcome=\"failed\"}"), 0.0);
    assert_eq!(get(&e, "shardforge_executor_tasks_running"), 0.0);

    // A build whose shard task fails on bad data (key 7 twice): the job
    // counted failed, the task failed with kind `data`.
    let mut ids: Vec<i64> = (0..2_000).collect();
    ids.push(7);
    let input = s3_users("cluster-metrics-dup", ids, dir.path()).await;
    let dup = job(dir.path(), "dup", &input, &s3_prefix("cluster-metrics-dup"));
    let out = run_bounded(
        Command::new(binary("sf-write")).arg("--config").arg(&dup).args([
            "--cluster",
            cluster.url(),
            "--progress",
            "off",
        ]),
        Duration::from_secs(300),
        "sf-write with a duplicate key on the cluster",
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "bad data: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = wait_for(&cluster, sched, "the job counted failed", |s| {
        s.get("shardforge_scheduler_jobs_total{outcome=\"failed\"}") == Some(&1.0)
    })
    .await;
    assert!(get(&s, "shardforge_scheduler_jobs_total{outcome=\"completed\"}") >= jobs_completed);
    let e = wait_for(&cluster, exec, "the failed task counted", |e| {
        e.get("shardforge_executor_task_failures_total{kind=\"data\"}")
            .is_some_and(|v| *v >= 1.0)
    })
    .await;
    assert!(
        get(&e, "shardforge_executor_tasks_total{outcome=\"failed\"}") >= 1.0,
        "{e:#?}"
    );
    assert_eq!(
        get(&e, "shardforge_executor_task_failures_total{kind=\"unavailable\"}"),
        0.0,
        "only the failure that happened is counted"
    );
    assert!(get(&e, "shardforge_executor_tasks_total{outcome=\"completed\"}") >= completed);

    // Anything but /metrics is not found on the metrics listener.
    let other = reqwest::get(format!("http://127.0.0.1:{sched}/v1/jobs"))
        .await
        .expect("request");
    assert_eq!(other.status(), 404);
}

/// While a build's shard task is held on the only executor (fail point
/// `upload=pause`, one slot), the scheduler shows it running and the
/// other shards pending, and the executor one task running; once that
/// executor is killed, no executor is alive and the job the scheduler
/// fails for want of executors counts once, as failed, not again when it
/// is cancelled afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_running_and_pending_show_and_a_job_lost_with_its_executors_counts_failed_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let (sched, exec) = (free_port(), free_port());
    let mut cluster = LocalCluster::start(&ClusterOptions {
        executors: 1,
        concurrent_tasks: 1,
        scheduler_args: vec![
            format!("--metrics-listen=127.0.0.1:{sched}"),
            "--executor-timeout-secs=5".into(),
            "--expire-check-secs=1".into(),
            "--lost-cluster-grace-secs=2".into(),
        ],
        executor_args: vec![
            format!("--metrics-listen=127.0.0.1:{exec}"),
            "--heartbeat-interval-secs=1".into(),
        ],
        env: vec![(sf_manifest::publish::failpoint::ENV.into(), "upload=pause".into())],
    });
    let input = s3_users("cluster-metrics-held", (0..2_000).collect(), dir.path()).await;
    let held = job(dir.path(), "held", &input, &s3_prefix("cluster-metrics-held"));
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(binary("sf-write"))
        .arg("--config")
        .arg(&held)
        .args(["--cluster", cluster.url(), "--json", "--progress", "off"])
        .stdout(std::fs::File::create(&stdout).expect("stdout"))
        .stderr(std::fs::File::create(&stderr).expect("stderr"))
        .spawn()
        .expect("start sf-write");

    // One shard task held on the executor, the other three waiting.
    let s = wait_for(&cluster, sched, "a task running and tasks pending", |s| {
        s.get("shardforge_scheduler_tasks_running") == Some(&1.0)
            && s.get("shardforge_scheduler_tasks_pending").is_some_and(|v| *v >= 1.0)
    })
    .await;
    assert_eq!(get(&s, "shardforge_scheduler_jobs_running"), 1.0);
    let e = wait_for(&cluster, exec, "the held task running", |e| {
        e.get("shardforge_executor_tasks_running") == Some(&1.0)
    })
    .await;
    assert_eq!(get(&e, "shardforge_executor_tasks_total{outcome=\"failed\"}"), 0.0);

    cluster.kill_executor(0);
    let status = wait_bounded(&mut child, Duration::from_secs(180), "sf-write with its executor lost");
    assert_eq!(
        status.code(),
        Some(5),
        "cluster unavailable: {}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    wait_for(&cluster, sched, "no executor alive, the job failed", |s| {
        s.get("shardforge_scheduler_executors_alive") == Some(&0.0)
            && s.get("shardforge_scheduler_jobs_total{outcome=\"failed\"}") == Some(&1.0)
    })
    .await;
    // The scheduler cancels the failed job a few seconds later.
    let started = Instant::now();
    while !std::fs::read_to_string(cluster.scheduler_log())
        .unwrap_or_default()
        .contains("Cancelled")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the failed job was not cancelled within 60 s:\n{}",
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = scrape(sched).await;
    assert_eq!(get(&s, "shardforge_scheduler_jobs_total{outcome=\"failed\"}"), 1.0);
    assert_eq!(
        get(&s, "shardforge_scheduler_jobs_total{outcome=\"cancelled\"}"),
        0.0,
        "the failed job is not counted again: {s:#?}"
    );
}

/// A metrics address that cannot be bound stops the program at start,
/// naming the address, with the configuration exit code.
#[test]
fn a_metrics_address_in_use_is_a_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    for (program, args) in [
        ("sf-scheduler", vec!["--bind-port".to_string(), free_port().to_string()]),
        (
            "sf-executor",
            vec![
                "--scheduler".to_string(),
                format!("df://127.0.0.1:{}", free_port()),
                "--scheduler-connect-timeout-secs".to_string(),
                "1".to_string(),
            ],
        ),
    ] {
        let out = run_bounded(
            Command::new(binary(program))
                .args(&args)
                .args(["--metrics-listen", &addr]),
            Duration::from_secs(60),
            program,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{program}: {err}");
        assert!(
            err.contains(&format!("cannot listen on {addr} (metrics)")),
            "{program}: {err}"
        );
    }
}
