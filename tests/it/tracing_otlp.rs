//! OpenTelemetry tracing, with the real binaries and an OTLP/gRPC receiver
//! the test runs on 127.0.0.1: `sf-write` exports one trace per build, a
//! root `build` span with the run id and the build's phases as its
//! children (the shard tasks under `write_shards`), and has sent it before
//! it exits; a collector that is not there, or that never answers, costs a
//! warning and a bounded wait, never the build; `sf-serve` exports each
//! request's span with its request id, and the lookup under it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use sf_tests::serve::{LocalSnapshot, ServeProcess, call};
use sf_tests::writer_support::binary;

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    /// The exporting program's `service.name`.
    service: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    /// Empty for a root span.
    parent: Vec<u8>,
    name: String,
    attributes: BTreeMap<String, String>,
    start: u64,
    end: u64,
    /// Its status is an error.
    failed: bool,
}

/// An OTLP trace receiver: keeps every span exported to it.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<tokio::sync::Notify>,
}

fn text(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

#[async_trait::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for resource in request.into_inner().resource_spans {
            let resource_attributes = text(&resource.resource.map(|r| r.attributes).unwrap_or_default());
            let service = resource_attributes.get("service.name").cloned().unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    got.push(Received {
                        service: service.clone(),
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent: span.parent_span_id,
                        name: span.name,
                        attributes: text(&span.attributes),
                        start: span.start_time_unix_nano,
                        end: span.end_time_unix_nano,
                        failed: span.status.is_some_and(|s| s.code == StatusCode::Error as i32),
                    });
                }
            }
        }
        self.spans.lock().expect("spans").extend(got);
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1 (any free port); its address.
    async fn start() -> (Receiver, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let receiver = Receiver::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (receiver, addr)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("spans").clone()
    }

    /// Waits (at most 30 s) until a span satisfies `want`; returns it.
    async fn wait_for(&self, what: &str, want: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let arrived = self.arrived.notified();
            if let Some(s) = self.spans().into_iter().find(|s| want(s)) {
                return s;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} span within 30 s; got {:#?}", self.spans());
            let _ = tokio::time::timeout(left, arrived).await;
        }
    }
}

const JOB: &str = r#"
key_col = "id"
[input]
format = "csv"
path = "users.csv"
[value]
json_cols = ["name"]
[routing]
num_dbs = 3
[output]
prefix = "out"
run_id = "traced-run"
"#;

fn write_job(dir: &Path) {
    let mut csv = String::from("id,name\n");
    for i in 0..60 {
        csv.push_str(&format!("{i},user-{i}\n"));
    }
    std::fs::write(dir.join("users.csv"), csv).expect("csv");
    std::fs::write(dir.join("job.toml"), JOB).expect("job");
}

