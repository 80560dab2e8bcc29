//! `sf-scheduler`: a Ballista scheduler with ShardForge's extension.
//!
//! Differences from a stock Ballista scheduler, each on purpose:
//!
//! - **Extension.** Sessions plan `ShardWriteNode` with ShardForge's
//!   planner and layout rule; plans are (de)coded with ShardForge's codecs
//!   ([`register`]).
//! - **Lost executors are noticed in seconds, not minutes.** Ballista
//!   defaults to a 60 s executor heartbeat and a 180 s timeout; a shard
//!   task on an executor that died is only re-run once the scheduler
//!   declares the executor lost. ShardForge's executors beat every 5 s
//!   and this scheduler gives up on one after 30 s (checked every 5 s), so
//!   a killed executor's shards are rewritten within about half a minute.
//!   Both are flags.
//! - **Tasks spread round-robin.** With one scheduler Ballista recommends
//!   it; it also puts shard writes on every executor instead of filling
//!   the first one's slots.
//! - **An executor that cannot decode a task fails the job with a reason.**
//!   A stock Ballista executor rejects ShardForge's plans when they are
//!   launched on it; Ballista would then drop the executor, take it back at
//!   its next heartbeat and launch again, for ever. Here the rejected tasks
//!   are reported failed with the executor's reason and a hint, which fails
//!   the job: `sf-write` prints why instead of waiting.
//! - **Reset tasks are offered again.** When Ballista 52 loses an executor
//!   it resets that executor's tasks, but offers them to the remaining
//!   executors only on the next scheduling event (a task finishing, an
//!   executor registering). If the survivors are idle, none comes and the
//!   job waits for ever. While jobs run, this scheduler makes one every
//!   `--revive-interval-secs` (an empty task-status update, which ends in
//!   Ballista's own offer round).
//! - **A job whose executors are all lost fails, with the reason.** Ballista
//!   keeps such a job waiting until an executor registers, which for an
//!   unattended build means for ever. When no executor has been registered
//!   for `--lost-cluster-grace-secs` while jobs run, this scheduler fails
//!   them with a reason beginning [`CLUSTER_LOST`], which `sf-write`
//!   reports as "cluster unavailable" (exit 5).
//! - **A state file** (`--state-file`) lists the registered executors,
//!   rewritten every second: deployment scripts wait on it.
//! - **Figures through the `metrics` facade** instead of Ballista's own
//!   Prometheus collector: jobs ended by outcome, tasks running and
//!   pending, executors alive ([`crate::metrics`]); `sf-scheduler
//!   --metrics-listen` serves them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::client::CLUSTER_LOST;
use async_trait::async_trait;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    ExecutionError, FailedTask, MultiTaskDefinition, TaskStatus, UpdateTaskStatusParams, failed_task, task_status,
};
use ballista_core::serde::scheduler::ExecutorMetadata;
use ballista_scheduler::cluster::{BallistaCluster, JobState};
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::start_grpc_service;
use ballista_scheduler::scheduler_server::SchedulerServer;
use ballista_scheduler::state::executor_manager::ExecutorManager;
use ballista_scheduler::state::task_manager::TaskLauncher;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use sf_writer::{Error, Result};

use crate::metrics::{JobsCollector, sample_scheduler};
use crate::process::{default_external_host, stop_requested};
use crate::register::register;

/// How tasks are spread over executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Distribution {
    #[default]
    /// One task per executor in turn (recommended with one scheduler).
    RoundRobin,
    /// Fill each executor's free slots before the next one.
    Bias,
}

/// What an `sf-scheduler` process runs with (its command-line flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerSettings {
    /// Address to listen on (0.0.0.0 in containers).
    pub bind_host: String,
    /// Port to listen on (gRPC for clients and executors).
    pub bind_port: u16,
    /// Host name executors use to report back (default: the bind host, or
    /// localhost when binding every interface).
    pub external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor is lost and its
    /// tasks run elsewhere.
    pub executor_timeout_secs: u64,
    /// How often to look for lost executors, in seconds.
    pub expire_check_secs: u64,
    /// How tasks are spread over executors.
    pub task_distribution: Distribution,
    /// Seconds after a job ends before executors delete its shuffle files.
    pub job_data_cleanup_secs: u64,
    /// While jobs run, offer waiting tasks to free executor slots this
    /// often, in seconds (0: only on Ballista's own events).
    pub revive_interval_secs: u64,
    /// Fail running jobs when no executor has been registered for this
    /// many seconds (0: wait for executors for ever, as Ballista does).
    pub lost_cluster_grace_secs: u64,
    /// Write the registered executors to this JSON file every second.
    pub state_file: Option<PathBuf>,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            bind_host: "127.0.0.1".into(),
            bind_port: 50050,
            external_host: None,
            executor_timeout_secs: 30,
            expire_check_secs: 5,
            task_distribution: Distribution::RoundRobin,
            job_data_cleanup_secs: 300,
            revive_interval_secs: 2,
            lost_cluster_grace_secs: 30,
            state_file: None,
        }
    }
}

