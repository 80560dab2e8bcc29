//! `sf-scheduler` and `sf-executor`: the command lines of ShardForge's
//! Ballista processes. What the processes do is `sf_executor`'s;
//! here are only their flags and help, and the `/metrics` listener
//! (`--metrics-listen`) that serves what they count
//! (`sf_executor::metrics`) in Prometheus' text format.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use sf_executor::executor_process::ExecutorSettings;
use sf_executor::scheduler_process::{Distribution, SchedulerSettings};

use crate::exit::{self, EXIT_CODES, Failure};

/// `--task-distribution`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DistributionArg {
    /// One task per executor in turn (recommended with one scheduler).
    RoundRobin,
    /// Fill each executor's free slots before the next one.
    Bias,
}

/// `sf-scheduler` arguments.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sf-scheduler",
    version,
    about = "Ballista scheduler for ShardForge builds (sf-write --cluster df://HOST:PORT).",
    after_long_help = EXIT_CODES
)]
pub struct SchedulerArgs {
    /// Address to listen on (0.0.0.0 in containers).
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub bind_host: String,

    /// Port to listen on (gRPC for clients and executors).
    #[arg(long, short = 'p', default_value_t = 50050, value_name = "PORT")]
    pub bind_port: u16,

    /// Host name executors use to report back to this scheduler (default:
    /// the bind host, or localhost when binding every interface).
    #[arg(long, value_name = "HOST")]
    pub external_host: Option<String>,

    /// Seconds without a heartbeat after which an executor is lost and its
    /// tasks run elsewhere.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub executor_timeout_secs: u64,

    /// How often to look for lost executors, in seconds.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub expire_check_secs: u64,

    /// How tasks are spread over executors.
    #[arg(long, value_enum, default_value_t = DistributionArg::RoundRobin)]
    pub task_distribution: DistributionArg,

    /// Seconds after a job ends before executors delete its shuffle files.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub job_data_cleanup_secs: u64,

    /// While jobs run, offer waiting tasks to free executor slots this
    /// often, in seconds (0: only on Ballista's own events). Ballista 52
    /// offers tasks reset by a lost executor only on its next scheduling
    /// event; this makes one.
    #[arg(long, default_value_t = 2, value_name = "SECS")]
    pub revive_interval_secs: u64,

    /// Fail running jobs, naming the cause, when no executor has been
    /// registered for this many seconds (0: wait for executors for ever,
    /// as Ballista does). A build whose executors all died then exits 5
    /// instead of waiting.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub lost_cluster_grace_secs: u64,

    /// Write the registered executors to this JSON file every second.
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,

    /// Serve Prometheus metrics (jobs ended, tasks running and pending,
    /// executors alive) at /metrics on this address: plain HTTP, no token,
    /// nothing else on it (default: no metrics listener).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,

    /// Log filter (e.g. `info`, `ballista_scheduler=debug`); RUST_LOG works too.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    #[command(flatten)]
    pub common: crate::run::CommonArgs,
}

impl From<SchedulerArgs> for SchedulerSettings {
    fn from(a: SchedulerArgs) -> Self {
        SchedulerSettings {
            bind_host: a.bind_host,
            bind_port: a.bind_port,
            external_host: a.external_host,
            executor_timeout_secs: a.executor_timeout_secs,
            expire_check_secs: a.expire_check_secs,
            task_distribution: match a.task_distribution {
                DistributionArg::RoundRobin => Distribution::RoundRobin,
                DistributionArg::Bias => Distribution::Bias,
            },
            job_data_cleanup_secs: a.job_data_cleanup_secs,
            revive_interval_secs: a.revive_interval_secs,
            lost_cluster_grace_secs: a.lost_cluster_grace_secs,
            state_file: a.state_file,
        }
    }
}

/// `sf-executor` arguments.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sf-executor",
    version,
    about = "Ballista executor for ShardForge builds; joins an sf-scheduler.",
    after_long_help = EXIT_CODES
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

    /// Serve Prometheus metrics (tasks running, tasks ended, failures by
    /// kind) at /metrics on this address: plain HTTP, no token, nothing
    /// else on it (default: no metrics listener).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,

    /// Log filter (e.g. `info`, `ballista_executor=debug`); RUST_LOG works too.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,

    #[command(flatten)]
    pub common: crate::run::CommonArgs,

    /// Run as a stock Ballista executor, without ShardForge's codecs,
    /// storage and task ids. For testing what a cluster does with an
    /// executor that lacks the extension; never needed otherwise.
    #[arg(long)]
    pub without_extension: bool,
}

impl From<ExecutorArgs> for ExecutorSettings {
    fn from(a: ExecutorArgs) -> Self {
        ExecutorSettings {
            scheduler: a.scheduler,
            bind_host: a.bind_host,
            external_host: a.external_host,
            port: a.port,
            grpc_port: a.grpc_port,
            concurrent_tasks: a.concurrent_tasks,
            work_dir: a.work_dir,
            heartbeat_interval_secs: a.heartbeat_interval_secs,
            scheduler_connect_timeout_secs: a.scheduler_connect_timeout_secs,
            without_extension: a.without_extension,
        }
    }
}

/// Runs `sf-scheduler` with the process's arguments, until Ctrl-C or SIGTERM.
pub fn scheduler_main() -> ExitCode {
    let args: SchedulerArgs = crate::run::parse();
    crate::run::init_logging(args.log.as_deref(), "info", args.common.log_format);
    crate::run::exit_code(crate::run::run_cli("sf-scheduler", async move {
        let metrics = serve_metrics(args.metrics_listen.as_deref()).await?;
        let outcome = sf_executor::scheduler_process::run(args.into()).await;
        if let Some(m) = metrics {
            m.abort();
        }
        outcome?;
        Ok(exit::OK)
    }))
}

/// Runs `sf-executor` with the process's arguments, until it is stopped.
pub fn executor_main() -> ExitCode {
    let args: ExecutorArgs = crate::run::parse();
    crate::run::init_logging(args.log.as_deref(), "info", args.common.log_format);
    crate::run::exit_code(crate::run::run_cli("sf-executor", async move {
        let metrics = serve_metrics(args.metrics_listen.as_deref()).await?;
        let outcome = sf_executor::executor_process::run(args.into()).await;
        if let Some(m) = metrics {
            m.abort();
        }
        outcome?;
        Ok(exit::OK)
    }))
}

/// With `--metrics-listen ADDR`: installs the Prometheus recorder, binds
/// `addr` (a bind failure is a configuration error, before the process
/// does anything else) and serves `/metrics` there in the background.
async fn serve_metrics(addr: Option<&str>) -> Result<Option<tokio::task::JoinHandle<()>>, Failure> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let handle = sf_server::install_prometheus()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| sf_server::Error::Bind {
            what: "metrics",
            addr: addr.to_string(),
            source,
        })?;
    match listener.local_addr() {
        Ok(bound) => tracing::info!("metrics listening on http://{bound}"),
        Err(e) => tracing::warn!("metrics listening on {addr} (its bound address is unknown: {e})"),
    }
    let render = move || {
        let handle = handle.clone();
        async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(render));
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics listener failed: {e}");
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_the_settings_defaults() {
        let s: SchedulerSettings = SchedulerArgs::parse_from(["sf-scheduler"]).into();
        assert_eq!(s, SchedulerSettings::default());
        let e: ExecutorSettings = ExecutorArgs::parse_from(["sf-executor"]).into();
        assert_eq!(e, ExecutorSettings::default());
    }
}
