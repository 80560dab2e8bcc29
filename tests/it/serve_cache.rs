//! The shard cache of the real `sf-serve`: bounded by `--cache-max-bytes`
//! while every held version keeps answering, keyed so that two snapshots
//! never share a file, and first opens that outlive their request.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sf_tests::fault_proxy::{Fault, FaultProxy, Rule};
use sf_tests::serve::{KEYS, ServeProcess, call, metric, publish_ints};

/// Bytes of the cache folder's files (downloads in progress included).
fn folder_bytes(cache: &Path) -> u64 {
    match std::fs::read_dir(cache.join("sqlite")) {
        Ok(dir) => dir.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum(),
        Err(_) => 0,
    }
}

fn files(cache: &Path, pred: impl Fn(&str) -> bool) -> Vec<String> {
    match std::fs::read_dir(cache.join("sqlite")) {
        Ok(dir) => dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| pred(n))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Bytes of the `shard.db` files under a local folder: one snapshot's
/// share of the cache (its digest files are a few bytes more).
fn shard_bytes(folder: &Path, run: &str) -> u64 {
    let mut total = 0;
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("list").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "shard.db") && p.to_string_lossy().contains(run) {
                total += e.metadata().expect("meta").len();
            }
        }
    }
    total
}

/// All keys of a multiget, asking for `query` (`""`, `?offset=1`).
async fn read_all(s: &ServeProcess, query: &str, want_run: &str) {
    let keys: Vec<u64> = (0..KEYS).collect();
    let (st, run, body) = call(s.post_json(
        &format!("/v1/snapshots/users/multiget{query}"),
        &json!({ "keys": keys }),
    ))
    .await;
    assert_eq!((st, run.as_deref()), (200, Some(want_run)), "{query}: {body}");
    let values = body["values"].as_array().expect("values");
    for (k, v) in values.iter().enumerate() {
        assert_eq!(v.as_str(), Some(format!("{want_run}:{k}").as_str()), "{query} key {k}");
    }
}

