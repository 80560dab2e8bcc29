//! An HTTP proxy in front of the S3 emulator that answers chosen requests
//! with the failures real object storage produces: 5xx and throttling
//! answers, permission denied, a request that hangs past the client's
//! timeout, a connection dropped before any answer.
//!
//! The processes under test (the real `sf-write`, `sf-read`, ...) talk to
//! it as to any S3 endpoint (`AWS_ENDPOINT=<proxy url>`), so the faults
//! travel the whole way: through object_store's own retries and error
//! mapping, ShardForge's classification, and out as an exit code. Nothing
//! in the code under test knows it is there.
//!
//! ```no_run
//! # use sf_tests::fault_proxy::{FaultProxy, Fault, Rule};
//! let proxy = FaultProxy::start(&std::env::var("AWS_ENDPOINT").unwrap());
//! // Every PUT under shards/ answers 503, from the first one on.
//! proxy.add(Rule::new("PUT", "/shards/").fault(Fault::Status(503)));
//! // ... run a process with AWS_ENDPOINT = proxy.url() ...
//! assert!(proxy.faults_served() > 0);
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sf_manifest::sync::lock;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode};

/// What a matching request gets instead of the emulator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// This HTTP status with an S3-style XML error body (`503` service
    /// unavailable, `500`, `429`/`503 SlowDown` throttling, `403` access
    /// denied, `404`, `412` precondition failed).
    Status(u16),
    /// No answer for this long, then the request is forwarded (a client
    /// with a shorter timeout sees a timeout).
    Hang(Duration),
    /// The connection is closed without an answer.
    Drop,
    /// Held until this many distinct requests (by path) are held together,
    /// then forwarded, all of them: a rendezvous of that many clients (see
    /// [`FaultProxy::gathered`]). Give the rule as many `times`.
    Gather(usize),
}

/// Which requests fail, and how.
#[derive(Debug, Clone)]
pub struct Rule {
    method: String,
    path_contains: String,
    skip: usize,
    times: usize,
    fault: Fault,
    matched: usize,
}

impl Rule {
    /// Requests with `method` (`"*"` for any) whose path contains
    /// `path_contains`; by default they answer `503` for ever.
    pub fn new(method: &str, path_contains: &str) -> Self {
        Rule {
            method: method.to_ascii_uppercase(),
            path_contains: path_contains.to_string(),
            skip: 0,
            times: usize::MAX,
            fault: Fault::Status(503),
            matched: 0,
        }
    }

    /// The fault to inject.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Lets the first `n` matching requests through untouched.
    pub fn after(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }

    /// Fails `n` matching requests (after the skipped ones), then lets the
    /// rest through.
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        (self.method == "*" || self.method == method.as_str()) && path.contains(&self.path_contains)
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The fault it got, if any.
    pub fault: Option<Fault>,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    /// Paths held by [`Fault::Gather`], and whether the gathering met.
    gathering: Mutex<std::collections::BTreeSet<String>>,
    gathered: tokio::sync::watch::Sender<bool>,
}

