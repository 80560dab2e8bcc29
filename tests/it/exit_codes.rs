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
use sf_tests::writer_support::{binary, output_with_input, short_storage_retries, write_parquet};

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

/// A job reading `input` (`format`) in `dir`, writing under `dir/out`.
fn input_job(dir: &Path, format: &str, input: &str) {
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "key_col = \"id\"\n[input]\nformat = \"{format}\"\npath = \"{input}\"\n[routing]\nnum_dbs = 2\n\
             [output]\nprefix = \"out\"\n"
        ),
    )
    .expect("job");
}

/// Runs `sf-write` on `input` and asserts exit 3, the file named with
/// `what` is wrong, and nothing written.
fn assert_bad_input(dir: &Path, format: &str, input: &str, what: &[&str]) {
    input_job(dir, format, input);
    let out = run(
        "sf-write",
        &["--config", "job.toml", "--progress", "off"],
        dir,
        None,
        None,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{format} {input}: {err}");
    assert!(err.contains(input), "{format}: the error names the file {input}: {err}");
    for w in what {
        assert!(err.contains(w), "{format} {input}: the error says {w:?}: {err}");
    }
    assert!(!dir.join("out/_CURRENT").exists(), "nothing was published");
}

fn parquet_bytes(ids: arrow::array::ArrayRef) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tmp");
    let names: Vec<String> = (0..ids.len()).map(|i| format!("user-{i}")).collect();
    let batch = arrow::array::RecordBatch::try_from_iter([
        ("id", ids),
        (
            "name",
            std::sync::Arc::new(arrow::array::StringArray::from(names)) as arrow::array::ArrayRef,
        ),
    ])
    .expect("batch");
    let path = dir.path().join("x.parquet");
    write_parquet(&path, &[batch]);
    std::fs::read(&path).expect("read back")
}

/// Every input format, three ways of being bad: a truncated file, an
/// empty one (0 bytes) and one whose key column has a type no key
/// encoding stores. Each exits 3 (bad input data, not 1 or 2), naming the
/// file and what is wrong with it.
#[test]
fn a_bad_input_file_exits_3_naming_the_file_in_every_format() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();

    // Parquet.
    let good = parquet_bytes(Arc::new(arrow::array::Int64Array::from_iter_values(0..100)));
    std::fs::write(d.join("cut.parquet"), &good[..good.len() / 2]).expect("write");
    assert_bad_input(d, "parquet", "cut.parquet", &["not a readable Parquet file"]);
    std::fs::write(d.join("six.parquet"), &good[..6]).expect("write");
    assert_bad_input(d, "parquet", "six.parquet", &["not a readable Parquet file"]);
    std::fs::write(d.join("empty.parquet"), b"").expect("write");
    assert_bad_input(d, "parquet", "empty.parquet", &["the file is empty"]);
    let floats = parquet_bytes(Arc::new(arrow::array::Float64Array::from_iter_values(
        (0..10).map(|i| i as f64 + 0.5),
    )));
    std::fs::write(d.join("floats.parquet"), floats).expect("write");
    assert_bad_input(
        d,
        "parquet",
        "floats.parquet",
        &["\"id\" has type Float64", "keys must be"],
    );
    // In a folder of good files, the bad one is named.
    std::fs::create_dir_all(d.join("set")).expect("dir");
    for i in 0..3 {
        std::fs::write(d.join(format!("set/part-{i}.parquet")), &good).expect("write");
    }
    std::fs::write(d.join("set/part-3.parquet"), &good[..good.len() - 10]).expect("write");
    assert_bad_input(d, "parquet", "set", &["part-3.parquet", "not a readable Parquet file"]);

    // CSV.
    std::fs::write(d.join("cut.csv"), "id,name\n0,user-0\n1,user-1\n2").expect("write");
    assert_bad_input(d, "csv", "cut.csv", &["not readable as CSV"]);
    std::fs::write(d.join("empty.csv"), b"").expect("write");
    assert_bad_input(d, "csv", "empty.csv", &["the file is empty"]);
    std::fs::write(d.join("floats.csv"), "id,name\n0.5,a\n1.5,b\n").expect("write");
    assert_bad_input(d, "csv", "floats.csv", &["\"id\" has type Float64", "keys must be"]);
    // A value the schema (inferred from the first 1,000 rows) cannot hold,
    // found only while the rows are read.
    let mut late = String::from("id,name\n");
    for i in 0..1_500 {
        late.push_str(&format!("{i},user-{i}\n"));
    }
    late.push_str("x1501,user-x\n");
    std::fs::write(d.join("late.csv"), late).expect("write");
    assert_bad_input(d, "csv", "late.csv", &["x1501"]);

    // Newline-delimited JSON.
    std::fs::write(d.join("cut.json"), "{\"id\": 0, \"name\": \"a\"}\n{\"id\": 1, \"na").expect("write");
    assert_bad_input(d, "json", "cut.json", &["not readable as newline-delimited JSON"]);
    std::fs::write(d.join("empty.json"), b"").expect("write");
    assert_bad_input(d, "json", "empty.json", &["the file is empty"]);
    std::fs::write(
        d.join("floats.json"),
        "{\"id\": 0.5, \"name\": \"a\"}\n{\"id\": 1.5, \"name\": \"b\"}\n",
    )
    .expect("write");
    assert_bad_input(d, "json", "floats.json", &["\"id\" has type Float64", "keys must be"]);
}

/// A gate's byte limit written as a float says what the field takes.
#[test]
fn a_limit_of_the_wrong_kind_says_what_the_field_takes() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    users_csv(d, 10, false);
    job(d, "out", "[validate]\nmax_shard_bytes = 2e9\n");
    let out = run("sf-write", &["--config", "job.toml", "--dry-run"], d, None, None);
    assert_code(&out, 2, "max_shard_bytes");
    let err = text(&out.stderr);
    assert!(
        err.contains("a whole number") && err.contains("on_fail") && !err.contains("untagged"),
        "{err}"
    );
}

/// The CronJob's pod failure policy follows the exit-code table: the codes
/// no retry heals fail the Job at once, 4 and 5 are retried.
#[test]
fn the_cronjob_retries_exactly_the_codes_that_heal() {
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/cronjob.yaml"))
        .expect("cronjob.yaml");
    let values_after = |action: &str| -> Vec<u8> {
        let at = yaml
            .find(&format!("- action: {action}"))
            .unwrap_or_else(|| panic!("a {action} rule"));
        let line = yaml[at..]
            .lines()
            .find(|l| l.trim_start().starts_with("values:"))
            .expect("values");
        line.trim()
            .trim_start_matches("values:")
            .trim()
            .trim_matches(['[', ']'])
            .split(',')
            .map(|v| v.trim().parse().expect("an exit code"))
            .collect()
    };
    assert_eq!(values_after("FailJob"), vec![1, 2, 3, 6], "fail at once");
    assert_eq!(values_after("Count"), vec![4, 5], "retried up to backoffLimit");
    let help = text(&run("sf-write", &["--help"], Path::new("."), None, None).stdout);
    for code in 1..=6 {
        assert!(
            help.contains(&format!("\n  {code}  ")),
            "{code} is in the table: {help}"
        );
    }
    assert!(help.contains("5  storage unavailable"), "{help}");
}
