//! What operators and their tools see of `sf-serve`, with the real binary
//! on 127.0.0.1: the gRPC health service follows the readiness (NOT_SERVING
//! before the snapshot opens, SERVING after, NOT_SERVING from SIGTERM on)
//! and reflection lists the lookup service, both without a token while
//! lookups still need one; a metrics listener answers `/metrics` without a
//! token and nothing else, while the main listener's `/metrics` keeps its
//! token; request ids are taken when sane, made otherwise, returned, and
//! carried by error bodies and log lines.

use std::time::{Duration, Instant};

use serde_json::Value;
use sf_tests::serve::{
    LocalSnapshot, ServeProcess, call, get_request, kind, parse_prometheus, publish_ints, with_token, write_tokens,
};
use sf_tests::tamper::{current_manifest, delete_shard};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The next message of a stream; `None` at its end (or a failed end).
async fn next_message<T>(stream: &mut tonic::Streaming<T>) -> Option<T> {
    stream.message().await.ok().flatten()
}

const TOKEN: &str = "obs-secret-1";
const LOOKUP: &str = "shardforge.v1.Lookup";

/// The status `service` reports (an error status as its code).
async fn health_of(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> Result<i32, tonic::Code> {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| s.code())
}

/// Polls until `service` reports `want` (at most 60 s).
async fn health_until(client: &mut HealthClient<tonic::transport::Channel>, service: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = health_of(client, service).await;
    while seen != Ok(want as i32) {
        assert!(
            Instant::now() < deadline,
            "{service:?} never reported {want:?} (last {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = health_of(client, service).await;
    }
}

/// The services the reflection service (`v1`) lists.
async fn reflected_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter([ask]))
        .await
        .expect("reflection without a token")
        .into_inner();
    let answer = next_message(&mut answers).await.expect("a reflection answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("not a service list: {other:?}"),
    }
}

/// The encoded file descriptors the reflection service (`v1alpha`, as
/// older tools ask) gives for `symbol`.
async fn reflected_file_of(channel: tonic::transport::Channel, symbol: &str) -> Vec<Vec<u8>> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter([ask]))
        .await
        .expect("v1alpha reflection without a token")
        .into_inner();
    match next_message(&mut answers).await.expect("an answer").message_response {
        Some(MessageResponse::FileDescriptorResponse(f)) => f.file_descriptor_proto,
        other => panic!("not a file descriptor: {other:?}"),
    }
}

/// The gRPC health service tells NOT_SERVING until the snapshot opens and
/// SERVING after, for the server and for the lookup service, to callers
/// without a token (as probes are) who still cannot look anything up;
/// reflection lists the lookup service and describes it; from SIGTERM on
/// a watch sees NOT_SERVING and ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_readiness_and_reflection_describes_the_service() {
    // No run published yet: the server starts unready.
    let snap = LocalSnapshot::with_runs(&[]).await;
    let tokens = write_tokens(snap.folder(), &[TOKEN]);
    let mut s = ServeProcess::serving(
        &[("users", &snap.current_url())],
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--auth-token-file",
            &tokens,
            "--refresh-interval",
            "200ms",
        ],
    );
    let channel = s.grpc_channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", LOOKUP] {
        assert_eq!(
            health_of(&mut health, service).await,
            Ok(ServingStatus::NotServing as i32),
            "{service:?} before the snapshot exists"
        );
    }
    assert_eq!(
        health_of(&mut health, "no.such.Service").await,
        Err(tonic::Code::NotFound)
    );
    let (st, _, _) = call(s.get("/readyz")).await;
    assert_eq!(st, 503, "the same readiness as /readyz");

    publish_ints(&snap.prefix, "run1").await;
    health_until(&mut health, LOOKUP, ServingStatus::Serving).await;
    health_until(&mut health, "", ServingStatus::Serving).await;
    let (st, _, _) = call(s.get("/readyz")).await;
    assert_eq!(st, 200);

    // Open methods are those exactly: a lookup without a token is refused.
    let mut lookup = s.grpc_client().await;
    let refused = lookup.get(get_request("users", "7")).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let found = lookup
        .get(with_token(get_request("users", "7"), TOKEN))
        .await
        .expect("with a token")
        .into_inner();
    assert!(found.found);

    let services = reflected_services(channel.clone()).await;
    for want in [LOOKUP, "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == want), "{want} not in {services:?}");
    }
    let files = reflected_file_of(channel.clone(), LOOKUP).await;
    assert!(
        files
            .iter()
            .any(|f| String::from_utf8_lossy(f).contains("shardforge.v1")
                && String::from_utf8_lossy(f).contains("MultiGetStream")),
        "the descriptor of {LOOKUP}"
    );

    // A watch sees SERVING, then NOT_SERVING at SIGTERM, then ends, and
    // does not hold the shutdown for the grace period.
    let mut watch = health
        .watch(HealthCheckRequest { service: LOOKUP.into() })
        .await
        .expect("watch")
        .into_inner();
    let first = next_message(&mut watch).await.expect("the current status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopped_at = Instant::now();
    s.signal_term();
    let next = next_message(&mut watch).await.expect("a status at shutdown");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    assert!(next_message(&mut watch).await.is_none(), "the watch ends");
    drop((watch, health, lookup, channel));
    assert!(s.wait(Duration::from_secs(60)).success(), "{}", s.stderr());
    assert!(
        stopped_at.elapsed() < Duration::from_secs(20),
        "the shutdown waited {:?}",
        stopped_at.elapsed()
    );
}