impl SchedulerSettings {
    /// The Ballista scheduler configuration, with ShardForge's extension.
    pub fn config(&self) -> SchedulerConfig {
        let config = SchedulerConfig {
            namespace: "shardforge".into(),
            external_host: self
                .external_host
                .clone()
                .unwrap_or_else(|| default_external_host(&self.bind_host)),
            bind_host: self.bind_host.clone(),
            bind_port: self.bind_port,
            task_distribution: match self.task_distribution {
                Distribution::RoundRobin => TaskDistributionPolicy::RoundRobin,
                Distribution::Bias => TaskDistributionPolicy::Bias,
            },
            finished_job_data_clean_up_interval_seconds: self.job_data_cleanup_secs,
            executor_timeout_seconds: self.executor_timeout_secs.max(1),
            expire_dead_executor_interval_seconds: self.expire_check_secs.max(1),
            ..SchedulerConfig::default()
        };
        register(config)
    }
}

/// Runs the scheduler until Ctrl-C or SIGTERM.
pub async fn run(args: SchedulerSettings) -> Result<()> {
    let addr: SocketAddr = format!("{}:{}", args.bind_host, args.bind_port)
        .parse()
        .map_err(|e| Error::config("--bind-host/--bind-port", format!("{e}")))?;
    let config = Arc::new(args.config());
    let engine = |e: ballista_core::error::BallistaError| Error::engine_caused(e.to_string(), e);
    let cluster = BallistaCluster::new_from_config(&config).await.map_err(engine)?;
    let job_state = cluster.job_state();
    let codec = BallistaCodec::new(
        config
            .override_logical_codec
            .clone()
            .ok_or_else(|| Error::Internal("the extension sets a logical codec".into()))?,
        config
            .override_physical_codec
            .clone()
            .ok_or_else(|| Error::Internal("the extension sets a physical codec".into()))?,
    );
    let connect_host = match args.bind_host.as_str() {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1".to_string(),
        h => h.to_string(),
    };
    let self_url = format!("http://{connect_host}:{}", args.bind_port);
    let launcher = Arc::new(ReportingLauncher {
        scheduler_id: config.scheduler_name(),
        self_url: self_url.clone(),
    });
    let jobs = Arc::new(JobsCollector::new());
    let mut server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode> = SchedulerServer::new_with_task_launcher(
        config.scheduler_name(),
        cluster,
        codec,
        Arc::clone(&config),
        Arc::clone(&jobs) as _,
        launcher,
    );
    server.init().await.map_err(engine)?;
    tracing::info!(
        "sf-scheduler {} listening on {addr} as {} (executor timeout {}s)",
        env!("CARGO_PKG_VERSION"),
        config.scheduler_name(),
        config.executor_timeout_seconds
    );
    let state_writer = args
        .state_file
        .clone()
        .map(|path| tokio::spawn(write_state(server.clone(), path)));
    let reviver = (args.revive_interval_secs > 0).then(|| {
        tokio::spawn(revive_offers(
            server.clone(),
            self_url,
            Duration::from_secs(args.revive_interval_secs),
        ))
    });
    let watchdog = (args.lost_cluster_grace_secs > 0).then(|| {
        tokio::spawn(fail_jobs_without_executors(
            server.clone(),
            job_state,
            jobs,
            Duration::from_secs(args.lost_cluster_grace_secs),
            config.executor_timeout_seconds,
        ))
    });
    let sampler = tokio::spawn(sample_scheduler(
        server.clone(),
        Duration::from_secs(config.executor_timeout_seconds),
    ));
    let outcome = tokio::select! {
        r = start_grpc_service(addr, server) => r.map_err(engine),
        _ = stop_requested() => {
            tracing::info!("stopping");
            Ok(())
        }
    };
    sampler.abort();
    for task in [state_writer, reviver, watchdog].into_iter().flatten() {
        task.abort();
    }
    outcome
}

