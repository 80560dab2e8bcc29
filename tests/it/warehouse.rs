//! Warehouse tables: the four save modes, exact type round trips, SQL with
//! point lookups, CTAS and DROP, listing, names, two catalogs, and tables
//! read by the plain reader, `sf-read`, `sf-sql` and written by `sf-write`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int8Array,
    Int16Array, Int32Array, Int64Array, LargeStringArray, ListArray, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray, TimestampNanosecondArray, UInt8Array, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use sf_manifest::{Classified, ErrorKind, Key, ManifestStore, StorageOptions};
use sf_reader::SqliteMode;
use sf_tests::readers::{open, settings};
use sf_tests::writer_support::{binary, write_parquet};
use sf_tests::{manifest_store, s3_prefix};
use sf_warehouse::table::{ShardLookupExec, ShardScanExec};
use sf_warehouse::{Catalogs, SaveMode, Warehouse, table_job};
use sf_writer::job::Embedded;
use sf_writer::job::Outcome;

/// `ids` as users: id, name (`<tag>-<id>`), score (null for multiples of 10).
fn users(ids: impl IntoIterator<Item = i64>, tag: &str) -> RecordBatch {
    let ids: Vec<i64> = ids.into_iter().collect();
    RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("{tag}-{i}")))) as ArrayRef,
        ),
        (
            "score",
            Arc::new(Int64Array::from_iter(
                ids.iter().map(|i| (i % 10 != 0).then_some(i * 7 % 1000)),
            )) as ArrayRef,
        ),
    ])
    .expect("users batch")
}

fn frame(ctx: &SessionContext, batch: RecordBatch) -> datafusion::dataframe::DataFrame {
    ctx.read_batch(batch).expect("frame")
}

fn warehouse(catalogs: &[(&str, &str)], cache: &Path) -> Warehouse {
    let pairs: Vec<(String, String)> = catalogs
        .iter()
        .flat_map(|(name, url)| {
            let mut v = vec![(format!("sf.catalog.{name}.warehouse"), url.to_string())];
            if url.starts_with("s3://") {
                v.extend(
                    s3_options()
                        .iter()
                        .map(|(k, val)| (format!("sf.catalog.{name}.{k}"), val.to_string())),
                );
            }
            v
        })
        .collect();
    Warehouse::new(
        Catalogs::from_settings(pairs).expect("catalogs"),
        Arc::new(Embedded::default()),
    )
    .with_reader_cache(cache)
}

