//! The real `sf-serve` binary on 127.0.0.1: every route and error status
//! over snapshots on files and on S3, HTTP/1.1 and HTTP/2, the gRPC
//! service through its generated client, authentication, pinned reads,
//! rollback, a publish under load (no failed request, the run switches,
//! no multiget mixes versions), overload and deadlines, a shard that
//! cannot be read, SIGTERM draining, `/metrics`, and the reference
//! fixtures (CEL with routing context included).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sf_manifest::Key;
use sf_server::grpc::proto::lookup_client::LookupClient;
use sf_server::grpc::proto::{GetRequest, MultiGetRequest};
use sf_tests::serve::{
    JsonBody, KEYS, LocalSnapshot, ServeProcess, call, get_request, kind, metric, multiget_request, publish_ints,
    read_answer, run_serve, slow_request, with_token, write_token_file, write_tokens,
};
use sf_tests::{expected, fixture_dir, s3_prefix};
use tokio::io::AsyncWriteExt;

/// Every route and error status over a snapshot on the file system, over
/// HTTP/1.1 and HTTP/2 and gRPC; `/metrics` counts what was done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_error_over_files_http_and_grpc() {
    // The snapshot is built after this: its age can never be more than
    // the time since.
    let built_after = Instant::now();
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let mut s = ServeProcess::serving(
        &[("users", &snap.current_url())],
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--max-keys",
            "50",
            "--max-body-bytes",
            "4000",
            "--max-age",
            "1d",
        ],
    );
    let (st, _, body) = call(s.get("/livez")).await;
    assert_eq!((st, body), (200, Value::String("ok\n".into())));
    s.wait_ready().await;
    let (st, _, ready) = call(s.get("/readyz")).await;
    assert_eq!(st, 200);
    assert_eq!(ready["snapshots"]["users"]["ready"], true);

    // One key: raw bytes, the run in a header.
    let resp = s.get("/v1/snapshots/users/keys/7").send().await.expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.headers()["sf-run-id"], "run1");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), b"run1:7");
    let (st, run, body) = call(s.get("/v1/snapshots/users/keys/100000")).await;
    assert_eq!((st, run.as_deref(), kind(&body)), (404, Some("run1"), "key_not_found"));
    let (st, _, body) = call(s.get("/v1/snapshots/users/keys/abc")).await;
    assert_eq!((st, kind(&body)), (400, "invalid_key"));
    assert!(body["error"]["message"].as_str().expect("message").contains("abc"));
    let (st, _, body) = call(s.get("/v1/snapshots/nope/keys/1")).await;
    assert_eq!((st, kind(&body)), (404, "unknown_snapshot"));
    let (st, _, body) = call(s.get("/v1/snapshots/users/keys/1?colour=red")).await;
    assert_eq!((st, kind(&body)), (400, "bad_query"));
    let (st, _, body) = call(s.get("/v1/snapshots/users/keys/1?ctx.region=eu")).await;
    assert_eq!(
        (st, kind(&body)),
        (400, "bad_request"),
        "a hash snapshot has no routing columns"
    );
    let (st, _, body) = call(s.get("/nothing/here")).await;
    assert_eq!((st, kind(&body)), (404, "no_route"));

    // Pins: offset 0 and the served run are held; nothing else is.
    let (st, run, _) = call(s.get("/v1/snapshots/users/keys/1?offset=0")).await;
    assert_eq!((st, run.as_deref()), (200, Some("run1")));
    let (st, _, _) = call(s.get("/v1/snapshots/users/keys/1?run_id=run1")).await;
    assert_eq!(st, 200);
    let (st, _, body) = call(s.get("/v1/snapshots/users/keys/1?offset=1")).await;
    assert_eq!((st, kind(&body)), (404, "version_not_held"));
    let (st, _, body) = call(s.get("/v1/snapshots/users/keys/1?run_id=run9")).await;
    assert_eq!((st, kind(&body)), (404, "version_not_held"));

    // Multiget: input order, misses as null, each value format.
    let (st, run, body) = s.multiget("users", json!({"keys": [3, "1", 99999, 0]})).await;
    assert_eq!((st, run.as_deref()), (200, Some("run1")));
    assert_eq!(
        body,
        json!({"run_id": "run1", "values": ["run1:3", "run1:1", null, "run1:0"]})
    );
    let (_, _, body) = s.multiget("users", json!({"keys": [5], "value_format": "hex"})).await;
    assert_eq!(body["values"][0], hex::encode("run1:5"));
    let (_, _, body) = s
        .multiget("users", json!({"keys": [5], "value_format": "base64"}))
        .await;
    assert_eq!(body["values"][0], "cnVuMTo1");
    let (st, _, body) = s.multiget("users", json!({"keys": []})).await;
    assert_eq!((st, body["values"].clone()), (200, json!([])));
    let (st, _, body) = s.multiget("nope", json!({"keys": [1]})).await;
    assert_eq!((st, kind(&body)), (404, "unknown_snapshot"));
    for bad in [
        json!({"key": [1]}),
        json!({"keys": 1}),
        json!({"keys": [1], "value_format": "morse"}),
    ] {
        let (st, _, body) = s.multiget("users", bad.clone()).await;
        assert_eq!((st, kind(&body)), (400, "bad_body"), "{bad}");
    }
    let (st, _, body) = call(s.client.post(s.url("/v1/snapshots/users/multiget")).body("{not json")).await;
    assert_eq!((st, kind(&body)), (400, "bad_body"));
    let (st, _, body) = s.multiget("users", json!({"keys": ["x"]})).await;
    assert_eq!((st, kind(&body)), (400, "invalid_key"));
    let (st, _, body) = s.multiget("users", json!({"keys": (0..51).collect::<Vec<_>>()})).await;
    assert_eq!((st, kind(&body)), (413, "too_many_keys"));
    let big = json!({"keys": (0..50).map(|k| format!("{k:0>90}")).collect::<Vec<_>>()});
    let (st, _, body) = s.multiget("users", big).await;
    assert_eq!((st, kind(&body)), (413, "body_too_large"));
    let (st, _, body) = s.multiget("users", json!({"keys": [1], "contexts": [{}, {}]})).await;
    assert_eq!((st, kind(&body)), (400, "bad_body"));

    // Rollback is refused without authentication configured.
    let (st, _, body) = call(s.post_json("/v1/snapshots/users/rollback", &json!({"offset": 1}))).await;
    assert_eq!((st, kind(&body)), (403, "admin_disabled"));

    // The listing.
    let (st, _, list) = call(s.get("/v1/snapshots")).await;
    assert_eq!(st, 200);
    let users = &list["snapshots"][0];
    assert_eq!(users["name"], "users");
    assert_eq!(users["run_id"], "run1");
    assert_eq!(users["shard_count"], 4);
    assert!(users["open_shards"].as_u64().expect("open shards") >= 1);
    assert_age(users["age_seconds"].as_f64().expect("age"), built_after);
    assert!(users["published_at"].is_string());
    assert_eq!(users["refresh"]["consecutive_failures"], 0);
    assert_eq!(users["versions"][0]["run_id"], "run1");

    // HTTP/2 without TLS (prior knowledge) on the same port.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client");
    let resp = h2
        .get(s.url("/v1/snapshots/users/keys/9"))
        .send()
        .await
        .expect("h2 get");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.headers()["sf-run-id"], "run1");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), b"run1:9");

    // gRPC through the generated client.
    let mut g = s.grpc_client().await;
    let got = g.get(get_request("users", "11")).await.expect("grpc get");
    assert_eq!(got.metadata().get("sf-run-id").expect("run header"), "run1");
    let got = got.into_inner();
    assert_eq!(
        (got.run_id.as_str(), got.found, got.value.as_slice()),
        ("run1", true, &b"run1:11"[..])
    );
    let miss = g
        .get(get_request("users", "77777"))
        .await
        .expect("grpc miss")
        .into_inner();
    assert!(!miss.found);
    let keys: Vec<String> = (0..KEYS + 10).rev().map(|k| k.to_string()).collect();
    let mg = g
        .multi_get(multiget_request("users", keys[..50].to_vec()))
        .await
        .expect("grpc multiget")
        .into_inner();
    assert_eq!(mg.run_id, "run1");
    for (k, v) in keys[..50].iter().zip(&mg.values) {
        let n: u64 = k.parse().expect("int");
        if n < KEYS {
            assert_eq!((v.found, v.value.as_slice()), (true, format!("run1:{n}").as_bytes()));
        } else {
            assert!(!v.found, "{n}");
        }
    }
    // Streamed: more keys than a multiget may carry, in chunks of 64.
    let mut stream = g
        .multi_get_stream(MultiGetRequest {
            chunk_size: 64,
            ..multiget_request("users", keys.clone())
        })
        .await
        .expect("grpc stream")
        .into_inner();
    let mut seen = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.expect("chunk") {
        assert_eq!(chunk.run_id, "run1");
        assert_eq!(chunk.start as usize, seen.len(), "chunks arrive in order");
        assert!(chunk.values.len() <= 64);
        seen.extend(chunk.values);
        chunks += 1;
    }
    assert_eq!((seen.len(), chunks), (keys.len(), keys.len().div_ceil(64)));
    for (k, v) in keys.iter().zip(&seen) {
        let n: u64 = k.parse().expect("int");
        assert_eq!(v.found, n < KEYS, "{n}");
    }
    let e = g
        .multi_get(multiget_request("users", keys.clone()))
        .await
        .expect_err("over max_keys");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(e.metadata().get("sf-error-kind").expect("kind"), "too_many_keys");
    let e = g.get(get_request("nope", "1")).await.expect_err("unknown snapshot");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = g.get(get_request("users", "x")).await.expect_err("bad key");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // /metrics: what was just done, counted.
    let m = s.metrics(None).await;
    let get_ok = metric(&m, "sf_serve_requests_total", &[("route", "get"), ("status", "200")]);
    assert!(get_ok >= 3.0, "{get_ok}");
    assert!(metric(&m, "sf_serve_requests_total", &[("route", "get"), ("status", "404")]) >= 3.0);
    assert!(
        metric(
            &m,
            "sf_serve_requests_total",
            &[("route", "multiget"), ("status", "413")]
        ) >= 2.0
    );
    assert!(
        metric(
            &m,
            "sf_serve_requests_total",
            &[("route", "grpc_get"), ("status", "ok")]
        ) >= 2.0
    );
    assert!(
        metric(
            &m,
            "sf_serve_requests_total",
            &[("route", "grpc_multiget_stream"), ("status", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        metric(&m, "sf_serve_request_duration_seconds_count", &[("route", "get")]),
        metric(&m, "sf_serve_requests_total", &[("route", "get")]),
        "every get is in the latency histogram"
    );
    assert!(
        metric(
            &m,
            "sf_serve_request_duration_seconds_bucket",
            &[("route", "multiget"), ("le", "+Inf")]
        ) >= 5.0
    );
    // found: 7, 9, offset 0, run_id, 4 multigets, grpc get, 40+ grpc...
    let found = metric(&m, "sf_serve_keys_total", &[("snapshot", "users"), ("result", "found")]);
    let missing = metric(
        &m,
        "sf_serve_keys_total",
        &[("snapshot", "users"), ("result", "missing")],
    );
    assert!(found >= 100.0 && missing >= 10.0, "found {found}, missing {missing}");
    assert_eq!(
        metric(
            &m,
            "sf_serve_snapshot_info",
            &[("snapshot", "users"), ("run_id", "run1")]
        ),
        1.0
    );
    assert_eq!(metric(&m, "sf_serve_snapshot_ready", &[("snapshot", "users")]), 1.0);
    assert_eq!(
        metric(&m, "sf_serve_snapshot_open_shards", &[("snapshot", "users")]),
        4.0
    );
    // Auto mode: the snapshot fits the memory limit, so it is held whole.
    for (mode, shards) in [("sqlite-memory", 4.0), ("sqlite-download", 0.0), ("sqlite-range", 0.0)] {
        assert_eq!(
            metric(
                &m,
                "sf_serve_snapshot_shards_by_mode",
                &[("snapshot", "users"), ("mode", mode)]
            ),
            shards,
            "{mode}"
        );
    }
    assert_age(
        metric(&m, "sf_serve_snapshot_age_seconds", &[("snapshot", "users")]),
        built_after,
    );
    assert_eq!(metric(&m, "sf_reader_shard_opens_total", &[("snapshot", "users")]), 4.0);
    assert_eq!(metric(&m, "sf_reader_downloads_total", &[("snapshot", "users")]), 4.0);
    assert!(metric(&m, "sf_reader_download_bytes_total", &[("snapshot", "users")]) > 0.0);
    assert_eq!(
        metric(&m, "sf_serve_requests_in_flight", &[]),
        0.0,
        "the scrape itself is not counted"
    );
    // Every figure the routes above produced is named in a catalog, and
    // every name of the server's catalog was produced.
    let catalog = |metrics: &'static [(&'static str, &'static str)]| -> BTreeSet<&'static str> {
        metrics.iter().map(|(n, _)| *n).collect()
    };
    let (served, read) = (catalog(sf_server::METRICS), catalog(sf_reader::METRICS));
    let mut exposed = BTreeSet::new();
    for series in m.keys() {
        let name = series.split('{').next().unwrap_or(series);
        // A histogram is exposed as three series under its name.
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| served.contains(base))
            .unwrap_or(name);
        if name.starts_with("sf_serve_") {
            assert!(served.contains(name), "{name} is not in sf_server::METRICS");
            exposed.insert(name);
        } else if name.starts_with("sf_reader_") {
            assert!(read.contains(name), "{name} is not in sf_reader::METRICS");
        }
    }
    assert_eq!(exposed, served, "every name of sf_server::METRICS is exposed");

    let status = s.terminate();
    assert!(status.success(), "{status:?}: {}", s.stderr());
}

/// With one request allowed in flight, a second is refused at once (503,
/// Retry-After); a request still unfinished at the deadline gets 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_and_deadlines_answer_504() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let mut s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &["--max-in-flight", "1", "--request-timeout", "5s"],
    );
    s.wait_ready().await;
    let body = json!({"keys": [1, 2, 3]}).to_string();
    let mut slow = slow_request(&s.addr(), "/v1/snapshots/users/multiget", body.as_bytes()).await;
    // The slow request holds the only place once the server has read its
    // head (`/metrics` is outside the bound, so it can tell).
    s.wait_in_flight(1.0).await;
    let resp = s.get("/v1/snapshots/users/keys/1").send().await.expect("get");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let err: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("json");
    assert_eq!(kind(&err), "overloaded");
    // Probes are not bounded.
    assert_eq!(s.get("/livez").send().await.expect("livez").status(), 200);
    assert_eq!(s.get("/readyz").send().await.expect("readyz").status(), 200);
    // The slow one runs into the 5 s deadline.
    let (status, text) = read_answer(&mut slow).await;
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("deadline_exceeded"), "{text}");
    // And the place is free again.
    let (st, _, _) = call(s.get("/v1/snapshots/users/keys/1")).await;
    assert_eq!(st, 200);
    let m = s.metrics(None).await;
    assert!(metric(&m, "sf_serve_requests_rejected_total", &[("reason", "overloaded")]) >= 1.0);
    assert_eq!(
        metric(
            &m,
            "sf_serve_requests_total",
            &[("route", "multiget"), ("status", "504")]
        ),
        1.0
    );
    assert!(s.terminate().success());
}

