//! `sf-write` end to end: every input format, every routing strategy, both
//! backends, local files and S3; each snapshot read back row by row.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::physical_plan::{ExecutionPlanProperties, collect_partitioned};
use sf_manifest::format::json::{JsonStyle, to_sorted_string};
use sf_manifest::{Classified, DbId, ErrorKind, Key, ManifestStore, RoutingValue};
use sf_reader::{Pin, ReaderSettings};
use sf_router::{ContextValue, Routed, Router};
use sf_tests::fault_store::{Fault, FaultStore, Op, ending};
use sf_tests::readers::{self, PAGED_MODES, in_every_mode, read_in_every_mode};
use sf_tests::writer_support::{
    binary, build_embedded, list_keys, parse_job, read_snapshot, write_csv, write_json, write_parquet,
};
use sf_tests::{fixture_dir, manifest_store, replace_in, s3_prefix};
use sf_writer::build::backend::DuplicatePolicy;
use sf_writer::job::{BuildOptions, Embedded, build, prepare};

const REGIONS: [&str; 3] = ["ap", "eu", "us"];

/// `n` users: id, name, region, score, payload.
fn users(n: i64) -> RecordBatch {
    users_named(n, "user")
}

/// [`users`] named `<name>-<id>`.
fn users_named(n: i64, name: &str) -> RecordBatch {
    let ids: Vec<i64> = (0..n).collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("{name}-{i}")))) as ArrayRef,
        ),
        (
            "region",
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| REGIONS[(*i % 3) as usize]),
            )) as ArrayRef,
        ),
        (
            "score",
            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i * 7 % 1000))) as ArrayRef,
        ),
        (
            "payload",
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("p{i}")))) as ArrayRef,
        ),
    ])
    .expect("users batch")
}

fn json_value(id: i64) -> Vec<u8> {
    json_value_named("user", id)
}