/// No options: the S3 server's settings come from the environment.
fn s3_options() -> StorageOptions {
    StorageOptions::new()
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Every row of a table, sorted by its key column.
async fn table_rows(wh: &Warehouse, name: &str) -> RecordBatch {
    let ctx = SessionContext::new();
    let t = wh.table(name).await.expect("table");
    let key = t.meta().key_col.clone();
    let schema = t.meta().schema.clone();
    let batches = ctx
        .read_table(Arc::new(t))
        .expect("read")
        .collect()
        .await
        .expect("scan");
    let all = arrow::compute::concat_batches(&schema, &batches).expect("concat");
    let idx = arrow::compute::sort_to_indices(all.column_by_name(&key).expect("key"), None, None).expect("sort");
    arrow::compute::take_record_batch(&all, &idx).expect("take")
}

fn names_of(batch: &RecordBatch) -> Vec<String> {
    let names = batch
        .column_by_name("name")
        .expect("name")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("utf8");
    names.iter().map(|n| n.unwrap_or("<null>").to_string()).collect()
}

/// The first column of the first row of `batches`, an `Int64` (a count,
/// the rows a statement wrote).
fn first_i64(batches: &[RecordBatch]) -> i64 {
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("an Int64 column")
        .value(0)
}

/// A warehouse with one catalog, `wh`, in a scratch folder (`w/`, readers
/// caching under `cache/`), and a session to build frames in.
struct Local {
    root: tempfile::TempDir,
    wh: Warehouse,
    ctx: SessionContext,
}

impl Local {
    fn new() -> Local {
        let root = tempfile::tempdir().expect("tempdir");
        let wh = warehouse(&[("wh", &file_url(&root.path().join("w")))], &root.path().join("cache"));
        Local {
            root,
            wh,
            ctx: SessionContext::new(),
        }
    }

    /// Saves users `ids` (names `<tag>-<id>`) as `table`, keyed by `id`
    /// over `shards` shards.
    async fn save_users(
        &self,
        ids: std::ops::Range<i64>,
        tag: &str,
        table: &str,
        mode: SaveMode,
        shards: u32,
    ) -> sf_warehouse::Result<Outcome> {
        self.wh
            .save_as_table(frame(&self.ctx, users(ids, tag)), table, mode, "id", shards)
            .await
    }
}

async fn run_id(prefix: &str) -> String {
    let store = manifest_store(prefix);
    let current = store.load_current().await.expect("current").expect("published");
    let manifest = store
        .load_manifest(&current.pointer.manifest_ref)
        .await
        .expect("manifest");
    manifest.build.run_id.as_str().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_modes_on_the_file_system() {
    let local = Local::new();
    let (wh, ctx) = (&local.wh, &local.ctx);
    let cache = local.root.path().join("cache");
    let prefix = file_url(&local.root.path().join("w/app/users"));

    let first = local
        .save_users(0..100, "v1", "wh.app.users", SaveMode::Error, 4)
        .await
        .expect("first save");
    assert!(matches!(first, Outcome::Built(ref s) if s.rows == 100), "{first:?}");
    let run1 = run_id(&prefix).await;

    // error: the table exists.
    let e = local
        .save_users(0..5, "x", "wh.app.users", SaveMode::Error, 4)
        .await
        .expect_err("error mode on an existing table");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("wh.app.users exists"), "{e}");

    // ignore: nothing written.
    let ignored = local
        .save_users(0..5, "x", "app.users", SaveMode::Ignore, 4)
        .await
        .expect("ignore");
    assert!(
        matches!(ignored, Outcome::Unchanged(ref why) if why.contains("nothing was written")),
        "{ignored:?}"
    );
    assert_eq!(run_id(&prefix).await, run1, "ignore publishes nothing");

    // overwrite while a reader holds the old snapshot.
    let old = open(&prefix, settings(SqliteMode::Auto, &cache)).await;
    let before = old.get(&Key::Int(75)).await.expect("get").expect("key 75 in run 1");
    local
        .save_users(0..50, "v2", "wh.app.users", SaveMode::Overwrite, 4)
        .await
        .expect("overwrite");
    assert_ne!(run_id(&prefix).await, run1);
    let rows = table_rows(wh, "wh.app.users").await;
    assert_eq!(rows.num_rows(), 50, "overwrite replaces every row");
    assert!(names_of(&rows).iter().all(|n| n.starts_with("v2-")));
    assert_eq!(
        old.get(&Key::Int(75)).await.expect("old reader still reads"),
        Some(before),
        "the old snapshot keeps serving its reader"
    );
    assert_eq!(
        old.get(&Key::Int(3)).await.expect("get").as_deref(),
        Some(&br#"{"name":"v1-3","score":21}"#[..]),
        "the held reader does not see the overwrite"
    );

    // append twice: old rows kept, duplicate keys take the new rows.
    local
        .save_users(40..60, "v3", "wh.app.users", SaveMode::Append, 4)
        .await
        .expect("append 1");
    local
        .save_users(60..70, "v4", "wh.app.users", SaveMode::Append, 4)
        .await
        .expect("append 2");
    let rows = table_rows(wh, "wh.app.users").await;
    assert_eq!(rows.num_rows(), 70);
    let names = names_of(&rows);
    for (i, n) in names.iter().enumerate() {
        let want = match i {
            0..40 => format!("v2-{i}"),
            40..60 => format!("v3-{i}"),
            _ => format!("v4-{i}"),
        };
        assert_eq!(n, &want);
    }
    let scores = rows.column_by_name("score").expect("score");
    assert_eq!(scores.null_count(), 7, "nulls survive appends (ids 0, 10, ..., 60)");

    // append with other columns is refused, naming both.
    let other = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ("name", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
    ])
    .expect("batch");
    let e = wh
        .save_as_table(frame(ctx, other), "wh.app.users", SaveMode::Append, "id", 4)
        .await
        .expect_err("append of another schema");
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("differ"), "{e}");
    assert_eq!(
        table_rows(wh, "wh.app.users").await.num_rows(),
        70,
        "a refused append changes nothing"
    );

    // append with on_duplicate = error refuses a key already in the table.
    let mut strict = table_job("id", 4);
    strict.write.on_duplicate = sf_writer::build::backend::DuplicatePolicy::Error;
    let e = wh
        .save(
            frame(ctx, users(65..66, "v5")),
            "wh.app.users",
            SaveMode::Append,
            &strict,
        )
        .await
        .expect_err("duplicate key");
    assert_eq!(e.kind(), ErrorKind::Data, "{e}");
    assert!(e.to_string().contains("65"), "{e}");
}

