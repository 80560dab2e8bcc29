//! A real Ballista cluster for tests: `deploy/local/start-cluster.sh`
//! starts one `sf-scheduler` and N `sf-executor` processes on 127.0.0.1,
//! and [`LocalCluster`] stops them again when dropped, panics included.
//!
//! The processes inherit the test's environment, so executors reach the
//! S3 test server the same way the tests do (`AWS_ENDPOINT`, keys, ...).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use sf_manifest::StorageOptions;

use crate::writer_support::{binary, list_keys};

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Executors to start.
    pub executors: usize,
    /// Task slots per executor.
    pub concurrent_tasks: usize,
    /// Extra `sf-scheduler` arguments.
    pub scheduler_args: Vec<String>,
    /// Extra arguments for every `sf-executor`.
    pub executor_args: Vec<String>,
    /// Environment of the scheduler and executors, besides the test's
    /// (e.g. `AWS_ENDPOINT` of a fault proxy).
    pub env: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            executors: 2,
            concurrent_tasks: 2,
            scheduler_args: vec![],
            executor_args: vec![],
            env: vec![],
        }
    }
}

/// One scheduler and its executors, stopped on drop.
#[derive(Debug)]
pub struct LocalCluster {
    dir: tempfile::TempDir,
    url: String,
    scheduler_pid: u32,
    executor_pids: Vec<u32>,
    /// Executors started by [`start_executor`](Self::start_executor):
    /// children of this process, reaped here.
    own: Vec<Child>,
    stopped: bool,
}