/// While jobs run and no executor has been registered for `grace`, fails
/// those jobs with a reason naming the cause, instead of letting them wait
/// for an executor that may never come. A failed job is cancelled a while
/// later, once its driver has read the reason, so that its tasks are not
/// offered to an executor that registers afterwards.
async fn fail_jobs_without_executors(
    server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    job_state: Arc<dyn JobState>,
    jobs: Arc<JobsCollector>,
    grace: Duration,
    executor_timeout_secs: u64,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut empty_since: Option<tokio::time::Instant> = None;
    let mut failed: HashSet<String> = HashSet::new();
    loop {
        tick.tick().await;
        let running = server.state.task_manager.get_running_job_cache();
        failed.retain(|id| running.contains_key(id));
        if running.keys().all(|id| failed.contains(id)) {
            empty_since = None;
            continue;
        }
        let Ok(executors) = server.state.executor_manager.get_executor_state().await else {
            continue;
        };
        if !executors.is_empty() {
            empty_since = None;
            continue;
        }
        let since = *empty_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < grace {
            continue;
        }
        for (job_id, job) in running.iter() {
            if !failed.insert(job_id.clone()) {
                continue;
            }
            let reason = format!(
                "{CLUSTER_LOST}: no executor has been registered for {}s while job {job_id} ran (an executor \
                 is dropped after {executor_timeout_secs}s without a heartbeat); start executors and run the \
                 build again",
                grace.as_secs()
            );
            tracing::error!("{reason}");
            jobs.failed_here(job_id);
            // Failing the graph and saving it is what Ballista does for a
            // failed job: the save pushes the status, with the reason, to the
            // driver waiting on it.
            {
                let mut graph = job.execution_graph.write().await;
                graph.fail_job(reason);
                if let Err(e) = job_state.save_job(job_id, &graph).await {
                    tracing::warn!("could not save failed job {job_id}: {e}");
                }
            }
            let server = server.clone();
            let job_id = job_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(CANCEL_FAILED_AFTER).await;
                if let Err(e) = server.cancel_job(job_id.clone()).await {
                    tracing::warn!("could not cancel failed job {job_id}: {e}");
                }
            });
        }
    }
}

/// How long after failing a job for want of executors it is cancelled
/// too, which takes it out of the scheduler's active jobs (its driver has
/// had the failure pushed already).
const CANCEL_FAILED_AFTER: Duration = Duration::from_secs(5);

/// While jobs run, asks the scheduler every `interval` to offer waiting
/// tasks to free slots, by an empty task-status update in the name of a
/// live executor: Ballista answers every status update with an offer
/// round, and this is the only public way to ask for one.
async fn revive_offers(
    server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    self_url: String,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    let mut client = None;
    loop {
        tick.tick().await;
        if server.running_job_number() == 0 {
            continue;
        }
        let Ok(executors) = server.state.executor_manager.get_executor_state().await else {
            continue;
        };
        // The freshest heartbeat: an executor the scheduler takes as alive.
        let Some(executor_id) = executors
            .iter()
            .max_by_key(|(_, heartbeat)| *heartbeat)
            .map(|(m, _)| m.id.clone())
        else {
            continue;
        };
        if client.is_none() {
            client = SchedulerGrpcClient::connect(self_url.clone()).await.ok();
        }
        let Some(c) = client.as_mut() else {
            continue;
        };
        let nudge = UpdateTaskStatusParams {
            executor_id,
            task_status: vec![],
        };
        if let Err(e) = c.update_task_status(nudge).await {
            tracing::debug!("offer round request failed: {}", e.message());
            client = None;
        }
    }
}

/// Rewrites `path` every second with the registered executors.
async fn write_state(server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>, path: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let executors = match server.state.executor_manager.get_executor_state().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("reading executor state: {e}");
                continue;
            }
        };
        let now = Duration::from_millis(sf_manifest::format::ids::unix_millis());
        let list: Vec<serde_json::Value> = executors
            .iter()
            .map(|(m, heartbeat)| {
                serde_json::json!({
                    "id": m.id,
                    "host": m.host,
                    "port": m.port,
                    "grpc_port": m.grpc_port,
                    "task_slots": m.specification.task_slots,
                    "seconds_since_heartbeat": heartbeat.map(|h| now.saturating_sub(h).as_secs()),
                })
            })
            .collect();
        let body = serde_json::json!({ "scheduler": server.scheduler_name, "executors": list });
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, body.to_string()).and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }
}

/// Launches tasks like Ballista's default launcher, except when an
/// executor rejects them (its gRPC answer is `InvalidArgument`: it could
/// not turn the task into a plan): then the tasks are reported failed with
/// the reason, which fails the job instead of relaunching for ever.
struct ReportingLauncher {
    scheduler_id: String,
    self_url: String,
}