/// SIGTERM: the listener closes, a request in flight still gets its
/// answer, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let mut s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &["--request-timeout", "60s", "--grace-period", "60s"],
    );
    s.wait_ready().await;
    let body = json!({"keys": [4, 5]}).to_string();
    let mut slow = slow_request(&s.addr(), "/v1/snapshots/users/multiget", body.as_bytes()).await;
    // The server has the request once it counts it in flight.
    s.wait_in_flight(1.0).await;
    s.signal_term();
    // New connections are refused once the listener is closed.
    let mut closed = false;
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(s.addr()).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "the listener still accepts after SIGTERM");
    assert!(s.running(), "the server waits for the request in flight");
    slow.write_all(&body.as_bytes()[body.len() / 2..])
        .await
        .expect("rest of the body");
    let (status, text) = read_answer(&mut slow).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["values"], json!(["run1:4", "run1:5"]));
    drop(slow);
    let exit = s.wait(Duration::from_secs(60));
    assert!(exit.success(), "{exit:?}: {}", s.stderr());
}

/// Tokens: required everywhere but the probes, a read and an admin token
/// both read, never logged; rollback (an admin token) moves `_CURRENT`
/// back and the server swaps; the replaced run stays readable by `run_id`
/// and `offset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rollback_and_pinned_reads() {
    let snap = LocalSnapshot::with_runs(&["run1", "run2"]).await;
    let tokens = write_tokens(snap.folder(), &["secret-beta"]);
    let admin = write_token_file(snap.folder(), "admin-tokens", &["secret-alpha"]);
    let mut s = ServeProcess::serving(
        &[("users", &snap.current_url())],
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--auth-token-file",
            &tokens,
            "--admin-token-file",
            &admin,
        ],
    );
    s.wait_ready().await; // no token needed
    assert_eq!(s.get("/livez").send().await.expect("livez").status(), 200);
    let key = "/v1/snapshots/users/keys/1";
    let resp = s.get(key).send().await.expect("get");
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let (st, _, body) = call(s.get(key).bearer_auth("secret-gamma")).await;
    assert_eq!((st, kind(&body)), (401, "unauthenticated"));
    let (st, _, body) = call(s.get(key).header("authorization", "Basic c2VjcmV0")).await;
    assert_eq!((st, kind(&body)), (401, "unauthenticated"));
    for t in ["secret-alpha", "secret-beta"] {
        let (st, run, _) = call(s.get(key).bearer_auth(t)).await;
        assert_eq!((st, run.as_deref()), (200, Some("run2")));
    }
    for path in ["/metrics", "/v1/snapshots"] {
        assert_eq!(s.get(path).send().await.expect(path).status(), 401, "{path}");
    }
    let (st, _, _) = call(s.post_json("/v1/snapshots/users/multiget", &json!({"keys": [1]}))).await;
    assert_eq!(st, 401);
    let (st, _, _) = call(s.post_json("/v1/snapshots/users/rollback", &json!({"offset": 1}))).await;
    assert_eq!(st, 401);
    // gRPC takes the same tokens.
    let mut g = s.grpc_client().await;
    let req = || get_request("users", "1");
    let e = g.get(req()).await.expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let authed = with_token(req(), "secret-beta");
    assert_eq!(g.get(authed).await.expect("authed get").into_inner().run_id, "run2");

    // Rollback to run1 by run id: _CURRENT moves, the server swaps at once.
    let (st, run, body) = call(
        s.post_json("/v1/snapshots/users/rollback", &json!({"run_id": "run1"}))
            .bearer_auth("secret-alpha"),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(run.as_deref(), Some("run1"));
    assert_eq!(body["changed"], true);
    assert_eq!(body["from_run_id"], "run2");
    assert_eq!(body["serving_run_id"], "run1");
    let resp = s.get(key).bearer_auth("secret-alpha").send().await.expect("get");
    assert_eq!(resp.headers()["sf-run-id"], "run1");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), b"run1:1");
    let current = std::fs::read_to_string(snap.folder().join("snap/_CURRENT")).expect("_CURRENT");
    assert!(current.contains("run1"), "{current}");
    // The replaced run2 is kept (keep_versions 1): pinned by run or offset.
    for q in ["run_id=run2", "offset=1"] {
        let resp = s
            .get(&format!("/v1/snapshots/users/keys/1?{q}"))
            .bearer_auth("secret-beta")
            .send()
            .await
            .expect("pinned get");
        assert_eq!(resp.status(), 200, "{q}");
        assert_eq!(resp.headers()["sf-run-id"], "run2");
        assert_eq!(resp.bytes().await.expect("body").as_ref(), b"run2:1");
    }
    let (st, run, body) = call(
        s.post_json("/v1/snapshots/users/multiget?run_id=run2", &json!({"keys": [1, 2]}))
            .bearer_auth("secret-beta"),
    )
    .await;
    assert_eq!((st, run.as_deref()), (200, Some("run2")));
    assert_eq!(body["values"], json!(["run2:1", "run2:2"]));
    // gRPC pinned the same way.
    let pinned = with_token(
        GetRequest {
            version: Some(sf_server::grpc::proto::Version {
                version: Some(sf_server::grpc::proto::version::Version::RunId("run2".into())),
            }),
            ..get_request("users", "3")
        },
        "secret-alpha",
    );
    let got = g.get(pinned).await.expect("pinned grpc").into_inner();
    assert_eq!((got.run_id.as_str(), got.value.as_slice()), ("run2", &b"run2:3"[..]));
    // A target that is not in the history.
    let (st, _, body) = call(
        s.post_json("/v1/snapshots/users/rollback", &json!({"run_id": "run7"}))
            .bearer_auth("secret-alpha"),
    )
    .await;
    assert_eq!((st, kind(&body)), (404, "not_in_history"));
    let (st, _, body) = call(
        s.post_json("/v1/snapshots/users/rollback", &json!({"run_id": "run1", "offset": 0}))
            .bearer_auth("secret-alpha"),
    )
    .await;
    assert_eq!((st, kind(&body)), (400, "bad_body"));
    let m = s.metrics(Some("secret-alpha")).await;
    assert!(metric(&m, "sf_serve_requests_rejected_total", &[("reason", "unauthenticated")]) >= 6.0);
    assert_eq!(
        metric(
            &m,
            "sf_serve_snapshot_info",
            &[("snapshot", "users"), ("run_id", "run1")]
        ),
        1.0
    );
    assert_eq!(metric(&m, "sf_reader_swaps_total", &[("snapshot", "users")]), 1.0);

    assert!(s.terminate().success());
    let log = s.stderr();
    assert!(
        !log.contains("secret-alpha") && !log.contains("secret-beta"),
        "a token was logged:\n{log}"
    );
}