/// Every common Arrow type, with nulls, restored exactly (on S3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_common_type_round_trips_through_a_table_on_s3() {
    let cache = tempfile::tempdir().expect("cache");
    let wh = warehouse(&[("lake", &s3_prefix("warehouse-types"))], cache.path());
    let n = 6;
    /// Every third row is null.
    fn opt<T>(i: usize, v: T) -> Option<T> {
        (i % 3 != 1).then_some(v)
    }
    let list =
        ListArray::from_iter_primitive::<Int32Type, _, _>((0..n).map(|i| opt(i, vec![Some(i as i32), None, Some(-1)])));
    let st = StructArray::from(vec![
        (
            Arc::new(Field::new("a", DataType::Utf8, true)),
            Arc::new(StringArray::from_iter((0..n).map(|i| opt(i, format!("a{i}"))))) as ArrayRef,
        ),
        (
            Arc::new(Field::new("b", DataType::Float64, true)),
            Arc::new(Float64Array::from_iter((0..n).map(|i| opt(i, i as f64 / 4.0)))) as ArrayRef,
        ),
    ]);
    let batch = RecordBatch::try_from_iter([
        (
            "k",
            Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("key-{i}")))) as ArrayRef,
        ),
        (
            "i8",
            Arc::new(Int8Array::from_iter((0..n).map(|i| opt(i, -(i as i8))))) as ArrayRef,
        ),
        (
            "i16",
            Arc::new(Int16Array::from_iter((0..n).map(|i| opt(i, i as i16 * 300)))),
        ),
        (
            "i32",
            Arc::new(Int32Array::from_iter((0..n).map(|i| opt(i, i32::MIN + i as i32)))),
        ),
        (
            "i64",
            Arc::new(Int64Array::from_iter((0..n).map(|i| opt(i, i64::MAX - i as i64)))),
        ),
        (
            "u8",
            Arc::new(UInt8Array::from_iter((0..n).map(|i| opt(i, 250 + i as u8 % 5)))),
        ),
        (
            "u32",
            Arc::new(UInt32Array::from_iter((0..n).map(|i| opt(i, u32::MAX - i as u32)))),
        ),
        (
            "u64",
            Arc::new(UInt64Array::from_iter((0..n).map(|i| opt(i, u64::MAX - i as u64)))),
        ),
        (
            "f32",
            Arc::new(Float32Array::from_iter((0..n).map(|i| opt(i, i as f32 * 0.5)))),
        ),
        (
            "f64",
            Arc::new(Float64Array::from_iter(
                (0..n).map(|i| opt(i, 1e300 / (i as f64 + 1.0))),
            )),
        ),
        (
            "flag",
            Arc::new(BooleanArray::from_iter((0..n).map(|i| opt(i, i % 2 == 0)))),
        ),
        (
            "text",
            Arc::new(StringArray::from_iter((0..n).map(|i| opt(i, format!("é\"\n{i}"))))),
        ),
        (
            "big_text",
            Arc::new(LargeStringArray::from_iter((0..n).map(|i| opt(i, format!("L{i}"))))),
        ),
        (
            "bytes",
            Arc::new(BinaryArray::from_iter((0..n).map(|i| opt(i, vec![0u8, 255, i as u8])))),
        ),
        (
            "day",
            Arc::new(Date32Array::from_iter((0..n).map(|i| opt(i, 19_000 + i as i32)))),
        ),
        (
            "at_utc",
            Arc::new(
                TimestampMicrosecondArray::from_iter((0..n).map(|i| opt(i, 1_700_000_000_000_000 + i as i64)))
                    .with_timezone("UTC"),
            ),
        ),
        (
            "at_local",
            Arc::new(
                TimestampNanosecondArray::from_iter((0..n).map(|i| opt(i, 1_700_000_000_000_000_123 + i as i64)))
                    .with_timezone("+05:30"),
            ),
        ),
        (
            "amount",
            Arc::new(
                Decimal128Array::from_iter((0..n).map(|i| opt(i, 123_456_789_012 * i as i128 - 5)))
                    .with_precision_and_scale(20, 4)
                    .expect("decimal"),
            ),
        ),
        ("tags", Arc::new(list)),
        ("info", Arc::new(st)),
    ])
    .expect("all types");
    let ctx = SessionContext::new();
    wh.save_as_table(frame(&ctx, batch.clone()), "lake.types.all", SaveMode::Error, "k", 3)
        .await
        .expect("save");
    let back = table_rows(&wh, "lake.types.all").await;
    assert_eq!(
        back.schema().fields(),
        batch.schema().fields(),
        "types restored exactly"
    );
    for (i, (a, b)) in batch.columns().iter().zip(back.columns()).enumerate() {
        assert_eq!(a.as_ref(), b.as_ref(), "column {}", batch.schema().field(i).name());
    }
}