#[async_trait]
impl TaskLauncher for ReportingLauncher {
    async fn launch_tasks(
        &self,
        executor: &ExecutorMetadata,
        tasks: Vec<MultiTaskDefinition>,
        executor_manager: &ExecutorManager,
    ) -> ballista_core::error::Result<()> {
        let statuses_if_rejected: Vec<TaskStatus> = tasks.iter().flat_map(failed_statuses).collect();
        match executor_manager
            .launch_multi_task(&executor.id, tasks, self.scheduler_id.clone())
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let text = e.to_string();
                // The executor answered, with a refusal; anything else
                // (unreachable, timeout) is Ballista's to handle.
                if !text.contains("InvalidArgument") {
                    return Err(e);
                }
                let reason = rejection_reason(executor, &text);
                tracing::error!("{reason}");
                let statuses = statuses_if_rejected
                    .into_iter()
                    .map(|mut s| {
                        if let Some(task_status::Status::Failed(f)) = &mut s.status {
                            f.error = reason.clone();
                        }
                        s
                    })
                    .collect();
                match self.report(&executor.id, statuses).await {
                    Ok(()) => Ok(()),
                    Err(report) => {
                        tracing::error!("could not report the rejected tasks as failed: {report}");
                        Err(e)
                    }
                }
            }
        }
    }
}

impl ReportingLauncher {
    async fn report(&self, executor_id: &str, task_status: Vec<TaskStatus>) -> std::result::Result<(), String> {
        let mut client = SchedulerGrpcClient::connect(self.self_url.clone())
            .await
            .map_err(|e| e.to_string())?;
        client
            .update_task_status(UpdateTaskStatusParams {
                executor_id: executor_id.to_string(),
                task_status,
            })
            .await
            .map_err(|e| e.message().to_string())?;
        Ok(())
    }
}

/// A failed status (reason filled in later) for every task of `multi`.
fn failed_statuses(multi: &MultiTaskDefinition) -> Vec<TaskStatus> {
    let now = sf_manifest::format::ids::unix_millis();
    multi
        .task_ids
        .iter()
        .map(|t| TaskStatus {
            task_id: t.task_id,
            job_id: multi.job_id.clone(),
            stage_id: multi.stage_id,
            stage_attempt_num: multi.stage_attempt_num,
            partition_id: t.partition_id,
            launch_time: multi.launch_time,
            start_exec_time: now,
            end_exec_time: now,
            metrics: vec![],
            status: Some(task_status::Status::Failed(FailedTask {
                error: String::new(),
                retryable: false,
                count_to_failures: true,
                failed_reason: Some(failed_task::FailedReason::ExecutionError(ExecutionError {})),
            })),
        })
        .collect()
}

/// What to tell the user about an executor that refused a task.
fn rejection_reason(executor: &ExecutorMetadata, error: &str) -> String {
    // The executor's own words are in the gRPC status message.
    let detail = error
        .split_once("message: \"")
        .and_then(|(_, rest)| rest.split_once("\", ").map(|(m, _)| m))
        .unwrap_or(error)
        .replace("\\\"", "\"");
    let lower = detail.to_ascii_lowercase();
    let hint = if ["codec", "deserializ", "decode", "not provided"]
        .iter()
        .any(|w| lower.contains(w))
    {
        " It cannot decode ShardForge's plan: it lacks ShardForge's extension. \
         Run sf-executor (not a stock Ballista executor) against this scheduler."
    } else {
        ""
    };
    format!(
        "executor {} at {}:{} rejected the task: {detail}.{hint}",
        executor.id, executor.host, executor.grpc_port
    )
}

#[cfg(test)]
mod tests {
    use ballista_core::serde::scheduler::ExecutorSpecification;

    use super::*;

    #[test]
    fn a_rejection_names_the_executor_the_reason_and_the_fix() {
        let executor = ExecutorMetadata {
            id: "e-1".into(),
            host: "127.0.0.1".into(),
            port: 1,
            grpc_port: 2,
            specification: ExecutorSpecification { task_slots: 2 },
        };
        let error = "Internal error: Failed to connect to executor e-1: Status { code: InvalidArgument, \
                     message: \"DataFusion error: This feature is not implemented: PhysicalExtensionCodec is not \
                     provided for scalar function sf_shard_id\", source: None }";
        let r = rejection_reason(&executor, error);
        assert!(
            r.starts_with("executor e-1 at 127.0.0.1:2 rejected the task: DataFusion error"),
            "{r}"
        );
        assert!(r.contains("sf_shard_id") && r.contains("Run sf-executor"), "{r}");
        let other = rejection_reason(&executor, "Status { code: InvalidArgument, message: \"disk full\", x }");
        assert!(other.ends_with("disk full."), "{other}");
    }
}