/// A shard whose files are gone answers 503 naming the shard; the rest of
/// the snapshot is served and the process keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_cannot_be_read_answers_503() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let routing_cache = tempfile::tempdir().expect("cache");
    let reader = sf_reader::Reader::builder(snap.current_url())
        .with_settings(sf_reader::ReaderSettings {
            cache_dir: Some(routing_cache.path().to_path_buf()),
            ..Default::default()
        })
        .build()
        .await
        .expect("reader");
    let shard_of = |k: i64| reader.route(&Key::Int(k), None).expect("route").db_id.expect("db").0;
    let broken_key = (0..KEYS as i64).find(|k| shard_of(*k) == 2).expect("a key in shard 2");
    let fine_key = (0..KEYS as i64).find(|k| shard_of(*k) != 2).expect("a key elsewhere");
    let url = reader
        .shards()
        .iter()
        .find(|s| s.db_id.0 == 2)
        .expect("shard 2")
        .resolved_url
        .clone();
    let dir = url.expect("url").trim_start_matches("file://").to_string();
    std::fs::remove_file(format!("{dir}/shard.db")).expect("remove shard 2's file");

    let mut s = ServeProcess::serving(&[("users", &snap.prefix)], &["--sqlite-mode", "download"]);
    s.wait_ready().await;
    let resp = s
        .get(&format!("/v1/snapshots/users/keys/{broken_key}"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["sf-run-id"], "run1");
    let body: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("json");
    assert_eq!(kind(&body), "shard_unavailable");
    assert_eq!(body["error"]["shard"], 2);
    assert!(
        body["error"]["message"].as_str().expect("message").contains("shard 2"),
        "{body}"
    );
    let (st, _, body) = s.multiget("users", json!({"keys": [fine_key, broken_key]})).await;
    assert_eq!((st, kind(&body)), (503, "shard_unavailable"));
    let (st, _, _) = call(s.get(&format!("/v1/snapshots/users/keys/{fine_key}"))).await;
    assert_eq!(st, 200);
    assert_eq!(s.get("/livez").send().await.expect("livez").status(), 200);
    assert!(s.running());
    assert!(s.terminate().success());
}

