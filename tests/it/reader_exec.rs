//! The real `sf-read` binary: `exec` scripts (JSON and YAML) against fresh
//! snapshots on the file system and S3, errors per op and malformed
//! scripts, and `reader.toml` with its precedence and its refusals.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sf_tests::s3_prefix;
use sf_tests::snapshots::publish_ints;
use sf_tests::writer_support::{binary, output_with_input};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `sf-read ARGS` with `env` set (an empty value removes the variable).
fn sf_read(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(binary("sf-read"));
    cmd.args(args)
        .env_remove("SF_CURRENT_URL")
        .env_remove("SF_READ_CONFIG")
        .env_remove("SF_CACHE_DIR");
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let out = output_with_input(&mut cmd, None);
    Out {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).expect("utf8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf8 stderr"),
    }
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

const YAML_SCRIPT: &str = "\
- op: get
  key: 3
- op: get
  key: \"999\"
- op: get
  key: not-a-number
- op: multiget
  keys: [1, 2, 77]
- op: route
  key: 3
- op: search
  vector: [0.5, 1]
- op: info
- op: shards
- op: health
  max_age: 100000d
- op: history
  limit: 1
- op: refresh
";

async fn exec_scripts(prefix: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let cache = dir.path().join("cache");
    let cache = cache.to_str().expect("utf8");
    publish_ints(prefix, "r1", 4, 40, "v").await;
    let current = format!("{prefix}/_CURRENT");
    let base = ["--current-url", current.as_str(), "--cache-dir", cache];
    let with = |rest: &[&str]| -> Vec<String> { base.iter().chain(rest).map(|s| s.to_string()).collect() };
    let run = |rest: &[&str]| {
        let args = with(rest);
        sf_read(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };

    // YAML: a line per op, in order; the failing ops (a key that does not
    // parse, a search of a snapshot without vectors) say so and the batch
    // goes on; exit 1.
    let yaml = write(dir.path(), "ops.yaml", YAML_SCRIPT);
    let o = run(&["exec", "--script", yaml.to_str().expect("utf8")]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let lines: Vec<Value> = o.stdout.lines().map(json).collect();
    let ops: Vec<&str> = lines.iter().map(|l| l["op"].as_str().expect("op")).collect();
    assert_eq!(
        ops,
        [
            "get", "get", "get", "multiget", "route", "search", "info", "shards", "health", "history", "refresh"
        ]
    );
    // The same line a direct `get` prints, byte for byte.
    let direct = run(&["get", "3"]);
    assert_eq!(direct.code, 0, "{}", direct.stderr);
    assert_eq!(o.stdout.lines().next(), direct.stdout.lines().next());
    assert_eq!(lines[0]["value"], "v:3");
    assert_eq!(
        (lines[1]["found"].clone(), lines[1]["value"].clone()),
        (false.into(), "null".into())
    );
    assert_eq!(lines[2]["key"], "not-a-number");
    assert_eq!(lines[2]["exit_code"], 2, "{}", lines[2]);
    assert!(lines[2]["error"].as_str().expect("error").contains("not-a-number"));
    assert_eq!(lines[3]["results"].as_array().expect("results").len(), 3);
    assert_eq!(lines[3]["results"][2]["found"], false);
    assert_eq!(
        lines[4]["db_id"],
        run(&["route", "3"]).stdout.trim().parse::<Value>().expect("json")["db_id"]
    );
    assert!(lines[5]["error"].is_string(), "{}", lines[5]);
    assert_eq!(lines[6]["run_id"], "r1");
    assert_eq!(lines[7]["shards"].as_array().expect("shards").len(), 4);
    assert_eq!(lines[8]["status"], "healthy");
    assert_eq!(lines[9]["manifests"].as_array().expect("manifests").len(), 1);
    assert_eq!(
        (lines[10]["changed"].clone(), lines[10]["pinned"].clone()),
        (false.into(), false.into())
    );

    // JSON, the reference's mapping form, `on_error: stop`: the first
    // failure is the last line. --output-file takes the lines.
    let script =
        r#"{"commands": [{"op": "get", "key": 5}, {"op": "get", "key": "x"}, {"op": "info"}], "on_error": "stop"}"#;
    let js = write(dir.path(), "ops.json", script);
    let file = dir.path().join("out.jsonl");
    let o = run(&[
        "exec",
        "--script",
        js.to_str().expect("utf8"),
        "--output-file",
        file.to_str().expect("utf8"),
    ]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    let written = std::fs::read_to_string(&file).expect("output file");
    let lines: Vec<Value> = written.lines().map(json).collect();
    assert_eq!(lines.len(), 2, "{written}");
    assert_eq!(lines[0]["value"], "v:5");
    assert!(lines[1]["error"].is_string());

    // --stop-on-error stops a list too; every op succeeding is exit 0,
    // with --value-format applied.
    let list = write(dir.path(), "list.yml", "- op: get\n  key: x\n- op: info\n");
    let o = run(&["exec", "--script", list.to_str().expect("utf8"), "--stop-on-error"]);
    assert_eq!((o.code, o.stdout.lines().count()), (1, 1), "{}", o.stdout);
    let good = write(dir.path(), "good", "[{\"op\": \"get\", \"key\": 7}]");
    let o = run(&[
        "exec",
        "--script",
        good.to_str().expect("utf8"),
        "--value-format",
        "hex",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(json(o.stdout.trim())["value"], hex::encode("v:7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_scripts_on_the_file_system() {
    let root = tempfile::tempdir().expect("root");
    exec_scripts(&format!("file://{}", root.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_scripts_on_s3() {
    exec_scripts(&s3_prefix("reader-exec")).await;
}

/// A malformed script is refused whole, exit 2, naming the op's index
/// and field, before the reader opens (the snapshot here does not exist:
/// opening it would be exit 3).
#[test]
fn malformed_scripts_are_refused_before_any_op_runs() {
    let dir = tempfile::tempdir().expect("dir");
    let nowhere = format!("{}/_CURRENT", dir.path().join("none").display());
    for (name, text, want) in [
        ("a.yaml", "op: get\nkey: 1\n", "a script is a list of ops"),
        (
            "b.yaml",
            "- op: info\n- op: gett\n",
            "b.yaml: ops[1].op: unknown op \"gett\"",
        ),
        (
            "c.json",
            "[{\"op\": \"info\"}, {\"op\": \"get\"}]",
            "c.json: ops[1].key: missing",
        ),
        (
            "d.yaml",
            "- op: route\n  key: {a: 1}\n",
            "d.yaml: ops[0].key: expected a string or an integer",
        ),
        ("e.yaml", "- op: multiget\n  keys: [1, [2]]\n", "e.yaml: ops[0].keys[1]"),
        (
            "f.yaml",
            "- op: get\n  key: 1\n  ctx: {a: 1}\n",
            "f.yaml: ops[0].ctx: unknown field of get",
        ),
        ("g.json", "[{\"op\": \"info\"", "g.json: not JSON"),
        ("h.yaml", "- op: health\n  max_age: soon\n", "h.yaml: ops[0].max_age"),
    ] {
        let path = write(dir.path(), name, text);
        let o = sf_read(
            &[
                "--current-url",
                &nowhere,
                "exec",
                "--script",
                path.to_str().expect("utf8"),
            ],
            &[],
        );
        assert_eq!(o.code, 2, "{name}: {}", o.stderr);
        assert!(o.stdout.is_empty(), "{name}: {}", o.stdout);
        assert!(o.stderr.contains(want), "{name}: {}", o.stderr);
    }
    // A missing script file, and --output table, are bad arguments too.
    let o = sf_read(
        &["--current-url", &nowhere, "exec", "--script", "/nonexistent/ops.yaml"],
        &[],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    let ok = write(dir.path(), "ok.yaml", "- op: info\n");
    let o = sf_read(
        &[
            "--current-url",
            &nowhere,
            "--output",
            "table",
            "exec",
            "--script",
            ok.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    // A good script against the missing snapshot: the reader's own error.
    let o = sf_read(
        &[
            "--current-url",
            &nowhere,
            "exec",
            "--script",
            ok.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stdout.is_empty());
}

async fn reader_toml(prefix_a: &str, prefix_b: &str, storage: Option<(&str, &str)>) {
    let dir = tempfile::tempdir().expect("dir");
    publish_ints(prefix_a, "run-a", 2, 10, "a").await;
    publish_ints(prefix_b, "run-b", 2, 10, "b").await;
    let cache = dir.path().join("file-cache");
    let mut text = format!(
        "[reader]\ncurrent_url = \"{prefix_a}/_CURRENT\"\ncache_dir = {:?}\nsqlite_mode = \"download\"\n\n\
         [output]\nformat = \"table\"\nnull_repr = \"(none)\"\n",
        cache.display().to_string()
    );
    // `[storage]` in place of the variable it stands for.
    let mut env: Vec<(&str, &str)> = Vec::new();
    if let Some((key, var)) = storage {
        let value = std::env::var(var).expect("S3 settings in the environment");
        text.push_str(&format!("\n[storage]\n{key} = {value:?}\n"));
        env.push((var, ""));
    }
    let config = write(dir.path(), "reader.toml", &text);
    let config = config.to_str().expect("utf8");

    // The file's URL, format, cache folder and null_repr.
    let o = sf_read(&["--config", config, "get", "3"], &env);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("a:3") && !o.stdout.contains('{'),
        "a table: {}",
        o.stdout
    );
    assert!(
        std::fs::read_dir(&cache).expect("the file's cache_dir").count() > 0,
        "shards were downloaded into the file's cache_dir"
    );
    let o = sf_read(&["--config", config, "--output", "json", "get", "999"], &env);
    assert_eq!(json(o.stdout.trim())["value"], "(none)", "{}", o.stderr);

    // Flags and their variables override the file; SF_READ_CONFIG names it.
    let b = format!("{prefix_b}/_CURRENT");
    let o = sf_read(
        &["--config", config, "--current-url", &b, "--output", "json", "info"],
        &env,
    );
    assert_eq!(json(o.stdout.trim())["run_id"], "run-b", "{}", o.stderr);
    let mut with_vars = env.clone();
    with_vars.extend([("SF_READ_CONFIG", config), ("SF_CURRENT_URL", b.as_str())]);
    let o = sf_read(&["--output", "json", "info"], &with_vars);
    assert_eq!(json(o.stdout.trim())["run_id"], "run-b", "{}", o.stderr);
    with_vars.pop();
    let o = sf_read(&["--output", "json", "info"], &with_vars);
    assert_eq!(json(o.stdout.trim())["run_id"], "run-a", "{}", o.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_toml_sets_what_flags_do_not_on_the_file_system() {
    let root = tempfile::tempdir().expect("root");
    let a = format!("file://{}/a", root.path().display());
    let b = format!("file://{}/b", root.path().display());
    reader_toml(&a, &b, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_toml_sets_what_flags_do_not_on_s3() {
    reader_toml(
        &s3_prefix("reader-toml-a"),
        &s3_prefix("reader-toml-b"),
        Some(("aws_endpoint", "AWS_ENDPOINT")),
    )
    .await;
}

#[test]
fn reader_toml_refuses_unknown_keys_naming_key_and_file() {
    let dir = tempfile::tempdir().expect("dir");
    for (text, key) in [
        ("[reader]\nsqlite_mod = \"range\"\n", "sqlite_mod"),
        ("[reder]\ncurrent_url = \"/x\"\n", "reder"),
        ("[output]\nformat = \"json\"\ncolour = true\n", "colour"),
        ("[reader]\nsqlite_mode = 5\n", "sqlite_mode"),
    ] {
        let config = write(dir.path(), "bad-reader.toml", text);
        let o = sf_read(
            &[
                "--config",
                config.to_str().expect("utf8"),
                "--current-url",
                "/x",
                "info",
            ],
            &[],
        );
        assert_eq!(o.code, 2, "{text}: {}", o.stderr);
        assert!(
            o.stderr.contains(key) && o.stderr.contains("bad-reader.toml"),
            "{text}: {}",
            o.stderr
        );
    }
    let o = sf_read(&["--config", "/nonexistent/reader.toml", "info"], &[]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("/nonexistent/reader.toml"), "{}", o.stderr);
}