/// Runs `sf-write` on the job in `dir` with the OTLP endpoint `endpoint`
/// (the default log filter: spans are exported whatever it is); waits at
/// most `bound` for it, and returns its output and how long it took.
async fn sf_write(dir: &Path, endpoint: &str, bound: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let child = tokio::process::Command::new(binary("sf-write"))
        .args(["--config", "job.toml", "--progress", "off", "--rebuild"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(bound, child)
        .await
        .unwrap_or_else(|_| panic!("sf-write did not exit within {bound:?}"))
        .expect("run sf-write");
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_exports_its_phases_as_children_of_one_build_span() {
    let (receiver, addr) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    write_job(dir.path());
    let (out, _) = sf_write(dir.path(), &format!("http://{addr}"), Duration::from_secs(120)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("not exported"), "{stderr}");

    // Everything was sent before the program exited: no waiting here.
    let spans = receiver.spans();
    let roots: Vec<&Received> = spans.iter().filter(|s| s.name == "build").collect();
    assert_eq!(roots.len(), 1, "one build span: {spans:#?}");
    let build = roots[0];
    assert!(build.parent.is_empty(), "the build span is the root: {build:?}");
    assert_eq!(
        build.attributes.get("run_id").map(String::as_str),
        Some("traced-run"),
        "{build:?}"
    );
    assert_eq!(build.service, "sf-write", "the service is named after the program");
    assert_eq!(build.trace_id.len(), 16);
    assert!(!build.failed, "{build:?}");
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id == build.trace_id && s.service == "sf-write"),
        "every span is in the build's trace: {spans:#?}"
    );

    // The phases, children of the build, one each, in the order they ran,
    // each within the build's time.
    let phases = [
        "read_schema",
        "plan",
        "verify_routing",
        "write_shards",
        "verify",
        "gates",
        "publish",
        "cleanup",
    ];
    let mut last_start = build.start;
    for phase in phases {
        let found: Vec<&Received> = spans.iter().filter(|s| s.name == phase).collect();
        assert_eq!(found.len(), 1, "one {phase} span: {spans:#?}");
        let span = found[0];
        assert_eq!(span.parent, build.span_id, "{phase} is a child of the build: {span:?}");
        assert!(
            span.start >= last_start,
            "{phase} started after the phase before it: {spans:#?}"
        );
        assert!(
            span.end <= build.end && span.start <= span.end,
            "{phase} within the build: {span:?}"
        );
        last_start = span.start;
    }
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent == build.span_id)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        children.len(),
        phases.len(),
        "nothing else under the build: {children:?}"
    );

    // The shard tasks and the input under write_shards: one span per shard
    // (all three hold rows), named by shard id.
    let write = spans.iter().find(|s| s.name == "write_shards").expect("write_shards");
    assert_eq!(
        write.attributes.get("num_dbs").map(String::as_str),
        Some("3"),
        "{write:?}"
    );
    let input: Vec<&Received> = spans.iter().filter(|s| s.name == "input").collect();
    assert_eq!(input.len(), 1, "{spans:#?}");
    assert_eq!(input[0].parent, write.span_id);
    let mut shards: Vec<String> = spans
        .iter()
        .filter(|s| s.name == "shard")
        .map(|s| {
            assert_eq!(
                s.parent, write.span_id,
                "a shard task is a child of write_shards: {s:?}"
            );
            s.attributes.get("db_id").cloned().unwrap_or_default()
        })
        .collect();
    shards.sort();
    assert_eq!(shards, ["0", "1", "2"], "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_exports_its_build_span_as_an_error() {
    let (receiver, addr) = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    write_job(dir.path());
    std::fs::remove_file(dir.path().join("users.csv")).expect("remove the input");
    let (out, _) = sf_write(dir.path(), &format!("http://{addr}"), Duration::from_secs(120)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "bad input: {stderr}");

    // Sent before the exit on a failure too.
    let spans = receiver.spans();
    let build: Vec<&Received> = spans.iter().filter(|s| s.name == "build").collect();
    assert_eq!(build.len(), 1, "{spans:#?}");
    assert!(build[0].failed, "the build span says the build failed: {:?}", build[0]);
    assert_eq!(
        build[0].attributes.get("run_id").map(String::as_str),
        Some("traced-run")
    );
    assert!(
        spans.iter().all(|s| s.trace_id == build[0].trace_id),
        "one trace: {spans:#?}"
    );
    assert!(!spans.iter().any(|s| s.name == "publish"), "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_silent_collector_never_fails_or_holds_a_build() {
    let dir = tempfile::tempdir().expect("tmp");
    write_job(dir.path());

    // Nothing listens on the port.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let (out, took) = sf_write(dir.path(), &format!("http://{closed}"), Duration::from_secs(60)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the last spans were not exported"),
        "a warning says so: {stderr}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");

    // A listener that takes the connection and never answers: the build
    // waits for it a few seconds at most.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("address");
    let (out, took) = sf_write(dir.path(), &format!("http://{silent_addr}"), Duration::from_secs(60)).await;
    drop(silent);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the last spans were not exported"),
        "a warning says so: {stderr}"
    );
    assert!(
        took < Duration::from_secs(30),
        "a silent collector held the build {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_request_exports_its_span_with_the_request_id() {
    let (receiver, addr) = Receiver::start().await;
    let snap = LocalSnapshot::with_runs(&["r1"]).await;
    let cache = snap.folder().join("cache");
    let endpoint = format!("http://{addr}");
    let mut server = ServeProcess::start_with(
        &[
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--cache-dir".into(),
            cache.display().to_string(),
            "--snapshot".into(),
            format!("ints={}", snap.current_url()),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            // Export every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    server.wait_ready().await;
    let (status, _, body) = call(
        server
            .get("/v1/snapshots/ints/keys/7")
            .header("x-request-id", "traced-request-1"),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let request = receiver
        .wait_for("request", |s| {
            s.name == "request" && s.attributes.get("request_id").map(String::as_str) == Some("traced-request-1")
        })
        .await;
    assert_eq!(request.service, "sf-serve");
    let lookup = receiver
        .wait_for("lookup", |s| s.name == "lookup" && s.parent == request.span_id)
        .await;
    assert_eq!(lookup.trace_id, request.trace_id);
    assert_eq!(
        lookup.attributes.get("snapshot").map(String::as_str),
        Some("ints"),
        "{lookup:?}"
    );
    assert!(server.terminate().success(), "{}", server.stderr());
}
