//! `sf-write --metrics-file`: the textfile a node_exporter collects keeps
//! the last success time through failed builds, so that "time since the
//! last success" keeps counting on a failed night instead of losing its
//! series; a garbled previous file does not stop a build.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use sf_tests::writer_support::binary;

const JOB: &str = r#"
key_col = "id"
[input]
format = "csv"
path = "users.csv"
[value]
json_cols = ["name"]
[routing]
num_dbs = 3
[output]
prefix = "out"
"#;

fn sf_write(dir: &Path, run_id: &str) -> std::process::Output {
    let mut cmd = Command::new(binary("sf-write"));
    cmd.args([
        "--config",
        "job.toml",
        "--progress",
        "off",
        "--metrics-file",
        "build.prom",
    ])
    .current_dir(dir)
    .env_remove("RUST_LOG")
    .env("SF_OUTPUT__RUN_ID", run_id);
    cmd.output().expect("run sf-write")
}

/// The file's series (name with labels) and their values.
fn series(dir: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(dir.join("build.prom")).expect("the metrics file");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn write_input(dir: &Path, rows: usize) {
    let mut csv = String::from("id,name\n");
    for i in 0..rows {
        csv.push_str(&format!("{i},user-{i}\n"));
    }
    std::fs::write(dir.join("users.csv"), csv).expect("csv");
}

#[test]
fn a_failed_build_keeps_the_last_success_time_and_adds_its_own_series() {
    let dir = tempfile::tempdir().expect("tmp");
    write_input(dir.path(), 40);
    std::fs::write(dir.path().join("job.toml"), JOB).expect("job");
    // The job's prefix as the job file gives it (relative to the job file,
    // which sf-write is given by a relative path).
    let prefix = "out";
    let s = |name: &str, labels: &str| format!("{name}{{prefix=\"{prefix}\"{labels}}}");
    let last_success = s("shardforge_build_last_success_timestamp_seconds", "");

    let ok = sf_write(dir.path(), "night-1");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let first = series(dir.path());
    let when = first[&last_success];
    assert!(when > 1.0e9, "{first:?}");
    assert_eq!(first[&s("shardforge_build_success", "")], 1.0);
    assert_eq!(first[&s("shardforge_build_rows", "")], 40.0);
    assert_eq!(first[&s("shardforge_build_shards", "")], 3.0);
    assert!(first.contains_key(&s("shardforge_build_bytes", "")), "{first:?}");
    assert!(first.contains_key(&s("shardforge_build_retries", "")), "{first:?}");
    assert!(
        first.contains_key(&s("shardforge_build_step_seconds", ",step=\"publish\"")),
        "{first:?}"
    );
    assert!(
        first.keys().any(|k| k.starts_with("shardforge_build_phase_seconds{")),
        "{first:?}"
    );

    // A bad input: the file is gone.
    std::fs::remove_file(dir.path().join("users.csv")).expect("remove the input");
    let failed = sf_write(dir.path(), "night-2");
    let code = failed.status.code().expect("an exit code");
    assert_ne!(code, 0, "{}", String::from_utf8_lossy(&failed.stderr));
    let second = series(dir.path());
    assert_eq!(
        second[&last_success], when,
        "the first night's success time: {second:?}"
    );
    assert_eq!(second[&s("shardforge_build_success", "")], 0.0);
    assert_eq!(second[&s("shardforge_build_exit_code", "")], f64::from(code));
    assert_eq!(
        second[&s("shardforge_build_info", ",run_id=\"night-2\",outcome=\"failed\"")],
        1.0,
        "{second:?}"
    );
    assert!(!second.contains_key(&s("shardforge_build_rows", "")), "{second:?}");

    // A garbled previous file: a warning, and the build goes on.
    std::fs::write(dir.path().join("build.prom"), "\u{0}garbage{").expect("garble");
    write_input(dir.path(), 40);
    let again = sf_write(dir.path(), "night-3");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("previous metrics file"), "{stderr}");
    let third = series(dir.path());
    assert!(third[&last_success] >= when, "{third:?}");
    assert_eq!(third[&s("shardforge_build_success", "")], 1.0);
}