/// With tokens on, the metrics listener answers `/metrics` without a
/// token and 404 for the API's routes; the main listener's `/metrics`
/// still needs the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_metrics_alone_without_a_token() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let tokens = write_tokens(snap.folder(), &[TOKEN]);
    let mut s = ServeProcess::serving(
        &[("users", &snap.current_url())],
        &["--auth-token-file", &tokens, "--metrics-listen", "127.0.0.1:0"],
    );
    s.wait_ready().await;
    let scrape = s.metrics.clone().expect("a metrics listening line");
    assert_ne!(scrape, s.http, "a listener of its own");
    let resp = s.client.get(format!("{scrape}/metrics")).send().await.expect("scrape");
    assert_eq!(resp.status(), 200);
    let samples = parse_prometheus(&resp.text().await.expect("text"));
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("sf_serve_connections_open") && k.contains("listener=\"metrics\"")),
        "the metrics listener's own connection figures: {:?}",
        samples
            .keys()
            .filter(|k| k.starts_with("sf_serve_connections"))
            .collect::<Vec<_>>()
    );
    for path in ["/v1/snapshots", "/v1/snapshots/users/keys/7", "/readyz", "/livez"] {
        let (st, _, body) = call(s.client.get(format!("{scrape}{path}")).bearer_auth(TOKEN)).await;
        assert_eq!((st, kind(&body)), (404, "no_route"), "{path}");
    }
    let (st, _, body) = call(s.get("/metrics")).await;
    assert_eq!(
        (st, kind(&body)),
        (401, "unauthenticated"),
        "the main listener's /metrics"
    );
    let (st, _, _) = call(s.get("/metrics").bearer_auth(TOKEN)).await;
    assert_eq!(st, 200);
    assert!(s.terminate().success());
}

/// The `x-request-id` of an answer.
fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-request-id")
        .expect("an x-request-id")
        .to_str()
        .expect("ascii")
        .to_string()
}

