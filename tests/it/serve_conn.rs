//! The real `sf-serve` binary against clients that hold connections
//! rather than use them: half-sent request heads, idle connections, more
//! connections than it has file descriptors, unauthenticated gRPC
//! messages of the largest allowed size, streams nobody reads, and
//! requests still stuck when it is told to stop. Each costs the client its
//! connection or its call, never the service.

use std::time::Duration;

use serde_json::json;
use sf_server::grpc::proto::{GetRequest, MultiGetRequest};
use sf_tests::serve::{LocalSnapshot, ServeProcess, call, metric, multiget_request, slow_request, write_tokens};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads `sock` until the server closes it (end of stream or reset);
/// `false` when it is still open after `bound`.
async fn closed_within(sock: &mut TcpStream, bound: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, read_all).await.is_ok()
}

/// A request head that never ends holds its connection for the header
/// timeout only, however long the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_is_closed_at_the_header_timeout() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &["--header-read-timeout", "1s", "--idle-timeout", "1h"],
    );
    s.wait_ready().await;
    let mut sock = TcpStream::connect(s.addr()).await.expect("connect");
    sock.write_all(b"GET /v1/snapshots/users/keys/1 HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("half a head");
    // Well inside the default header timeout (10 s) and the idle one.
    assert!(
        closed_within(&mut sock, Duration::from_secs(8)).await,
        "a half-sent head still holds its connection"
    );
    // The service itself answers on.
    let (status, _, _) = call(s.get("/v1/snapshots/users/keys/1")).await;
    assert_eq!(status, 200);
}

/// A kept-alive connection with nothing to do is closed after the idle
/// timeout; one whose request is still being served is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_busy_ones_stay() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &["--idle-timeout", "1s", "--request-timeout", "4s"],
    );
    s.wait_ready().await;
    let mut idle = TcpStream::connect(s.addr()).await.expect("connect");
    idle.write_all(format!("GET /livez HTTP/1.1\r\nhost: {}\r\n\r\n", s.addr()).as_bytes())
        .await
        .expect("request");
    let mut first = [0u8; 64];
    let n = idle.read(&mut first).await.expect("answer");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(8)).await,
        "an idle connection outlived its idle timeout"
    );
    // A request whose body is slow is being served: only its deadline
    // (4 s, longer than the idle timeout) ends it, with an answer.
    let body = json!({"keys": [1, 2]}).to_string();
    let mut slow = slow_request(&s.addr(), "/v1/snapshots/users/multiget", body.as_bytes()).await;
    let (status, text) = sf_tests::serve::read_answer(&mut slow).await;
    assert_eq!(status, 504, "{text}");
    let m = s.metrics(None).await;
    assert!(
        metric(
            &m,
            "sf_serve_connections_closed_total",
            &[("listener", "http"), ("reason", "idle_timeout")]
        ) >= 1.0
    );
}

/// With 256 file descriptors, 300 idle connections do not take the
/// service down: at the connection bound (half the limit) the longest-idle
/// connection makes room, so probes, lookups and the shard files they
/// open keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_bound_cannot_starve_the_service() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let s = ServeProcess::serving_with_open_files(
        &[("users", &snap.prefix)],
        &["--sqlite-mode", "download", "--idle-timeout", "1h"],
        256,
    );
    s.wait_ready().await;
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut sock = TcpStream::connect(s.addr()).await.expect("connect");
        // Half a head: idle as far as the server can tell.
        sock.write_all(b"GET /livez HTTP/1.1\r\n").await.expect("write");
        held.push(sock);
    }
    // Every shard is opened (downloaded) after the flood.
    for k in 0..20u64 {
        let (status, _, body) = call(s.get(&format!("/v1/snapshots/users/keys/{k}"))).await;
        assert_eq!(status, 200, "key {k}: {body}");
        assert_eq!(body, json!(format!("run1:{k}")));
    }
    let (status, _, _) = call(s.get("/livez")).await;
    assert_eq!(status, 200);
    let m = s.metrics(None).await;
    let open = metric(&m, "sf_serve_connections_open", &[("listener", "http")]);
    assert!(open <= 128.0, "{open} connections open, above the bound of 128");
    let evicted = metric(
        &m,
        "sf_serve_connections_closed_total",
        &[("listener", "http"), ("reason", "evicted")],
    );
    assert!(evicted >= 300.0 - 128.0, "only {evicted} idle connections made room");
    drop(held);
}