fn deploy_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/local")
        .join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl LocalCluster {
    /// Starts a cluster with the project's debug binaries and waits until
    /// every executor has registered (the script's own wait is bounded).
    pub fn start(options: &ClusterOptions) -> LocalCluster {
        let dir = tempfile::Builder::new()
            .prefix("sf-cluster-")
            .tempdir()
            .expect("run folder");
        let bin_dir = binary("sf-scheduler").parent().expect("binary folder").to_path_buf();
        assert!(binary("sf-executor").exists());
        let mut cmd = Command::new(deploy_script("start-cluster.sh"));
        cmd.arg("--dir")
            .arg(dir.path())
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--executors")
            .arg(options.executors.to_string())
            .arg("--concurrent-tasks")
            .arg(options.concurrent_tasks.to_string())
            .arg("--timeout")
            .arg("90");
        for a in &options.scheduler_args {
            cmd.arg(format!("--scheduler-arg={a}"));
        }
        for a in &options.executor_args {
            cmd.arg(format!("--executor-arg={a}"));
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run start-cluster.sh");
        assert!(
            out.status.success(),
            "start-cluster.sh failed ({}):\n{}",
            out.status,
            text(&out.stderr)
        );
        let env = read_env(&dir.path().join("cluster.env"));
        let pids = |s: &str| -> Vec<u32> {
            s.trim_matches('"')
                .split_whitespace()
                .map(|p| p.parse().expect("pid"))
                .collect()
        };
        let cluster = LocalCluster {
            url: env["SF_CLUSTER_URL"].clone(),
            scheduler_pid: env["SF_SCHEDULER_PID"].parse().expect("scheduler pid"),
            executor_pids: pids(&env["SF_EXECUTOR_PIDS"]),
            dir,
            own: Vec::new(),
            stopped: false,
        };
        assert_eq!(
            cluster.url.trim(),
            text(&out.stdout).trim(),
            "the script prints the URL"
        );
        assert_eq!(cluster.executor_pids.len(), options.executors);
        cluster
    }

    /// Runs `sf-write --config job --cluster URL --json` on this cluster
    /// within `bound`, asserts it succeeded and returns its summary.
    pub fn sf_write_json(&self, job: &Path, bound: Duration) -> serde_json::Value {
        let out = run_bounded(
            Command::new(binary("sf-write")).arg("--config").arg(job).args([
                "--cluster",
                self.url(),
                "--json",
                "--progress",
                "off",
            ]),
            bound,
            "sf-write on the cluster",
        );
        assert!(
            out.status.success(),
            "sf-write --cluster failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("--json summary: {e}: {stdout}"))
    }

    /// Starts one more `sf-executor` against the scheduler, as
    /// `start-cluster.sh` starts them (`concurrent_tasks` slots, `args`),
    /// with `env` added to its environment (a fail point, say), and waits
    /// until the scheduler lists it. Its output goes to a log in the run
    /// folder ([`executor_log`](Self::executor_log)); it is stopped with
    /// the rest.
    pub fn start_executor(&mut self, concurrent_tasks: usize, args: &[&str], env: &[(&str, &str)]) -> u32 {
        let n = self.executor_pids.len() + 1;
        let work = self.dir.path().join(format!("executor-{n}"));
        std::fs::create_dir_all(&work).expect("executor work folder");
        let log = std::fs::File::create(self.executor_log(n - 1)).expect("executor log");
        let mut cmd = Command::new(binary("sf-executor"));
        cmd.args([
            "--scheduler",
            &self.url,
            "--bind-host",
            "127.0.0.1",
            "--external-host",
            "127.0.0.1",
        ])
        .args([
            "--port",
            &free_port().to_string(),
            "--grpc-port",
            &free_port().to_string(),
        ])
        .arg("--work-dir")
        .arg(&work)
        .args(["--concurrent-tasks", &concurrent_tasks.to_string()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start sf-executor");
        let pid = child.id();
        self.own.push(child);
        self.executor_pids.push(pid);
        let state = self.dir.path().join("scheduler-state.json");
        let started = Instant::now();
        loop {
            let listed = std::fs::read_to_string(&state)
                .unwrap_or_default()
                .matches("\"id\":")
                .count();
            if listed >= self.executor_pids.len() {
                return pid;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "executor {n} did not register within 90 s:\n{}",
                self.log_tails()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log of executor `i` (0-based, in start order): its stdout and
    /// stderr.
    pub fn executor_log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("executor-{}.log", i + 1))
    }

    /// The scheduler's log: its stdout and stderr.
    pub fn scheduler_log(&self) -> PathBuf {
        self.dir.path().join("scheduler.log")
    }

    /// `df://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Process ids of the executors, in start order.
    pub fn executor_pids(&self) -> &[u32] {
        &self.executor_pids
    }

    /// The scheduler's process id.
    pub fn scheduler_pid(&self) -> u32 {
        self.scheduler_pid
    }

    /// Kills executor `i` (0-based) with SIGKILL: no goodbye to the scheduler.
    pub fn kill_executor(&mut self, i: usize) {
        let pid = self.executor_pids[i];
        if let Some(child) = self.own.iter_mut().find(|c| c.id() == pid) {
            child.kill().expect("kill sf-executor");
            child.wait().expect("reap sf-executor");
            return;
        }
        let status = Command::new("kill")
            .args(["-KILL", &self.executor_pids[i].to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {}", self.executor_pids[i]);
    }

    /// The scheduler's and executors' logs, last lines of each.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        for p in logs {
            let body = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = body.lines().collect();
            out.push_str(&format!("--- {} ---\n", p.display()));
            for l in &lines[lines.len().saturating_sub(40)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Stops every process of the cluster (the script's wait is bounded).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for child in &mut self.own {
            let _ = child.kill();
            let _ = child.wait();
        }
        let out = Command::new(deploy_script("stop-cluster.sh"))
            .arg("--dir")
            .arg(self.dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("stop-cluster.sh failed: {}", text(&o.stderr)),
            Err(e) => eprintln!("cannot run stop-cluster.sh: {e}"),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster logs of the failed test:\n{}", self.log_tails());
        }
        self.stop();
    }
}

fn read_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").port()
}

/// Waits for `child` to exit, polling; kills it and panics after `bound`.
pub fn wait_bounded(child: &mut Child, bound: Duration, what: &str) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return status;
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` to completion with a bound, capturing its output in files
/// (so a full pipe can never stall it).
pub fn run_bounded(cmd: &mut Command, bound: Duration, what: &str) -> Output {
    let dir = tempfile::tempdir().expect("tmp");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let status = wait_bounded(&mut child, bound, what);
    Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    }
}

/// Copies a local file to `url` (any store URL, e.g. on the S3 test server).
pub async fn upload(local: &Path, url: &str) {
    let loc = sf_manifest::resolve(url, &StorageOptions::new()).expect("resolve upload URL");
    let bytes = std::fs::read(local).expect("read file to upload");
    loc.store
        .put(&loc.path, bytes.into())
        .await
        .unwrap_or_else(|e| panic!("uploading to {url}: {e}"));
}

/// One attempt claim marker (`_claim.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Key of the attempt folder, relative to the snapshot prefix.
    pub attempt_key: String,
    /// The shard.
    pub db_id: u32,
    /// Process that claimed it.
    pub pid: u32,
    /// Engine task id, when the engine gave one.
    pub task_attempt_id: Option<i64>,
}

/// Every claim marker under `prefix` (all runs), sorted by key.
pub async fn claims(prefix: &str) -> Vec<Claim> {
    let root = sf_manifest::resolve(prefix, &StorageOptions::new()).expect("resolve prefix");
    let mut out = vec![];
    for key in list_keys(prefix).await {
        let Some(attempt_key) = key.strip_suffix("/_claim.json") else {
            continue;
        };
        let loc = root.child(&key);
        // A claim seen in a listing may be gone by now (a deleted loser).
        let Ok(got) = loc.store.get(&loc.path).await else {
            continue;
        };
        let body = got.bytes().await.expect("claim body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("claim JSON");
        out.push(Claim {
            attempt_key: attempt_key.to_string(),
            db_id: v["db_id"].as_u64().expect("db_id") as u32,
            pid: v["pid"].as_u64().expect("pid") as u32,
            task_attempt_id: v["task_attempt_id"].as_i64(),
        });
    }
    out
}
