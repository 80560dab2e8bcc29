//! Every exit code of every program, on the real binaries.
//!
//! The codes come from one table (`cli/src/exit.rs`, documented in
//! docs/operations.md). Failures of storage are real HTTP answers from a
//! proxy in front of the S3 emulator ([`FaultProxy`]): the programs talk
//! to it as to any S3 endpoint, so the fault goes through object_store's
//! retries and ShardForge's classification before it becomes a code.

use std::path::Path;
use std::process::{Command, Output};

use sf_manifest::KeyEncoding;
use sf_tests::fault_proxy::{Fault, FaultProxy, Rule};
use sf_tests::s3_prefix;
use sf_tests::snapshots::{SnapshotSpec, build_snapshot, int_rows};
use sf_tests::writer_support::{binary, output_with_input, short_storage_retries};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `program` in `dir` with `env`; S3 requests go to `endpoint` when given.
fn run(program: &str, args: &[&str], dir: &Path, endpoint: Option<&str>, stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(binary(program));
    cmd.args(args).current_dir(dir);
    if let Some(e) = endpoint {
        cmd.env("AWS_ENDPOINT", e);
    }
    output_with_input(&mut cmd, stdin)
}

fn assert_code(out: &Output, code: i32, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "stderr should name {needle:?}: {err}");
}

/// A CSV input of `rows` users (ids 0..rows), one with a null key when
/// `null_key`.
fn users_csv(dir: &Path, rows: u64, null_key: bool) {
    let mut s = String::from("id,name\n");
    for i in 0..rows {
        s.push_str(&format!("{i},user-{i}\n"));
    }
    if null_key {
        s.push_str(",nobody\n");
    }
    std::fs::write(dir.join("users.csv"), s).expect("input");
}

/// A job writing `users.csv` to `prefix`, with storage retries kept short
/// so a failing store is reported in seconds, not minutes.
fn job(dir: &Path, prefix: &str, extra: &str) {
    let retries = short_storage_retries(prefix);
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "key_col = \"id\"\n[input]\nformat = \"csv\"\npath = \"users.csv\"\n[routing]\nnum_dbs = 2\n\
             [output]\nprefix = \"{prefix}\"\n[write]\nshard_retries = 1\nretry_backoff_ms = 10\n{extra}{retries}"
        ),
    )
    .expect("job");
}

#[test]
fn sf_write_exits_by_cause() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    users_csv(d, 50, false);

    // 0: published.
    job(d, "out", "");
    let ok = run(
        "sf-write",
        &["--config", "job.toml", "--progress", "off"],
        d,
        None,
        None,
    );
    assert_code(&ok, 0, "");
    assert!(text(&ok.stdout).contains("published run"), "{}", text(&ok.stdout));

    // 2: a key the job file does not have; nothing written.
    job(d, "bad-out", "");
    let text_of_job = std::fs::read_to_string(d.join("job.toml")).expect("job");
    std::fs::write(
        d.join("job.toml"),
        sf_tests::replace_in(&text_of_job, "num_dbs = 2", "num_dbz = 2"),
    )
    .expect("job");
    let bad = run("sf-write", &["--config", "job.toml"], d, None, None);
    assert_code(&bad, 2, "num_dbz");
    assert!(!d.join("bad-out").exists(), "nothing was written");

    // 3: a null key in the input; nothing published.
    users_csv(d, 50, true);
    job(d, "null-out", "");
    let null = run(
        "sf-write",
        &["--config", "job.toml", "--progress", "off"],
        d,
        None,
        None,
    );
    assert_code(&null, 3, "null");
    assert!(!d.join("null-out/_CURRENT").exists(), "nothing was published");
}