/// A snapshot's age in seconds: not negative, and at most the time since
/// `built_after`, a moment before the snapshot was built (with a second
/// for the clocks: the age is wall-clock time, this monotonic time).
fn assert_age(age: f64, built_after: Instant) {
    let bound = built_after.elapsed().as_secs_f64() + 1.0;
    assert!(
        (0.0..=bound).contains(&age),
        "the age is {age} s, the snapshot was built less than {bound} s ago"
    );
}

/// On S3: a new run is published while clients read; no request fails,
/// the run id switches, every multiget answers from one run, and the
/// replaced run stays readable pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_under_load_on_s3() {
    let prefix = s3_prefix("serve-publish");
    publish_ints(&prefix, "run1").await;
    let mut s = ServeProcess::with_config(|cache| {
        format!(
            r#"
listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"
[limits]
max_keys = 500
[[snapshot]]
name = "users"
current_url = "{prefix}/_CURRENT"
max_age = "1h"
[snapshot.reader]
cache_dir = "{}"
refresh_interval = "100ms"
keep_versions = 1
warmup_keys = ["1"]
"#,
            cache.display()
        )
    });
    s.wait_ready().await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    // Answers each client got from run1 and from run2.
    let answered: Arc<[[AtomicUsize; 2]; 3]> = Arc::new(Default::default());
    let mut tasks = Vec::new();
    // Three clients: gets, HTTP multigets, gRPC multigets, until told to
    // stop; each counts the answers it got from each run.
    for worker in 0..3usize {
        let (stop, failures, answered) = (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&answered));
        let base = s.http.clone();
        let grpc = s.grpc.clone().expect("grpc");
        let c = s.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut runs = Vec::<String>::new();
            let mut g = LookupClient::connect(grpc).await.expect("grpc connect");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let k = (i * 7 + worker as u64) % KEYS;
                let run = match worker {
                    0 => {
                        let resp = c.get(format!("{base}/v1/snapshots/users/keys/{k}")).send().await;
                        match resp {
                            Ok(r) if r.status() == 200 => {
                                let run = r.headers()["sf-run-id"].to_str().expect("ascii").to_string();
                                let v = r.bytes().await.expect("body");
                                assert_eq!(v.as_ref(), format!("{run}:{k}").as_bytes(), "a get from {run}");
                                run
                            }
                            other => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                eprintln!("get {k} failed: {other:?}");
                                continue;
                            }
                        }
                    }
                    1 => {
                        let keys: Vec<u64> = (0..100).map(|j| (k + j * 3) % KEYS).collect();
                        let resp = c
                            .post(format!("{base}/v1/snapshots/users/multiget"))
                            .json_body(&json!({ "keys": keys }))
                            .send()
                            .await;
                        match resp {
                            Ok(r) if r.status() == 200 => {
                                let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
                                let run = v["run_id"].as_str().expect("run").to_string();
                                for (key, value) in keys.iter().zip(v["values"].as_array().expect("values")) {
                                    assert_eq!(value, &json!(format!("{run}:{key}")), "a multiget mixed versions");
                                }
                                run
                            }
                            other => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                eprintln!("multiget failed: {other:?}");
                                continue;
                            }
                        }
                    }
                    _ => {
                        let keys: Vec<String> = (0..100).map(|j| ((k + j * 5) % KEYS).to_string()).collect();
                        match g.multi_get(multiget_request("users", keys.clone())).await {
                            Ok(r) => {
                                let r = r.into_inner();
                                for (key, value) in keys.iter().zip(&r.values) {
                                    assert_eq!(
                                        value.value,
                                        format!("{}:{key}", r.run_id).into_bytes(),
                                        "a gRPC multiget mixed versions"
                                    );
                                }
                                r.run_id
                            }
                            Err(e) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                eprintln!("grpc multiget failed: {e}");
                                continue;
                            }
                        }
                    }
                };
                let slot = match run.as_str() {
                    "run1" => 0,
                    "run2" => 1,
                    other => panic!("client {worker}: an answer from {other}"),
                };
                answered[worker][slot].fetch_add(1, Ordering::Relaxed);
                if runs.last() != Some(&run) {
                    runs.push(run);
                }
            }
            runs
        }));
    }
    // Waits (bounded) until every client has had `n` answers from run
    // `slot`; fails naming the counts and failures otherwise.
    let every_client_answered = |slot: usize, n: usize, what: &'static str| {
        let (answered, failures) = (Arc::clone(&answered), Arc::clone(&failures));
        async move {
            let counts = || -> Vec<usize> { answered.iter().map(|c| c[slot].load(Ordering::Relaxed)).collect() };
            let waited = tokio::time::timeout(Duration::from_secs(180), async {
                while counts().iter().any(|c| *c < n) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            assert!(
                waited.is_ok(),
                "{what}: answers per client {:?} after 180 s, {} failed requests",
                counts(),
                failures.load(Ordering::Relaxed)
            );
        }
    };
    // The load runs on run1; then run2 is published, and every client
    // must be answered from it.
    every_client_answered(0, 100, "every client reads run1").await;
    publish_ints(&prefix, "run2").await;
    every_client_answered(1, 100, "every client reads run2 once it is published").await;
    stop.store(true, Ordering::Relaxed);
    let mut all_runs = Vec::new();
    for t in tasks {
        all_runs.push(t.await.expect("load task"));
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "requests failed during the swap");
    for runs in &all_runs {
        assert_eq!(
            runs,
            &vec!["run1".to_string(), "run2".to_string()],
            "each client saw run1, then run2"
        );
    }
    // The replaced run is still held for pinned reads.
    let (st, run, body) = s.multiget("users", json!({"keys": [1, 2]})).await;
    assert_eq!((st, run.as_deref()), (200, Some("run2")));
    assert_eq!(body["values"], json!(["run2:1", "run2:2"]));
    let (st, run, body) = call(s.post_json("/v1/snapshots/users/multiget?offset=1", &json!({"keys": [1, 2]}))).await;
    assert_eq!((st, run.as_deref()), (200, Some("run1")));
    assert_eq!(body["values"], json!(["run1:1", "run1:2"]));
    let (_, _, list) = call(s.get("/v1/snapshots")).await;
    let versions: Vec<&str> = list["snapshots"][0]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["run_id"].as_str().expect("run"))
        .collect();
    assert_eq!(versions, vec!["run2", "run1"]);
    let m = s.metrics(None).await;
    assert_eq!(metric(&m, "sf_reader_swaps_total", &[("snapshot", "users")]), 1.0);
    assert!(metric(&m, "sf_reader_refreshes_total", &[("snapshot", "users")]) >= 1.0);
    assert_eq!(
        metric(&m, "sf_reader_refresh_failures_total", &[("snapshot", "users")]),
        0.0
    );
    assert_eq!(metric(&m, "sf_serve_snapshot_info", &[("run_id", "run2")]), 1.0);
    assert_eq!(metric(&m, "sf_serve_snapshot_info", &[("run_id", "run1")]), 0.0);
    assert!(metric(&m, "sf_serve_requests_total", &[("route", "get"), ("status", "200")]) >= 100.0);
    assert!(s.terminate().success(), "{}", s.stderr());
}

