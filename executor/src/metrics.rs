//! The cluster's figures: what `sf-scheduler` and `sf-executor` count,
//! through the `metrics` facade. The programs serve them at `/metrics`
//! with `--metrics-listen`; without a recorder installed every emission
//! here costs next to nothing.
//!
//! **Scheduler** (`shardforge_scheduler_*`): jobs ended, by `outcome`
//! (`completed`, `failed`, `cancelled`), counted from Ballista's
//! scheduler events through [`JobsCollector`] (a job the scheduler fails
//! for want of executors counts as `failed` once, not again when it is
//! cancelled afterwards); and, sampled every second by [`sample_scheduler`],
//! the jobs running, their tasks running and pending (ready to run, waiting
//! for a free slot), and the executors alive (registered, with a heartbeat
//! within the executor timeout).
//!
//! **Executor** (`shardforge_executor_*`): the tasks running now, tasks
//! ended by `outcome` (`completed`, `failed`), failed tasks by `kind` (the
//! class [`crate::task_error`] gave the failure: `config`, `routing`,
//! `data`, `conflict`, `unavailable`, `gate`, `internal`; `engine` for a
//! failure Ballista handles itself, such as a lost shuffle file). Counted
//! around every stage task the executor's engine runs ([`CountedEngine`]
//! around [`crate::task_error::ShardForgeExecutionEngine`]), so an executor
//! started `--without-extension` counts none.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ballista_core::error::Result as BallistaResult;
use ballista_core::serde::protobuf::ShuffleWritePartition;
use ballista_executor::execution_engine::{ExecutionEngine, QueryStageExecutor};
use ballista_scheduler::metrics::SchedulerMetricsCollector;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::error::Result as DfResult;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

// The names, each written once: every emission and [`METRICS`] use these.
const JOBS: &str = "shardforge_scheduler_jobs_total";
const JOBS_RUNNING: &str = "shardforge_scheduler_jobs_running";
const TASKS_RUNNING: &str = "shardforge_scheduler_tasks_running";
const TASKS_PENDING: &str = "shardforge_scheduler_tasks_pending";
const EXECUTORS_ALIVE: &str = "shardforge_scheduler_executors_alive";
const EXECUTOR_TASKS_RUNNING: &str = "shardforge_executor_tasks_running";
const EXECUTOR_TASKS: &str = "shardforge_executor_tasks_total";
const EXECUTOR_TASK_FAILURES: &str = "shardforge_executor_task_failures_total";

/// Every name the scheduler and executors emit, with what it counts: the
/// one catalog, from which every emission takes its name.
pub const METRICS: &[(&str, &str)] = &[
    (
        JOBS,
        "jobs ended on this scheduler, by outcome (completed, failed, cancelled)",
    ),
    (JOBS_RUNNING, "jobs running now (gauge)"),
    (
        TASKS_RUNNING,
        "tasks of the running jobs launched on an executor and not yet reported back (gauge)",
    ),
    (
        TASKS_PENDING,
        "tasks of the running jobs ready to run and waiting for a free executor slot (gauge)",
    ),
    (
        EXECUTORS_ALIVE,
        "executors registered with a heartbeat within --executor-timeout-secs (gauge)",
    ),
    (EXECUTOR_TASKS_RUNNING, "tasks running on this executor now (gauge)"),
    (
        EXECUTOR_TASKS,
        "tasks this executor ran to the end, by outcome (completed, failed)",
    ),
    (
        EXECUTOR_TASK_FAILURES,
        "tasks that failed on this executor, by kind (config, routing, data, conflict, unavailable, gate, internal; engine: Ballista's own, such as a lost shuffle file)",
    ),
];

/// The `outcome` label values of the jobs counter.
const JOB_OUTCOMES: [&str; 3] = ["completed", "failed", "cancelled"];
/// The `kind` label values of the task failures counter.
const FAILURE_KINDS: [&str; 8] = [
    "config",
    "routing",
    "data",
    "conflict",
    "unavailable",
    "gate",
    "internal",
    "engine",
];

/// Ballista's scheduler events, counted: the collector the scheduler
/// server is built with.
#[derive(Debug, Default)]
pub struct JobsCollector {
    /// Jobs the scheduler failed itself (no executors left), which
    /// Ballista ends as cancelled: counted as failed, and not again.
    failed_here: Mutex<HashSet<String>>,
}

impl JobsCollector {
    /// A collector with every series at zero, so that they are scraped
    /// (and alerts on them work) before the first job.
    pub fn new() -> Self {
        for outcome in JOB_OUTCOMES {
            metrics::counter!(JOBS, "outcome" => outcome).increment(0);
        }
        for name in [JOBS_RUNNING, TASKS_RUNNING, TASKS_PENDING, EXECUTORS_ALIVE] {
            metrics::gauge!(name).set(0.0);
        }
        JobsCollector::default()
    }

    /// Counts `job_id` as failed by the scheduler itself: its later
    /// cancellation is not counted.
    pub fn failed_here(&self, job_id: &str) {
        self.failed_here
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job_id.to_string());
        metrics::counter!(JOBS, "outcome" => "failed").increment(1);
    }
}

impl SchedulerMetricsCollector for JobsCollector {
    fn record_submitted(&self, _job_id: &str, _queued_at: u64, _submitted_at: u64) {}

    fn record_completed(&self, _job_id: &str, _queued_at: u64, _completed_at: u64) {
        metrics::counter!(JOBS, "outcome" => "completed").increment(1);
    }