/// `GET path` written by hand with `x-request-id: id` (any bytes); the
/// whole answer, read to the connection's close (at most 60 s).
async fn raw_get(addr: &str, path: &str, id: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\nx-request-id: ").into_bytes();
    head.extend_from_slice(id);
    head.extend_from_slice(b"\r\n\r\n");
    sock.write_all(&head).await.expect("request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), sock.read_to_end(&mut answer))
        .await
        .expect("an answer within 60 s")
        .expect("read");
    String::from_utf8_lossy(&answer).to_string()
}

/// A made request id: 32 hex digits.
fn is_made_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A sane request id comes back as given, over HTTP and gRPC; none gets
/// a made one; a hostile one (too long, control characters, spaces) is
/// replaced. Error bodies name it, beside the `error_id`, and so does the
/// log line of that error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_round_trip_and_hostile_ones_are_replaced() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    // A snapshot whose shards are gone: it opens, its lookups fail with
    // an error_id.
    let broken = LocalSnapshot::with_runs(&["broken1"]).await;
    let (manifest, _) = current_manifest(&broken.prefix).await;
    for row in &manifest.shards {
        delete_shard(&broken.prefix, row.db_url.as_deref().expect("db_url")).await;
    }
    let tokens = write_tokens(snap.folder(), &[TOKEN]);
    let mut s = ServeProcess::serving(
        &[("users", &snap.current_url()), ("broken", &broken.prefix)],
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--auth-token-file",
            &tokens,
            "--sqlite-mode",
            "download",
            // The documented audit filter: the request's span must stay
            // on under it, for the lines it keeps to name the request.
            "--log",
            "warn,sf_server::audit=info",
        ],
    );
    s.wait_ready().await;

    let given = "client-req-0001";
    let resp = s
        .get("/v1/snapshots/users/keys/7")
        .bearer_auth(TOKEN)
        .header("x-request-id", given)
        .send()
        .await
        .expect("get");
    assert_eq!((resp.status().as_u16(), request_id(&resp)), (200, given.to_string()));
    let resp = s
        .get("/v1/snapshots/users/keys/7")
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    let made = request_id(&resp);
    assert!(is_made_id(&made), "{made}");
    let resp = s.get("/livez").send().await.expect("probe");
    let other = request_id(&resp);
    assert!(is_made_id(&other) && other != made, "each request its own id");

    let too_long = "a".repeat(129);
    let long_enough = "b".repeat(128);
    for (hostile, kept) in [
        (too_long.as_bytes(), false),
        (b"two words".as_slice(), false),
        (b"tab\there".as_slice(), false),
        (b"caf\xc3\xa9".as_slice(), false),
        (long_enough.as_bytes(), true),
    ] {
        let value = reqwest::header::HeaderValue::from_bytes(hostile).expect("a header value");
        let resp = s
            .get("/v1/snapshots/users/keys/7")
            .bearer_auth(TOKEN)
            .header("x-request-id", value)
            .send()
            .await
            .expect("get");
        let id = request_id(&resp);
        if kept {
            assert_eq!(id.as_bytes(), hostile);
        } else {
            assert!(is_made_id(&id), "{:?} became {id}", String::from_utf8_lossy(hostile));
        }
    }
    // Control characters no HTTP client library sends: written by hand.
    for hostile in [&b"bell\x07"[..], b"esc\x1b[31mred", b"del\x7f"] {
        let answer = raw_get(&s.addr(), "/livez", hostile).await;
        let head = answer.split("\r\n\r\n").next().unwrap_or_default().to_string();
        let shown = String::from_utf8_lossy(hostile).to_string();
        assert!(!answer.contains(&shown), "{shown:?} echoed: {answer:?}");
        // Refused by the HTTP parser (400), or answered with a made id.
        if let Some(line) = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("x-request-id:"))
        {
            let id = line.split_once(':').map(|(_, v)| v.trim()).unwrap_or_default();
            assert!(is_made_id(id), "{shown:?} became {id:?}");
        } else {
            assert!(head.starts_with("HTTP/1.1 400"), "{head:?}");
        }
    }

    // An error body names the request beside its error_id, a refusal too;
    // the error's log line carries both.
    let resp = s
        .get("/v1/snapshots/broken/keys/7")
        .bearer_auth(TOKEN)
        .header("x-request-id", "broken-read-42")
        .send()
        .await
        .expect("get");
    assert_eq!(request_id(&resp), "broken-read-42");
    let body: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("json");
    assert_eq!(kind(&body), "shard_unavailable", "{body}");
    assert_eq!(body["error"]["request_id"], "broken-read-42", "{body}");
    let error_id = body["error"]["error_id"].as_str().expect("an error_id").to_string();
    let log = s.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains(&error_id) && l.contains("request_id=broken-read-42")),
        "the error's log line names the request:\n{log}"
    );
    let resp = s
        .get("/v1/snapshots/users/keys/7")
        .header("x-request-id", "no-token-1")
        .send()
        .await
        .expect("get");
    assert_eq!(
        (resp.status().as_u16(), request_id(&resp)),
        (401, "no-token-1".to_string())
    );
    let body: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("json");
    assert_eq!(body["error"]["request_id"], "no-token-1", "{body}");
    let resp = s
        .post_json("/v1/snapshots/users/rollback", &serde_json::json!({"run_id": "run1"}))
        .bearer_auth(TOKEN)
        .header("x-request-id", "audit-req-7")
        .send()
        .await
        .expect("rollback");
    assert_eq!(resp.status(), 403, "a read token cannot roll back");
    let log = s.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("admin action") && l.contains("request_id=audit-req-7")),
        "the audit line names the request:\n{log}"
    );

    // gRPC: the same, in metadata.
    let mut client = s.grpc_client().await;
    let mut req = with_token(get_request("users", "7"), TOKEN);
    req.metadata_mut()
        .insert("x-request-id", "grpc-req-1".parse().expect("metadata"));
    let answer = client.get(req).await.expect("get");
    assert_eq!(answer.metadata().get("x-request-id").expect("an id"), "grpc-req-1");
    let answer = client
        .get(with_token(get_request("users", "7"), TOKEN))
        .await
        .expect("get");
    let id = answer
        .metadata()
        .get("x-request-id")
        .expect("an id")
        .to_str()
        .expect("ascii");
    assert!(is_made_id(id), "{id}");
    let mut req = tonic::Request::new(get_request("users", "7"));
    req.metadata_mut()
        .insert("x-request-id", too_long.parse().expect("metadata"));
    let refused = client.get(req).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let id = refused
        .metadata()
        .get("x-request-id")
        .expect("an id")
        .to_str()
        .expect("ascii");
    assert!(is_made_id(id), "a 129-character id is replaced: {id}");
    assert!(s.terminate().success());
}
