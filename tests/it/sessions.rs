//! The driver and its session pool, session settings, sources, and global
//! temporary views: embedded, on a real Ballista cluster (`sf-scheduler`
//! and two `sf-executor`s on 127.0.0.1), and through the real `sf-sql`.
//!
//! Warehouses live in local folders, which the local cluster's processes
//! share with the test. Global temporary views are one registry per
//! process, shared by the tests of this binary: every test names its own.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{ParquetReadOptions, col, lit};
use sf_manifest::{Classified, ErrorKind, Key};
use sf_tests::cluster::{ClusterOptions, LocalCluster, claims, run_bounded};
use sf_tests::writer_support::{binary, read_snapshot, write_parquet};
use sf_warehouse::{Catalogs, Driver, Error, SaveMode, Source, Warehouse, table_job};
use sf_writer::config::JobConfig;
use sf_writer::job::{BuildOptions, Embedded, Outcome};

/// `ids` as users: id, name (`<tag>-<id>`), score.
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
            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i * 3))) as ArrayRef,
        ),
    ])
    .expect("users batch")
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// An embedded driver over catalog `wh` at `root/w`.
fn embedded(root: &Path, size: usize) -> Driver {
    Driver::builder()
        .with_pool_size(size)
        .with_setting("sf.catalog.wh.warehouse", file_url(&root.join("w")))
        .with_reader_cache(root.join("cache"))
        .build()
        .expect("driver")
}

/// Every row of `df`.
async fn rows(df: DataFrame) -> Vec<RecordBatch> {
    df.collect().await.expect("rows")
}

fn num_rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// The one integer a query like `SELECT count(*) AS n` returns.
async fn single_i64(df: DataFrame) -> i64 {
    let batches = rows(df).await;
    let b = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    b.column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("an integer")
        .value(0)
}

/// The count a `SELECT count(*) ...` gives in `session`.
async fn count(session: &sf_warehouse::Session, sql: &str) -> i64 {
    single_i64(session.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))).await
}

