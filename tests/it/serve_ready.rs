//! The real `sf-serve` binary on 127.0.0.1: readiness that keeps serving
//! a stale snapshot (and `--unready-when-stale` for the old behaviour), a
//! corrupt current manifest at start served from the run before it,
//! ready and degraded until a refresh reads it, answers that tell callers
//! without a token no URL, path or store message (and server-side
//! failures by an `error_id` the log carries), `nosniff`, and multigets
//! bounded in keys (while the body is parsed) and in answer bytes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sf_manifest::ManifestStore;
use sf_server::grpc::proto::MultiGetRequest;
use sf_tests::manifest_store;
use sf_tests::serve::{LocalSnapshot, ServeProcess, call, kind, metric, multiget_request, write_tokens};
use sf_tests::tamper::{current_manifest, delete_shard};

const TOKEN: &str = "tok-ops";

/// Polls `/readyz` (with `token`, if any) until `done` holds for its
/// body, at most 60 s; returns the status and body.
async fn readyz_until(s: &ServeProcess, token: Option<&str>, done: impl Fn(&Value) -> bool) -> (u16, Value) {
    let started = Instant::now();
    loop {
        let mut req = s.get("/readyz");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let (st, _, body) = call(req).await;
        if done(&body) {
            return (st, body);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/readyz never settled: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The listing of `name` in `/v1/snapshots`.
async fn listed(s: &ServeProcess, name: &str, token: Option<&str>) -> Value {
    let mut req = s.get("/v1/snapshots");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let (st, _, list) = call(req).await;
    assert_eq!(st, 200, "{list}");
    list["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
        .clone()
}

/// A snapshot older than `--max-age` is reported stale (in `/readyz`,
/// `/v1/snapshots` and a gauge) and still served, the replica ready;
/// with `--unready-when-stale` `/readyz` fails as it did before, while
/// lookups are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_snapshot_stays_ready_and_served_and_says_it_is_stale() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let mut s = ServeProcess::serving(&[("users", &snap.prefix)], &["--max-age", "1ms"]);
    s.wait_ready().await;
    let (st, _, ready) = call(s.get("/readyz")).await;
    assert_eq!(st, 200, "{ready}");
    assert_eq!(
        (&ready["ready"], &ready["health"]),
        (&json!(true), &json!("degraded")),
        "{ready}"
    );
    let users = &ready["snapshots"]["users"];
    assert_eq!(
        (&users["state"], &users["stale"]),
        (&json!("stale"), &json!(true)),
        "{ready}"
    );
    // No tokens on this server: every caller may read the reasons.
    assert!(
        users["reasons"][0]
            .as_str()
            .expect("a reason")
            .contains("above max_age"),
        "{ready}"
    );
    let (st, run, body) = call(s.get("/v1/snapshots/users/keys/7")).await;
    assert_eq!((st, run.as_deref(), body), (200, Some("run1"), json!("run1:7")));
    let listing = listed(&s, "users", None).await;
    assert_eq!(
        (&listing["stale"], &listing["ready"], &listing["health"]),
        (&json!(true), &json!(true), &json!("degraded")),
        "{listing}"
    );
    assert!(
        listing["stale_reason"].as_str().expect("why").contains("max_age"),
        "{listing}"
    );
    let m = s.metrics(None).await;
    let snapshot = [("snapshot", "users")];
    assert_eq!(metric(&m, "sf_serve_snapshot_stale", &snapshot), 1.0);
    assert_eq!(metric(&m, "sf_serve_snapshot_ready", &snapshot), 1.0);
    assert!(s.terminate().success());

    let mut s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &["--max-age", "1ms", "--unready-when-stale"],
    );
    let (st, ready) = readyz_until(&s, None, |b| b["snapshots"]["users"]["state"] == "stale").await;
    assert_eq!(
        (st, &ready["ready"], &ready["health"]),
        (503, &json!(false), &json!("unready")),
        "{ready}"
    );
    assert_eq!(ready["snapshots"]["users"]["ready"], false);
    let (st, run, _) = call(s.get("/v1/snapshots/users/keys/7")).await;
    assert_eq!(
        (st, run.as_deref()),
        (200, Some("run1")),
        "an unready replica still answers"
    );
    let m = s.metrics(None).await;
    assert_eq!(metric(&m, "sf_serve_snapshot_ready", &snapshot), 0.0);
    assert_eq!(metric(&m, "sf_serve_snapshot_stale", &snapshot), 1.0);
    assert!(s.terminate().success());
}

/// Two runs published, the current manifest corrupted: `sf-serve`
/// serves the run before it, is ready, says degraded and why (the reason
/// to token holders only), and once the manifest reads again a refresh
/// swaps to it and the degradation ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_current_manifest_at_start_serves_the_previous_run_ready_and_degraded() {
    let snap = LocalSnapshot::with_runs(&["run1", "run2"]).await;
    let tokens = write_tokens(snap.folder(), &[TOKEN]);
    let current = manifest_store(&snap.prefix)
        .load_current()
        .await
        .expect("load _CURRENT")
        .expect("published");
    let file = current
        .pointer
        .manifest_ref
        .strip_prefix("file://")
        .expect("a file URL")
        .to_string();
    let good = std::fs::read(&file).expect("the current manifest");
    std::fs::write(&file, b"this is no manifest").expect("corrupt the current manifest");

    let mut s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &["--auth-token-file", &tokens, "--refresh-interval", "200ms"],
    );
    s.wait_ready().await;
    let (st, run, body) = call(s.get("/v1/snapshots/users/keys/7").bearer_auth(TOKEN)).await;
    assert_eq!((st, run.as_deref(), body), (200, Some("run1"), json!("run1:7")));

    let (st, _, ready) = call(s.get("/readyz")).await;
    assert_eq!(st, 200, "{ready}");
    assert_eq!(ready["health"], "degraded", "{ready}");
    assert_eq!(ready["snapshots"]["users"]["state"], "degraded", "{ready}");
    assert!(
        ready["snapshots"]["users"].get("reasons").is_none(),
        "no reasons without a token: {ready}"
    );
    let text = ready.to_string();
    let folder = snap.folder().display().to_string();
    assert!(!text.contains(&folder) && !text.contains("file://"), "{text}");

    let (_, _, ready) = call(s.get("/readyz").bearer_auth(TOKEN)).await;
    let why = ready["snapshots"]["users"]["reasons"][0]
        .as_str()
        .expect("a reason")
        .to_string();
    assert!(why.contains("cannot be read") && why.contains("run1"), "{why}");
    let listing = listed(&s, "users", Some(TOKEN)).await;
    assert_eq!(
        (&listing["state"], &listing["run_id"]),
        (&json!("degraded"), &json!("run1")),
        "{listing}"
    );
    assert_eq!(listing["degraded"].as_str(), Some(why.as_str()));
    let m = s.metrics(Some(TOKEN)).await;
    assert_eq!(metric(&m, "sf_serve_snapshot_fallback", &[("snapshot", "users")]), 1.0);
    assert!(
        s.stderr()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("fell back to an older manifest")),
        "the log says so:\n{}",
        s.stderr()
    );

    std::fs::write(&file, good).expect("repair the current manifest");
    let (st, ready) = readyz_until(&s, None, |b| b["snapshots"]["users"]["state"] == "ready").await;
    assert_eq!((st, &ready["health"]), (200, &json!("ok")), "{ready}");
    let (st, run, body) = call(s.get("/v1/snapshots/users/keys/7").bearer_auth(TOKEN)).await;
    assert_eq!((st, run.as_deref(), body), (200, Some("run2"), json!("run2:7")));
    let listing = listed(&s, "users", Some(TOKEN)).await;
    assert_eq!(listing["degraded"], Value::Null, "{listing}");
    assert!(s.terminate().success());
}

