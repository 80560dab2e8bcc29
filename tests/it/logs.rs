//! `--log-format json` (or `SF_LOG_FORMAT=json`): every program's stderr
//! is one JSON object a line, with the same names everywhere (`time`,
//! `level`, `target`, `message`) and the fields of the spans a line was
//! logged in (`run_id` of a build).

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sf_tests::serve::{LocalSnapshot, ServeProcess};
use sf_tests::writer_support::binary;

/// Each line of `stderr` as a JSON object with the common fields; panics
/// on a line that is not one.
fn json_lines(stderr: &str) -> Vec<Value> {
    // A line still being written (the program runs on) is left out.
    let whole = &stderr[..stderr.rfind('\n').map_or(0, |i| i + 1)];
    whole
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            for field in ["time", "level", "target", "message"] {
                assert!(v[field].is_string(), "no {field} in {line}");
            }
            let time = v["time"].as_str().expect("time");
            assert!(time.len() >= 20 && time.ends_with('Z') && time.contains('T'), "{line}");
            let level = v["level"].as_str().expect("level");
            assert!(["error", "warn", "info", "debug", "trace"].contains(&level), "{line}");
            v
        })
        .collect()
}

const JOB: &str = r#"
key_col = "id"
[input]
format = "csv"
path = "users.csv"
[value]
json_cols = ["name"]
[routing]
num_dbs = 2
[output]
prefix = "out"
run_id = "logged-run"
"#;

fn write_job(dir: &Path) {
    std::fs::write(dir.join("users.csv"), "id,name\n1,a\n2,b\n3,c\n").expect("csv");
    std::fs::write(dir.join("job.toml"), JOB).expect("job");
}

#[test]
fn a_build_logs_json_lines_that_name_its_run() {
    let dir = tempfile::tempdir().expect("tmp");
    write_job(dir.path());
    let out = Command::new(binary("sf-write"))
        .args(["--config", "job.toml", "--progress", "log", "--log-format", "json"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("SF_LOG_FORMAT")
        .output()
        .expect("run sf-write");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = json_lines(&stderr);
    assert!(!lines.is_empty(), "no log lines");
    // The build's phases are logged inside its span: they carry its run id.
    let in_run: Vec<&Value> = lines.iter().filter(|l| l["run_id"] == "logged-run").collect();
    assert!(!in_run.is_empty(), "no line names the run: {stderr}");
    assert!(lines.iter().all(|l| l["target"] != "log"), "{stderr}");
}

#[test]
fn a_failure_is_a_json_line_too() {
    let dir = tempfile::tempdir().expect("tmp");
    write_job(dir.path());
    std::fs::remove_file(dir.path().join("users.csv")).expect("remove the input");
    let out = Command::new(binary("sf-write"))
        .args(["--config", "job.toml", "--progress", "off"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env("SF_LOG_FORMAT", "json")
        .output()
        .expect("run sf-write");
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = json_lines(&stderr);
    let last = lines.last().expect("the error line");
    assert_eq!(last["level"], "error", "{stderr}");
    assert_eq!(last["target"], "sf-write", "{stderr}");
    assert!(last["kind"].is_string(), "{stderr}");
    assert!(
        last["message"].as_str().is_some_and(|m| m.contains("users.csv")),
        "{stderr}"
    );

    // sf-read's answer to a prefix with nothing published, the same way.
    let out = Command::new(binary("sf-read"))
        .args(["--log-format", "json", "--current-url"])
        .arg(dir.path().join("nothing"))
        .arg("info")
        .env_remove("RUST_LOG")
        .env_remove("SF_CURRENT_URL")
        .env("SF_CACHE_DIR", dir.path().join("cache"))
        .output()
        .expect("run sf-read");
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = json_lines(&stderr);
    assert_eq!(lines.last().expect("the error line")["target"], "sf-read", "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_service_logs_json_lines() {
    let snap = LocalSnapshot::with_runs(&["r1"]).await;
    let server = ServeProcess::serving(&[("ints", &snap.current_url())], &["--log-format", "json"]);
    server.wait_ready().await;
    let lines = json_lines(&server.stderr());
    assert!(!lines.is_empty(), "sf-serve logged nothing at info");
    assert!(
        lines
            .iter()
            .all(|l| l["target"].as_str().is_some_and(|t| !t.is_empty())),
        "{lines:?}"
    );
}