    fn record_failed(&self, _job_id: &str, _queued_at: u64, _failed_at: u64) {
        metrics::counter!(JOBS, "outcome" => "failed").increment(1);
    }

    fn record_cancelled(&self, job_id: &str) {
        let counted = self
            .failed_here
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(job_id);
        if !counted {
            metrics::counter!(JOBS, "outcome" => "cancelled").increment(1);
        }
    }

    // Ballista 52 never calls it; the pending tasks are sampled instead.
    fn set_pending_tasks_queue_size(&self, _value: u64) {}

    fn gather_metrics(&self) -> BallistaResult<Option<(Vec<u8>, String)>> {
        Ok(None)
    }
}

/// Every second, sets the scheduler's gauges from its state: jobs
/// running, their tasks running and pending, executors alive (a heartbeat
/// within `executor_timeout`).
pub async fn sample_scheduler(server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>, executor_timeout: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let jobs = server.state.task_manager.get_running_job_cache();
        let (mut running, mut pending) = (0usize, 0usize);
        for job in jobs.values() {
            let graph = job.execution_graph.read().await;
            running += graph.running_tasks().len();
            pending += graph.available_tasks();
        }
        metrics::gauge!(JOBS_RUNNING).set(jobs.len() as f64);
        metrics::gauge!(TASKS_RUNNING).set(running as f64);
        metrics::gauge!(TASKS_PENDING).set(pending as f64);
        if let Ok(executors) = server.state.executor_manager.get_executor_state().await {
            let now = Duration::from_millis(sf_manifest::format::ids::unix_millis());
            let alive = executors
                .iter()
                .filter(|(_, heartbeat)| heartbeat.is_some_and(|h| now.saturating_sub(h) <= executor_timeout))
                .count();
            metrics::gauge!(EXECUTORS_ALIVE).set(alive as f64);
        }
    }
}

/// Sets the executor's series at zero, so that they are scraped before
/// the first task.
pub fn register_executor_series() {
    metrics::gauge!(EXECUTOR_TASKS_RUNNING).set(0.0);
    for outcome in ["completed", "failed"] {
        metrics::counter!(EXECUTOR_TASKS, "outcome" => outcome).increment(0);
    }
    for kind in FAILURE_KINDS {
        metrics::counter!(EXECUTOR_TASK_FAILURES, "kind" => kind).increment(0);
    }
}

/// An execution engine whose stages' tasks are counted ([`CountedStage`]).
#[derive(Debug)]
pub struct CountedEngine<E>(pub E);

impl<E: ExecutionEngine> ExecutionEngine for CountedEngine<E> {
    fn create_query_stage_exec(
        &self,
        job_id: String,
        stage_id: usize,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
    ) -> DfResult<Arc<dyn QueryStageExecutor>> {
        let stage = self.0.create_query_stage_exec(job_id, stage_id, plan, work_dir)?;
        Ok(Arc::new(CountedStage::new(stage)))
    }
}

/// A stage's executor whose tasks are counted: running while one runs
/// (a cancelled task too), then completed or failed with the failure's
/// kind.
pub struct CountedStage {
    inner: Arc<dyn QueryStageExecutor>,
}

impl CountedStage {
    /// `inner`, counted.
    pub fn new(inner: Arc<dyn QueryStageExecutor>) -> Self {
        CountedStage { inner }
    }
}

impl fmt::Debug for CountedStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for CountedStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

/// One task running: counted as running until dropped (a task dropped
/// unfinished, cancelled, included).
struct Running;

impl Running {
    fn start() -> Self {
        metrics::gauge!(EXECUTOR_TASKS_RUNNING).increment(1.0);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        metrics::gauge!(EXECUTOR_TASKS_RUNNING).decrement(1.0);
    }
}

#[async_trait]
impl QueryStageExecutor for CountedStage {
    async fn execute_query_stage(
        &self,
        input_partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<Vec<ShuffleWritePartition>> {
        let running = Running::start();
        let result = self.inner.execute_query_stage(input_partition, context).await;
        drop(running);
        match &result {
            Ok(_) => metrics::counter!(EXECUTOR_TASKS, "outcome" => "completed").increment(1),
            Err(e) => {
                metrics::counter!(EXECUTOR_TASKS, "outcome" => "failed").increment(1);
                metrics::counter!(EXECUTOR_TASK_FAILURES, "kind" => failure_kind(&e.to_string())).increment(1);
            }
        }
        result
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        self.inner.collect_plan_metrics()
    }
}

/// The `kind` label of a task failure's text: the kind its marker names,
/// or `engine` for a failure without one (Ballista's own).
fn failure_kind(text: &str) -> String {
    match crate::task_error::decode(text) {
        Some((kind, _)) => kind.to_string(),
        None => "engine".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use sf_manifest::ErrorKind;

    use super::*;

    #[test]
    fn a_failure_is_labelled_with_its_kind_and_every_kind_is_registered() {
        let text = format!(
            "Task failed: {:?}",
            crate::task_error::encode(ErrorKind::Unavailable, "503 on PUT")
        );
        assert_eq!(failure_kind(&text), "unavailable");
        assert_eq!(failure_kind("Job failed: fetch failed"), "engine");
        for kind in [
            ErrorKind::Config,
            ErrorKind::Routing,
            ErrorKind::Data,
            ErrorKind::Conflict,
            ErrorKind::Unavailable,
            ErrorKind::Gate,
            ErrorKind::Internal,
        ] {
            assert!(FAILURE_KINDS.contains(&kind.to_string().as_str()), "{kind}");
        }
    }
}