/// To a caller without a token `/readyz` tells states, not reasons; a
/// snapshot that cannot open answers 503 without its path; a shard that
/// cannot be read answers 503 with an `error_id` the log line carries
/// along with the path, which the answer does not. Every answer, raw
/// values first, carries `X-Content-Type-Options: nosniff`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_tell_no_internals_and_server_failures_carry_an_error_id() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    // A snapshot whose shards are all gone: it opens, its lookups fail.
    // (A run of its own: the shard cache shares files of equal content.)
    let broken = LocalSnapshot::with_runs(&["broken1"]).await;
    let (manifest, _) = current_manifest(&broken.prefix).await;
    for row in &manifest.shards {
        delete_shard(&broken.prefix, row.db_url.as_deref().expect("db_url")).await;
    }
    let tokens = write_tokens(snap.folder(), &[TOKEN]);
    let folder = snap.folder().display().to_string();
    let missing = snap.folder().join("nothing-here").display().to_string();
    let mut s = ServeProcess::serving(
        &[("users", &snap.prefix), ("ghost", &missing), ("broken", &broken.prefix)],
        &["--auth-token-file", &tokens, "--sqlite-mode", "download"],
    );
    let (st, ready) = readyz_until(&s, None, |b| {
        b["snapshots"]["ghost"]["state"] == "failed"
            && b["snapshots"]["users"]["state"] == "ready"
            && b["snapshots"]["broken"]["state"] == "ready"
    })
    .await;
    assert_eq!((st, &ready["ready"]), (503, &json!(false)), "{ready}");
    let text = ready.to_string();
    assert!(
        !text.contains(&folder) && !text.contains("_CURRENT") && !text.contains("reasons"),
        "{text}"
    );
    let (st, _, ready) = call(s.get("/readyz").bearer_auth("not-a-token")).await;
    assert_eq!(st, 503);
    assert!(
        !ready.to_string().contains("reasons"),
        "a wrong token is no token: {ready}"
    );
    let (_, _, ready) = call(s.get("/readyz").bearer_auth(TOKEN)).await;
    let why = ready["snapshots"]["ghost"]["reasons"][0].as_str().expect("a reason");
    assert!(why.contains("_CURRENT"), "{ready}");

    let (st, _, body) = call(s.get("/v1/snapshots/ghost/keys/1").bearer_auth(TOKEN)).await;
    assert_eq!((st, kind(&body)), (503, "not_ready"), "{body}");
    assert!(!body.to_string().contains(&folder), "{body}");

    // nosniff: on a raw value, an error, a probe.
    let resp = s
        .get("/v1/snapshots/users/keys/7")
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    for path in ["/v1/snapshots/users/keys/100000", "/readyz", "/livez", "/nowhere"] {
        let resp = s.get(path).bearer_auth(TOKEN).send().await.expect("request");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    // A 4xx keeps its message about the request.
    let (st, _, body) = call(s.get("/v1/snapshots/users/keys/abc").bearer_auth(TOKEN)).await;
    assert_eq!((st, kind(&body)), (400, "invalid_key"));
    assert!(
        body["error"]["message"].as_str().expect("message").contains("abc"),
        "{body}"
    );

    let (st, _, body) = call(s.get("/v1/snapshots/broken/keys/7").bearer_auth(TOKEN)).await;
    assert_eq!((st, kind(&body)), (503, "shard_unavailable"), "{body}");
    let text = body.to_string();
    let folder = broken.folder().display().to_string();
    assert!(!text.contains(&folder) && !text.contains("file://"), "{text}");
    let id = body["error"]["error_id"].as_str().expect("an error id").to_string();
    assert!(
        body["error"]["message"].as_str().expect("message").contains(&id),
        "{body}"
    );
    let log = s.stderr();
    assert!(
        log.lines().any(|l| l.contains(&id) && l.contains(&folder)),
        "the log line carries the id and the path:\n{log}"
    );
    assert!(s.terminate().success());
}

