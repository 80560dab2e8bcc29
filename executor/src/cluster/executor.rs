//! `sf-executor`: a Ballista executor with ShardForge's extension.
//!
//! It registers with the scheduler, runs shard tasks, keeps shuffle files
//! and shard staging under its work folder, and reads and writes object
//! storage with its own credentials (`AWS_*`, `GOOGLE_*`, `AZURE_*` in its
//! environment): plans carry no credentials.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use clap::Parser;
use sf_writer::{Error, Result};

use super::engine::SchedulerUrl;
use super::process::{block_on, default_external_host, init_logging};
use super::register;

/// `sf-executor` arguments.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sf-executor",
    version,
    about = "Ballista executor for ShardForge builds; joins an sf-scheduler."
)]
pub struct ExecutorArgs {
    /// The scheduler to join.
    #[arg(long, default_value = "df://127.0.0.1:50050", value_name = "URL")]
    pub scheduler: String,

    /// Address to listen on (0.0.0.0 in containers).
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub bind_host: String,

    /// Host name the scheduler, other executors and clients use to reach
    /// this executor (default: the bind host, or localhost when binding
    /// every interface).
    #[arg(long, value_name = "HOST")]
    pub external_host: Option<String>,

    /// Port of the Arrow Flight service that serves shuffle and result data.
    #[arg(long, short = 'p', default_value_t = 50051, value_name = "PORT")]
    pub port: u16,

    /// Port of the gRPC service the scheduler launches tasks through.
    #[arg(long, default_value_t = 50052, value_name = "PORT")]
    pub grpc_port: u16,

    /// Tasks run at once (default: the number of cores).
    #[arg(long, short = 'c', default_value_t = 0, value_name = "N")]
    pub concurrent_tasks: usize,

    /// Folder for shuffle files, spills and shard staging (default: a new
    /// folder in the system temp folder, removed at exit).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// Seconds between heartbeats to the scheduler.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub heartbeat_interval_secs: u64,

    /// How long to keep trying to reach the scheduler at start-up, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub scheduler_connect_timeout_secs: u16,

    /// Log filter (e.g. `info`, `ballista_executor=debug`); RUST_LOG works too.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,

    /// Run as a stock Ballista executor, without ShardForge's codecs,
    /// storage and task ids. For testing what a cluster does with an
    /// executor that lacks the extension; never needed otherwise.
    #[arg(long)]
    pub without_extension: bool,
}

impl ExecutorArgs {
    /// The Ballista executor configuration (with ShardForge's extension
    /// unless `--without-extension`), working in `work_dir`.
    pub fn config(&self, work_dir: &std::path::Path) -> Result<ExecutorProcessConfig> {
        let scheduler = SchedulerUrl::parse(&self.scheduler).map_err(|e| match e {
            Error::Config { message, .. } => Error::config("--scheduler", message),
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

/// Runs `sf-executor` with the process's arguments.
pub fn main() -> ExitCode {
    let args = ExecutorArgs::parse();
    init_logging(args.log.as_deref(), "info");
    block_on("sf-executor", run(args))
}

/// Runs the executor until it is stopped (Ctrl-C, SIGTERM, or the
/// scheduler telling it to).
pub async fn run(args: ExecutorArgs) -> Result<()> {
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
            Err(e) => return Err(Error::Engine(format!("executor: {e}"))),
        }
    }
}

/// Start-ups retried after a failed registration.
const REGISTRATION_RETRIES: u64 = 5;
