//! The real `sf-serve` binary as a child process on 127.0.0.1, for tests
//! and the serving benchmark: started with port 0, its bound addresses
//! read from the lines it prints, stopped (SIGTERM, or killed when a test
//! fails) by whoever started it. Around it, what the serving tests set up
//! again and again: an integer snapshot in a scratch folder, requests with
//! their answers taken apart, `/metrics` read, gRPC requests and tokens,
//! and requests held open half sent.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use sf_manifest::KeyEncoding;
use sf_server::grpc::proto::lookup_client::LookupClient;
use sf_server::grpc::proto::{GetRequest, MultiGetRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::wait_bounded;
use crate::snapshots::{SnapshotSpec, build_snapshot, int_rows};
use crate::writer_support::binary;

/// Keys of the snapshots [`publish_ints`] builds: `0..KEYS`.
pub const KEYS: u64 = 200;

/// Publishes run `run` at `prefix`: keys `0..KEYS` (`u64be`, four hash
/// shards), each with the value `{run}:{key}`, so every answer shows the
/// run it came from.
pub async fn publish_ints(prefix: &str, run: &str) {
    build_snapshot(
        prefix,
        &SnapshotSpec::hash(run, 4, KeyEncoding::U64Be),
        &int_rows(KEYS, run),
    )
    .await;
}

/// A snapshot prefix in a scratch folder, `file://{folder}/snap`, with
/// runs of [`publish_ints`] published into it.
#[derive(Debug)]
pub struct LocalSnapshot {
    root: tempfile::TempDir,
    /// `file://{folder}/snap`
    pub prefix: String,
}

impl LocalSnapshot {
    /// A fresh prefix with `runs` published in order (the last is current).
    pub async fn with_runs(runs: &[&str]) -> LocalSnapshot {
        let root = tempfile::tempdir().expect("snapshot folder");
        let prefix = format!("file://{}/snap", root.path().display());
        for run in runs {
            publish_ints(&prefix, run).await;
        }
        LocalSnapshot { root, prefix }
    }

    /// `{prefix}/_CURRENT`
    pub fn current_url(&self) -> String {
        format!("{}/_CURRENT", self.prefix)
    }

    /// The scratch folder (the prefix is its `snap`).
    pub fn folder(&self) -> &Path {
        self.root.path()
    }
}

/// Writes a token file into `folder`: a comment line, then `tokens`, one
/// a line; returns its path.
pub fn write_tokens(folder: &Path, tokens: &[&str]) -> String {
    write_token_file(folder, "tokens", tokens)
}

/// Writes (or rewrites) the token file `folder/name`, as [`write_tokens`]
/// does; returns its path.
pub fn write_token_file(folder: &Path, name: &str, tokens: &[&str]) -> String {
    let path = folder.join(name);
    let text: String = tokens.iter().map(|t| format!("{t}\n")).collect();
    std::fs::write(&path, format!("# tokens\n{text}")).expect("token file");
    path.display().to_string()
}

/// Runs `sf-serve ARGS` to its exit (at most 60 s): for what it refuses
/// to start with, and its `--help`.
pub fn run_serve<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> std::process::Output {
    crate::cluster::run_bounded(
        Command::new(binary("sf-serve")).args(args),
        Duration::from_secs(60),
        "sf-serve",
    )
}

/// A running `sf-serve`, with an HTTP client for it.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// `http://127.0.0.1:PORT` of the gRPC service, when started with one.
    pub grpc: Option<String>,
    /// `http://127.0.0.1:PORT` of the metrics listener, when started with one.
    pub metrics: Option<String>,
    /// A client with a 60 s timeout, for requests to this server.
    pub client: reqwest::Client,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Starts `sf-serve ARGS` (which should include `--listen
    /// 127.0.0.1:0`) and waits, at most 60 s, for its `listening on` lines.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> ServeProcess {
        Self::start_with(args, &[])
    }

    /// [`start`](Self::start) with extra environment variables.
    pub fn start_with<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> ServeProcess {
        let dir = tempfile::tempdir().expect("scratch dir");
        Self::spawn(dir, args, env)
    }

    /// Starts `sf-serve` serving `snapshots` (name, URL) on 127.0.0.1
    /// (any free port), with a fresh shard cache of its own, and `flags`
    /// after those.
    pub fn serving(snapshots: &[(&str, &str)], flags: &[&str]) -> ServeProcess {
        Self::serving_within(snapshots, flags, None)
    }

    /// [`serving`](Self::serving) with the process's open-file limit set
    /// to `open_files` from its start (through util-linux `prlimit`).
    pub fn serving_with_open_files(snapshots: &[(&str, &str)], flags: &[&str], open_files: u64) -> ServeProcess {
        Self::serving_within(snapshots, flags, Some(open_files))
    }

    fn serving_within(snapshots: &[(&str, &str)], flags: &[&str], open_files: Option<u64>) -> ServeProcess {
        let dir = tempfile::tempdir().expect("scratch dir");
        let cache = dir.path().join("cache");
        let mut args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--cache-dir".into(),
            cache.display().to_string(),
        ];
        for (name, url) in snapshots {
            args.push("--snapshot".into());
            args.push(format!("{name}={url}"));
        }
        args.extend(flags.iter().map(|f| f.to_string()));
        Self::spawn_limited(dir, &args, &[], open_files)
    }

    /// Starts `sf-serve --config FILE`, the file's text made by `config`
    /// from the path of a fresh shard cache.
    pub fn with_config(config: impl FnOnce(&Path) -> String) -> ServeProcess {
        let dir = tempfile::tempdir().expect("scratch dir");
        let file = dir.path().join("serve.toml");
        std::fs::write(&file, config(&dir.path().join("cache"))).expect("write serve.toml");
        let args = ["--config".to_string(), file.display().to_string()];
        Self::spawn(dir, &args, &[])
    }

    fn spawn<S: AsRef<std::ffi::OsStr>>(dir: tempfile::TempDir, args: &[S], env: &[(&str, &str)]) -> ServeProcess {
        Self::spawn_limited(dir, args, env, None)
    }

    fn spawn_limited<S: AsRef<std::ffi::OsStr>>(
        dir: tempfile::TempDir,
        args: &[S],
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> ServeProcess {
        let stderr = dir.path().join("stderr");
        let mut cmd = match open_files {
            // prlimit sets the limit, then runs the program in its place
            // (same process id).
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(binary("sf-serve"));
                c
            }
            None => Command::new(binary("sf-serve")),
        };
        cmd.args(args)
            .env_remove("SF_CACHE_DIR")
            .env("RUST_LOG", "info,slatedb=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sf-serve");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        // Reads stdout to its end, so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // `sf-serve` prints `grpc listening on` (when it serves gRPC,
        // asked for by flag or config file) and `metrics listening on`
        // (with a metrics listener) before `listening on`.
        let mut http = None;
        let mut grpc = None;
        let mut metrics = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while http.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening on ") {
                        http = Some(a.to_string());
                    } else if let Some(a) = line.strip_prefix("grpc listening on ") {
                        grpc = Some(a.to_string());
                    } else if let Some(a) = line.strip_prefix("metrics listening on ") {
                        metrics = Some(a.to_string());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "sf-serve printed no listening line within 60 s (or exited); stderr:\n{}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    );
                }
            }
        }
        let http = http.expect("http address");
        assert!(
            http.starts_with("http://127.0.0.1:") || http.starts_with("https://127.0.0.1:"),
            "{http}"
        );
        ServeProcess {
            child,
            http,
            grpc,
            metrics,
            client: client(),
            stderr,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// `GET {path}`, to be sent with [`call`] (or `.send()`).
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    /// `POST {path}` with `body` as JSON.
    pub fn post_json(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).json_body(body)
    }

    /// A multiget of snapshot `name`, answered.
    pub async fn multiget(&self, name: &str, body: Value) -> (u16, Option<String>, Value) {
        call(self.post_json(&format!("/v1/snapshots/{name}/multiget"), &body)).await
    }

    /// Waits (at most 60 s) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_ready(&self.client, &self.http).await;
    }

    /// `/metrics` (with `token`, when the server wants one), as samples.
    pub async fn metrics(&self, token: Option<&str>) -> BTreeMap<String, f64> {
        let mut req = self.get("/metrics");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("metrics");
        assert_eq!(resp.status(), 200);
        parse_prometheus(&resp.text().await.expect("metrics text"))
    }

    /// Polls `/metrics` until `want` requests are in flight (at most 60 s).
    pub async fn wait_in_flight(&self, want: f64) {
        let mut seen = 0.0;
        for _ in 0..6000 {
            seen = metric(&self.metrics(None).await, "sf_serve_requests_in_flight", &[]);
            if seen == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{want} requests never were in flight (last seen {seen})");
    }

    /// A client of the gRPC service.
    pub async fn grpc_client(&self) -> LookupClient<tonic::transport::Channel> {
        LookupClient::connect(self.grpc.clone().expect("a server started with --grpc-listen"))
            .await
            .expect("grpc connect")
    }

    /// A channel to the gRPC listener, for the clients of its other
    /// services (health, reflection).
    pub async fn grpc_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.grpc.clone().expect("a server started with --grpc-listen"))
            .expect("grpc address")
            .connect()
            .await
            .expect("grpc connect")
    }

    /// The `127.0.0.1:PORT` of the HTTP API.
    pub fn addr(&self) -> String {
        self.http.split_once("://").map_or(&*self.http, |(_, a)| a).to_string()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        self.signal("TERM");
    }

    /// Sends SIGHUP (the server re-reads its token files).
    pub fn signal_hup(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {}", self.child.id());
    }

    /// Its peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_memory(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("VmHWM in /proc status");
        kib * 1024
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("poll sf-serve").is_none()
    }

    /// Waits (at most `bound`) for it to exit.
    pub fn wait(&mut self, bound: Duration) -> ExitStatus {
        wait_bounded(&mut self.child, bound, "sf-serve")
    }

    /// SIGTERM, then waits at most 60 s for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_term();
        self.wait(Duration::from_secs(60))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `GET {base}/readyz` until it answers 200 (at most 60 s).
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    let mut last = String::new();
    for _ in 0..600 {
        match client.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base}/readyz never answered 200; last: {last}");
}