/// A multiget over `--max-keys` is refused while its body is parsed (what
/// follows the key past the bound is never read); one whose answer passes
/// `--max-response-bytes` is refused as it is encoded (HTTP 413, gRPC
/// RESOURCE_EXHAUSTED, the stream per chunk); repeated keys are answered
/// in input order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multigets_are_bounded_in_keys_and_in_answer_bytes() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let mut s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--max-keys",
            "4",
            "--max-response-bytes",
            "60",
        ],
    );
    s.wait_ready().await;
    let (st, run, body) = s.multiget("users", json!({"keys": [7, 8, 7]})).await;
    assert_eq!((st, run.as_deref()), (200, Some("run1")), "{body}");
    assert_eq!(body["values"], json!(["run1:7", "run1:8", "run1:7"]));
    let (st, _, body) = s.multiget("users", json!({"keys": [1, 2, 3, 4, 5]})).await;
    assert_eq!((st, kind(&body)), (413, "too_many_keys"), "{body}");
    // Not even JSON after the fifth key: the parse never gets there.
    let resp = s
        .client
        .post(s.url("/v1/snapshots/users/multiget"))
        .header("content-type", "application/json")
        .body(r#"{"keys": [1, 2, 3, 4, 5, !!!"#)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 413);
    let body: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("json");
    assert_eq!(kind(&body), "too_many_keys");

    // The same three values as hex pass 60 bytes.
    let (st, run, body) = s
        .multiget("users", json!({"keys": [7, 8, 7], "value_format": "hex"}))
        .await;
    assert_eq!(
        (st, run.as_deref(), kind(&body)),
        (413, Some("run1"), "response_too_large")
    );
    assert!(
        body["error"]["message"].as_str().expect("message").contains("60 bytes"),
        "{body}"
    );

    let mut g = s.grpc_client().await;
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let answer = g
        .multi_get(multiget_request("users", keys(&["7", "8", "7"])))
        .await
        .expect("within the bound")
        .into_inner();
    let values: Vec<&[u8]> = answer.values.iter().map(|v| v.value.as_slice()).collect();
    assert_eq!(values, vec![&b"run1:7"[..], b"run1:8", b"run1:7"]);
    let four = keys(&["150", "151", "152", "153"]);
    let e = g
        .multi_get(multiget_request("users", four.clone()))
        .await
        .expect_err("over the answer bound");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(e.metadata().get("sf-error-kind").expect("kind"), "response_too_large");
    // Streamed: chunks of two fit, a chunk of four does not.
    let mut stream = g
        .multi_get_stream(MultiGetRequest {
            chunk_size: 2,
            ..multiget_request("users", four.clone())
        })
        .await
        .expect("stream")
        .into_inner();
    let mut seen = 0;
    while let Some(chunk) = stream.message().await.expect("a chunk within the bound") {
        seen += chunk.values.len();
    }
    assert_eq!(seen, 4);
    let mut stream = g
        .multi_get_stream(MultiGetRequest {
            chunk_size: 4,
            ..multiget_request("users", four)
        })
        .await
        .expect("stream")
        .into_inner();
    let e = stream.message().await.expect_err("a chunk over the bound");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(s.terminate().success());
}
