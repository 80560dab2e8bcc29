//! `sf-executor`: a Ballista executor with ShardForge's extension.
//!
//! It registers with the scheduler, runs shard tasks, keeps shuffle files
//! and shard staging under its work folder, and reads and writes object
//! storage with its own credentials (`AWS_*`, `GOOGLE_*`, `AZURE_*` in its
//! environment): plans carry no credentials. It counts its tasks
//! (running, ended, failures by kind: [`crate::metrics`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use sf_writer::{Error, Result};

use crate::engine::SchedulerUrl;
use crate::process::default_external_host;
use crate::register::register;

/// What an `sf-executor` process runs with (its command-line flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorSettings {
    /// The scheduler to join (`df://host:port`).
    pub scheduler: String,
    /// Address to listen on (0.0.0.0 in containers).
    pub bind_host: String,
    /// Host name the scheduler, other executors and clients use to reach
    /// this executor (default: the bind host, or localhost when binding
    /// every interface).
    pub external_host: Option<String>,
    /// Port of the Arrow Flight service that serves shuffle and result data.
    pub port: u16,
    /// Port of the gRPC service the scheduler launches tasks through.
    pub grpc_port: u16,
    /// Tasks run at once (0: the number of cores).
    pub concurrent_tasks: usize,
    /// Folder for shuffle files, spills and shard staging (default: a new
    /// folder in the system temp folder, removed at exit).
    pub work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_interval_secs: u64,
    /// How long to keep trying to reach the scheduler at start-up, in seconds.
    pub scheduler_connect_timeout_secs: u16,
    /// Run as a stock Ballista executor, without ShardForge's codecs,
    /// storage and task ids (to test what a cluster does with one).
    pub without_extension: bool,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        ExecutorSettings {
            scheduler: "df://127.0.0.1:50050".into(),
            bind_host: "127.0.0.1".into(),
            external_host: None,
            port: 50051,
            grpc_port: 50052,
            concurrent_tasks: 0,
            work_dir: None,
            heartbeat_interval_secs: 5,
            scheduler_connect_timeout_secs: 60,
            without_extension: false,
        }
    }
}

impl ExecutorSettings {
    /// The Ballista executor configuration (with ShardForge's extension
    /// unless `--without-extension`), working in `work_dir`.
    pub fn config(&self, work_dir: &std::path::Path) -> Result<ExecutorProcessConfig> {
        let scheduler = SchedulerUrl::parse(&self.scheduler).map_err(|e| match e {
            Error::Config { reason, .. } => Error::config("--scheduler", reason),
            other => other,
        })?;
        let work_dir = work_dir
            .to_str()
            .ok_or_else(|| Error::config("--work-dir", "must be a UTF-8 path"))?
            .to_string();
        let config = ExecutorProcessConfig {
            bind_host: self.bind_host.clone(),
            external_host: Some(
                self.external_host
                    .clone()
                    .unwrap_or_else(|| default_external_host(&self.bind_host)),
            ),
            port: self.port,
            grpc_port: self.grpc_port,
            scheduler_host: scheduler.host().to_string(),
            scheduler_port: scheduler.port(),
            scheduler_connect_timeout_seconds: self.scheduler_connect_timeout_secs.max(1),
            concurrent_tasks: self.concurrent_tasks,
            work_dir: Some(work_dir),
            executor_heartbeat_interval_seconds: self.heartbeat_interval_secs.max(1),
            ..ExecutorProcessConfig::default()
        };
        Ok(if self.without_extension {
            config
        } else {
            register(config)
        })
    }
}

/// Runs the executor until it is stopped (Ctrl-C, SIGTERM, or the
/// scheduler telling it to).
pub async fn run(args: ExecutorSettings) -> Result<()> {
    // A work folder of our own when none is given, so shuffle files and
    // shard staging share it and it goes away with the process.
    let temp = match &args.work_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("sf-executor-")
                .tempdir()
                .map_err(|e| Error::io("creating a work folder", e))?,
        ),
    };
    let work_dir = match (&args.work_dir, &temp) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            dir.clone()
        }
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => return Err(Error::Internal("no work folder".into())),
    };
    let config = args.config(&work_dir)?;
    crate::metrics::register_executor_series();
    tracing::info!(
        "sf-executor {} joining {} ({}{})",
        env!("CARGO_PKG_VERSION"),
        args.scheduler,
        work_dir.display(),
        if args.without_extension {
            ", WITHOUT ShardForge's extension"
        } else {
            ""
        }
    );
    // Ballista 52 registers with the scheduler before its own gRPC server
    // listens, and the scheduler calls that server back during the
    // registration; when it is not up yet, the registration fails and the
    // executor gives up (a known race: "the executor registration should
    // happen only after the executor grpc server started"). The failed
    // start releases everything it took, so starting again is safe.
    let config = Arc::new(config);
    let mut retries = 0u64;
    loop {
        match start_executor_process(Arc::clone(&config)).await {
            Ok(()) => return Ok(()),
            Err(e) if retries < REGISTRATION_RETRIES && e.to_string().to_lowercase().contains("registration") => {
                retries += 1;
                tracing::warn!(
                    "registering with the scheduler failed ({e}); starting again ({retries}/{REGISTRATION_RETRIES})"
                );
                tokio::time::sleep(Duration::from_millis(300 * retries)).await;
            }
            Err(e) => return Err(Error::engine(format!("executor: {e}"))),
        }
    }
}

/// Start-ups retried after a failed registration.
const REGISTRATION_RETRIES: u64 = 5;
