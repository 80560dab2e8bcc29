//! Scheduled builds as a scheduler runs them: job folders, the real
//! `sf-write` process (paused and killed at fail points for the crash
//! windows), and checks of what storage holds afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sf_manifest::{Key, ManifestStore, RunStatus, Timestamp, publish::gc};
use sf_reader::{Pin, ReaderSettings, SqliteMode};

use crate::writer_support::{binary, short_storage_retries};
use crate::{manifest_store, readers};

/// A job folder: a CSV input of `id,v` rows and a job file writing it to
/// `prefix` as run `run_id`.
#[derive(Debug)]
pub struct JobDir {
    dir: tempfile::TempDir,
    /// The snapshot prefix.
    pub prefix: String,
}

impl JobDir {
    /// A folder for jobs writing to `prefix`.
    pub fn new(prefix: &str) -> Self {
        JobDir {
            dir: tempfile::tempdir().expect("job folder"),
            prefix: prefix.to_string(),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `input.csv` with ids `0..rows`, values `<tag>:<id>`.
    pub fn input(&self, rows: u64, tag: &str) {
        let mut s = String::from("id,v\n");
        for i in 0..rows {
            s.push_str(&format!("{i},{tag}:{i}\n"));
        }
        std::fs::write(self.path().join("input.csv"), s).expect("input");
    }

    /// Writes `job.toml`: the input, 2 shards, run `run_id`, a short run
    /// lease (3 s) and no shard retries, plus `extra` TOML (sections of
    /// its own, e.g. `[validate]`), and storage retries kept short on S3.
    pub fn job(&self, run_id: &str, extra: &str) -> PathBuf {
        let storage = short_storage_retries(&self.prefix);
        let text = format!(
            "key_col = \"id\"\n[input]\nformat = \"csv\"\npath = \"input.csv\"\n[value]\nbinary_col = \"v\"\n\
             [routing]\nnum_dbs = 2\n[output]\nprefix = \"{}\"\nrun_id = \"{run_id}\"\n\
             [write]\nrun_lease_secs = 3\nshard_retries = 0\n{storage}{extra}",
            self.prefix
        );
        let path = self.path().join("job.toml");
        std::fs::write(&path, text).expect("job file");
        path
    }

    /// Runs `sf-write --config job.toml` with `args` and `env`, to the end.
    pub fn sf_write(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(binary("sf-write"));
        cmd.args(["--config", "job.toml", "--progress", "off"])
            .args(args)
            .current_dir(self.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run sf-write")
    }

    /// Starts `sf-write` paused at fail point `point` and returns once it
    /// has reached it (it prints so on stderr); panics if it ends first or
    /// does not get there within a few minutes.
    pub fn sf_write_paused_at(&self, point: &str, args: &[&str]) -> Paused {
        let mut child = Command::new(binary("sf-write"))
            .args(["--config", "job.toml", "--progress", "off"])
            .args(args)
            .current_dir(self.path())
            .env(sf_manifest::publish::failpoint::ENV, format!("{point}=pause"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sf-write");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let marker = format!("sf-failpoint: paused at {point}");
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains(&marker) => break,
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "sf-write ended ({status}) before fail point {point}: {}",
                            seen.join("\n")
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "sf-write did not reach fail point {point}: {}",
                        seen.join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait");
                    panic!(
                        "sf-write ended ({status}) before fail point {point}: {}",
                        seen.join("\n")
                    );
                }
            }
        }
        Paused { child }
    }
}

/// An `sf-write` process stopped at a fail point.
#[derive(Debug)]
pub struct Paused {
    child: Child,
}

impl Paused {
    /// Kills it (SIGKILL: no clean-up of any kind runs) and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("kill sf-write");
        self.child.wait().expect("reap sf-write");
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The run `_CURRENT` names, if any.
pub async fn current_run(prefix: &str) -> Option<String> {
    manifest_store(prefix)
        .load_current()
        .await
        .expect("read _CURRENT")
        .map(|c| c.pointer.run_id.as_str().to_string())
}

/// Every manifest of the history, read whole through the reader pinned to
/// it: `(run id, every key's value)`, newest first. Panics if any manifest
/// does not read (a missing or damaged shard).
pub async fn read_history(prefix: &str, keys: u64) -> Vec<(String, BTreeMap<u64, String>)> {
    let history = manifest_store(prefix).history().await.expect("history");
    let cache = tempfile::tempdir().expect("cache");
    let mut out = Vec::new();
    for h in history {
        let settings = ReaderSettings {
            pin: Pin::Ref(h.manifest_ref.clone()),
            ..readers::settings(SqliteMode::Auto, cache.path())
        };
        let reader = readers::try_open(prefix, settings)
            .await
            .unwrap_or_else(|e| panic!("manifest {} does not open: {e}", h.manifest_ref));
        // Parsed by the snapshot's own key encoding (an empty snapshot may
        // have another).
        let all: Vec<Key> = (0..keys)
            .map(|k| reader.parse_key(&k.to_string()).expect("a key"))
            .collect();
        let values = reader
            .multi_get(&all)
            .await
            .unwrap_or_else(|e| panic!("manifest {} does not read: {e}", h.manifest_ref));
        let mut got = BTreeMap::new();
        for (k, v) in (0..keys).zip(values) {
            if let Some(v) = v {
                got.insert(k, String::from_utf8_lossy(&v).into_owned());
            }
        }
        reader.close();
        out.push((h.run_id.as_str().to_string(), got));
    }
    out
}

/// Asserts the history's manifests each read all `keys` with values of
/// their own run's tag (`<run>:<id>`).
pub async fn assert_history_reads(prefix: &str, keys: u64) {
    for (run, values) in read_history(prefix, keys).await {
        assert_eq!(values.len() as u64, keys, "run {run}: every key reads");
        for (k, v) in values {
            assert_eq!(v, format!("{run}:{k}"), "run {run}, key {k}");
        }
    }
}

/// Attempt folders on storage, as `shards/run_id=R/db=N/attempt=A` keys.
pub async fn attempt_folders(prefix: &str) -> BTreeSet<String> {
    gc::list_attempts(&manifest_store(prefix), None)
        .await
        .expect("list attempts")
        .into_iter()
        .map(|a| a.key)
        .collect()
}

/// Attempt folders on storage with the build that claimed each (the
/// `build_id` of its `_claim.json`; empty when it has no readable claim).
pub async fn attempt_builds(prefix: &str) -> BTreeMap<String, String> {
    let store = manifest_store(prefix);
    let mut out = BTreeMap::new();
    for key in attempt_folders(prefix).await {
        let claim = store
            .location()
            .child(&format!("{key}/{}", sf_manifest::format::layout::CLAIM_FILE));
        let build = match claim.store.get(&claim.path).await {
            Ok(got) => {
                let body = got.bytes().await.expect("claim body");
                let v: serde_json::Value = serde_json::from_slice(&body).expect("claim JSON");
                v["build_id"].as_str().unwrap_or_default().to_string()
            }
            Err(_) => String::new(),
        };
        out.insert(key, build);
    }
    out
}

/// Attempt folders the manifests of the history reference.
pub async fn referenced_folders(prefix: &str) -> BTreeSet<String> {
    let s = manifest_store(prefix);
    let mut out = BTreeSet::new();
    for h in s.history().await.expect("history") {
        let m = s.load_manifest(&h.manifest_ref).await.expect("manifest");
        for row in &m.shards {
            if let Some(url) = &row.db_url {
                let key =
                    sf_manifest::format::layout::locate(s.prefix_url(), Some(&m.build.s3_prefix), url).expect("locate");
                out.insert(key.trim_end_matches('/').to_string());
            }
        }
    }
    out
}

/// Waits until no `running` record of `run` holds a live lease (a killed
/// build's lease runs out): at most a minute, then panics.
pub async fn wait_for_leases(prefix: &str, run: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = Timestamp::now();
        let live = manifest_store(prefix)
            .list_run_records()
            .await
            .expect("run records")
            .into_iter()
            .any(|(_, r)| r.run_id.as_str() == run && r.status == RunStatus::Running && r.lease_expires_at > now);
        if !live {
            return;
        }
        assert!(Instant::now() < deadline, "the lease of run {run} did not run out");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `sf-read` with `args` against `prefix`.
pub fn sf_read(prefix: &str, args: &[&str]) -> Output {
    Command::new(binary("sf-read"))
        .args(["--current-url", &format!("{prefix}/_CURRENT")])
        .args(args)
        .output()
        .expect("run sf-read")
}

/// Text of process output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