/// The samples of a Prometheus text exposition: `name{labels}` -> value.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_string(), v);
    }
    out
}

/// The value of the series with `name` whose labels include all of
/// `labels` (0 when there is none; summed when several match).
pub fn metric(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// A client with a 60 s timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Sends `req`: its status, `sf-run-id`, and the body as JSON (or as a
/// JSON string when it is not JSON).
pub async fn call(req: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let run = resp
        .headers()
        .get("sf-run-id")
        .map(|v| v.to_str().expect("ascii").to_string());
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, run, body)
}

/// The `kind` of an error answer's body.
pub fn kind(body: &Value) -> &str {
    body["error"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

/// `reqwest` without its `json` feature: a JSON body by hand.
pub trait JsonBody {
    /// `v` as the body, with its content type.
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json").body(v.to_string())
    }
}

/// A gRPC `Get` of `key` from `snapshot`.
pub fn get_request(snapshot: &str, key: &str) -> GetRequest {
    GetRequest {
        snapshot: snapshot.into(),
        key: key.into(),
        ..Default::default()
    }
}

/// A gRPC `MultiGet` of `keys` from `snapshot`.
pub fn multiget_request(snapshot: &str, keys: Vec<String>) -> MultiGetRequest {
    MultiGetRequest {
        snapshot: snapshot.into(),
        keys,
        ..Default::default()
    }
}

/// `message` with `authorization: Bearer {token}` in its metadata.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    req
}

