//! `sf-write` reads only the environment variables meant for it: one
//! environment (a shared ConfigMap, a cron wrapper) can carry every `SF_*`
//! variable the project's pages and deployment files name, and a build
//! still runs and publishes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sf_tests::writer_support::binary;

/// A job whose prefix and shard count the environment overrides: the
/// build only lands where the test looks when the overrides apply.
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
prefix = "not-here"
"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace folder")
        .to_path_buf()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every `SF_*` name in docs/, deploy/ and the README (placeholders like
/// `SF_<SECTION>__<KEY>` and the bare `SF_...` are not names).
fn documented_variables() -> BTreeSet<String> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    files_under(&root.join("docs"), &mut files);
    files_under(&root.join("deploy"), &mut files);
    let mut names = BTreeSet::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let mut from = 0;
        while let Some(at) = text[from..].find("SF_").map(|k| from + k) {
            from = at + 3;
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let len = text[at..]
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(text.len() - at);
            let name = text[at..at + len].trim_end_matches('_');
            if name.len() > 3 {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// A value such as a deployment would give `name`. Overrides get values
/// that fit the test's job; anything else gets a value that would break
/// the build if `sf-write` read it.
fn plausible(name: &str, dir: &Path) -> String {
    let path = |p: &str| dir.join(p).display().to_string();
    match name {
        "SF_OUTPUT__PREFIX" => path("out"),
        // Looks like a number; a run id stays text.
        "SF_OUTPUT__RUN_ID" => "20261207".into(),
        "SF_ROUTING__NUM_DBS" => "4".into(),
        "SF_OUTPUT__SQLITE__CACHE_MIB" => "32".into(),
        "SF_CURRENT_URL" => format!("file://{}", path("elsewhere/_CURRENT")),
        "SF_CACHE_DIR" => path("cache"),
        "SF_LOG_FORMAT" => "json".into(),
        // A scheduler nothing listens on: a build sent there would fail.
        "SF_CLUSTER_URL" => "df://127.0.0.1:9".into(),
        "SF_CLUSTER_DIR" => path("cluster"),
        "SF_SCHEDULER_PID" => "1".into(),
        "SF_EXECUTOR_PIDS" => "1 2".into(),
        "SF_S3_ACCESS_KEY" | "SF_S3_SECRET_KEY" => "shardforge".into(),
        other if other.contains("__") => panic!(
            "{other} is documented as a job-file override: give it a value that fits this \
             test's job in plausible() (tests/it/env_overrides.rs)"
        ),
        // A variable of another program or of a deployment: any text.
        _ => "1".into(),
    }
}

/// `sf-write` in `dir` with `vars` and no `SF_*` or `RUST_LOG` of the test's own.
fn sf_write(dir: &Path, args: &[&str], vars: &[(String, String)]) -> std::process::Output {
    let mut cmd = Command::new(binary("sf-write"));
    cmd.args(args).current_dir(dir).env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("SF_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(vars.iter().map(|(k, v)| (k, v)));
    cmd.output().expect("run sf-write")
}

fn job_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let mut csv = String::from("id,name\n");
    for i in 0..50 {
        csv.push_str(&format!("{i},user-{i}\n"));
    }
    std::fs::write(dir.path().join("users.csv"), csv).expect("csv");
    std::fs::write(dir.path().join("job.toml"), JOB).expect("job");
    dir
}

#[test]
fn every_documented_variable_at_once_still_builds_and_publishes() {
    let names = documented_variables();
    // The scan finds what the pages are known to name (else it would
    // prove nothing).
    for known in [
        "SF_CURRENT_URL",
        "SF_CACHE_DIR",
        "SF_CLUSTER_URL",
        "SF_OUTPUT__RUN_ID",
        "SF_LOG_FORMAT",
    ] {
        assert!(names.contains(known), "{known} not found among {names:?}");
    }
    let dir = job_dir();
    let vars: Vec<(String, String)> = names.iter().map(|n| (n.clone(), plausible(n, dir.path()))).collect();
    let out = sf_write(
        dir.path(),
        &["--config", "job.toml", "--json", "--progress", "log"],
        &vars,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "with {vars:?}:\n{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("the JSON report");
    assert_eq!(report["outcome"], "published", "{report}");
    // The overrides applied, typed by their keys...
    assert_eq!(report["run_id"], "20261207", "{report}");
    assert_eq!(report["num_dbs"], 4, "{report}");
    assert!(
        dir.path().join("out/_CURRENT").exists(),
        "published under the overridden prefix"
    );
    assert!(!dir.path().join("not-here").exists());
    // ...and the variables of the other programs did not.
    assert!(!dir.path().join("elsewhere").exists());
    if names.contains("SF_LOG_FORMAT") {
        for line in stderr.lines() {
            serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        }
    }
}

#[test]
fn an_override_of_a_key_that_does_not_exist_is_an_error_naming_it() {
    let dir = job_dir();
    let typo = [("SF_ROUTING__NUM_DBZ".to_string(), "4".to_string())];
    let out = sf_write(dir.path(), &["--config", "job.toml", "--progress", "off"], &typo);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SF_ROUTING__NUM_DBZ"), "{stderr}");
    assert!(!dir.path().join("not-here/_CURRENT").exists());
}

#[test]
fn the_rule_is_in_the_help() {
    let dir = job_dir();
    let out = sf_write(dir.path(), &["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in ["SF_<SECTION>__<KEY>", "SF_CURRENT_URL", "ignored"] {
        assert!(help.contains(needle), "{needle} not in:\n{help}");
    }
}