/// When every connection is busy, a new one is closed at accept and
/// counted; the bound frees as requests end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_connection_is_busy_a_new_one_is_refused() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &[
            "--max-connections",
            "2",
            "--request-timeout",
            "60s",
            "--log",
            "info,sf_server::conn=trace",
        ],
    );
    s.wait_ready().await;
    let started = |s: &ServeProcess| s.stderr().matches("request started").count();
    let before = started(&s);
    let body = json!({"keys": [3, 4]}).to_string();
    let mut a = slow_request(&s.addr(), "/v1/snapshots/users/multiget", body.as_bytes()).await;
    let mut b = slow_request(&s.addr(), "/v1/snapshots/users/multiget", body.as_bytes()).await;
    // Both connections are busy once the server has started both requests
    // (asking /metrics would take a connection of its own).
    for _ in 0..6000 {
        if started(&s) >= before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started(&s) >= before + 2, "{}", s.stderr());
    let mut third = TcpStream::connect(s.addr()).await.expect("the kernel accepts");
    let _ = third.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        closed_within(&mut third, Duration::from_secs(30)).await,
        "a connection beyond the bound was served"
    );
    for sock in [&mut a, &mut b] {
        sock.write_all(&body.as_bytes()[body.len() / 2..]).await.expect("rest");
        let (status, text) = sf_tests::serve::read_answer(sock).await;
        assert_eq!(status, 200, "{text}");
    }
    // Both are idle now: a new connection makes room.
    let m = s.metrics(None).await;
    assert!(metric(&m, "sf_serve_connections_refused_total", &[("listener", "http")]) >= 1.0);
}

/// An unauthenticated gRPC call is refused on its headers: eight 4 MiB
/// messages (a million keys each) at once cost the server no memory
/// worth the name, where decoding them would take hundreds of MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_grpc_message_is_refused_before_it_is_decoded() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let tokens = write_tokens(snap.folder(), &["reader-token"]);
    let s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--auth-token-file",
            &tokens,
            "--max-body-bytes",
            "8388608",
            "--max-keys",
            "2000000",
        ],
    );
    s.wait_ready().await;
    let client = s.grpc_client().await;
    // Warm: the first call sets up what every call uses.
    let warm = client.clone().get(GetRequest::default()).await.expect_err("no token");
    assert_eq!(warm.code(), tonic::Code::Unauthenticated);
    let before = s.peak_memory();
    let keys: Vec<String> = (0..1_000_000u32).map(|k| (k % 100).to_string()).collect();
    let calls = (0..8).map(|_| {
        let mut c = client.clone();
        let req = multiget_request("users", keys.clone());
        async move { c.multi_get(req).await }
    });
    for answer in futures::future::join_all(calls).await {
        let status = answer.expect_err("refused without a token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    }
    let grown = s.peak_memory().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "refusing 8 unauthenticated 4 MiB messages took {} MiB",
        grown >> 20
    );
    let m = s.metrics(Some("reader-token")).await;
    assert!(metric(&m, "sf_serve_requests_rejected_total", &[("reason", "unauthenticated")]) >= 9.0);
}

/// A streamed MultiGet whose client stops reading gives its place among
/// the requests in flight back at the stream deadline, and the stream
/// ends with DEADLINE_EXCEEDED rather than looking complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_gives_its_place_back_at_the_deadline() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--max-in-flight",
            "1",
            "--stream-timeout",
            "3s",
        ],
    );
    s.wait_ready().await;
    let mut client = s.grpc_client().await;
    // About 3 MB of answers: far more than the flow-control windows
    // between the server and a client that does not read.
    let keys: Vec<String> = (0..200_000u32).map(|k| (k % 200).to_string()).collect();
    let mut stream = client
        .multi_get_stream(MultiGetRequest {
            chunk_size: 1000,
            ..multiget_request("users", keys)
        })
        .await
        .expect("stream")
        .into_inner();
    s.wait_in_flight(1.0).await;
    let busy = client
        .get(GetRequest {
            snapshot: "users".into(),
            key: "1".into(),
            ..Default::default()
        })
        .await
        .expect_err("the only place is the stream's");
    assert_eq!(busy.code(), tonic::Code::ResourceExhausted, "{busy}");
    // Nobody reads; the deadline frees the place.
    s.wait_in_flight(0.0).await;
    let found = client
        .get(GetRequest {
            snapshot: "users".into(),
            key: "1".into(),
            ..Default::default()
        })
        .await
        .expect("the place is free again")
        .into_inner();
    assert!(found.found);
    // What was sent before the deadline arrives, then the deadline.
    let mut chunks = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => chunks += 1,
            Ok(None) => panic!("the stream ended as if complete after {chunks} chunks"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), tonic::Code::DeadlineExceeded, "{end}");
    assert!(chunks < 200, "all {chunks} chunks came: the stream was not cut");
}

/// SIGTERM with requests that never finish: the server exits once the
/// grace period is over, non-zero, saying how many it abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_stuck_requests_exits_after_the_grace_period() {
    let snap = LocalSnapshot::with_runs(&["run1"]).await;
    let mut s = ServeProcess::serving(
        &[("users", &snap.prefix)],
        &["--request-timeout", "10m", "--grace-period", "1s"],
    );
    s.wait_ready().await;
    let body = json!({"keys": [1]}).to_string();
    let _a = slow_request(&s.addr(), "/v1/snapshots/users/multiget", body.as_bytes()).await;
    let _b = slow_request(&s.addr(), "/v1/snapshots/users/multiget", body.as_bytes()).await;
    s.wait_in_flight(2.0).await;
    s.signal_term();
    let status = s.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", s.stderr());
    let err = s.stderr();
    assert!(
        err.contains("2 request(s) still in flight after the grace period of 1s: abandoned"),
        "{err}"
    );
}
