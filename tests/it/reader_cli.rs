//! The real `sf-read` binary: the reference CLI's transcript reproduced
//! line for line on the fixtures, fresh snapshots on the file system and
//! S3, rollback and cleanup (dry and for real), exit codes, and the cache
//! shared between processes.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sf_manifest::{CelType, Key, KeyEncoding, RoutingValue, RunId, ShardingSpec, Timestamp};
use sf_reader::{ContextValue, ReaderSettings};
use sf_tests::readers::{key_in, open};
use sf_tests::snapshots::{
    Backend, Row, SnapshotSpec, build_snapshot, fixture_copy, int_rows, publish_ints, tree_state,
};
use sf_tests::tamper::{damage_shard, delete_shard, point_current_at, publish_over, put_manifest_bytes};
use sf_tests::writer_support::{binary, output_with_input};
use sf_tests::{fixture_dir, s3_prefix};

/// The `sf-read` binary that `./scripts/test.sh` builds first.
fn sf_read() -> PathBuf {
    binary("sf-read")
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], cache: &Path, stdin: Option<&str>) -> Out {
    let mut cmd = Command::new(sf_read());
    cmd.args(args).env("SF_CACHE_DIR", cache).env_remove("SF_CURRENT_URL");
    let out = output_with_input(&mut cmd, stdin);
    Out {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).expect("utf8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf8 stderr"),
    }
}

fn ok(args: &[&str], cache: &Path) -> String {
    let o = run(args, cache, None);
    assert_eq!(o.code, 0, "sf-read {args:?} failed: {}", o.stderr);
    o.stdout
}

fn json(line: &str) -> Value {
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
}