/// Column `name` of every row, as text.
fn texts(batches: &[RecordBatch], name: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(name).expect("column");
            (0..c.len())
                .map(|i| arrow::util::display::array_value_to_string(c, i).expect("text"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A snapshot build's job: key `id`, hash routing over 2 shards, at `prefix`.
fn snapshot_job(prefix: &str) -> JobConfig {
    let mut job = table_job("id", 2);
    job.output.prefix = prefix.to_string();
    job
}

fn built(outcome: Outcome) -> sf_writer::job::BuildSummary {
    match outcome {
        Outcome::Built(s) => s,
        other => panic!("expected a published run, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_never_exceeds_its_size_and_waiters_proceed_when_a_session_returns() {
    let root = tempfile::tempdir().expect("tmp");
    let driver = embedded(root.path(), 3);

    // Many borrowers at once, each running a query while it holds its
    // session. Each holds it until three sessions have been out at the
    // same time, so the pool is seen full: a pool lending fewer than its
    // size would keep them waiting (and fail the bounded wait), one
    // lending more fails the count.
    let in_use = Arc::new(AtomicUsize::new(0));
    let (most, _) = tokio::sync::watch::channel(0usize);
    let most = Arc::new(most);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (driver, in_use, most) = (driver.clone(), Arc::clone(&in_use), Arc::clone(&most));
        tasks.spawn(async move {
            let session = driver.session().await.expect("borrow");
            let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
            most.send_modify(|m| *m = (*m).max(now));
            assert!(now <= 3, "{now} sessions lent out at once");
            let stats = driver.stats();
            assert!(stats.live <= 3 && stats.borrowed <= 3, "{stats:?}");
            let mut seen = most.subscribe();
            tokio::time::timeout(Duration::from_secs(60), seen.wait_for(|m| *m >= 3))
                .await
                .unwrap_or_else(|_| panic!("the pool of 3 never lent 3 sessions at once ({:?})", driver.stats()))
                .expect("the counter lives");
            let n = single_i64(session.sql(&format!("SELECT {i} + 1 AS n")).await.expect("query")).await;
            assert_eq!(n, i + 1);
            in_use.fetch_sub(1, Ordering::SeqCst);
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(done) = tasks.join_next().await {
            done.expect("borrower");
        }
    });
    all.await.expect("every borrower finished");
    let stats = driver.stats();
    assert!(stats.created <= 3, "{stats:?}");
    assert_eq!(
        (stats.live, stats.idle, stats.borrowed, stats.waiting),
        (stats.created as usize, stats.live, 0, 0)
    );
    assert_eq!(*most.borrow(), 3, "the pool was full, never more");

    // All three lent out: the next borrower waits, and takes the first
    // session given back.
    let a = driver.session().await.expect("a");
    let b = driver.session().await.expect("b");
    let c = driver.session().await.expect("c");
    let b_id = b.id();
    let created = driver.stats().created;
    let waiter = tokio::spawn({
        let driver = driver.clone();
        async move { driver.session().await.map(|s| s.id()) }
    });
    until("the borrower to wait", || driver.stats().waiting == 1).await;
    assert!(!waiter.is_finished(), "no session is free");
    assert_eq!(driver.stats().live, 3);
    drop(b);
    let got = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the waiter proceeds")
        .expect("task")
        .expect("borrow");
    assert_eq!(got, b_id, "the waiter got the session given back");
    assert_eq!(driver.stats().created, created, "no session was made for it");

    // Close: idle sessions stop, waiters and later borrowers are refused,
    // lent sessions stop when they come back.
    let d = driver.session().await.expect("d");
    let refused = tokio::spawn({
        let driver = driver.clone();
        async move { driver.session().await.map(|s| s.id()) }
    });
    until("the second borrower to wait", || driver.stats().waiting == 1).await;
    assert_eq!(driver.close().await, 0, "no session was idle");
    let e = tokio::time::timeout(Duration::from_secs(60), refused)
        .await
        .expect("the waiter is woken")
        .expect("task")
        .expect_err("closed");
    assert!(matches!(e, Error::Closed), "{e}");
    assert!(matches!(driver.session().await.expect_err("closed"), Error::Closed));
    drop((a, c, d));
    let stats = driver.stats();
    assert_eq!((stats.live, stats.idle, stats.borrowed), (0, 0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_reach_every_session_including_one_made_after_a_discard() {
    let root = tempfile::tempdir().expect("tmp");
    let driver = Driver::builder()
        .with_pool_size(2)
        .with_setting("sf.catalog.wh.warehouse", file_url(&root.path().join("w")))
        .with_setting("datafusion.execution.batch_size", "1234")
        .with_setting("datafusion.execution.target_partitions", "3")
        .build()
        .expect("driver");
    let batch_size = "SELECT value FROM information_schema.df_settings WHERE name = 'datafusion.execution.batch_size'";
    async fn check(session: &sf_warehouse::Session, sql: &str) {
        assert_eq!(
            session.setting("datafusion.execution.batch_size").as_deref(),
            Some("1234")
        );
        assert_eq!(
            session.setting("datafusion.execution.target_partitions").as_deref(),
            Some("3")
        );
        let got = texts(&rows(session.sql(sql).await.expect("settings")).await, "value");
        assert_eq!(got, vec!["1234"], "the session runs with the setting");
    }
    let first = driver.session().await.expect("first");
    let second = driver.session().await.expect("second");
    check(&first, batch_size).await;
    check(&second, batch_size).await;
    let (first_id, second_id) = (first.id(), second.id());
    // Session state stays in its session: a temporary view of the first.
    first
        .create_temp_view("mine", first.context().read_batch(users(0..3, "m")).expect("frame"))
        .expect("temp view");
    assert_eq!(num_rows(&rows(first.table("mine").await.expect("view")).await), 3);
    first.discard();
    drop(second);

    let again = [driver.session().await.expect("x"), driver.session().await.expect("y")];
    let ids: Vec<String> = again.iter().map(|s| s.id()).collect();
    assert!(ids.contains(&second_id), "the returned session is lent again: {ids:?}");
    assert!(!ids.contains(&first_id), "the discarded session is gone: {ids:?}");
    let stats = driver.stats();
    assert_eq!((stats.created, stats.discarded, stats.live), (3, 1, 2), "{stats:?}");
    let fresh = again.iter().find(|s| s.id() != second_id).expect("the new session");
    check(fresh, batch_size).await;
    let e = fresh.table("mine").await.expect_err("no view in a new session");
    assert!(matches!(e, Error::NoSuchTable { .. }), "{e}");
}

/// A driver from a job file: `[cluster] pool_size`, `[cluster.session]`
/// settings and `[sf.catalog.NAME]` catalogs, embedded when the job names
/// no scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_file_gives_the_driver_its_pool_size_and_settings() {
    let root = tempfile::tempdir().expect("tmp");
    let text = |session: &str| {
        format!(
            "key_col = \"id\"\n[input]\nformat = \"table\"\ntable = \"wh.app.users\"\n[routing]\nnum_dbs = 2\n\
             [output]\nprefix = \"{}\"\n[cluster]\npool_size = 3\n[cluster.session]\n{session}\n\
             [sf.catalog.wh]\nwarehouse = \"{}\"\n",
            file_url(&root.path().join("snap")),
            file_url(&root.path().join("w")),
        )
    };
    let parse = |text: &str| {
        sf_warehouse::JobFile::parse(text, "job.toml", root.path(), Vec::<(String, String)>::new()).expect("job")
    };
    let job = parse(&text("\"datafusion.execution.batch_size\" = 777"));
    let driver = sf_executor::driver_for_job(&job, None).expect("driver");
    assert_eq!(driver.describe(), "embedded");
    assert_eq!(driver.stats().size, 3);
    assert_eq!(driver.settings().get("datafusion.execution.batch_size"), Some("777"));
    let session = driver.session().await.expect("session");
    assert_eq!(
        session.setting("datafusion.execution.batch_size").as_deref(),
        Some("777")
    );
    let seed = Source::from_dataframe(session.context().read_batch(users(0..10, "j")).expect("frame"));
    built(
        session
            .save_as_table(&seed, "wh.app.users", SaveMode::Error, "id", 2)
            .await
            .expect("the job's catalog is the session's"),
    );
    drop(session);
    assert_eq!(
        built(driver.run_job(&job, &BuildOptions::default()).await.expect("job")).rows,
        10
    );

    let job = parse(&text("\"datafusion.execution.batch_size\" = \"many\""));
    let driver = sf_executor::driver_for_job(&job, None).expect("driver");
    let e = driver.session().await.expect_err("refused by the engine");
    assert!(
        e.to_string()
            .starts_with("session setting datafusion.execution.batch_size: "),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_setting_fails_the_borrow_and_names_it() {
    for (key, value) in [
        ("datafusion.execution.batch_size", "lots"),
        ("datafusion.execution.no_such_knob", "1"),
        ("ballista.job.name", "embedded has no ballista"),
    ] {
        let driver = Driver::builder()
            .with_pool_size(1)
            .with_setting(key, value)
            .build()
            .expect("namespaces are checked here, values by the engine");
        for _ in 0..2 {
            let e = driver.session().await.expect_err(key);
            assert!(matches!(&e, Error::Setting { key: k, .. } if k == key), "{e}");
            assert!(e.to_string().starts_with(&format!("session setting {key}: ")), "{e}");
            assert_eq!(e.kind(), ErrorKind::Config);
        }
        let stats = driver.stats();
        assert_eq!((stats.live, stats.created, stats.borrowed), (0, 0, 0), "{stats:?}");
    }
    for (key, want) in [
        ("spark.sql.shuffle.partitions", "datafusion.*"),
        ("sf.nope", "not a ShardForge setting"),
    ] {
        let e = Driver::builder().with_setting(key, "1").build().expect_err(key);
        assert!(e.to_string().contains(key) && e.to_string().contains(want), "{e}");
    }
    let e = Driver::builder().with_pool_size(0).build().expect_err("empty pool");
    assert!(e.to_string().contains("pool_size"), "{e}");
    let e = Driver::builder()
        .with_setting("sf.catalog.wh.region", "x")
        .build()
        .expect_err("catalog without warehouse");
    assert!(e.to_string().contains("no warehouse URL"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_feeds_a_build_and_a_save_embedded() {
    let root = tempfile::tempdir().expect("tmp");
    let driver = embedded(root.path(), 2);
    let session = driver.session().await.expect("session");
    let seed = Source::from_dataframe(session.context().read_batch(users(0..200, "u")).expect("frame"));
    built(
        session
            .save_as_table(&seed, "wh.app.users", SaveMode::Error, "id", 4)
            .await
            .expect("seed"),
    );

    // Key filters and projections of a table source reach the table.
    let lookup = Source::from_table("wh.app.users")
        .filter(col("id").in_list(vec![lit(3i64), lit(7i64)], false))
        .select(["id", "name"]);
    let plan = session
        .dataframe(&lookup)
        .await
        .expect("frame")
        .create_physical_plan()
        .await
        .expect("plan");
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    assert!(shown.contains("ShardLookupExec") && shown.contains("keys=2"), "{shown}");

    let frame = session.context().read_batch(users(1000..1030, "df")).expect("frame");
    let sources = [
        (
            "sql",
            Source::from_sql("SELECT id, name, score FROM wh.app.users WHERE id < 50"),
            50,
            7,
            "u-7",
        ),
        (
            "table",
            Source::from_table("wh.app.users")
                .filter(col("id").gt_eq(lit(150i64)))
                .select(["id", "name"]),
            50,
            151,
            "u-151",
        ),
        ("frame", Source::from_dataframe(frame), 30, 1007, "df-1007"),
    ];
    for (kind, source, n, key, name) in sources {
        let prefix = file_url(&root.path().join(format!("snap-{kind}")));
        let summary = built(
            session
                .build(&source, &snapshot_job(&prefix), &BuildOptions::default())
                .await
                .unwrap_or_else(|e| panic!("build from {kind}: {e}")),
        );
        assert_eq!(summary.rows, n, "{kind}");
        let snap = read_snapshot(&prefix).await;
        let stored = snap.rows();
        assert_eq!(stored.len() as u64, n, "{kind}");
        let value = &stored[&(key as u64).to_be_bytes().to_vec()].1;
        assert!(String::from_utf8_lossy(value).contains(name), "{kind}: {value:?}");

        let table = format!("wh.app.from_{kind}");
        built(
            session
                .save_as_table(&source, &table, SaveMode::Overwrite, "id", 2)
                .await
                .unwrap_or_else(|e| panic!("save from {kind}: {e}")),
        );
        let got = rows(
            session
                .sql(&format!("SELECT name FROM {table} WHERE id = {key}"))
                .await
                .expect("lookup"),
        )
        .await;
        assert_eq!(texts(&got, "name"), vec![name.to_string()], "{kind}");
        assert_eq!(
            single_i64(
                session
                    .sql(&format!("SELECT count(*) FROM {table}"))
                    .await
                    .expect("count")
            )
            .await,
            n as i64,
            "{kind}"
        );
    }
    let e = session
        .build(
            &Source::from_sql("DROP TABLE wh.app.users"),
            &snapshot_job("unused"),
            &BuildOptions::default(),
        )
        .await
        .expect_err("not a query");
    assert!(e.to_string().contains("takes a query"), "{e}");
    assert!(session.table("wh.app.users").await.is_ok(), "nothing was dropped");
    drop(session);

    // A job file reading a table, through the driver (snapshot) and
    // through the sf-write path (table to table).
    let job_text = |output: &str| {
        format!(
            "key_col = \"id\"\n[input]\nformat = \"table\"\ntable = \"wh.app.users\"\n[routing]\nnum_dbs = 2\n\
             [output]\n{output}\n"
        )
    };
    let snap = file_url(&root.path().join("snap-job"));
    let job = sf_warehouse::JobFile::parse(
        &job_text(&format!("prefix = \"{snap}\"")),
        "job.toml",
        root.path(),
        Vec::<(String, String)>::new(),
    )
    .expect("job");
    assert_eq!(
        built(driver.run_job(&job, &BuildOptions::default()).await.expect("job")).rows,
        200
    );
    assert_eq!(read_snapshot(&snap).await.rows().len(), 200);
    let copy = sf_warehouse::JobFile::parse(
        &format!(
            "{}[sf.catalog.wh]\nwarehouse = \"{}\"\n",
            job_text("table = \"wh.app.copy\""),
            file_url(&root.path().join("w"))
        ),
        "job.toml",
        root.path(),
        Vec::<(String, String)>::new(),
    )
    .expect("job");
    assert_eq!(
        built(
            sf_warehouse::run_job(&copy, &Embedded::default(), &BuildOptions::default())
                .await
                .expect("table job")
        )
        .rows,
        200
    );
    let missing = sf_tests::replace_in(
        &job_text(&format!("prefix = \"{snap}-x\"")),
        "wh.app.users",
        "wh.app.nope",
    );
    let job =
        sf_warehouse::JobFile::parse(&missing, "job.toml", root.path(), Vec::<(String, String)>::new()).expect("job");
    let e = driver
        .run_job(&job, &BuildOptions::default())
        .await
        .expect_err("no such table");
    assert!(matches!(e, Error::NoSuchTable { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_temp_views_are_shared_by_the_process_and_session_views_are_not() {
    let root = tempfile::tempdir().expect("tmp");
    let driver = embedded(root.path(), 2);
    let one = driver.session().await.expect("one");
    let two = driver.session().await.expect("two");
    assert_ne!(one.id(), two.id());
    for (name, ids) in [("wh.app.users", 0..100), ("wh.default.people", 0..40)] {
        let df = one.context().read_batch(users(ids, "u")).expect("frame");
        built(
            one.save_as_table(&Source::from_dataframe(df), name, SaveMode::Error, "id", 2)
                .await
                .expect("seed"),
        );
    }

    // Made in one session by SQL, read in another, by SQL and by name.
    one.sql("CREATE GLOBAL TEMPORARY VIEW gv_shared AS SELECT id, name FROM wh.app.users WHERE id < 10")
        .await
        .expect("create");
    assert_eq!(count(&two, "SELECT count(*) FROM global_temp.gv_shared").await, 10);
    assert_eq!(
        num_rows(&rows(two.table("global_temp.gv_shared").await.expect("table")).await),
        10
    );
    let listed = rows(two.sql("SHOW TABLES IN global_temp").await.expect("show")).await;
    let names = texts(&listed, "table_name");
    assert!(names.contains(&"gv_shared".to_string()), "{names:?}");
    let kind = texts(&listed, "table_type");
    assert!(kind.iter().all(|k| k == "VIEW"), "{kind:?}");
    let info = rows(
        two.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'global_temp' AND table_name = 'gv_shared'")
            .await
            .expect("information_schema"),
    )
    .await;
    assert_eq!(num_rows(&info), 1);
    // A session outside the driver that runs warehouse SQL sees it too.
    let plain = Warehouse::new(
        Catalogs::from_settings([("sf.catalog.wh.warehouse", file_url(&root.path().join("w")))]).expect("catalogs"),
        Arc::new(Embedded::default()),
    );
    let ctx = plain.session_context();
    assert_eq!(
        single_i64(
            plain
                .sql(&ctx, "SELECT count(*) FROM global_temp.gv_shared")
                .await
                .expect("plain")
        )
        .await,
        10
    );

    // A DataFrame as a global view; create, replace and drop, with errors.
    let df = two.context().read_batch(users(0..5, "f")).expect("frame");
    two.create_global_temp_view("gv_frame", df.clone()).expect("create");
    let e = one
        .create_global_temp_view("global_temp.gv_frame", df)
        .expect_err("exists");
    assert!(
        matches!(&e, Error::ViewExists { view } if view == "global_temp.gv_frame"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = one
        .sql("CREATE GLOBAL TEMPORARY VIEW gv_frame AS SELECT 1 AS id")
        .await
        .expect_err("exists in SQL too");
    assert!(e.to_string().contains("OR REPLACE"), "{e}");
    one.sql("CREATE GLOBAL TEMPORARY VIEW IF NOT EXISTS gv_frame AS SELECT 1 AS id")
        .await
        .expect("if not exists keeps it");
    assert_eq!(
        single_i64(two.sql("SELECT count(*) FROM global_temp.gv_frame").await.expect("q")).await,
        5
    );
    one.sql("CREATE OR REPLACE GLOBAL TEMPORARY VIEW gv_frame AS SELECT id FROM wh.app.users WHERE id < 2")
        .await
        .expect("replace");
    assert_eq!(
        single_i64(two.sql("SELECT count(*) FROM global_temp.gv_frame").await.expect("q")).await,
        2
    );
    let replaced = one.context().read_batch(users(0..7, "r")).expect("frame");
    one.create_or_replace_global_temp_view("gv_frame", replaced)
        .expect("replace by API");
    assert_eq!(
        single_i64(two.sql("SELECT count(*) FROM global_temp.gv_frame").await.expect("q")).await,
        7
    );
    let dropped = rows(one.sql("DROP VIEW global_temp.gv_frame").await.expect("drop")).await;
    assert_eq!(texts(&dropped, "views_dropped"), vec!["1"]);
    let e = two.table("global_temp.gv_frame").await.expect_err("gone");
    assert!(
        matches!(&e, Error::NoSuchView { view } if view == "global_temp.gv_frame"),
        "{e}"
    );
    let e = one
        .sql("DROP VIEW global_temp.gv_frame")
        .await
        .expect_err("dropping twice");
    assert_eq!(e.to_string(), "view global_temp.gv_frame does not exist");
    let e = one.drop_global_temp_view("gv_frame").expect_err("by API too");
    assert!(matches!(e, Error::NoSuchView { .. }), "{e}");
    let none = rows(
        one.sql("DROP VIEW IF EXISTS global_temp.gv_frame")
            .await
            .expect("if exists"),
    )
    .await;
    assert_eq!(texts(&none, "views_dropped"), vec!["0"]);
    let e = one
        .sql("CREATE VIEW global_temp.gv_plain AS SELECT 1")
        .await
        .expect_err("not global");
    assert!(e.to_string().contains("CREATE GLOBAL TEMPORARY VIEW"), "{e}");
    let e = one
        .save_as_table(
            &Source::from_table("global_temp.gv_shared"),
            "wh.global_temp.t",
            SaveMode::Error,
            "id",
            2,
        )
        .await
        .expect_err("no tables in global_temp");
    assert!(e.to_string().contains("global temporary views, not tables"), "{e}");

    // A bare name finds the session's view first, then the saved table.
    let people = "SELECT count(*) FROM people";
    assert_eq!(single_i64(one.sql(people).await.expect("table")).await, 40);
    one.sql("CREATE TEMPORARY VIEW people AS SELECT * FROM wh.app.users WHERE id < 3")
        .await
        .expect("session view");
    assert_eq!(single_i64(one.sql(people).await.expect("view")).await, 3);
    assert_eq!(single_i64(two.sql(people).await.expect("other session")).await, 40);
    assert_eq!(num_rows(&rows(one.table("people").await.expect("by name")).await), 3);
    assert_eq!(
        num_rows(&rows(one.table("default.people").await.expect("qualified")).await),
        3
    );
    assert_eq!(
        num_rows(&rows(one.table("wh.app.users").await.expect("table")).await),
        100
    );
    assert!(one.drop_temp_view("people").expect("drop"));
    assert_eq!(single_i64(one.sql(people).await.expect("table again")).await, 40);

    // The view is the process's: a session of a new driver sees it.
    let other = embedded(root.path(), 1);
    let s = other.session().await.expect("other driver");
    assert_eq!(
        single_i64(s.sql("SELECT count(*) FROM global_temp.gv_shared").await.expect("q")).await,
        10
    );
    one.drop_global_temp_view("gv_shared").expect("drop");
}

fn run_sql(args: &[&str]) -> std::process::Output {
    run_bounded(
        Command::new(binary("sf-sql")).args(args),
        Duration::from_secs(300),
        "sf-sql",
    )
}

/// One `sf-sql` invocation: a global view, a table made from it, a point
/// lookup on that table; a second invocation does not see the view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sf_sql_shares_global_views_within_one_invocation_only() {
    let root = tempfile::tempdir().expect("tmp");
    let driver = embedded(root.path(), 1);
    let session = driver.session().await.expect("session");
    let seed = Source::from_dataframe(session.context().read_batch(users(0..100, "u")).expect("frame"));
    built(
        session
            .save_as_table(&seed, "wh.app.users", SaveMode::Error, "id", 4)
            .await
            .expect("seed"),
    );
    let conf = format!("sf.catalog.wh.warehouse={}", file_url(&root.path().join("w")));
    let out = run_sql(&[
        "--conf",
        &conf,
        "--cache-dir",
        root.path().join("cli-cache").to_str().expect("path"),
        "-o",
        "jsonl",
        "CREATE GLOBAL TEMPORARY VIEW v AS SELECT id, name FROM wh.app.users WHERE id < 20; \
         CREATE TABLE wh.app.copy AS SELECT * FROM global_temp.v; \
         SELECT name FROM wh.app.copy WHERE id = 7; \
         SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'global_temp'; \
         SHOW TABLES IN global_temp",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], r#"{"rows_written":20}"#, "{stdout}");
    assert_eq!(lines[1], r#"{"name":"u-7"}"#, "{stdout}");
    assert_eq!(lines[2], r#"{"table_name":"v","table_type":"VIEW"}"#, "{stdout}");
    assert!(
        lines[3].contains(r#""table_schema":"global_temp""#) && lines[3].contains(r#""table_name":"v""#),
        "{stdout}"
    );
    assert_eq!(lines.len(), 4, "{stdout}");
    let explain = run_sql(&["--conf", &conf, "EXPLAIN SELECT name FROM wh.app.copy WHERE id = 7"]);
    assert!(
        String::from_utf8_lossy(&explain.stdout).contains("ShardLookupExec"),
        "the lookup on the new table reads one shard: {}",
        String::from_utf8_lossy(&explain.stdout)
    );
    // The table outlives the invocation; the view does not.
    let reader = sf_reader::Reader::builder(format!("{}/w/app/copy/_CURRENT", file_url(root.path())))
        .build()
        .await
        .expect("reader");
    assert!(reader.get(&Key::Int(19)).await.expect("get").is_some());
    assert!(reader.get(&Key::Int(20)).await.expect("get").is_none());

    let second = run_sql(&["--conf", &conf, "SELECT count(*) FROM global_temp.v"]);
    assert_eq!(
        second.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("global_temp.v"));
    let drop = run_sql(&["--conf", &conf, "DROP VIEW global_temp.v"]);
    assert_eq!(drop.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&drop.stderr).contains("view global_temp.v does not exist"),
        "{}",
        String::from_utf8_lossy(&drop.stderr)
    );
    let twice = run_sql(&[
        "--conf",
        &conf,
        "CREATE GLOBAL TEMP VIEW w AS SELECT 1 AS x; CREATE GLOBAL TEMP VIEW w AS SELECT 2 AS x",
    ]);
    assert_eq!(twice.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("global temporary view global_temp.w exists"));
    // A syntax error anywhere runs nothing.
    let typo = run_sql(&["--conf", &conf, "CREATE TABLE wh.app.never AS SELECT 1 AS id; SELEC 2"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(!root.path().join("w/app/never").exists(), "nothing ran");
}

/// Every source kind built and saved on a real cluster, a global view
/// made in one cluster session and read in another, settings on every
/// cluster session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_sources_and_views_on_the_local_cluster() {
    let root = tempfile::tempdir().expect("tmp");
    let input = root.path().join("users.parquet");
    write_parquet(&input, &[users(0..2_000, "c")]);
    let input = input.to_str().expect("path").to_string();
    let cluster = LocalCluster::start(&ClusterOptions::default());
    let engine = sf_executor::ClusterEngine::parse(cluster.url()).expect("url");
    let driver = Driver::builder()
        .with_engine(Arc::new(engine))
        .with_pool_size(2)
        .with_setting("sf.catalog.wh.warehouse", file_url(&root.path().join("w")))
        .with_setting("ballista.job.name", "pooled sessions")
        .with_setting("datafusion.execution.batch_size", "2048")
        .with_reader_cache(root.path().join("cache"))
        .build()
        .expect("driver");
    assert!(driver.describe().starts_with("cluster df://127.0.0.1:"));
    let one = driver.session().await.expect("one");
    let two = driver.session().await.expect("two");
    for s in [&one, &two] {
        assert_eq!(s.setting("ballista.job.name").as_deref(), Some("pooled sessions"));
        assert_eq!(s.setting("datafusion.execution.batch_size").as_deref(), Some("2048"));
    }
    let executors: std::collections::BTreeSet<u32> = cluster.executor_pids().iter().copied().collect();
    let on_executors = |prefix: String| {
        let executors = executors.clone();
        async move {
            let claimed = claims(&prefix).await;
            assert!(
                !claimed.is_empty() && claimed.iter().all(|c| executors.contains(&c.pid)),
                "the executors wrote {prefix}: {claimed:?}"
            );
        }
    };

    let frame = one
        .context()
        .read_parquet(input.as_str(), ParquetReadOptions::default())
        .await
        .expect("frame");
    let seeded = built(
        one.save_as_table(&Source::from_dataframe(frame), "wh.app.users", SaveMode::Error, "id", 4)
            .await
            .unwrap_or_else(|e| panic!("seed: {e}\n{}", cluster.log_tails())),
    );
    assert_eq!(seeded.rows, 2_000);
    on_executors(file_url(&root.path().join("w/app/users"))).await;

    let frame = two
        .context()
        .read_parquet(input.as_str(), ParquetReadOptions::default())
        .await
        .expect("frame")
        .filter(col("id").lt(lit(300i64)))
        .expect("filter");
    let sources = [
        (
            "sql",
            Source::from_sql("SELECT id, name FROM wh.app.users WHERE id >= 1500"),
            500,
            1501,
            "c-1501",
        ),
        (
            "table",
            Source::from_table("wh.app.users")
                .select(["id", "score"])
                .filter(col("id").lt(lit(100i64))),
            100,
            42,
            "126",
        ),
        ("frame", Source::from_dataframe(frame), 300, 299, "c-299"),
    ];
    for (kind, source, n, key, shown) in sources {
        let prefix = file_url(&root.path().join(format!("snap-{kind}")));
        let summary = built(
            two.build(&source, &snapshot_job(&prefix), &BuildOptions::default())
                .await
                .unwrap_or_else(|e| panic!("build from {kind}: {e}\n{}", cluster.log_tails())),
        );
        assert_eq!(summary.rows, n, "{kind}");
        let stored = read_snapshot(&prefix).await.rows();
        assert_eq!(stored.len() as u64, n, "{kind}");
        let value = &stored[&(key as u64).to_be_bytes().to_vec()].1;
        assert!(String::from_utf8_lossy(value).contains(shown), "{kind}: {value:?}");
        on_executors(prefix).await;

        let table = format!("wh.app.from_{kind}");
        built(
            two.save_as_table(&source, &table, SaveMode::Overwrite, "id", 2)
                .await
                .unwrap_or_else(|e| panic!("save from {kind}: {e}\n{}", cluster.log_tails())),
        );
        on_executors(file_url(&root.path().join(format!("w/app/from_{kind}")))).await;
        let n_rows = single_i64(one.sql(&format!("SELECT count(*) FROM {table}")).await.expect("count")).await;
        assert_eq!(n_rows, n as i64, "{kind}");
    }

    // A global view made in one cluster session, read in the other: the
    // view's plan is inlined and the query runs on the cluster.
    one.sql("CREATE GLOBAL TEMPORARY VIEW gv_cluster AS SELECT id, name FROM wh.app.users WHERE id < 25")
        .await
        .expect("create");
    assert_eq!(
        single_i64(
            two.sql("SELECT count(*) FROM global_temp.gv_cluster")
                .await
                .expect("read")
        )
        .await,
        25
    );
    let listed = rows(
        two.sql("SHOW TABLES IN global_temp")
            .await
            .expect("listing on a cluster session"),
    )
    .await;
    assert!(texts(&listed, "table_name").contains(&"gv_cluster".to_string()));
    let prefix = file_url(&root.path().join("snap-view"));
    built(
        two.build(
            &Source::from_table("global_temp.gv_cluster"),
            &snapshot_job(&prefix),
            &BuildOptions::default(),
        )
        .await
        .expect("build from the view"),
    );
    assert_eq!(read_snapshot(&prefix).await.rows().len(), 25);
    one.drop_global_temp_view("gv_cluster").expect("drop");

    drop((one, two));
    assert_eq!(driver.close().await, 2, "both sessions were idle");
    assert_eq!(driver.stats().live, 0);
}