/// Ten publishes of a four-shard snapshot, `--keep-versions 2` and a bound
/// of three and a half snapshots: after every swap the folder comes back
/// under the bound, and the version before (`?offset=1`) keeps answering
/// with its own values throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_publishes_stay_under_the_cache_bound_while_the_pinned_version_answers() {
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    publish_ints(&prefix, "run00").await;
    let one = shard_bytes(root.path(), "run_id=run00");
    assert!(one > 0);
    let bound = one * 7 / 2;
    let cache = root.path().join("cache");
    let s = ServeProcess::start(&[
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--cache-dir".into(),
        cache.display().to_string(),
        "--snapshot".into(),
        format!("users={prefix}"),
        "--sqlite-mode".into(),
        "download".into(),
        "--keep-versions".into(),
        "2".into(),
        "--refresh-interval".into(),
        "100ms".into(),
        "--cache-max-bytes".into(),
        bound.to_string(),
    ]);
    s.wait_ready().await;
    read_all(&s, "", "run00").await;
    for i in 1..=10 {
        let run = format!("run{i:02}");
        let before = format!("run{:02}", i - 1);
        publish_ints(&prefix, &run).await;
        let mut swapped = false;
        for _ in 0..600 {
            let (st, got, _) = call(s.get("/v1/snapshots/users/keys/1")).await;
            if st == 200 && got.as_deref() == Some(run.as_str()) {
                swapped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(swapped, "{run} was never served: {}", s.stderr());
        read_all(&s, "", &run).await;
        read_all(&s, "?offset=1", &before).await;
        let mut within = false;
        for _ in 0..600 {
            if folder_bytes(&cache) <= bound {
                within = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            within,
            "after {run}: {} bytes in the cache, bound {bound}: {:?}",
            folder_bytes(&cache),
            files(&cache, |_| true)
        );
        // What the bound removed was never what a held version reads.
        read_all(&s, "?offset=1", &before).await;
    }
    let m = s.metrics(None).await;
    assert!(metric(&m, "sf_reader_cache_evictions_total", &[("snapshot", "users")]) > 0.0);
    let gauge = metric(&m, "sf_reader_cache_bytes", &[("snapshot", "users")]);
    assert!(gauge > 0.0, "{gauge}");
    assert!(files(&cache, |n| n.starts_with(".tmp-")).is_empty());
}

/// Two snapshots under different prefixes whose manifests claim the same
/// `checkpoint_id`s are served from files of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_snapshots_claiming_one_checkpoint_id_serve_their_own_bytes() {
    use sf_tests::tamper::{current_manifest, publish_over};
    let root = tempfile::tempdir().expect("root");
    let (a, b) = (
        format!("file://{}/a", root.path().display()),
        format!("file://{}/b", root.path().display()),
    );
    publish_ints(&a, "runa").await;
    publish_ints(&b, "runb").await;
    let (ma, _) = current_manifest(&a).await;
    let (mut mb, _) = current_manifest(&b).await;
    for row in &mut mb.shards {
        let theirs = ma.shards.iter().find(|r| r.db_id == row.db_id).expect("same shard");
        row.checkpoint_id = theirs.checkpoint_id.clone();
    }
    publish_over(&b, &mb).await;
    let cache = root.path().join("cache");
    let s = ServeProcess::start(&[
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--cache-dir".into(),
        cache.display().to_string(),
        "--snapshot".into(),
        format!("a={a}"),
        "--snapshot".into(),
        format!("b={b}"),
        "--sqlite-mode".into(),
        "download".into(),
    ]);
    s.wait_ready().await;
    for (name, run) in [("a", "runa"), ("b", "runb"), ("a", "runa")] {
        let keys: Vec<u64> = (0..KEYS).collect();
        let (st, got, body) =
            call(s.post_json(&format!("/v1/snapshots/{name}/multiget"), &json!({ "keys": keys }))).await;
        assert_eq!((st, got.as_deref()), (200, Some(run)), "{body}");
        for (k, v) in body["values"].as_array().expect("values").iter().enumerate() {
            assert_eq!(v.as_str(), Some(format!("{run}:{k}").as_str()), "{name} key {k}");
        }
    }
    assert_eq!(
        files(&cache, |n| n.ends_with(".db")).len(),
        8,
        "a file per shard per snapshot"
    );
    let m = s.metrics(None).await;
    for name in ["a", "b"] {
        assert_eq!(metric(&m, "sf_reader_cache_repairs_total", &[("snapshot", name)]), 0.0);
        assert_eq!(metric(&m, "sf_reader_downloads_total", &[("snapshot", name)]), 4.0);
    }
}

/// A request whose deadline passes while its shard's first download is
/// slow gets 504; the download goes on, leaves no temporary file, and the
/// next request reads the finished file without a second download.
/// Needs the S3 emulator (`./scripts/test.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_during_a_first_download_leaves_no_temp_file_and_the_next_request_uses_it() {
    let prefix = sf_tests::s3_prefix("serve-cache-deadline");
    publish_ints(&prefix, "run1").await;
    let proxy = FaultProxy::for_s3();
    proxy.add(Rule::new("GET", "shard.db").fault(Fault::Hang(Duration::from_secs(2))));
    let root = tempfile::tempdir().expect("root");
    let cache = root.path().join("cache");
    let s = ServeProcess::start_with(
        &[
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--cache-dir".into(),
            cache.display().to_string(),
            "--snapshot".into(),
            format!("users={prefix}"),
            "--sqlite-mode".into(),
            "download".into(),
            "--request-timeout".into(),
            "300ms".into(),
        ],
        &[("AWS_ENDPOINT", proxy.url())],
    );
    s.wait_ready().await;
    let (st, _, body) = call(s.get("/v1/snapshots/users/keys/1")).await;
    assert_eq!(st, 504, "{body}");
    let mut landed = false;
    for _ in 0..600 {
        if files(&cache, |n| n.ends_with(".db")).len() == 1 && files(&cache, |n| n.starts_with(".tmp-")).is_empty() {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(landed, "{:?}\n{}", files(&cache, |_| true), s.stderr());
    let (st, run, body) = s.multiget("users", json!({"keys": [1]})).await;
    assert_eq!((st, run.as_deref()), (200, Some("run1")), "{body}");
    assert_eq!(body["values"], json!(["run1:1"]));
    let downloads = proxy
        .seen()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("shard.db"))
        .count();
    assert_eq!(downloads, 1, "{:?}", proxy.seen());
    assert!(files(&cache, |n| n.starts_with(".tmp-")).is_empty());
}