/// The stored value of user `id` of [`users_named`].
fn json_value_named(name: &str, id: i64) -> Vec<u8> {
    format!(r#"{{"name":"{name}-{id}","score":{}}}"#, id * 7 % 1000).into_bytes()
}

/// Reads the snapshot back and checks every input row is stored, with its
/// value, in the shard the manifest's router names, and nothing else is.
async fn check(prefix: &str, n: i64, value: impl Fn(i64) -> Vec<u8>) -> sf_tests::writer_support::Snapshot {
    let snap = read_snapshot(prefix).await;
    let router = Router::for_build(&snap.manifest.build).expect("router");
    let rows = snap.rows();
    assert_eq!(rows.len() as i64, n, "exactly the input's keys are stored");
    for id in 0..n {
        let key = Key::Int(id);
        let routed = if router.needs_context() {
            let ctx = BTreeMap::from([(
                "region".to_string(),
                ContextValue::Str(REGIONS[(id % 3) as usize].into()),
            )]);
            router.route_context(&ctx).expect("route")
        } else {
            router.route_key(&key).expect("route")
        };
        let Routed::Db(db) = routed else {
            panic!("key {id} has an unknown token")
        };
        let stored = rows
            .get(&router.encode_key(&key).expect("encode"))
            .unwrap_or_else(|| panic!("key {id} missing"));
        assert_eq!(stored.0, DbId(db), "key {id} sits in the shard the router names");
        assert_eq!(stored.1, value(id), "value of key {id}");
    }
    assert_eq!(snap.manifest.row_count() as i64, n);
    read_through_the_reader(prefix, n, &value).await;
    snap
}

/// The online reader serves every row of the snapshot (SQLite shards in
/// both download and range mode), with a routing context when the
/// snapshot routes by other columns, and misses an absent key.
async fn read_through_the_reader(prefix: &str, n: i64, value: &impl Fn(i64) -> Vec<u8>) {
    read_in_every_mode(prefix, &PAGED_MODES, async |reader| {
        let context = |id: i64| {
            BTreeMap::from([(
                "region".to_string(),
                ContextValue::Str(REGIONS[(id % 3) as usize].into()),
            )])
        };
        let ids: Vec<i64> = (0..n).chain([n + 5]).collect();
        let got = if reader.needs_context() {
            let items: Vec<_> = ids.iter().map(|i| (Key::Int(*i), context(*i))).collect();
            reader.multi_get_with_context(&items).await.expect("multi_get")
        } else {
            let keys: Vec<Key> = ids.iter().map(|i| Key::Int(*i)).collect();
            reader.multi_get(&keys).await.expect("multi_get")
        };
        for (id, v) in ids.iter().zip(&got) {
            if *id < n {
                assert_eq!(v.as_deref(), Some(value(*id).as_slice()), "reader: key {id}");
            } else {
                assert_eq!(v, &None, "reader: absent key {id}");
            }
        }
        let one = if reader.needs_context() {
            reader.get_with_context(&Key::Int(1), &context(1)).await
        } else {
            reader.get(&Key::Int(1)).await
        };
        assert_eq!(one.expect("get").as_deref(), Some(value(1).as_slice()));
    })
    .await;
}

fn fixture_schema() -> String {
    let path = fixture_dir()
        .join("sqlite-bucket-golden/hash_int/manifests/2026-11-20T23:48:07.694769Z_run_id=goldenrun0005/manifest");
    schema_of(&std::fs::read(path).expect("fixture manifest"))
}

fn schema_of(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("m");
    std::fs::write(&p, bytes).expect("write");
    let c = rusqlite::Connection::open(&p).expect("open");
    let mut s = c
        .prepare("SELECT sql FROM sqlite_master ORDER BY rowid")
        .expect("prepare");
    s.query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The manifest has the reference's tables and JSON shapes.
async fn check_manifest_shapes(prefix: &str) {
    let (m, bytes) = sf_tests::tamper::current_manifest(prefix).await;
    assert_eq!(schema_of(&bytes), fixture_schema());
    assert_eq!(m.build.format_version, 4);
    assert_eq!(m.build.db_path_template, "db={db_id:05d}");
    assert_eq!(m.build.shard_prefix, "shards");
    let sharding = to_sorted_string(&m.build.sharding.to_json(), JsonStyle::Python);
    assert!(sharding.starts_with(r#"{"cel_columns": "#) && sharding.contains(r#""hash_algorithm": "xxh3_64""#));
    for s in &m.shards {
        let wi = s.writer_info.to_json();
        for k in ["attempt", "duration_ms", "stage_id", "task_attempt_id"] {
            assert!(wi.get(k).is_some(), "writer_info.{k}");
        }
        assert!(s.writer_info.checksum().is_some_and(|c| c.starts_with("xxh3_128")));
        assert_eq!(s.checkpoint_id.as_ref().map(String::len), Some(32));
        assert!(
            s.db_url
                .as_deref()
                .is_some_and(|u| u.ends_with(&format!("db={:05}/attempt={:02}", s.db_id.0, s.attempt.0)))
        );
    }
    // The raw text of one shard row, as the reference writes it.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("m"), &bytes).expect("write");
    let c = rusqlite::Connection::open(dir.path().join("m")).expect("open");
    let (wi, created): (String, String) = c
        .query_row(
            "SELECT s.writer_info, b.created_at FROM shards s, build_meta b LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row");
    assert!(wi.starts_with(r#"{"attempt": "#), "{wi}");
    assert!(created.ends_with('Z') && created.len() == 27, "{created}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_hash_sqlite_on_local_files() {
    let dir = tempfile::tempdir().expect("tmp");
    write_parquet(
        &dir.path().join("users.parquet"),
        &[users(3000), users(3000).slice(0, 0)],
    );
    let j = parse_job(
        dir.path(),
        r#"
key_col = "id"
[input]
format = "parquet"
path = "users.parquet"
[value]
binary_col = "payload"
[routing]
num_dbs = 7
[output]
prefix = "out"
"#,
    );
    let s = build_embedded(&j).await;
    assert_eq!((s.rows, s.num_dbs, s.shards_written), (3000, 7, 7));
    let prefix = format!("file://{}/out", dir.path().display());
    check(&prefix, 3000, |id| format!("p{id}").into_bytes()).await;
    check_manifest_shapes(&prefix).await;
    // Only the winners' attempt folders exist, each with its shard and claim.
    let keys = list_keys(&prefix).await;
    let shard_objects: Vec<_> = keys.iter().filter(|k| k.starts_with("shards/")).collect();
    assert_eq!(shard_objects.len(), 14, "{shard_objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_cel_direct_sqlite_on_local_files() {
    let dir = tempfile::tempdir().expect("tmp");
    write_csv(&dir.path().join("users.csv"), &[users(2000)]);
    let j = parse_job(
        dir.path(),
        r#"
key_col = "id"
[input]
format = "csv"
path = "users.csv"
[value]
json_cols = ["score", "name"]
[routing]
strategy = "cel"
expr = "shard_hash(key) % 5u"
columns = { key = "int" }
num_dbs = 5
[output]
prefix = "out"
"#,
    );
    let s = build_embedded(&j).await;
    assert_eq!((s.rows, s.num_dbs), (2000, 5));
    let prefix = format!("file://{}/out", dir.path().display());
    let snap = check(&prefix, 2000, json_value).await;
    assert_eq!(snap.manifest.build.sharding.routing_values, None, "direct mode");
    // `shard_hash(key) % 5u` is hash routing: the same placement.
    let hash = Router::hash(5, snap.manifest.build.key_encoding).expect("router");
    for (k, (db, _)) in snap.rows() {
        let key = sf_router::decode_key(&k, snap.manifest.build.key_encoding).expect("key");
        assert_eq!(hash.route_key(&key).expect("route"), Routed::Db(db.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_cel_categorical_inferred_slatedb_on_local_files() {
    let dir = tempfile::tempdir().expect("tmp");
    write_json(&dir.path().join("users.json"), &[users(1500)]);
    let j = parse_job(
        dir.path(),
        r#"
key_col = "id"
[input]
format = "json"
path = "users.json"
[value]
json_cols = ["name", "score"]
[routing]
strategy = "cel"
expr = "region"
columns = { region = "string" }
[output]
prefix = "out"
backend = "slatedb"
"#,
    );
    let s = build_embedded(&j).await;
    assert_eq!((s.rows, s.num_dbs), (1500, 3));
    let prefix = format!("file://{}/out", dir.path().display());
    let snap = check(&prefix, 1500, json_value).await;
    let values: Vec<RoutingValue> = REGIONS.iter().map(|r| RoutingValue::Str(r.to_string())).collect();
    assert_eq!(
        snap.manifest.build.sharding.routing_values,
        Some(values),
        "sorted distinct values"
    );
    assert!(
        snap.manifest.shards.iter().all(|s| s.db_bytes == 0),
        "SlateDB shards record 0 bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_input_hash_slatedb_on_s3() {
    let dir = tempfile::tempdir().expect("tmp");
    let all = users(1200);
    write_parquet(
        &dir.path().join("users.parquet"),
        &[all.project(&[0, 1, 2]).expect("project")],
    );
    write_csv(
        &dir.path().join("scores.csv"),
        &[all.project(&[0, 3]).expect("project")],
    );
    let prefix = s3_prefix("sql-slatedb");
    let j = parse_job(
        dir.path(),
        &format!(
            r#"
key_col = "id"
[input]
format = "sql"
sql = "SELECT u.id, u.name, s.score FROM users u JOIN scores s ON u.id = s.id WHERE u.id >= 0"
[input.tables.users]
format = "parquet"
path = "users.parquet"
[input.tables.scores]
format = "csv"
path = "scores.csv"
[value]
json_cols = ["name", "score"]
[routing]
num_dbs = 4
[output]
prefix = "{prefix}"
backend = "slatedb"
"#
        ),
    );
    let s = build_embedded(&j).await;
    assert_eq!((s.rows, s.num_dbs), (1200, 4));
    check(&prefix, 1200, json_value).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_hash_sqlite_on_s3_sized_by_max_keys() {
    let dir = tempfile::tempdir().expect("tmp");
    write_parquet(&dir.path().join("users.parquet"), &[users(4500)]);
    let prefix = s3_prefix("max-keys");
    let j = parse_job(
        dir.path(),
        &format!(
            r#"
key_col = "id"
[input]
format = "parquet"
path = "users.parquet"
[value]
json_cols = ["name", "score"]
[routing]
max_keys_per_shard = 1000
[output]
prefix = "{prefix}"
"#
        ),
    );
    let s = build_embedded(&j).await;
    assert_eq!((s.rows, s.num_dbs), (4500, 5), "ceil(4500 / 1000) shards");
    check(&prefix, 4500, json_value).await;
    check_manifest_shapes(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn categorical_with_given_values_sqlite_on_s3() {
    let dir = tempfile::tempdir().expect("tmp");
    write_parquet(&dir.path().join("users.parquet"), &[users(900)]);
    let prefix = s3_prefix("cat-values");
    let j = parse_job(
        dir.path(),
        &format!(
            r#"
key_col = "id"
[input]
format = "parquet"
path = "users.parquet"
[value]
json_cols = ["name", "score"]
[routing]
strategy = "cel"
expr = "region"
columns = {{ region = "string" }}
routing_values = ["us", "eu", "ap"]
[output]
prefix = "{prefix}"
"#
        ),
    );
    build_embedded(&j).await;
    let snap = check(&prefix, 900, json_value).await;
    // db id is the token's index: "us" rows (id % 3 == 2) are in shard 0.
    let us = snap.shards.get(&DbId(0)).expect("shard 0");
    assert_eq!(us.len(), 300);
    assert!(
        us.iter()
            .all(|(k, _)| u64::from_be_bytes(k.as_slice().try_into().expect("8 bytes")) % 3 == 2)
    );
}

/// On a cluster's layout, N shards -> N partitions below the writer,
/// partition i holding only shard i's rows, whatever the session's own
/// parallelism. In one process the writer reads the routed input as it is
/// and collects each row into the shard its id names (what every build
/// here checks by reading the snapshot back through the router).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partition_holds_exactly_one_shard() {
    let dir = tempfile::tempdir().expect("tmp");
    write_parquet(&dir.path().join("a.parquet"), &[users(2000)]);
    write_parquet(&dir.path().join("b.parquet"), &[users(3000).slice(2000, 1000)]);
    for (num_dbs, target_partitions) in [(11u32, 3usize), (4, 8), (1, 2)] {
        let j = parse_job(
            dir.path(),
            &format!(
                r#"
key_col = "id"
[input]
format = "parquet"
path = "."
[value]
binary_col = "payload"
[routing]
num_dbs = {num_dbs}
[output]
prefix = "out-{num_dbs}"
"#
            ),
        );
        let engine = Embedded {
            target_partitions: Some(target_partitions),
        };
        // In one process: the writer takes the routed input as it is.
        let p = prepare(&j, &engine).await.expect("prepare");
        let plan = p
            .ctx
            .state()
            .create_physical_plan(&p.write_plan().expect("plan"))
            .await
            .expect("physical");
        let writer = plan
            .as_any()
            .downcast_ref::<sf_writer::build::shard_task::ShardWriteExec>()
            .expect("the write node is the root");
        assert_eq!(writer.mode(), sf_writer::build::shard_task::InputMode::Exchange);
        assert_eq!(plan.output_partitioning().partition_count(), 1);

        // The cluster layout: one partition per shard.
        let state = sf_writer::job::session_state_builder(
            datafusion::prelude::SessionConfig::new().with_target_partitions(target_partitions),
        )
        .build();
        let ctx = datafusion::prelude::SessionContext::new_with_state(state);
        let df = ctx
            .read_parquet(
                dir.path().to_str().expect("utf8 path"),
                datafusion::prelude::ParquetReadOptions::default(),
            )
            .await
            .expect("read");
        let p = sf_writer::job::prepare_frame(&j, ctx, df).await.expect("prepare");
        let plan = p
            .ctx
            .state()
            .create_physical_plan(&p.write_plan().expect("plan"))
            .await
            .expect("physical");
        let writer = plan
            .as_any()
            .downcast_ref::<sf_writer::build::shard_task::ShardWriteExec>()
            .expect("the write node is the root");
        assert_eq!(writer.mode(), sf_writer::build::shard_task::InputMode::Partitioned);
        let below = writer.input();
        assert_eq!(below.output_partitioning().partition_count(), num_dbs as usize);
        let parts = collect_partitioned(Arc::clone(below), p.ctx.task_ctx())
            .await
            .expect("execute");
        let mut total = 0;
        for (i, batches) in parts.iter().enumerate() {
            let mut rows = 0;
            for b in batches {
                let ids = b.column_by_name("_shard_id").expect("shard ids");
                let ids = ids.as_any().downcast_ref::<arrow::array::UInt32Array>().expect("u32");
                assert!(
                    ids.values().iter().all(|d| *d as usize == i),
                    "partition {i} of {num_dbs} holds only shard {i}"
                );
                rows += b.num_rows();
            }
            assert!(rows > 0, "partition {i} of {num_dbs} is empty but shard {i} has rows");
            total += rows;
        }
        assert_eq!(total, 3000);
    }
}

fn sf_write(args: &[&str], dir: &Path) -> std::process::Output {
    std::process::Command::new(binary("sf-write"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sf-write")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

const CLI_JOB: &str = r#"
key_col = "id"
[input]
format = "parquet"
path = "users.parquet"
[value]
json_cols = ["name", "score"]
[routing]
num_dbs = 3
[output]
prefix = "out"
"#;

#[test]
fn the_cli_dry_runs_builds_and_exits_by_cause() {
    let dir = tempfile::tempdir().expect("tmp");
    write_parquet(&dir.path().join("users.parquet"), &[users(300)]);
    std::fs::write(dir.path().join("job.toml"), CLI_JOB).expect("job");

    let help = sf_write(&["--help"], dir.path());
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("Exit codes"), "{}", text(&help.stdout));

    let dry = sf_write(&["--config", "job.toml", "--dry-run", "--progress", "off"], dir.path());
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stdout).contains("hash (xxh3_64) over 3 shards"),
        "{}",
        text(&dry.stdout)
    );
    assert!(!dir.path().join("out").exists(), "a dry run writes nothing");

    let ok = sf_write(&["--config", "job.toml", "--json", "--progress", "log"], dir.path());
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("JSON summary");
    assert_eq!(summary["rows"], 300);
    assert!(
        text(&ok.stderr).contains("300 rows written, 3/3 shards done"),
        "{}",
        text(&ok.stderr)
    );

    // Bad configuration: exit 2, naming the key.
    std::fs::write(
        dir.path().join("bad.toml"),
        replace_in(CLI_JOB, "num_dbs = 3", "num_dbz = 3"),
    )
    .expect("job");
    let bad = sf_write(&["--config", "bad.toml"], dir.path());
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    assert!(text(&bad.stderr).contains("num_dbz"), "{}", text(&bad.stderr));

    // A key column that is not in the input: exit 2, listing the columns.
    let env = sf_write(&["--config", "job.toml"], dir.path());
    assert!(env.status.success());
    std::fs::write(
        dir.path().join("missing.toml"),
        replace_in(CLI_JOB, "key_col = \"id\"", "key_col = \"user_id\""),
    )
    .expect("job");
    let missing = sf_write(&["--config", "missing.toml"], dir.path());
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing.stderr));
    assert!(
        text(&missing.stderr).contains("\"user_id\" is not a column"),
        "{}",
        text(&missing.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_publish_nothing_and_leave_the_old_snapshot() {
    let dir = tempfile::tempdir().expect("tmp");
    write_parquet(&dir.path().join("users.parquet"), &[users(300)]);
    let prefix = format!("file://{}/out", dir.path().display());
    let good = parse_job(dir.path(), CLI_JOB);
    build_embedded(&good).await;
    let store = manifest_store(&prefix);
    let before = store.load_current().await.expect("load").expect("current");

    // Null keys: a data error naming the row; nothing published.
    let with_null = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])) as ArrayRef,
        ),
        ("name", Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef),
        ("score", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
    ])
    .expect("batch");
    write_parquet(&dir.path().join("nulls.parquet"), &[with_null]);
    let bad = parse_job(dir.path(), &replace_in(CLI_JOB, "users.parquet", "nulls.parquet"));
    let e = build(&bad, &Embedded::default(), &BuildOptions::default())
        .await
        .expect_err("null key");
    assert_eq!(e.kind(), ErrorKind::Data, "{e}");
    assert!(e.to_string().contains("null at row 1"), "{e}");
    assert_eq!(store.load_current().await.expect("load").expect("current"), before);

    // Negative keys cannot be u64be: a data error naming the value.
    let negative = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![5, -7])) as ArrayRef),
        ("name", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
        ("score", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
    ])
    .expect("batch");
    write_parquet(&dir.path().join("neg.parquet"), &[negative]);
    let neg = parse_job(dir.path(), &replace_in(CLI_JOB, "users.parquet", "neg.parquet"));
    let e = build(&neg, &Embedded::default(), &BuildOptions::default())
        .await
        .expect_err("negative key");
    assert_eq!(e.kind(), ErrorKind::Data, "{e}");
    assert!(e.to_string().contains("-7"), "{e}");
    assert_eq!(store.load_current().await.expect("load").expect("current"), before);

    // The failed runs left no shard data, only their (failed) run records.
    let keys = list_keys(&prefix).await;
    let runs: std::collections::BTreeSet<&str> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("shards/"))
        .filter_map(|k| k.split('/').next())
        .collect();
    assert_eq!(runs.len(), 1, "only the good run has shard data: {runs:?}");
    // The null key was caught by the routing sample before the run started
    // writing; the negative key during the write, which the run recorded.
    let records = store.list_run_records().await.expect("records");
    let failed: Vec<_> = records
        .iter()
        .filter(|(_, r)| r.status == sf_manifest::RunStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{records:?}");
    assert!(failed[0].1.error_message.as_deref().is_some_and(|m| m.contains("-7")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_follow_the_policy() {
    let dir = tempfile::tempdir().expect("tmp");
    let dup = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![1, 2, 2, 3, 1])) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"])) as ArrayRef,
        ),
        ("score", Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])) as ArrayRef),
    ])
    .expect("batch");
    write_parquet(&dir.path().join("users.parquet"), &[dup]);
    // Each policy named, into one shard.
    let one_shard = replace_in(CLI_JOB, "num_dbs = 3", "num_dbs = 1");
    let with_policy = |policy: &str| {
        parse_job(
            dir.path(),
            &replace_in(
                &one_shard,
                "[output]",
                &format!("[write]\non_duplicate = \"{policy}\"\n[output]"),
            ),
        )
    };
    let strict = with_policy("error");
    assert_eq!(strict.write.on_duplicate, DuplicatePolicy::Error);
    assert_eq!(strict.routing.num_dbs, Some(1));
    let e = build(&strict, &Embedded::default(), &BuildOptions::default())
        .await
        .expect_err("duplicates");
    assert_eq!(e.kind(), ErrorKind::Data);
    assert!(e.to_string().contains("duplicate key"), "{e}");

    assert!(
        manifest_store(&format!("file://{}/out", dir.path().display()))
            .load_current()
            .await
            .expect("load")
            .is_none(),
        "nothing was published"
    );

    let lenient = with_policy("last_wins");
    assert_eq!(lenient.write.on_duplicate, DuplicatePolicy::LastWins);
    let s = build_embedded(&lenient).await;
    assert_eq!((s.rows, s.duplicates), (3, 2));
    let prefix = format!("file://{}/out", dir.path().display());
    let rows = read_snapshot(&prefix).await.rows();
    let one = rows.get(1u64.to_be_bytes().as_slice()).expect("key 1");
    let v = String::from_utf8_lossy(&one.1);
    assert!(v.contains("\"e\""), "the later of key 1's rows wins: {v}");
}

/// Shards bigger than the memory for rows spill sorted runs and merge
/// them: every key is stored once, in order, with its row, on both
/// backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_larger_than_their_sort_buffer_spill_and_merge() {
    const N: i64 = 240_000;
    const REWRITTEN: i64 = 60_000;
    let value = |tag: &str, id: i64| {
        let mut v = format!("{tag}-{id}-");
        v.push_str(&"x".repeat(100 - v.len()));
        v
    };
    let batch = |ids: Vec<i64>, tag: &str| {
        RecordBatch::try_from_iter([
            (
                "value",
                Arc::new(StringArray::from_iter_values(ids.iter().map(|i| value(tag, *i)))) as ArrayRef,
            ),
            ("id", Arc::new(Int64Array::from(ids)) as ArrayRef),
        ])
        .expect("batch")
    };
    let dir = tempfile::tempdir().expect("tmp");
    // Every fourth key comes again later, with another value.
    write_parquet(
        &dir.path().join("rows.parquet"),
        &[
            batch((0..N).collect(), "first"),
            batch((0..REWRITTEN).map(|i| i * 4).collect(), "again"),
        ],
    );
    for backend in ["sqlite", "slatedb"] {
        // 16 MiB: 8 MiB of rows in memory for ~40 MiB of rows.
        let j = parse_job(
            dir.path(),
            &format!(
                r#"
key_col = "id"
[input]
format = "parquet"
path = "rows.parquet"
[value]
binary_col = "value"
[routing]
num_dbs = 2
[write]
memory_limit_mib = 16
[output]
prefix = "out-{backend}"
backend = "{backend}"
"#
            ),
        );
        let s = build_embedded(&j).await;
        assert_eq!((s.rows, s.duplicates), (N as u64, REWRITTEN as u64), "{backend}");
        assert!(
            s.spilled_runs >= 4,
            "{backend}: both shards spilled several runs ({} in all)",
            s.spilled_runs
        );
        let snap = read_snapshot(&format!("file://{}/out-{backend}", dir.path().display())).await;
        let rows = snap.rows();
        assert_eq!(rows.len() as i64, N, "{backend}");
        for (i, (key, (_, stored))) in rows.iter().enumerate() {
            let id = i as i64;
            assert_eq!(
                key.as_slice(),
                (id as u64).to_be_bytes(),
                "{backend}: keys in order, once"
            );
            let stored = String::from_utf8_lossy(stored);
            // The two rows of a rewritten key reach the shard from different
            // input partitions, in no defined order.
            let ok = stored == value("first", id) || (id % 4 == 0 && stored == value("again", id));
            assert!(ok, "{backend}: key {id} holds {stored}");
        }
        for shard in &snap.manifest.shards {
            let ids: Vec<i64> = rows
                .iter()
                .filter(|(_, (db, _))| *db == shard.db_id)
                .map(|(k, _)| i64::from_be_bytes(k.as_slice().try_into().expect("8 bytes")))
                .collect();
            let range = (shard.min_key.clone(), shard.max_key.clone());
            let want = (ids.first().copied().map(Key::Int), ids.last().copied().map(Key::Int));
            assert_eq!(range, want, "{backend}: key range of shard {}", shard.db_id);
        }
    }
}

/// A transient failure retries into a new attempt; the driver publishes
/// the winners and deletes every losing attempt folder. On `inner` (the
/// object store under a prefix's URL), at `path` in it.
async fn retried_uploads_claim_new_attempts(inner: Arc<dyn object_store::ObjectStore>, path: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    write_parquet(&dir.path().join("users.parquet"), &[users(600)]);
    let flaky = FaultStore::new(inner);
    flaky.at(Op::Put, ending("shard.db")).times(2).fail(Fault::Generic);
    let registered = flaky.register();
    let prefix = format!("{}/{}", registered.base(), path.trim_start_matches('/'));
    let j = parse_job(
        dir.path(),
        &replace_in(
            &replace_in(CLI_JOB, "prefix = \"out\"", &format!("prefix = \"{prefix}\"")),
            "[output]",
            "[write]\nretry_backoff_ms = 1\n[output]",
        ),
    );
    let s = build_embedded(&j).await;
    assert_eq!(flaky.fired(), 2);
    assert_eq!(s.retries, 2);
    assert_eq!(s.losers_deleted, 2, "the two failed attempts' claims");
    let snap = check(&prefix, 600, json_value).await;
    assert!(
        snap.manifest.shards.iter().any(|s| s.attempt.0 > 0),
        "a retried shard won with a later attempt"
    );
    // What is left is one attempt folder per shard, the winner's, holding
    // its claim and its shard file and nothing of another attempt.
    let keys = list_keys(&prefix).await;
    let mut attempts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in keys.iter().filter(|k| k.starts_with("shards/")) {
        let (folder, file) = k.rsplit_once('/').expect("file");
        attempts.entry(folder.to_string()).or_default().push(file.to_string());
    }
    let winners: BTreeMap<String, Vec<String>> = snap
        .manifest
        .shards
        .iter()
        .map(|r| {
            (
                format!(
                    "shards/run_id={}/db={:05}/attempt={:02}",
                    snap.manifest.build.run_id.as_str(),
                    r.db_id.0,
                    r.attempt.0
                ),
                vec!["_claim.json".to_string(), "shard.db".to_string()],
            )
        })
        .collect();
    assert_eq!(attempts, winners, "one attempt folder per shard remains, the winner's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_uploads_claim_new_attempts_and_losers_are_deleted() {
    retried_uploads_claim_new_attempts(Arc::new(object_store::memory::InMemory::new()), "snap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_uploads_claim_new_attempts_and_losers_are_deleted_on_local_files() {
    let root = tempfile::tempdir().expect("root");
    let at = sf_manifest::resolve(
        &format!("file://{}/snap", root.path().display()),
        &sf_manifest::StorageOptions::new(),
    )
    .expect("resolve");
    retried_uploads_claim_new_attempts(at.store, at.path.as_ref()).await;
    assert!(
        root.path().join("snap/_CURRENT").exists(),
        "the snapshot is on the file system"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_uploads_claim_new_attempts_and_losers_are_deleted_on_s3() {
    let prefix = s3_prefix("attempts");
    let at = sf_manifest::resolve(&prefix, &sf_manifest::StorageOptions::new()).expect("resolve");
    retried_uploads_claim_new_attempts(at.store, at.path.as_ref()).await;
    assert!(
        list_keys(&prefix).await.iter().any(|k| k == "_CURRENT"),
        "the snapshot is on S3"
    );
}

/// Writes of SQLite shards (the default backend) follow the rate limits,
/// in rows per second and in key and value bytes per second, each per
/// shard attempt. A shard's rows all pass its limiter after the build's
/// run record is written (before any shard is built) and before the
/// shard's claim (made once its file is built, before the upload); the
/// store sees both, so the rows or bytes of a shard over the time between
/// them bound the rate it was written at from above. The limiters let a
/// second's worth through at once, so a shard of five seconds' worth is
/// written at no more than 5/4 of its limit; the test allows 3/2, and a
/// slow machine only lowers the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writes_follow_the_row_and_byte_limits() {
    const ROWS: i64 = 4_000;
    // 8-byte keys (u64be) and 100-byte values.
    const ROW_BYTES: f64 = 108.0;
    let dir = tempfile::tempdir().expect("tmp");
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from_iter_values(0..ROWS)) as ArrayRef),
        (
            "v",
            Arc::new(StringArray::from_iter_values((0..ROWS).map(|i| format!("{i:0>100}")))) as ArrayRef,
        ),
    ])
    .expect("batch");
    write_parquet(&dir.path().join("rows.parquet"), &[batch]);
    for (setting, limit, per_row) in [
        ("max_writes_per_second = 400", 400.0, 1.0),
        ("max_write_bytes_per_second = 43200", 43_200.0, ROW_BYTES),
    ] {
        let root = tempfile::tempdir().expect("root");
        let timed = FaultStore::over(&format!("file://{}", root.path().display()));
        let started: Arc<Mutex<Option<Instant>>> = Arc::default();
        let claimed: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        {
            let started = Arc::clone(&started);
            timed.at(Op::Put, ending("run.yaml")).run(move |_| {
                sf_manifest::sync::lock(&started).get_or_insert_with(Instant::now);
                async {}
            });
            let claimed = Arc::clone(&claimed);
            timed.at(Op::Put, ending("_claim.json")).every().run(move |path| {
                sf_manifest::sync::lock(&claimed).push((path.to_string(), Instant::now()));
                async {}
            });
        }
        let registered = timed.register();
        let prefix = format!("{}{}/snap", registered.base(), root.path().display());
        let job = parse_job(
            dir.path(),
            &format!(
                "key_col = \"id\"\n[input]\nformat = \"parquet\"\npath = \"rows.parquet\"\n[value]\nbinary_col = \"v\"\n\
                 [routing]\nnum_dbs = 2\n[write]\n{setting}\n[output]\nprefix = \"{prefix}\"\n"
            ),
        );
        assert_eq!(job.backend().name(), "sqlite", "the default backend");
        let s = build_embedded(&job).await;
        assert_eq!(s.rows, ROWS as u64, "{setting}");
        let store = manifest_store(&prefix);
        let current = store.load_current().await.expect("load").expect("published");
        let manifest = store
            .load_manifest(&current.pointer.manifest_ref)
            .await
            .expect("manifest");
        let t0 = sf_manifest::sync::lock(&started).expect("the run record was written");
        let claims = sf_manifest::sync::lock(&claimed).clone();
        assert_eq!(claims.len(), 2, "{setting}: one claim per shard, no retry: {claims:?}");
        for shard in &manifest.shards {
            let db = format!("db={:05}/", shard.db_id.0);
            let (_, at) = claims
                .iter()
                .find(|(path, _)| path.contains(&db))
                .unwrap_or_else(|| panic!("{setting}: no claim of shard {}", shard.db_id));
            let amount = shard.row_count as f64 * per_row;
            assert!(
                amount >= 4.0 * limit,
                "{setting}: shard {} holds {amount}, at least four seconds' worth",
                shard.db_id
            );
            let seconds = at.duration_since(t0).as_secs_f64();
            let rate = amount / seconds;
            assert!(
                rate <= 1.5 * limit,
                "{setting}: shard {} wrote {amount} in {seconds:.2} s, {rate:.0} a second",
                shard.db_id
            );
        }
    }
}

/// A second build swaps `_CURRENT` to itself and keeps the first build's
/// manifest readable: every manifest of the history, opened pinned (in
/// download and range mode), reads every key of its own build with that
/// build's value, and not one key more. The builds differ in keys (100
/// users, then 250) and in every value (the second renames its users).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_build_swaps_current_and_keeps_history() {
    let dir = tempfile::tempdir().expect("tmp");
    write_parquet(&dir.path().join("users.parquet"), &[users(100)]);
    let prefix = format!("file://{}/out", dir.path().display());
    let first = build_embedded(&parse_job(dir.path(), CLI_JOB)).await;
    write_parquet(&dir.path().join("users.parquet"), &[users_named(250, "second")]);
    let second = build_embedded(&parse_job(dir.path(), CLI_JOB)).await;
    let store = manifest_store(&prefix);
    let history = store.history().await.expect("history");
    let runs: Vec<_> = history.iter().map(|h| h.run_id.clone()).collect();
    assert_eq!(runs, vec![second.run_id.clone(), first.run_id.clone()]);
    let current = store.load_current().await.expect("load").expect("current");
    assert_eq!(
        current.pointer.manifest_ref, history[0].manifest_ref,
        "_CURRENT names the second build"
    );
    check(&prefix, 250, |id| json_value_named("second", id)).await;

    // Each build: its run, its keys, the name its values carry.
    let builds = [(&second.run_id, 250, "second"), (&first.run_id, 100, "user")];
    for (entry, (run, keys, name)) in history.iter().zip(builds) {
        in_every_mode(&PAGED_MODES, async |mode| {
            let cache = tempfile::tempdir().expect("cache");
            let reader = readers::open(
                &prefix,
                ReaderSettings {
                    pin: Pin::Ref(entry.manifest_ref.clone()),
                    ..readers::settings(mode, cache.path())
                },
            )
            .await;
            assert_eq!(
                &reader.info().run_id,
                run,
                "the reader serves the manifest it was pinned to"
            );
            // Every key either build has, and a few beyond.
            let ids: Vec<i64> = (0..260).collect();
            let all: Vec<Key> = ids.iter().map(|i| Key::Int(*i)).collect();
            let got = reader.multi_get(&all).await.expect("multi_get");
            for (id, v) in ids.iter().zip(&got) {
                let want = (*id < keys).then(|| json_value_named(name, *id));
                assert_eq!(v.as_deref(), want.as_deref(), "run {run}: key {id}");
            }
            reader.close();
        })
        .await;
    }
}