#[test]
fn sf_write_exits_4_on_a_lost_compare_and_swap_and_5_when_storage_fails() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    users_csv(d, 50, false);

    // 4: the swap of _CURRENT is refused (412), as when another publisher
    // won; nothing is overwritten.
    let proxy = FaultProxy::for_s3();
    proxy.add(Rule::new("PUT", "/_CURRENT").fault(Fault::Status(412)));
    let prefix = s3_prefix("exit-conflict");
    job(d, &prefix, "");
    let lost = run(
        "sf-write",
        &["--config", "job.toml", "--progress", "off"],
        d,
        Some(proxy.url()),
        None,
    );
    assert_code(&lost, 4, "_CURRENT");
    assert!(proxy.faults_served() >= 1);

    // 5: every shard upload answers 503 (after object_store's own retry and
    // ShardForge's shard retry): storage unavailable, never bad data.
    let proxy = FaultProxy::for_s3();
    proxy.add(Rule::new("PUT", "/shards/").fault(Fault::Status(503)));
    let prefix = s3_prefix("exit-unavailable");
    job(d, &prefix, "");
    let down = run(
        "sf-write",
        &["--config", "job.toml", "--progress", "off"],
        d,
        Some(proxy.url()),
        None,
    );
    assert_code(&down, 5, "503");
    assert!(text(&down.stderr).contains("/shards/"), "{}", text(&down.stderr));
    assert!(
        !proxy
            .seen()
            .iter()
            .any(|s| s.method == "PUT" && s.path.contains("_CURRENT")),
        "nothing was published"
    );

    // 2, not 5: the store refuses the credentials (403); retrying cannot help.
    let proxy = FaultProxy::for_s3();
    proxy.add(Rule::new("*", "/").fault(Fault::Status(403)));
    let denied = run(
        "sf-write",
        &["--config", "job.toml", "--progress", "off"],
        d,
        Some(proxy.url()),
        None,
    );
    assert_code(&denied, 2, "403");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sf_read_exits_4_on_a_lost_rollback_and_5_when_storage_fails() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().to_path_buf();
    let prefix = s3_prefix("exit-read");
    build_snapshot(
        &prefix,
        &SnapshotSpec::hash("one", 2, KeyEncoding::U64Be),
        &int_rows(20, "a"),
    )
    .await;
    build_snapshot(
        &prefix,
        &SnapshotSpec::hash("two", 2, KeyEncoding::U64Be),
        &int_rows(20, "b"),
    )
    .await;
    let current = format!("{prefix}/_CURRENT");
    let opts = [
        "--storage-option",
        "max_retries=1",
        "--storage-option",
        "retry_timeout=2s",
    ];
    let args = |tail: &[&'static str]| -> Vec<String> {
        let mut a = vec!["--current-url".to_string(), current.clone()];
        a.extend(opts.iter().map(|s| s.to_string()));
        a.extend(tail.iter().map(|s| s.to_string()));
        a
    };
    let go = |proxy: &FaultProxy, a: Vec<String>, d: std::path::PathBuf| {
        let url = proxy.url().to_string();
        async move {
            tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                run("sf-read", &refs, &d, Some(&url), None)
            })
            .await
            .expect("run")
        }
    };

    let proxy = FaultProxy::for_s3();
    let ok = go(&proxy, args(&["get", "3"]), d.clone()).await;
    assert_code(&ok, 0, "");
    assert!(text(&ok.stdout).contains("b:3"), "{}", text(&ok.stdout));

    // 4: the rollback's swap is refused (412): nothing changes.
    proxy.add(Rule::new("PUT", "/_CURRENT").fault(Fault::Status(412)));
    let lost = go(&proxy, args(&["rollback", "--run-id", "one"]), d.clone()).await;
    assert_code(&lost, 4, "_CURRENT");
    proxy.clear();
    let still = go(&proxy, args(&["info"]), d.clone()).await;
    assert!(
        text(&still.stdout).contains("\"run_id\": \"two\""),
        "{}",
        text(&still.stdout)
    );

    // 5: the shard's bytes cannot be read (503 after retries).
    proxy.add(Rule::new("GET", "/shards/").fault(Fault::Status(503)));
    let cache = tempfile::tempdir().expect("cache");
    let mut a = args(&["get", "3"]);
    a.extend(["--cache-dir".to_string(), cache.path().display().to_string()]);
    let down = go(&proxy, a, d.clone()).await;
    assert_code(&down, 5, "503");
    assert!(text(&down.stdout).is_empty(), "{}", text(&down.stdout));
}

#[test]
fn sf_sql_exits_by_cause() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let wh = d.join("lake");
    let conf = format!("sf.catalog.wh.warehouse={}", wh.display());
    let sql = |q: &str| run("sf-sql", &["--conf", &conf, q], d, None, None);

    assert_code(&sql("CREATE TABLE wh.db.t AS SELECT 1 AS id, 'x' AS v"), 0, "");
    // 2: a name that cannot be a table; bad SQL.
    assert_code(&sql("SELECT * FROM wh.db.\"no/such\""), 2, "");
    assert_code(&sql("SELEC 1"), 2, "SQL");
    // 3: a null key.
    let null = sql("CREATE TABLE wh.db.n AS SELECT CAST(NULL AS BIGINT) AS id, 'x' AS v");
    assert_code(&null, 3, "null");
}

#[test]
fn the_cluster_programs_refuse_bad_arguments() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = run(
        "sf-executor",
        &["--scheduler", "http://127.0.0.1:1"],
        dir.path(),
        None,
        None,
    );
    assert_code(&bad, 2, "--scheduler");
    let bad = run("sf-scheduler", &["--bind-port", "many"], dir.path(), None, None);
    assert_code(&bad, 2, "many");
    for program in ["sf-write", "sf-read", "sf-sql", "sf-scheduler", "sf-executor"] {
        let help = run(program, &["--help"], dir.path(), None, None);
        assert_code(&help, 0, "");
        let out = text(&help.stdout);
        assert!(
            out.contains("Exit codes (the same for every ShardForge program)") && out.contains("6  a validation gate"),
            "{program} --help prints the exit-code table: {out}"
        );
    }
}