/// A running proxy; stopped when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) in front of `upstream`
    /// (`http://127.0.0.1:PORT`), on its own thread and runtime, so sync
    /// and async tests alike can use it.
    pub fn start(upstream: &str) -> Self {
        assert!(
            upstream.starts_with("http://127.0.0.1:") || upstream.starts_with("http://localhost:"),
            "the fault proxy fronts a loopback emulator, not {upstream}"
        );
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().no_proxy().build().expect("an HTTP client"),
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            gathering: Mutex::new(std::collections::BTreeSet::new()),
            gathered: tokio::sync::watch::channel(false).0,
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind the proxy");
                    addr_tx
                        .send(listener.local_addr().expect("address"))
                        .expect("report the address");
                    let app = axum::Router::new().fallback(forward).with_state(state);
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stop_rx.await;
                        })
                        .await
                        .expect("proxy serves");
                });
            })
            .expect("proxy thread");
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).expect("the proxy starts");
        FaultProxy {
            url: format!("http://{addr}"),
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Starts a proxy in front of the S3 emulator the test script started.
    pub fn for_s3() -> Self {
        let upstream = std::env::var("AWS_ENDPOINT")
            .expect("AWS_ENDPOINT is not set: run the suite with ./scripts/test.sh, which starts the S3 emulator");
        Self::start(&upstream)
    }

    /// Where to send requests (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Adds a rule; the first matching rule with faults left decides.
    pub fn add(&self, rule: Rule) {
        lock(&self.shared.rules).push(rule);
    }

    /// Removes every rule: from now on everything goes through.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// How many requests got a fault.
    pub fn faults_served(&self) -> usize {
        lock(&self.shared.seen).iter().filter(|s| s.fault.is_some()).count()
    }

    /// Whether a [`Fault::Gather`] rule had its requests held together
    /// (and let them go).
    pub fn gathered(&self) -> bool {
        *self.shared.gathered.borrow()
    }

    /// The distinct paths a [`Fault::Gather`] rule holds or held.
    pub fn gathering(&self) -> Vec<String> {
        lock(&self.shared.gathering).iter().cloned().collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fault a request gets, if a rule says so (and counts it).
fn decide(shared: &Shared, method: &Method, path: &str) -> Option<Fault> {
    let mut rules = lock(&shared.rules);
    for rule in rules.iter_mut().filter(|r| r.matches(method, path)) {
        rule.matched += 1;
        if rule.matched > rule.skip && rule.matched - rule.skip <= rule.times {
            return Some(rule.fault.clone());
        }
    }
    None
}

fn s3_error(status: u16) -> Response<Body> {
    let code = match status {
        403 => "AccessDenied",
        404 => "NoSuchKey",
        412 => "PreconditionFailed",
        429 | 503 => "SlowDown",
        _ => "InternalError",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test's fault proxy</Message></Error>"
    );
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
        .header("content-type", "application/xml")
        .body(Body::from(body))
        .expect("an error response")
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request<Body>) -> Response<Body> {
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let fault = decide(&shared, &method, &path);
    lock(&shared.seen).push(Seen {
        method: method.to_string(),
        path: path.clone(),
        fault: fault.clone(),
    });
    match fault {
        Some(Fault::Status(s)) => return s3_error(s),
        Some(Fault::Drop) => {
            // Ending the response body with an error makes hyper close the
            // connection without a complete answer.
            let stream =
                futures::stream::once(async { Err::<Bytes, std::io::Error>(std::io::Error::other("dropped")) });
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-length", "1")
                .body(Body::from_stream(stream))
                .expect("a broken response");
        }
        Some(Fault::Hang(d)) => tokio::time::sleep(d).await,
        Some(Fault::Gather(n)) => {
            let held = {
                let mut held = lock(&shared.gathering);
                held.insert(path.clone());
                held.len()
            };
            if held >= n {
                shared.gathered.send_replace(true);
            }
            let mut met = shared.gathered.subscribe();
            // The sender lives in `shared`: the wait ends when it is met.
            let _ = met.wait_for(|m| *m).await;
        }
        None => {}
    }
    let head = method == Method::HEAD;
    let headers: HeaderMap = request.headers().clone();
    let body = match axum::body::to_bytes(request.into_body(), usize::MAX).await {
        Ok(b) => b,
        Err(e) => return s3_error_text(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let mut out = shared.client.request(method, format!("{}{path}", shared.upstream));
    for (name, value) in headers.iter() {
        if name != "host" && name != "content-length" {
            out = out.header(name, value);
        }
    }
    match out.body(body).send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                // The body is sent again whole; a HEAD answer has none, and
                // its content-length is the object's size.
                if (head || name != "content-length") && name != "transfer-encoding" {
                    response = response.header(name, value);
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            response.body(Body::from(bytes)).expect("a forwarded response")
        }
        Err(e) => s3_error_text(StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}

fn s3_error_text(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(text.to_string()))
        .expect("an error response")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny upstream that answers every request with 200 "up".
    fn upstream() -> (String, tokio::sync::oneshot::Sender<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(l.local_addr().expect("addr")).expect("send");
                let app = axum::Router::new().fallback(|| async { "up" });
                axum::serve(l, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).expect("upstream starts");
        (format!("http://{addr}"), stop_tx)
    }

    #[test]
    fn rules_skip_fail_then_let_through() {
        let (up, _stop) = upstream();
        let proxy = FaultProxy::start(&up);
        proxy.add(Rule::new("GET", "/b/k").after(1).times(2).fault(Fault::Status(503)));
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let statuses: Vec<u16> = rt.block_on(async {
            let c = reqwest::Client::new();
            let mut out = Vec::new();
            for _ in 0..4 {
                out.push(
                    c.get(format!("{}/b/k", proxy.url()))
                        .send()
                        .await
                        .expect("answer")
                        .status()
                        .as_u16(),
                );
            }
            out.push(
                c.put(format!("{}/b/k", proxy.url()))
                    .send()
                    .await
                    .expect("answer")
                    .status()
                    .as_u16(),
            );
            out
        });
        assert_eq!(statuses, vec![200, 503, 503, 200, 200]);
        assert_eq!(proxy.faults_served(), 2);
        assert_eq!(proxy.seen().len(), 5);
        proxy.add(Rule::new("*", "/b/").fault(Fault::Drop));
        let dropped = rt.block_on(async {
            let answer = reqwest::Client::new()
                .get(format!("{}/b/x", proxy.url()))
                .send()
                .await?;
            answer.bytes().await
        });
        assert!(dropped.is_err(), "a dropped connection is an error: {dropped:?}");
    }

    #[test]
    fn gathered_requests_wait_for_each_other() {
        let (up, _stop) = upstream();
        let proxy = FaultProxy::start(&up);
        proxy.add(Rule::new("PUT", "/g/").times(2).fault(Fault::Gather(2)));
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let c = reqwest::Client::new();
            let first = tokio::spawn(c.put(format!("{}/g/1", proxy.url())).send());
            // The first is held until a second request comes.
            while proxy.gathering().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(!proxy.gathered() && !first.is_finished());
            let second = c.put(format!("{}/g/2", proxy.url())).send().await.expect("answer");
            assert_eq!(second.status(), 200);
            let first = first.await.expect("task").expect("answer");
            assert_eq!(first.status(), 200);
        });
        assert!(proxy.gathered());
        assert_eq!(proxy.gathering(), vec!["/g/1".to_string(), "/g/2".to_string()]);
    }

    #[test]
    fn a_head_answer_keeps_the_size_of_the_object() {
        let (up, _stop) = upstream();
        let proxy = FaultProxy::start(&up);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let length = rt.block_on(async {
            let answer = reqwest::Client::new()
                .head(format!("{}/b/k", proxy.url()))
                .send()
                .await
                .expect("answer");
            answer.headers().get("content-length").cloned()
        });
        assert_eq!(
            length.as_ref().map(|l| l.as_bytes()),
            Some(&b"2"[..]),
            "the size of \"up\""
        );
    }
}