/// Writes a request head that promises a body, and part of the body: the
/// server holds it in flight, reading, until the rest comes or its
/// deadline passes.
pub async fn slow_request(addr: &str, path: &str, body: &[u8]) -> tokio::net::TcpStream {
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.expect("head");
    sock.write_all(&body[..body.len() / 2]).await.expect("half a body");
    sock
}

/// Reads one HTTP/1.1 answer's status line and body (the server closes
/// or answers with a length; this reads until the body is complete).
pub async fn read_answer(sock: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), sock.read(&mut chunk))
            .await
            .expect("an answer within 60 s")
            .expect("read");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse::<usize>().ok());
            if n == 0 || len.is_some_and(|l| body.len() >= l) {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no status in {head:?}"));
                return (status, body.to_string());
            }
        }
        assert!(n > 0, "the connection closed before an answer: {text:?}");
    }
}

/// A test certificate authority and a leaf certificate it signed for
/// `localhost` and `127.0.0.1`, made in `dir` with the `openssl` program
/// (files named after `tag`): the authority's PEM, and the paths of the
/// leaf's certificate and key files, as `sf-serve --tls-cert/--tls-key`
/// take them.
pub fn make_certificate(dir: &Path, tag: &str) -> (Vec<u8>, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(format!("{tag}-{name}"));
    let run = |args: &[String]| {
        let out = Command::new("openssl").args(args).output().expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("key.pem"),
        p("leaf.csr"),
        p("cert.pem"),
        p("leaf.ext"),
    );
    let words = |text: &str| -> Vec<String> { text.split_whitespace().map(str::to_string).collect() };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let mut args = words(&format!(
        "req -x509 {ec} -keyout {} -out {} -days 2",
        ca_key.display(),
        ca.display()
    ));
    args.extend(["-subj".to_string(), format!("/CN=ShardForge test authority {tag}")]);
    run(&args);
    run(&words(&format!(
        "req {ec} -keyout {} -out {} -subj /CN=localhost",
        key.display(),
        csr.display()
    )));
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions file");
    run(&words(&format!(
        "x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -out {} -days 2 -extfile {}",
        csr.display(),
        ca.display(),
        ca_key.display(),
        cert.display(),
        ext.display()
    )));
    (std::fs::read(&ca).expect("CA file"), cert, key)
}

/// A client of the gRPC service at `addr` (`127.0.0.1:PORT`) over TLS,
/// trusting only the authority `ca_pem` and checking the server's name as
/// `localhost`; the error of the connection (a refused certificate) as text.
pub async fn grpc_tls_client(addr: &str, ca_pem: &[u8]) -> Result<LookupClient<tonic::transport::Channel>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let addr = addr.to_string();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, addr) = (connector.clone(), addr.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    Ok(LookupClient::new(channel))
}

/// An HTTP client trusting only the authority `ca_pem`, HTTPS only.
pub fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).expect("CA PEM"))
        .https_only(true)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}
