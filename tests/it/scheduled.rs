//! Scheduled builds, run as a scheduler runs them: the real `sf-write`,
//! on the local file system and on S3.
//!
//! A retried run id is a no-op and deletes nothing; `--rebuild` leaves
//! every older manifest readable; a run held by another process is
//! refused; gates stop bad builds before anything is visible; retention
//! removes what no kept manifest references; reports and metrics say what
//! happened, on success and on failure.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sf_manifest::format::layout;
use sf_manifest::publish::failpoint;
use sf_manifest::{ManifestStore, RunRecord, RunStatus, Timestamp};
use sf_tests::scenario::{
    JobDir, assert_history_reads, attempt_builds, attempt_folders, current_run, read_history, referenced_folders,
    sf_read, text, wait_for_leases,
};
use sf_tests::writer_support::list_objects;
use sf_tests::{manifest_store, replace_in, s3_prefix};

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

async fn rerun_published(prefix: &str) {
    let job = JobDir::new(prefix);
    job.input(30, "nightly-1");
    job.job("nightly-1", "");
    let first = job.sf_write(&["--json"], &[]);
    assert_eq!(code(&first), 0, "{}", text(&first.stderr));
    assert_eq!(json(&first)["outcome"], "published");
    // Every object with its size: what "nothing deleted" means.
    let before = list_objects(prefix).await;

    // The scheduler retries the same run: nothing is built or deleted.
    let again = job.sf_write(&[], &[]);
    assert_eq!(code(&again), 0, "{}", text(&again.stderr));
    let said = text(&again.stdout);
    assert!(
        said.contains("run nightly-1 was already published") && said.contains("rows:           30"),
        "{said}"
    );
    let after: BTreeMap<String, u64> = list_objects(prefix)
        .await
        .into_iter()
        .filter(|(k, _)| !k.starts_with("runs/"))
        .collect();
    let before: BTreeMap<String, u64> = before.into_iter().filter(|(k, _)| !k.starts_with("runs/")).collect();
    assert_eq!(after, before, "a no-op retry changes nothing but run records");
    assert_history_reads(prefix, 30).await;

    // --rebuild builds the run again; the first manifest still reads.
    let rebuilt = job.sf_write(&["--rebuild", "--json"], &[]);
    assert_eq!(code(&rebuilt), 0, "{}", text(&rebuilt.stderr));
    assert_eq!(json(&rebuilt)["outcome"], "published");
    let history = read_history(prefix, 30).await;
    assert_eq!(history.len(), 2, "two manifests of nightly-1");
    assert_history_reads(prefix, 30).await;
    for key in &before {
        assert!(
            list_objects(prefix).await.contains_key(key.0),
            "{} (referenced by the first manifest) is still there",
            key.0
        );
    }
    assert_eq!(current_run(prefix).await.as_deref(), Some("nightly-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_run_is_a_no_op_and_a_rebuild_keeps_the_history_on_files() {
    let root = tempfile::tempdir().expect("root");
    rerun_published(&format!("file://{}/snap", root.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_run_is_a_no_op_and_a_rebuild_keeps_the_history_on_s3() {
    rerun_published(&s3_prefix("sched-rerun")).await;
}

async fn live_lease_refuses(prefix: &str) {
    let job = JobDir::new(prefix);
    job.input(20, "r");
    job.job("r", "");
    // A first build stops after an upload, holding the run's lease.
    let held = job.sf_write_paused_at("upload", &[]);
    let refused = job.sf_write(&[], &[]);
    assert_eq!(code(&refused), 4, "{}", text(&refused.stderr));
    let err = text(&refused.stderr);
    assert!(
        err.contains("run r is being built by another process") && err.contains("run record"),
        "{err}"
    );
    assert_eq!(current_run(prefix).await, None, "nothing published");
    held.kill();
    // Its lease runs out: the run is anyone's again, and builds.
    wait_for_leases(prefix, "r").await;
    let ok = job.sf_write(&[], &[]);
    assert_eq!(code(&ok), 0, "{}", text(&ok.stderr));
    assert_history_reads(prefix, 20).await;
    // The refused build's record says why.
    let records = manifest_store(prefix).list_run_records().await.expect("records");
    assert!(
        records
            .iter()
            .any(|(_, r): &(String, RunRecord)| r.status == RunStatus::Failed
                && r.error_type.as_deref() == Some("conflict")),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_held_by_a_live_lease_is_refused_on_files() {
    let root = tempfile::tempdir().expect("root");
    live_lease_refuses(&format!("file://{}/snap", root.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_held_by_a_live_lease_is_refused_on_s3() {
    live_lease_refuses(&s3_prefix("sched-lease")).await;
}

/// A build renews its run record's lease while it runs: held at a fail
/// point for several lease lengths (3 s), its record stays `running` with
/// a lease that keeps moving into the future, so no cleanup takes it for
/// dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_build_keeps_renewing_its_lease() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let job = JobDir::new(&prefix);
    job.input(10, "hb");
    job.job("hb", "");
    let paused = job.sf_write_paused_at("verify", &[]);
    let lease = || async {
        let records = manifest_store(&prefix).list_run_records().await.expect("records");
        let (_, r) = records
            .into_iter()
            .find(|(_, r)| r.run_id.as_str() == "hb")
            .expect("the build's run record");
        assert_eq!(r.status, RunStatus::Running);
        r.lease_expires_at
    };
    let first = lease().await;
    // Wait for three renewals, each past the one before (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = first;
    let mut renewals = 0;
    while renewals < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease was renewed {renewals} times in 60 s (run_lease_secs = 3)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = lease().await;
        if now > last {
            renewals += 1;
            last = now;
        }
    }
    assert!(last > sf_manifest::Timestamp::now(), "the lease is live: {last:?}");
    paused.kill();
}

/// The run records of `run` under `prefix`, oldest first.
async fn records_of(prefix: &str, run: &str) -> Vec<RunRecord> {
    let mut records: Vec<RunRecord> = manifest_store(prefix)
        .list_run_records()
        .await
        .expect("records")
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.run_id.as_str() == run)
        .collect();
    records.sort_by_key(|r| r.started_at);
    records
}

/// A run id whose earlier builds failed after they had started writing is
/// built again cleanly. The first build of run `f` dies after uploading a
/// shard (stopped at the `upload` fail point and killed): its `running`
/// record and its attempt folders stay on storage until its lease runs
/// out. The second fails after every shard was uploaded and verified (an
/// injected error at `verify`): it marks its record `failed` and sweeps
/// its own attempts, and only those. The third builds the run: it
/// publishes, every key reads its value, and its manifest references only
/// its own attempts. What the dead build left is no manifest's, and
/// cleanup removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_rebuilt_cleanly() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let job = JobDir::new(&prefix);
    job.input(10, "f");
    job.job("f", "");

    // 1. A crash after an upload: a live `running` record and attempt
    // folders, one of them holding an uploaded shard.
    let crashed = job.sf_write_paused_at("upload", &[]);
    let records = records_of(&prefix, "f").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].status, RunStatus::Running, "{records:?}");
    assert!(records[0].lease_expires_at > Timestamp::now(), "{records:?}");
    let dead = attempt_builds(&prefix).await;
    assert!(!dead.is_empty(), "the crashed build claimed attempt folders");
    let dead_build = dead.values().next().expect("a claim").clone();
    assert!(
        !dead_build.is_empty() && dead.values().all(|b| *b == dead_build),
        "one build claimed them: {dead:?}"
    );
    let files = list_objects(&prefix).await;
    assert!(
        dead.keys()
            .any(|k| files.contains_key(&format!("{k}/{}", layout::SQLITE_SHARD_FILE))),
        "a shard was uploaded before the crash: {files:?}"
    );
    crashed.kill();
    wait_for_leases(&prefix, "f").await;
    let records = records_of(&prefix, "f").await;
    assert!(
        records.len() == 1
            && records[0].status == RunStatus::Running
            && records[0].lease_expires_at <= Timestamp::now(),
        "the dead build's record is stale: {records:?}"
    );
    assert_eq!(current_run(&prefix).await, None, "nothing was published");

    // 2. An error after every shard was uploaded and verified.
    let failed = job.sf_write(&["--json"], &[(failpoint::ENV, "verify=error")]);
    let err = text(&failed.stderr);
    assert_eq!(code(&failed), 5, "{err}");
    assert!(
        err.contains("sf-failpoint: hit verify"),
        "the error was injected: {err}"
    );
    let doc = json(&failed);
    assert_eq!(
        (doc["outcome"].as_str(), doc["error"]["kind"].as_str()),
        (Some("failed"), Some("unavailable")),
        "{doc}"
    );
    let records = records_of(&prefix, "f").await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[1].status, RunStatus::Failed, "{records:?}");
    assert_eq!(records[1].error_type.as_deref(), Some("unavailable"), "{records:?}");
    assert!(
        records[1]
            .error_message
            .as_deref()
            .is_some_and(|m| m.contains("fail point verify")),
        "{records:?}"
    );
    assert_eq!(
        attempt_builds(&prefix).await,
        dead,
        "the failed build swept its own attempts and nothing of the dead build's"
    );
    assert_eq!(current_run(&prefix).await, None, "nothing was published");

    // 3. The rebuild.
    let ok = job.sf_write(&["--json"], &[]);
    assert_eq!(code(&ok), 0, "{}", text(&ok.stderr));
    assert_eq!(json(&ok)["outcome"], "published", "built, not taken for published");
    assert_eq!(current_run(&prefix).await.as_deref(), Some("f"));
    let history = read_history(&prefix, 10).await;
    assert_eq!(history.len(), 1, "one manifest of run f");
    assert_history_reads(&prefix, 10).await;
    let records = records_of(&prefix, "f").await;
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[2].status, RunStatus::Succeeded, "{records:?}");
    let builds = attempt_builds(&prefix).await;
    let referenced = referenced_folders(&prefix).await;
    assert_eq!(referenced.len(), 2, "one winner per shard: {referenced:?}");
    let rebuild: BTreeSet<&String> = referenced.iter().map(|k| &builds[k]).collect();
    assert_eq!(rebuild.len(), 1, "one build wrote the winners: {builds:?}");
    assert!(
        !rebuild.contains(&dead_build),
        "no attempt of the dead build is referenced: {builds:?}"
    );
    // Besides its winners, only what the dead build left: a build never
    // deletes another build's claims, and it is no manifest's.
    let left: BTreeMap<String, String> = builds.into_iter().filter(|(k, _)| !referenced.contains(k)).collect();
    assert_eq!(left, dead, "the rest is the dead build's");
    let cleanup = sf_read(&prefix, &["cleanup", "--include-abandoned"]);
    assert_eq!(code(&cleanup), 0, "{}", text(&cleanup.stderr));
    assert_eq!(
        attempt_folders(&prefix).await,
        referenced,
        "cleanup removes what the dead build left: {}",
        text(&cleanup.stdout)
    );
    assert_history_reads(&prefix, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_stop_bad_builds_before_anything_is_visible() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let job = JobDir::new(&prefix);

    // An empty input (a CSV header) with default settings: exit 6,
    // nothing published.
    std::fs::write(job.path().join("input.csv"), "id,v\n").expect("input");
    job.job("empty", "");
    let empty = job.sf_write(&["--json"], &[]);
    assert_eq!(code(&empty), 6, "{}", text(&empty.stderr));
    let err = text(&empty.stderr);
    assert!(err.contains("min_rows") && err.contains("measured 0, limit 1"), "{err}");
    assert_eq!(json(&empty)["outcome"], "failed");
    assert_eq!(current_run(&prefix).await, None);
    assert!(manifest_store(&prefix).history().await.expect("history").is_empty());
    assert!(attempt_folders(&prefix).await.is_empty(), "its shard data is swept");
    let records = manifest_store(&prefix).list_run_records().await.expect("records");
    assert!(
        records.iter().any(|(_, r)| r.run_id.as_str() == "empty"
            && r.status == RunStatus::Failed
            && r.error_type.as_deref() == Some("gate")),
        "{records:?}"
    );
    // min_rows = 0 publishes the empty snapshot.
    job.job("empty", "[validate]\nmin_rows = 0\n");
    let allowed = job.sf_write(&[], &[]);
    assert_eq!(code(&allowed), 0, "{}", text(&allowed.stderr));

    // 100 rows, then 50 with max_row_change = 0.2: exit 6 naming the gate.
    job.input(100, "big");
    job.job("big", "");
    assert_eq!(code(&job.sf_write(&[], &[])), 0);
    job.input(50, "half");
    job.job("half", "[validate]\nmax_row_change = 0.2\n");
    let report = job.path().join("report.json");
    let metrics = job.path().join("metrics.prom");
    let drop = job.sf_write(
        &[
            "--report",
            &report.display().to_string(),
            "--metrics-file",
            &metrics.display().to_string(),
        ],
        &[],
    );
    assert_eq!(code(&drop), 6, "{}", text(&drop.stderr));
    let err = text(&drop.stderr);
    assert!(
        err.contains("validation gate max_row_change failed: measured 0.5000, limit 0.2")
            && err.contains("50 rows against 100 in run big"),
        "{err}"
    );
    assert_eq!(current_run(&prefix).await.as_deref(), Some("big"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    assert_eq!(doc["outcome"], "failed");
    assert_eq!(doc["exit_code"], 6);
    assert_eq!(doc["run_id"], "half");
    let gate = doc["gates"]
        .as_array()
        .expect("gates")
        .iter()
        .find(|g| g["gate"] == "max_row_change")
        .cloned();
    assert_eq!(
        gate.as_ref().map(|g| g["result"].clone()),
        Some(Value::from("fail")),
        "{doc}"
    );
    assert!(
        doc["phases"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["name"] == "writing shards")),
        "{doc}"
    );
    let prom = std::fs::read_to_string(&metrics).expect("metrics");
    assert_failed_gate_metrics(&prom, &doc, &prefix);

    // The same gate on "warn" publishes, and the report records the warning.
    job.job(
        "half",
        "[validate]\nmax_row_change = { limit = 0.2, on_fail = \"warn\" }\n",
    );
    let warned = job.sf_write(&["--report", &report.display().to_string()], &[]);
    assert_eq!(code(&warned), 0, "{}", text(&warned.stderr));
    assert!(
        text(&warned.stdout).contains("max_row_change"),
        "{}",
        text(&warned.stdout)
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    assert_eq!(doc["outcome"], "published");
    assert!(
        doc["gates"]
            .as_array()
            .expect("gates")
            .iter()
            .any(|g| g["gate"] == "max_row_change" && g["result"] == "warn"),
        "{doc}"
    );
    assert_eq!(current_run(&prefix).await.as_deref(), Some("half"));

    // A canary key with a wrong expected value: exit 6; the right one passes.
    job.input(50, "canary");
    std::fs::write(
        job.path().join("canary.txt"),
        "{\"key\": 7, \"value\": \"canary:8\"}\n3\n",
    )
    .expect("canary");
    job.job("canary", "[validate]\ncanary = { path = \"canary.txt\" }\n");
    let wrong = job.sf_write(&[], &[]);
    assert_eq!(code(&wrong), 6, "{}", text(&wrong.stderr));
    let err = text(&wrong.stderr);
    assert!(
        err.contains("canary") && err.contains("key 7: value \"canary:7\", expected \"canary:8\""),
        "{err}"
    );
    assert_eq!(current_run(&prefix).await.as_deref(), Some("half"));
    std::fs::write(
        job.path().join("canary.txt"),
        "{\"key\": 7, \"value\": \"canary:7\"}\n3\n",
    )
    .expect("canary");
    let right = job.sf_write(&[], &[]);
    assert_eq!(code(&right), 0, "{}", text(&right.stderr));

    // --force publishes past a failing gate and says so where it lasts.
    job.input(5, "forced");
    job.job("forced", "[validate]\nmin_rows = 10\n");
    let forced = job.sf_write(&["--force"], &[]);
    assert_eq!(code(&forced), 0, "{}", text(&forced.stderr));
    let m = manifest_store(&prefix)
        .load_manifest(
            &manifest_store(&prefix)
                .load_current()
                .await
                .expect("current")
                .expect("some")
                .pointer
                .manifest_ref,
        )
        .await
        .expect("manifest");
    let custom = m.build.custom["shardforge"]["forced_gates"].to_string();
    assert!(custom.contains("min_rows"), "{custom}");
    let records = manifest_store(&prefix).list_run_records().await.expect("records");
    assert!(
        records.iter().any(|(_, r)| r.run_id.as_str() == "forced"
            && r.status == RunStatus::Succeeded
            && r.notes.as_deref().is_some_and(|n| n.contains("min_rows"))),
        "{records:?}"
    );
    // Published, newest first: each manifest with its own rows (the
    // failed builds published none).
    assert_history_reads_tagged(
        &prefix,
        &[("forced", 5), ("canary", 50), ("half", 50), ("big", 100), ("empty", 0)],
    )
    .await;
}

/// The history is `runs` (run id and row count, newest first), and each
/// manifest reads exactly keys `0..count`, values tagged with its run.
async fn assert_history_reads_tagged(prefix: &str, runs: &[(&str, u64)]) {
    let history = read_history(prefix, 100).await;
    let got: Vec<(&str, u64)> = history.iter().map(|(r, v)| (r.as_str(), v.len() as u64)).collect();
    assert_eq!(got, runs, "the history's runs and the keys each reads");
    for (run, values) in &history {
        for (k, v) in values {
            assert_eq!(v, &format!("{run}:{k}"), "run {run}");
        }
        let keys: Vec<u64> = values.keys().copied().collect();
        assert_eq!(keys, (0..keys.len() as u64).collect::<Vec<_>>(), "run {run}: its keys");
    }
}

/// The series of a metrics file (name and labels as written) with their
/// values; checks every name has its `# HELP` and `# TYPE` lines.
fn metric_series(prom: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in prom.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not `series value`: {line}"));
        let name = series.split('{').next().unwrap_or_default();
        let help = sf_cli::report::METRICS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not in the catalog"))
            .1;
        assert!(
            prom.contains(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n")),
            "{name}: {prom}"
        );
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "{series} twice: {prom}"
        );
    }
    out
}

/// The metrics file of the build of run `half` that gate `max_row_change`
/// stopped (exit 6) holds exactly: success 0, exit code 6, the run and its
/// outcome, each phase's and the build's seconds as the report has them,
/// each gate (1 passed or skipped, else 0); and no rows, bytes, shards,
/// retries or last success, which a failed build does not have.
fn assert_failed_gate_metrics(prom: &str, doc: &Value, prefix: &str) {
    let p = format!("prefix=\"{prefix}\"");
    let mut want = BTreeMap::from([
        (format!("shardforge_build_success{{{p}}}"), 0.0),
        (format!("shardforge_build_exit_code{{{p}}}"), 6.0),
        (
            format!("shardforge_build_info{{{p},run_id=\"half\",outcome=\"failed\"}}"),
            1.0,
        ),
        (
            format!("shardforge_build_seconds{{{p}}}"),
            doc["wall_seconds"].as_f64().expect("wall_seconds"),
        ),
    ]);
    let phases = doc["phases"].as_array().expect("phases");
    assert!(phases.iter().any(|x| x["name"] == "writing shards"), "{doc}");
    for phase in phases {
        want.insert(
            format!(
                "shardforge_build_phase_seconds{{{p},phase=\"{}\"}}",
                phase["name"].as_str().expect("name")
            ),
            phase["seconds"].as_f64().expect("seconds"),
        );
    }
    let gates = doc["gates"].as_array().expect("gates");
    for gate in gates {
        let result = gate["result"].as_str().expect("result");
        want.insert(
            format!(
                "shardforge_build_gate_passed{{{p},gate=\"{}\",result=\"{result}\"}}",
                gate["gate"].as_str().expect("gate")
            ),
            if matches!(result, "pass" | "skipped") { 1.0 } else { 0.0 },
        );
    }
    let got = metric_series(prom);
    assert_eq!(got, want, "{prom}");
    // The two gates this build is about, whatever else the report lists.
    assert_eq!(
        got.get(&format!(
            "shardforge_build_gate_passed{{{p},gate=\"max_row_change\",result=\"fail\"}}"
        )),
        Some(&0.0),
        "{prom}"
    );
    assert_eq!(
        got.get(&format!(
            "shardforge_build_gate_passed{{{p},gate=\"min_rows\",result=\"pass\"}}"
        )),
        Some(&1.0),
        "{prom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_last_runs_and_removes_abandoned_records() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let job = JobDir::new(&prefix);
    for run in ["a", "b"] {
        job.input(10, run);
        job.job(run, "");
        assert_eq!(code(&job.sf_write(&[], &[])), 0);
    }
    // A build killed before writing any shard leaves only a run record.
    job.input(10, "killed");
    job.job("killed", "");
    job.sf_write_paused_at("claim", &[]).kill();
    wait_for_leases(&prefix, "killed").await;
    job.input(10, "c");
    job.job("c", "[retention]\nkeep_last = 2\n");
    let out = job.sf_write(&["--json"], &[]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(json(&out)["retention"]["manifests"], 1, "{}", text(&out.stdout));
    let runs: Vec<String> = read_history(&prefix, 10).await.into_iter().map(|(r, _)| r).collect();
    assert_eq!(runs, vec!["c", "b"]);
    assert_history_reads(&prefix, 10).await;
    assert_eq!(attempt_folders(&prefix).await, referenced_folders(&prefix).await);
    let records: Vec<String> = manifest_store(&prefix)
        .list_run_records()
        .await
        .expect("records")
        .into_iter()
        .map(|(_, r)| r.run_id.as_str().to_string())
        .collect();
    assert!(!records.contains(&"a".to_string()), "{records:?}");
    assert!(
        !records.contains(&"killed".to_string()),
        "the killed build's record is gone: {records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_a_dead_builds_record_even_without_data() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let job = JobDir::new(&prefix);
    job.input(10, "ok");
    job.job("ok", "");
    assert_eq!(code(&job.sf_write(&[], &[])), 0);
    job.input(10, "dead");
    job.job("dead", "");
    job.sf_write_paused_at("claim", &[]).kill();
    // Live lease: cleanup leaves it alone.
    let early = sf_read(&prefix, &["cleanup", "--include-abandoned"]);
    assert_eq!(code(&early), 0, "{}", text(&early.stderr));
    let has_dead = || async {
        manifest_store(&prefix)
            .list_run_records()
            .await
            .expect("records")
            .iter()
            .any(|(_, r)| r.run_id.as_str() == "dead")
    };
    assert!(has_dead().await, "a live lease is never cleaned up");
    wait_for_leases(&prefix, "dead").await;
    let out = sf_read(&prefix, &["cleanup", "--include-abandoned"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(!has_dead().await, "{}", text(&out.stdout));
    assert_eq!(attempt_folders(&prefix).await, referenced_folders(&prefix).await);
}

#[test]
fn an_input_matching_no_files_is_named() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let job = JobDir::new(&prefix);
    job.job("x", "");
    let text_of_job = std::fs::read_to_string(job.path().join("job.toml")).expect("job");
    std::fs::write(
        job.path().join("job.toml"),
        replace_in(&text_of_job, "path = \"input.csv\"", "path = \"incoming/*.csv\""),
    )
    .expect("job");
    std::fs::create_dir_all(job.path().join("incoming")).expect("folder");
    let out = job.sf_write(&[], &[]);
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("incoming/*.csv") && err.contains("matches no files"),
        "{err}"
    );
}