/// Every command of the reference transcript, run against copies of the
/// fixtures, prints the same line and exits with the same code.
#[test]
fn the_reference_transcript_is_reproduced() {
    let (_a, hash_int) = fixture_copy("sqlite-bucket-golden/hash_int");
    let (_b, cel_cat) = fixture_copy("sqlite-bucket-golden/cel_cat");
    let (_c, hash_str) = fixture_copy("sqlite-bucket-golden/hash_str");
    let local = BTreeMap::from([
        ("s3://golden/hash_int", hash_int.clone()),
        ("s3://golden/cel_cat", cel_cat),
        ("s3://golden/hash_str", hash_str),
    ]);
    let cache = tempfile::tempdir().expect("cache");
    let text = std::fs::read_to_string(fixture_dir().join("reference_cli_transcript.txt")).expect("transcript");
    let lines: Vec<&str> = text.lines().collect();
    let mut checked = 0;
    for pair in lines.chunks(2) {
        let [cmd, want] = pair else {
            panic!("transcript lines come in pairs")
        };
        let cmd = cmd.strip_prefix("$ shardy ").expect("command line");
        let (args, rc) = cmd.rsplit_once("[rc=").expect("rc");
        let want_rc: i32 = rc.trim_end_matches(']').parse().expect("rc");
        let mut args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
        // The reference ran against s3://golden/hash_int by default.
        let mut current = format!("{}/_CURRENT", hash_int.display());
        if let Some(i) = args.iter().position(|a| a == "--current-url") {
            let url = args.remove(i + 1);
            args.remove(i);
            let prefix = url.trim_end_matches("/_CURRENT");
            current = format!("{}/_CURRENT", local[prefix].display());
        }
        if args.iter().any(|a| a == "health") {
            // The reference's snapshot was fresh when it ran.
            args.extend(["--max-age".into(), "100000d".into()]);
        }
        let mut full: Vec<&str> = vec!["--current-url", &current];
        full.extend(args.iter().map(String::as_str));
        let out = run(&full, cache.path(), None);
        assert_eq!(out.code, want_rc, "{cmd}: {}", out.stderr);
        let got = out.stdout.trim_end().to_string();
        let op = json(want)["op"].as_str().expect("op").to_string();
        match op.as_str() {
            "history" => {
                let ours = got.replace(&format!("file://{}", hash_int.display()), "s3://golden/hash_int");
                assert_eq!(ours, *want, "{cmd}");
            }
            "health" => {
                let (g, w) = (json(&got), json(want));
                for k in ["op", "status", "manifest_ref", "num_shards", "is_closed"] {
                    assert_eq!(g[k], w[k], "{cmd}: {k}");
                }
                assert!(g["manifest_age_seconds"].is_f64());
            }
            "cleanup" => {
                let (g, w) = (json(&got), json(want));
                for (k, v) in w.as_object().expect("object") {
                    assert_eq!(&g[k], v, "{cmd}: {k}");
                }
            }
            _ => assert_eq!(got, *want, "{cmd}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 12, "every transcript command ran");
}

#[test]
fn exit_codes_and_errors_name_what_is_wrong() {
    let cache = tempfile::tempdir().expect("cache");
    let (_a, hash_int) = fixture_copy("sqlite-bucket-golden/hash_int");
    let current = format!("{}/_CURRENT", hash_int.display());

    // health: 0 healthy, 1 stale (see
    // `health_exits_by_the_snapshot_age_whatever_the_date`), 2 error.
    let o = run(
        &["--current-url", &current, "health", "--max-age", "100000d"],
        cache.path(),
        None,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let empty = tempfile::tempdir().expect("empty");
    let nowhere = format!("{}/_CURRENT", empty.path().display());
    let o = run(&["--current-url", &nowhere, "health"], cache.path(), None);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("_CURRENT") && o.stderr.contains(&empty.path().display().to_string()),
        "{}",
        o.stderr
    );

    // Errors exit with their kind's code (2 bad arguments, 3 missing or
    // bad data) and say what is wrong on stderr, nothing on stdout.
    for (args, needle, code) in [
        (vec!["--current-url", &current, "get", "abc"], "u64be", 2),
        (
            vec!["--current-url", &nowhere, "get", "1"],
            "nothing has been published",
            3,
        ),
        (vec!["get", "1"], "--current-url", 2),
        (
            vec!["--current-url", &current, "--offset", "7", "get", "1"],
            "offset 7",
            2,
        ),
        (
            vec!["--current-url", &current, "--ref", "x", "--offset", "1", "info"],
            "cannot be used with",
            2,
        ),
        (
            vec!["--current-url", &current, "rollback"],
            "--run-id, --ref or --offset",
            2,
        ),
        (
            vec!["--current-url", &current, "get", "1", "--ctx", "region=eu"],
            "region",
            2,
        ),
        (
            vec!["--current-url", &current, "cleanup", "--older-than", "soon"],
            "soon",
            2,
        ),
    ] {
        let o = run(&args, cache.path(), None);
        assert_eq!(o.code, code, "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains(needle), "{args:?}: {}", o.stderr);
        assert!(o.stdout.is_empty(), "{args:?}: {}", o.stdout);
    }
    let help = run(&["--help"], cache.path(), None);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Exit codes") && help.stdout.contains("4  conflict"));
}

/// A second process finds the shard files the first one downloaded and
/// uses them as they are.
#[test]
fn the_download_cache_is_shared_between_processes() {
    let cache = tempfile::tempdir().expect("cache");
    let (_a, hash_int) = fixture_copy("sqlite-bucket-golden/hash_int");
    let current = format!("{}/_CURRENT", hash_int.display());
    let all = ["multiget", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    let mut args = vec!["--current-url", current.as_str(), "--sqlite-mode", "download"];
    args.extend(all);
    let first = ok(&args, cache.path());
    let files: BTreeMap<PathBuf, (u64, u64)> = std::fs::read_dir(cache.path().join("sqlite"))
        .expect("cache")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "db"))
        .map(|p| {
            let m = std::fs::metadata(&p).expect("meta");
            (p, (m.ino(), m.mtime_nsec() as u64))
        })
        .collect();
    assert_eq!(files.len(), 4, "four shards cached");
    let second = ok(&args, cache.path());
    assert_eq!(first, second);
    for (p, (ino, mtime)) in &files {
        let m = std::fs::metadata(p).expect("meta");
        assert_eq!(
            (m.ino(), m.mtime_nsec() as u64),
            (*ino, *mtime),
            "{} was fetched again",
            p.display()
        );
    }
}

async fn fresh_snapshots(base: &str) {
    let cache = tempfile::tempdir().expect("cache");
    // Hash over SQLite and SlateDB.
    for backend in [Backend::Sqlite, Backend::SlateDb] {
        let prefix = format!("{base}/hash-{backend:?}").to_lowercase();
        let mut spec = SnapshotSpec::hash("r1", 4, KeyEncoding::U64Be);
        spec.backend = backend;
        build_snapshot(&prefix, &spec, &int_rows(50, "v")).await;
        let current = format!("{prefix}/_CURRENT");
        let c = cache.path();
        assert_eq!(
            ok(&["--current-url", &current, "get", "7"], c).trim(),
            r#"{"op": "get", "key": "7", "found": true, "value": "v:7"}"#
        );
        let keys = "3\n49\n50\n0\n";
        let o = run(&["--current-url", &current, "multiget", "-"], c, Some(keys));
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(
            o.stdout.trim(),
            r#"{"op": "multiget", "results": [{"key": "3", "found": true, "value": "v:3"}, {"key": "49", "found": true, "value": "v:49"}, {"key": "50", "found": false}, {"key": "0", "found": true, "value": "v:0"}]}"#
        );
        // Every line is a key: a blank one is the empty key, which is no
        // integer, and says so.
        let blank = run(&["--current-url", &current, "multiget", "-"], c, Some("3\n\n0\n"));
        assert_eq!(blank.code, 2, "{}", blank.stderr);
        assert!(blank.stderr.contains("invalid key \"\""), "{}", blank.stderr);
        let jsonl = ok(
            &[
                "--current-url",
                &current,
                "--output",
                "jsonl",
                "multiget",
                "1",
                "2",
                "99",
            ],
            c,
        );
        let rows: Vec<Value> = jsonl.lines().map(json).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2], serde_json::json!({"key": "99", "found": false}));
        let hex = ok(&["--current-url", &current, "--value-format", "hex", "get", "1"], c);
        assert_eq!(json(&hex)["value"], hex::encode("v:1"));
        let b64 = ok(&["--current-url", &current, "--value-format", "base64", "get", "1"], c);
        assert_eq!(json(&b64)["value"], "djox");
        let table = ok(&["--current-url", &current, "--output", "table", "shards"], c);
        assert!(table.starts_with("db_id") && table.lines().count() == 5, "{table}");
        let info = json(&ok(&["--current-url", &current, "info"], c));
        assert_eq!(info["row_count"], 50);
        assert_eq!(info["run_id"], "r1");
        let route = json(&ok(&["--current-url", &current, "route", "7"], c));
        assert!(route["db_id"].as_u64().is_some_and(|d| d < 4));
    }

    // Text keys, the empty string among them: a blank stdin line looks it up.
    let prefix = format!("{base}/utf8-empty");
    let spec = SnapshotSpec::hash("text", 2, KeyEncoding::Utf8);
    let rows = vec![
        Row::new(Key::Str(String::new()), "the empty key"),
        Row::new(Key::Str("a".into()), "A"),
    ];
    build_snapshot(&prefix, &spec, &rows).await;
    let current = format!("{prefix}/_CURRENT");
    let o = run(
        &["--current-url", &current, "multiget", "-"],
        cache.path(),
        Some("a\n\nzz\r\n\r\n"),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout.trim(),
        r#"{"op": "multiget", "results": [{"key": "a", "found": true, "value": "A"}, {"key": "", "found": true, "value": "the empty key"}, {"key": "zz", "found": false}, {"key": "", "found": true, "value": "the empty key"}]}"#
    );

    // Categorical CEL with context, raw keys.
    let prefix = format!("{base}/cel-cat");
    let mut spec = SnapshotSpec::hash("cat", 2, KeyEncoding::Raw);
    spec.sharding = ShardingSpec::cel(
        "region",
        BTreeMap::from([("region".to_string(), CelType::String)]),
        Some(vec![RoutingValue::Str("eu".into()), RoutingValue::Str("us".into())]),
    );
    let rows = vec![
        Row::new(Key::Bytes(vec![0xff, 0x01]), "eu-binary").with("region", ContextValue::Str("eu".into())),
        Row::new(Key::Bytes(b"plain".to_vec()), "us-text").with("region", ContextValue::Str("us".into())),
    ];
    build_snapshot(&prefix, &spec, &rows).await;
    let current = format!("{prefix}/_CURRENT");
    let c = cache.path();
    let got = json(&ok(
        &["--current-url", &current, "get", "hex:ff01", "--ctx", "region=eu"],
        c,
    ));
    assert_eq!(got["value"], "eu-binary");
    let got = json(&ok(
        &[
            "--current-url",
            &current,
            "get",
            "plain",
            "--routing-context",
            "region=us",
        ],
        c,
    ));
    assert_eq!(got["value"], "us-text");
    let got = json(&ok(
        &["--current-url", &current, "get", "plain", "--ctx", "region=mars"],
        c,
    ));
    assert_eq!(got["found"], false, "an unknown token is a miss");
    let got = json(&ok(
        &["--current-url", &current, "route", "plain", "--ctx", "region=mars"],
        c,
    ));
    assert_eq!(got["db_id"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_snapshots_on_the_file_system() {
    let root = tempfile::tempdir().expect("root");
    fresh_snapshots(&format!("file://{}", root.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_snapshots_on_s3() {
    fresh_snapshots(&s3_prefix("reader-cli")).await;
}

async fn admin_commands(prefix: &str, local_root: Option<&Path>) {
    let cache = tempfile::tempdir().expect("cache");
    let c = cache.path();
    let mut spec = SnapshotSpec::hash("run1", 4, KeyEncoding::U64Be);
    spec.losing_attempts = true;
    build_snapshot(prefix, &spec, &int_rows(20, "one")).await;
    spec.run_id = "run2".into();
    build_snapshot(prefix, &spec, &int_rows(20, "two")).await;
    let current = format!("{prefix}/_CURRENT");
    let value = |k: &str| json(&ok(&["--current-url", &current, "get", k], c))["value"].clone();
    assert_eq!(value("5"), "two:5");

    // Rollback by offset, by ref, by run id.
    let r = json(&ok(&["--current-url", &current, "--offset", "1", "rollback"], c));
    assert_eq!(
        (r["op"].as_str(), r["changed"].as_bool()),
        (Some("rollback"), Some(true))
    );
    assert_eq!(
        (r["from_run_id"].as_str(), r["run_id"].as_str()),
        (Some("run2"), Some("run1"))
    );
    assert_eq!(value("5"), "one:5");
    let history = json(&ok(&["--current-url", &current, "history"], c));
    let newest = history["manifests"][0]["ref"].as_str().expect("ref").to_string();
    let r = json(&ok(&["--current-url", &current, "--ref", &newest, "rollback"], c));
    assert_eq!(r["run_id"], "run2");
    assert_eq!(value("5"), "two:5");
    let r = json(&ok(&["--current-url", &current, "rollback", "--run-id", "run2"], c));
    assert_eq!(r["changed"], false);

    // Cleanup: dry run lists the losing attempts and deletes nothing.
    let before = local_root.map(tree_state);
    let dry = json(&ok(&["--current-url", &current, "cleanup", "--dry-run"], c));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["stale_attempts"].as_array().expect("list").len(), 8);
    assert_eq!(dry["total_prefixes_removed"], 8);
    if let (Some(root), Some(before)) = (local_root, &before) {
        assert_eq!(&tree_state(root), before, "a dry run deletes nothing");
    }
    let real = json(&ok(&["--current-url", &current, "cleanup"], c));
    assert_eq!(real["dry_run"], false);
    assert_eq!(real["stale_attempts"], dry["stale_attempts"]);
    assert_eq!(real["total_objects_deleted"], 16);
    let again = json(&ok(&["--current-url", &current, "cleanup", "--dry-run"], c));
    assert_eq!(again["stale_attempts"].as_array().expect("list").len(), 0);

    // Old runs: keep the newest manifest (also _CURRENT's).
    let dry = json(&ok(
        &["--current-url", &current, "cleanup", "--keep-last", "1", "--dry-run"],
        c,
    ));
    assert_eq!(dry["old_manifests"].as_array().expect("list").len(), 1);
    assert_eq!(dry["old_run_attempts"].as_array().expect("list").len(), 4);
    let table = ok(
        &[
            "--current-url",
            &current,
            "--output",
            "table",
            "cleanup",
            "--keep-last",
            "1",
            "--dry-run",
        ],
        c,
    );
    assert!(table.contains("would delete"), "{table}");
    let real = json(&ok(&["--current-url", &current, "cleanup", "--keep-last", "1"], c));
    assert_eq!(real["old_manifests"], dry["old_manifests"]);
    let history = json(&ok(&["--current-url", &current, "history"], c));
    assert_eq!(history["manifests"].as_array().expect("list").len(), 1);
    assert_eq!(value("5"), "two:5");
    let o = run(&["--current-url", &current, "--offset", "1", "rollback"], c, None);
    assert_eq!(o.code, 2, "nothing left to roll back to");
    assert!(o.stderr.contains("offset 1"), "{}", o.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_cleanup_on_the_file_system() {
    let root = tempfile::tempdir().expect("root");
    let prefix = root.path().join("snap");
    admin_commands(&format!("file://{}", prefix.display()), Some(root.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_cleanup_on_s3() {
    admin_commands(&s3_prefix("reader-cli-admin"), None).await;
}

/// `health` compares the snapshot's build time with `--max-age`: a
/// snapshot built in 2001 is stale and one built now is healthy, whatever
/// the date the suite runs on (neither depends on a fixture's date).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_by_the_snapshot_age_whatever_the_date() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let fresh = format!("file://{}/fresh", root.path().display());
    publish_ints(&fresh, "r1", 2, 10, "v").await;
    let o = run(
        &[
            "--current-url",
            &format!("{fresh}/_CURRENT"),
            "health",
            "--max-age",
            "1h",
        ],
        cache.path(),
        None,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(json(&o.stdout)["status"], "healthy");

    let old = format!("file://{}/old", root.path().display());
    let built = publish_ints(&old, "r1", 2, 10, "v").await;
    let mut m = built.manifest.clone();
    m.build.run_id = RunId::new("r2001").expect("run");
    m.build.created_at = Timestamp::from_micros(978_307_200_000_000).expect("2001-01-01");
    publish_over(&old, &m).await;
    let o = run(
        &["--current-url", &format!("{old}/_CURRENT"), "health", "--max-age", "1d"],
        cache.path(),
        None,
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    let h = json(&o.stdout);
    assert_eq!(h["status"], "stale");
    assert!(
        h["manifest_ref"].as_str().is_some_and(|r| r.contains("run_id=r2001")),
        "{h}"
    );
}

/// Missing or corrupt objects met while reading exit 3, saying on stderr
/// which object (manifest, shard and its URL) is wrong, nothing on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_errors_exit_3_naming_the_bad_object() {
    let root = tempfile::tempdir().expect("root");
    let cache = tempfile::tempdir().expect("cache");
    let shard_of = async |prefix: &str, db: u32| {
        let reader = open(prefix, ReaderSettings::default()).await;
        key_in(&reader, db, 40)
    };
    let exits_3 = |prefix: &str, key: i64, needles: &[&str]| {
        let o = run(
            &["--current-url", &format!("{prefix}/_CURRENT"), "get", &key.to_string()],
            cache.path(),
            None,
        );
        assert_eq!(o.code, 3, "{prefix}: {}", o.stderr);
        for n in needles {
            assert!(o.stderr.contains(n), "{prefix}: stderr should name {n:?}: {}", o.stderr);
        }
        assert!(o.stdout.is_empty(), "{}", o.stdout);
    };

    // _CURRENT names a manifest that is not there.
    let p = format!("file://{}/dangling", root.path().display());
    publish_ints(&p, "r1", 4, 40, "v").await;
    let missing = format!("{p}/manifests/2030-01-01T00:00:00.000000Z_run_id=gone/manifest");
    point_current_at(&p, &missing, "gone").await;
    exits_3(&p, 1, &[&missing]);

    // A manifest of format_version 5.
    let p = format!("file://{}/v5", root.path().display());
    let built = publish_ints(&p, "r1", 4, 40, "v").await;
    let mut m = built.manifest.clone();
    m.build.format_version = 5;
    m.build.run_id = RunId::new("v5").expect("run");
    let v5 = put_manifest_bytes(&p, "v5", m.to_sqlite_bytes().expect("encode")).await;
    point_current_at(&p, &v5, "v5").await;
    exits_3(&p, 1, &[&v5, "format_version 5"]);

    // A shard whose file is gone.
    let p = format!("file://{}/noshard", root.path().display());
    let built = publish_ints(&p, "r1", 4, 40, "v").await;
    let victim = built.manifest.shards.iter().find(|r| r.db_id.0 == 1).expect("row");
    let url = victim.db_url.clone().expect("url");
    let k = shard_of(&p, 1).await;
    delete_shard(&p, &url).await;
    exits_3(&p, k, &["shard 1", &url]);

    // A shard whose bytes do not match its checksum.
    let p = format!("file://{}/damaged", root.path().display());
    let built = publish_ints(&p, "r1", 4, 40, "v").await;
    let victim = built.manifest.shards.iter().find(|r| r.db_id.0 == 2).expect("row");
    let url = victim.db_url.clone().expect("url");
    let k = shard_of(&p, 2).await;
    damage_shard(&p, &url).await;
    exits_3(
        &p,
        k,
        &["shard 2", &url, victim.writer_info.checksum().expect("checksum")],
    );
}