fn want(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        other => Some(other["__bytes__"].as_str().expect("__bytes__").as_bytes().to_vec()),
    }
}

/// The reference library's snapshots (the fixtures), served: every read of
/// `expected.json`, categorical CEL with `?ctx.region=`, and SlateDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_fixtures_are_served() {
    let exp = expected();
    let read = &exp["read"];
    let golden = |name: &str| {
        format!(
            "{}/_CURRENT",
            fixture_dir().join("sqlite-bucket-golden").join(name).display()
        )
    };
    // A copy of the SlateDB fixture, compared file by file afterwards.
    let (_slate_dir, slate_path) = sf_tests::snapshots::fixture_copy("slatedb-bucket-goldenslate/hash_int");
    let slate = format!("{}/_CURRENT", slate_path.display());
    let slate_before = sf_tests::snapshots::tree_state(&slate_path);
    let mut s = ServeProcess::serving(
        &[
            ("hash_int", &golden("hash_int")),
            ("hash_str", &golden("hash_str")),
            ("cel_direct", &golden("cel_direct")),
            ("cel_cat", &golden("cel_cat")),
            ("slate", &slate),
        ],
        &[],
    );
    s.wait_ready().await;
    let get = |snap: &str, key: &str| {
        let req = s.get(&format!("/v1/snapshots/{snap}/keys/{key}"));
        let what = format!("{snap} {key}");
        async move {
            let resp = req.send().await.expect("get");
            let run = resp
                .headers()
                .get("sf-run-id")
                .map(|r| r.to_str().expect("ascii").to_string());
            match resp.status().as_u16() {
                200 => (Some(resp.bytes().await.expect("body").to_vec()), run),
                404 => (None, run),
                other => panic!("{what}: {other} {}", resp.text().await.unwrap_or_default()),
            }
        }
    };
    let (v, run) = get("hash_int", "3").await;
    assert_eq!(v, want(&read["hash_int_get_3"]));
    assert_eq!(run.as_deref(), Some("goldenrun0005"));
    assert_eq!(get("hash_int", "999").await.0, want(&read["hash_int_get_999"]));
    let multi = read["hash_int_multi"].as_object().expect("multi");
    let keys: Vec<&String> = multi.keys().collect();
    let (st, _, body) = s.multiget("hash_int", json!({ "keys": keys })).await;
    assert_eq!(st, 200);
    for ((k, v), got) in multi.iter().zip(body["values"].as_array().expect("values")) {
        assert_eq!(got.as_str().map(|g| g.as_bytes().to_vec()), want(v), "hash_int {k}");
    }
    for (k, v) in read["hash_str_range_get"].as_object().expect("gets") {
        let escaped: String = url::form_urlencoded::byte_serialize(k.as_bytes()).collect();
        assert_eq!(get("hash_str", &escaped).await.0, want(v), "hash_str {k}");
    }
    for (k, v) in read["cel_direct_get"].as_object().expect("gets") {
        assert_eq!(get("cel_direct", k).await.0, want(v), "cel_direct {k}");
    }
    // cel_cat: categorical on `region`, given as ?ctx.region= (the
    // fixture's regions: ["eu", "us", "ap"][k % 3]).
    let region = |k: i64| ["eu", "us", "ap"][(k % 3) as usize];
    for (k, v) in read["cel_cat_get_ctx"].as_object().expect("gets") {
        let n: i64 = k.parse().expect("int");
        let (got, _) = get("cel_cat", &format!("{k}?ctx.region={}", region(n))).await;
        assert_eq!(got, want(v), "cel_cat {k}");
        let other = ["eu", "us", "ap"]
            .into_iter()
            .find(|r| *r != region(n))
            .expect("another region");
        assert_eq!(get("cel_cat", &format!("{k}?ctx.region={other}")).await.0, None);
    }
    assert_eq!(
        get("cel_cat", "4?ctx.region=mars").await.0,
        want(&read["cel_cat_unknown_token"]),
        "an unknown token is a miss"
    );
    let (st, _, body) = call(s.get("/v1/snapshots/cel_cat/keys/4")).await;
    assert_eq!((st, kind(&body)), (400, "routing"), "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("region"));
    let contexts: Vec<Value> = (0..9).map(|k| json!({"region": region(k)})).collect();
    let (st, _, body) = s
        .multiget(
            "cel_cat",
            json!({"keys": (0..9).collect::<Vec<_>>(), "contexts": contexts}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let values: Vec<String> = (0..9).map(|k| format!("c{k}")).collect();
    assert_eq!(body["values"], json!(values));
    let (_, _, body) = s
        .multiget("cel_cat", json!({"keys": [0, 3, 6, 1], "context": {"region": "eu"}}))
        .await;
    assert_eq!(body["values"], json!(["c0", "c3", "c6", null]));
    // SlateDB shards: every stored key, read without writing to them.
    for k in 0..6 {
        let (v, run) = get("slate", &k.to_string()).await;
        assert_eq!(v, Some(format!("s{k}").into_bytes()), "slate {k}");
        assert_eq!(run.as_deref(), Some("slaterun0001"));
    }
    for k in [6, 7, 100] {
        assert_eq!(get("slate", &k.to_string()).await.0, None, "slate {k}");
    }
    assert!(s.terminate().success());
    assert_eq!(
        sf_tests::snapshots::tree_state(&slate_path),
        slate_before,
        "serving wrote nothing to the SlateDB snapshot"
    );
}

/// Bad configuration exits 2 before serving, saying why; so does an
/// address already taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_2() {
    let dir = tempfile::tempdir().expect("dir");
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "[limits]\nmax_keyz = 3\n").expect("write");
    let bad_toml = bad_toml.display().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let cases: [(&[&str], &str); 7] = [
        (&[], "no snapshot"),
        (&["--snapshot", "nourl"], "NAME=URL"),
        (&["--config", &bad_toml], "max_keyz"),
        (&["--snapshot", "a=/x", "--snapshot", "a=/y"], "twice"),
        (
            &["--snapshot", "a=/x", "--request-timeout", "soon"],
            "--request-timeout",
        ),
        (&["--snapshot", "a=/x", "--listen", &taken_addr], "cannot listen"),
        (
            &["--snapshot", "a=/x", "--auth-token-file", "/nonexistent/tokens"],
            "auth token file",
        ),
    ];
    for (args, want) in cases {
        let out = run_serve(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let want_text = if want == "no snapshot" { "snapshots" } else { want };
        assert!(err.contains(want_text), "{args:?} should say {want_text:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    drop(taken);
    // An unknown snapshot name in the set of served ones is 404 (above);
    // a snapshot that cannot be opened keeps /readyz at 503 and says why.
    let missing = dir.path().join("nothing-here");
    let mut s = ServeProcess::serving(&[("ghost", &missing.display().to_string())], &[]);
    let mut last = Value::Null;
    for _ in 0..600 {
        let (st, _, body) = call(s.get("/readyz")).await;
        assert_eq!(st, 503);
        last = body;
        // A server without tokens tells every caller the reasons.
        if last["snapshots"]["ghost"]["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("_CURRENT"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last["snapshots"]["ghost"]["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("_CURRENT")),
        "{last}"
    );
    assert_eq!(last["snapshots"]["ghost"]["state"], "failed", "{last}");
    let (st, _, body) = call(s.get("/v1/snapshots/ghost/keys/1")).await;
    assert_eq!((st, kind(&body)), (503, "not_ready"));
    assert!(s.terminate().success());
}

/// `docs/serving.md` against the program: the flags of its table are
/// those `sf-serve --help` lists, its metric names are those of the
/// catalogs (`sf_server::METRICS`, `sf_reader::METRICS`), and its
/// `serve.toml` loads into a valid configuration.
#[test]
fn the_serving_page_matches_the_program() {
    let page_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/serving.md");
    let page = std::fs::read_to_string(&page_path).expect("docs/serving.md");

    let out = run_serve(["--help"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8(out.stdout).expect("utf8 help");
    let flag = |word: &str| -> String {
        word.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect()
    };
    let helped: BTreeSet<String> = help
        .lines()
        // Options are indented less than their descriptions, which may
        // wrap onto a line that starts with another program's flag.
        .filter(|l| l.len() - l.trim_start().len() < 8)
        .map(str::trim_start)
        .map(|l| l.strip_prefix("-h, ").or_else(|| l.strip_prefix("-V, ")).unwrap_or(l))
        .filter(|l| l.starts_with("--"))
        .map(flag)
        .filter(|f| f != "--help" && f != "--version")
        .collect();
    let documented: BTreeSet<String> = page
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| {
            cell.split(['`', ' ', ','])
                .filter(|w| w.starts_with("--"))
                .map(flag)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        documented, helped,
        "the flags of docs/serving.md and of sf-serve --help"
    );
    let sqlite_mode = help
        .split("--sqlite-mode")
        .nth(1)
        .and_then(|rest| rest.split("\n  -").next())
        .expect("--sqlite-mode in --help");
    for mode in ["download", "range", "auto", "memory"] {
        assert!(
            sqlite_mode.contains(mode),
            "--sqlite-mode's help omits {mode}: {sqlite_mode}"
        );
    }

    let names = |prefix: &str| -> BTreeSet<String> {
        page.match_indices(prefix)
            .map(|(at, _)| {
                page[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .filter(|n| n.len() > prefix.len())
            .collect()
    };
    let catalog =
        |metrics: &[(&str, &str)]| -> BTreeSet<String> { metrics.iter().map(|(n, _)| n.to_string()).collect() };
    assert_eq!(
        names("sf_serve_"),
        catalog(sf_server::METRICS),
        "docs/serving.md and sf_server::METRICS"
    );
    assert_eq!(
        names("sf_reader_"),
        catalog(sf_reader::METRICS),
        "docs/serving.md and sf_reader::METRICS"
    );

    let toml = page
        .split("### `serve.toml`")
        .nth(1)
        .and_then(|rest| rest.split("```toml serve.toml\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the serve.toml block");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("serve.toml");
    std::fs::write(&file, toml).expect("write serve.toml");
    let loaded = sf_server::FileConfig::load(&file).expect("the page's serve.toml loads");
    let config = sf_server::ServeConfig {
        listen: loaded.listen.clone().expect("listen"),
        grpc_listen: loaded.grpc_listen.clone(),
        metrics_listen: loaded.metrics_listen.clone(),
        snapshots: loaded.snapshots().expect("its snapshots"),
        limits: loaded.limits.clone(),
        auth: sf_server::AuthConfig::default(),
        tls: loaded.tls.clone(),
    };
    config.validate().expect("the page's serve.toml is valid");
    assert_eq!(
        config.limits,
        sf_server::Limits::default(),
        "the page's limits are the defaults"
    );
}