fn find<T: 'static>(plan: &Arc<dyn ExecutionPlan>) -> Option<&T> {
    if let Some(t) = plan.as_any().downcast_ref::<T>() {
        return Some(t);
    }
    plan.children().into_iter().find_map(|c| find::<T>(c))
}

fn metric(plan: &dyn ExecutionPlan, name: &str) -> usize {
    plan.metrics()
        .and_then(|m| m.sum_by_name(name))
        .map(|v| v.as_usize())
        .unwrap_or_default()
}

async fn explain(wh: &Warehouse, ctx: &SessionContext, sql: &str) -> String {
    let batches = wh
        .sql(ctx, &format!("EXPLAIN {sql}"))
        .await
        .expect("explain")
        .collect()
        .await
        .expect("explain rows");
    arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_point_lookups_read_only_the_routed_shards() {
    let local = Local::new();
    let (wh, ctx) = (&local.wh, &local.ctx);
    local
        .save_users(0..1000, "u", "wh.app.users", SaveMode::Error, 8)
        .await
        .expect("save");
    let table = wh.table("wh.app.users").await.expect("table");
    let router_of = table.reader().await.expect("reader");
    let shard_of = |k: i64| {
        router_of
            .route(&Key::Int(k), None)
            .expect("route")
            .db_id
            .expect("shard")
    };

    let sql = "SELECT name, score FROM wh.app.users WHERE id = 42";
    let plan_text = explain(wh, ctx, sql).await;
    assert!(plan_text.contains("ShardLookupExec"), "{plan_text}");
    assert!(plan_text.contains(&format!("shards=[{}]", shard_of(42))), "{plan_text}");
    assert!(!plan_text.contains("ShardScanExec"), "{plan_text}");

    let df = wh.sql(ctx, sql).await.expect("query");
    let plan = df.create_physical_plan().await.expect("plan");
    let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.expect("run");
    let out = arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string();
    assert!(out.contains("u-42") && out.contains("294"), "{out}");
    let lookup = find::<ShardLookupExec>(&plan).expect("a lookup node");
    assert_eq!(metric(lookup, "shards_touched"), 1, "exactly one shard read");
    assert_eq!(metric(lookup, "rows_found"), 1);

    // IN: the routed shards only; a miss is no row.
    let keys = [3i64, 500, 999, 5000];
    let df = wh
        .sql(
            ctx,
            "SELECT id FROM wh.app.users WHERE id IN (3, 500, 999, 5000) ORDER BY id",
        )
        .await
        .expect("in");
    let plan = df.create_physical_plan().await.expect("plan");
    let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.expect("run");
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("i64")
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, vec![3, 500, 999]);
    let lookup = find::<ShardLookupExec>(&plan).expect("lookup");
    let routed: std::collections::BTreeSet<_> = keys.iter().map(|k| shard_of(*k)).collect();
    assert_eq!(lookup.shards(), &routed);
    assert_eq!(metric(lookup, "shards_touched"), routed.len());

    // Any other filter scans every shard, in parallel partitions.
    let df = wh
        .sql(ctx, "SELECT count(*) AS n FROM wh.app.users WHERE score > 500")
        .await
        .expect("scan");
    let plan = df.create_physical_plan().await.expect("plan");
    let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.expect("run");
    let n = first_i64(&batches);
    let want = (0..1000i64).filter(|i| i % 10 != 0 && i * 7 % 1000 > 500).count() as i64;
    assert_eq!(n, want);
    let scan = find::<ShardScanExec>(&plan).expect("scan node");
    assert_eq!(
        scan.properties().partitioning.partition_count(),
        8,
        "one partition per shard"
    );
    assert_eq!(metric(scan, "rows_read"), 1000, "every row read once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctas_drop_listing_and_bad_names() {
    let local = Local::new();
    let (wh, ctx) = (&local.wh, &local.ctx);
    local
        .save_users(0..200, "u", "wh.app.users", SaveMode::Error, 4)
        .await
        .expect("save");

    let made = wh
        .sql(
            ctx,
            "CREATE TABLE wh.app.top AS SELECT id, name FROM wh.app.users WHERE score >= 900",
        )
        .await
        .expect("ctas")
        .collect()
        .await
        .expect("ctas rows");
    let want = (0..200i64).filter(|i| i % 10 != 0 && i * 7 % 1000 >= 900).count();
    let written = first_i64(&made);
    assert_eq!(written as usize, want);
    let top = table_rows(wh, "wh.app.top").await;
    assert_eq!(top.num_rows(), want);
    assert_eq!(top.schema().fields().len(), 2);
    let e = wh
        .sql(ctx, "CREATE TABLE wh.app.top AS SELECT id, name FROM wh.app.users")
        .await
        .expect_err("exists");
    assert!(e.to_string().contains("exists"), "{e}");
    wh.sql(
        ctx,
        "CREATE TABLE IF NOT EXISTS wh.app.top AS SELECT id, name FROM wh.app.users",
    )
    .await
    .expect("if not exists");
    assert_eq!(
        table_rows(wh, "wh.app.top").await.num_rows(),
        want,
        "IF NOT EXISTS left it"
    );
    wh.sql(
        ctx,
        "CREATE OR REPLACE TABLE wh.app.top AS SELECT id, name FROM wh.app.users WHERE id < 3",
    )
    .await
    .expect("or replace");
    assert_eq!(table_rows(wh, "wh.app.top").await.num_rows(), 3);

    let listed: Vec<String> = wh
        .list_tables(Some("wh"), "app")
        .await
        .expect("list")
        .iter()
        .map(|t| t.to_string())
        .collect();
    assert_eq!(listed, vec!["wh.app.top", "wh.app.users"]);
    assert_eq!(wh.list_databases(Some("wh")).await.expect("dbs"), vec!["app"]);

    let dropped = wh.sql(ctx, "DROP TABLE wh.app.top").await.expect("drop");
    dropped.collect().await.expect("drop rows");
    let listed = wh.list_tables(Some("wh"), "app").await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let e = wh.sql(ctx, "SELECT * FROM wh.app.top").await.expect_err("dropped");
    assert!(e.to_string().contains("top"), "{e}");
    assert!(
        local.root.path().join("w/app/top/_CURRENT").exists(),
        "the data stays until cleanup"
    );
    let e = wh.drop_table("wh.app.top", false).await.expect_err("twice");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!wh.drop_table("wh.app.top", true).await.expect("if exists"));
    wh.sql(ctx, "DROP TABLE IF EXISTS wh.app.top").await.expect("if exists");

    for bad in [
        "wh.app.bad-name",
        "wh..t",
        "../etc/passwd",
        "wh.app.t/x",
        "a.b.c.d",
        "wh.app.",
    ] {
        let e = wh
            .save_as_table(frame(ctx, users(0..1, "x")), bad, SaveMode::Error, "id", 1)
            .await
            .expect_err(bad);
        assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
    }
    let e = wh.table("nowhere.app.users").await.expect_err("unknown catalog");
    assert!(e.to_string().contains("not configured"), "{e}");
    let e = wh.table("wh.app.missing").await.expect_err("missing table");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_catalogs_at_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let wh = warehouse(
        &[
            ("local", &file_url(&root.path().join("w"))),
            ("lake", &s3_prefix("warehouse-two")),
        ],
        &root.path().join("cache"),
    );
    let ctx = SessionContext::new();
    wh.save_as_table(
        frame(&ctx, users(0..50, "l")),
        "local.app.users",
        SaveMode::Error,
        "id",
        2,
    )
    .await
    .expect("local");
    wh.save_as_table(
        frame(&ctx, users(25..75, "s")),
        "lake.app.users",
        SaveMode::Error,
        "id",
        3,
    )
    .await
    .expect("lake");
    let batches = wh
        .sql(
            &ctx,
            "SELECT count(*) AS n FROM local.app.users a JOIN lake.app.users b ON a.id = b.id",
        )
        .await
        .expect("join")
        .collect()
        .await
        .expect("rows");
    let n = first_i64(&batches);
    assert_eq!(n, 25);
    assert!(root.path().join("w/app/users/_CURRENT").exists());
}

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(binary(bin)).args(args).output().expect("run binary");
    assert!(
        out.status.success(),
        "{bin} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// A table written by `sf-write` (`[output] table`) is served by the plain
/// reader, `sf-read` and `sf-sql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_from_sf_write_serve_reader_sf_read_and_sf_sql() {
    let root = tempfile::tempdir().expect("tempdir");
    let wh_url = file_url(&root.path().join("w"));
    write_parquet(&root.path().join("users.parquet"), &[users(0..300, "w")]);
    let job = root.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"key_col = "id"
[input]
format = "parquet"
path = "users.parquet"
[routing]
num_dbs = 4
[output]
table = "wh.app.users"
mode = "error"
[sf.catalog.wh]
warehouse = "{wh_url}"
"#
        ),
    )
    .expect("job");
    let job_arg = job.to_str().expect("path");
    run("sf-write", &["--config", job_arg, "--progress", "off"]);
    // mode = "error" on an existing table: exit code 2, nothing written.
    let again = Command::new(binary("sf-write"))
        .args(["--config", job_arg, "--progress", "off"])
        .output()
        .expect("run");
    assert_eq!(
        again.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    let ignore = Command::new(binary("sf-write"))
        .args(["--config", job_arg, "--progress", "off"])
        .env("SF_OUTPUT__MODE", "ignore")
        .output()
        .expect("run");
    assert!(ignore.status.success());
    assert!(String::from_utf8_lossy(&ignore.stdout).contains("nothing was written"));

    let prefix = format!("{wh_url}/app/users");
    let reader = open(&prefix, settings(SqliteMode::Auto, &root.path().join("cache"))).await;
    assert_eq!(
        reader.get(&Key::Int(7)).await.expect("get").as_deref(),
        Some(&br#"{"name":"w-7","score":49}"#[..])
    );
    assert_eq!(
        reader.get(&Key::Int(20)).await.expect("get").as_deref(),
        Some(&br#"{"name":"w-20"}"#[..]),
        "a null column is left out of the value"
    );

    let cache = root.path().join("cli-cache");
    let line = run(
        "sf-read",
        &[
            "--current-url",
            &prefix,
            "--cache-dir",
            cache.to_str().expect("path"),
            "--output",
            "json",
            "get",
            "7",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("json");
    assert_eq!(v["found"], true, "{line}");
    assert_eq!(v["value"], r#"{"name":"w-7","score":49}"#, "{line}");

    let conf = format!("sf.catalog.wh.warehouse={wh_url}");
    let out = run(
        "sf-sql",
        &[
            "--conf",
            &conf,
            "-o",
            "jsonl",
            "SELECT name, score FROM wh.app.users WHERE id = 7",
        ],
    );
    assert_eq!(out.trim(), r#"{"name":"w-7","score":49}"#);
    let out = run(
        "sf-sql",
        &[
            "--config",
            job_arg,
            "-o",
            "json",
            "SELECT count(*) AS n FROM app.users WHERE score IS NULL",
        ],
    );
    assert_eq!(out.trim(), r#"[{"n":30}]"#);
    // Relative names, several statements, CTAS and listing through SQL.
    let out = run(
        "sf-sql",
        &[
            "--config",
            job_arg,
            "-o",
            "jsonl",
            "CREATE TABLE app.small AS SELECT id, name FROM app.users WHERE id < 5; \
             SELECT count(*) AS n FROM app.small; \
             SELECT table_name FROM information_schema.tables WHERE table_schema = 'app' ORDER BY table_name",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            r#"{"rows_written":5}"#,
            r#"{"n":5}"#,
            r#"{"table_name":"small"}"#,
            r#"{"table_name":"users"}"#
        ],
        "{out}"
    );
    let out = run(
        "sf-sql",
        &["--conf", &conf, "EXPLAIN SELECT * FROM wh.app.users WHERE id IN (1, 2)"],
    );
    assert!(out.contains("ShardLookupExec"), "{out}");

    let bad = Command::new(binary("sf-sql"))
        .args(["--conf", &conf, "SELECT * FROM wh.app.nope"])
        .output()
        .expect("run");
    // An unknown table is the user's to fix: exit 2, naming it.
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"));
    let none = Command::new(binary("sf-sql")).args(["SELECT 1"]).output().expect("run");
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("none configured"));
}
