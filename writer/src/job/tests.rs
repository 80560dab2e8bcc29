//! Tests of resolving a job (the frame, the routing, the sample check)
//! and of what a build does when the sample check fails.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt32Type;
use sf_router::Router;

use super::resolve::*;
use super::{BuildOptions, Embedded, build_prepared};
use crate::config::JobConfig;

/// A job over `rows` CSV rows into 8 shards, prepared by the embedded
/// engine: its routed frame carries the kernel's shard ids.
async fn prepared(dir: &Path, rows: usize) -> (JobConfig, Prepared) {
    let body: String = (0..rows).map(|i| format!("{i},user-{i}\n")).collect();
    std::fs::write(dir.join("in.csv"), format!("id,name\n{body}")).expect("input");
    let text = "key_col = \"id\"\n[input]\nformat = \"csv\"\npath = \"in.csv\"\n\
                [routing]\nnum_dbs = 8\n[output]\nprefix = \"out\"\n";
    let job = crate::config::parse(text, "job.toml", dir, Vec::<(String, String)>::new()).expect("job");
    let prepared = prepare(&job, &Embedded::default()).await.expect("prepare");
    (job, prepared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_check_passes_when_kernel_and_row_router_agree() {
    let dir = tempfile::tempdir().expect("tmp");
    let (job, p) = prepared(dir.path(), 500).await;
    verify_sample(&p.routed, &job, &p.router, &p.extra_cols)
        .await
        .expect("the kernel and the row router agree");
}

/// A row router that disagrees with the kernel (here: one routing
/// over 7 shards where the kernel routed over 8) fails the check,
/// naming the sample row and both shard ids; a build with it fails
/// the same way before it writes anything under the prefix (no run
/// record, no shard, no manifest), where the same build with the
/// snapshot's own router writes and publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_check_fails_when_the_routers_disagree() {
    let dir = tempfile::tempdir().expect("tmp");
    let (job, p) = prepared(dir.path(), 500).await;
    let other = Router::hash(7, p.router.key_encoding()).expect("router");
    let e = verify_sample(&p.routed, &job, &other, &p.extra_cols)
        .await
        .expect_err("the routers disagree");
    let text = e.to_string();
    assert!(
        text.contains("routing check failed at sample row")
            && text.contains("the kernel routed to shard")
            && text.contains("nothing was written"),
        "{text}"
    );

    let out = dir.path().join("out");
    let options = BuildOptions::default();
    let e = build_prepared(
        &job,
        Prepared { router: other, ..p },
        &Embedded::default(),
        &options,
        std::time::Instant::now(),
    )
    .await
    .expect_err("the routers disagree");
    assert!(e.to_string().contains("routing check failed at sample row"), "{e}");
    let written: Vec<_> = walk(&out);
    assert!(written.is_empty(), "nothing was written under the prefix: {written:?}");

    // The prefix is where a build writes: with the snapshot's router it
    // records its run, writes its shards and publishes there.
    let (job, p) = prepared(dir.path(), 500).await;
    build_prepared(&job, p, &Embedded::default(), &options, std::time::Instant::now())
        .await
        .expect("the build publishes");
    let written = walk(&out);
    for part in ["_CURRENT", "runs/", "shards/", "manifests/"] {
        assert!(
            written.iter().any(|f| f.contains(part)),
            "{part} under the prefix: {written:?}"
        );
    }
}

/// Every file under `dir`, by its path relative to it (none when
/// `dir` does not exist).
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap_or(&path).display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Only the rows of the sample are checked: a kernel id changed in
/// one row of a batch is caught at that row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_wrong_shard_id_is_caught_at_its_row() {
    use arrow::array::{ArrayRef, UInt32Array};

    let dir = tempfile::tempdir().expect("tmp");
    let (job, p) = prepared(dir.path(), 50).await;
    let batches = p.routed.clone().collect().await.expect("routed rows");
    let batch = batches.iter().find(|b| b.num_rows() > 3).expect("a batch of rows");
    check_batch_routing(batch, &job, &p.router, &p.extra_cols).expect("as routed, it agrees");

    let idx = batch.schema().index_of(&job.shard_id_col).expect("shard id column");
    let mut ids: Vec<u32> = batch.column(idx).as_primitive::<UInt32Type>().values().to_vec();
    ids[3] = (ids[3] + 1) % 8;
    let mut columns = batch.columns().to_vec();
    columns[idx] = Arc::new(UInt32Array::from(ids)) as ArrayRef;
    let damaged = RecordBatch::try_new(batch.schema(), columns).expect("batch");
    let text = check_batch_routing(&damaged, &job, &p.router, &p.extra_cols)
        .expect_err("row 3 is off")
        .to_string();
    assert!(text.contains("at sample row 3:"), "{text}");
}
