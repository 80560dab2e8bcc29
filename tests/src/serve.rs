//! The real `sf-serve` binary as a child process on 127.0.0.1, for tests
//! and the serving benchmark: started with port 0, its bound addresses
//! read from the lines it prints, stopped (SIGTERM, or killed when a test
//! fails) by whoever started it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::cluster::wait_bounded;
use crate::writer_support::binary;

/// A running `sf-serve`.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// `http://127.0.0.1:PORT` of the gRPC service, when started with one.
    pub grpc: Option<String>,
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
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new(binary("sf-serve"));
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
        // asked for by flag or config file) before `listening on`.
        let mut http = None;
        let mut grpc = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while http.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening on ") {
                        http = Some(a.to_string());
                    } else if let Some(a) = line.strip_prefix("grpc listening on ") {
                        grpc = Some(a.to_string());
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
        assert!(http.starts_with("http://127.0.0.1:"), "{http}");
        ServeProcess {
            child,
            http,
            grpc,
            stderr,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// The `127.0.0.1:PORT` of the HTTP API.
    pub fn addr(&self) -> String {
        self.http.trim_start_matches("http://").to_string()
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
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
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
pub fn parse_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
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
pub fn metric(samples: &std::collections::BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}
