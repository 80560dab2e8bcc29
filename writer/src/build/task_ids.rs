//! The engine's ids of the task running a partition (stage, task
//! attempt), recorded in claim markers and result rows. Only a cluster
//! knows them: its integration installs a hook once per process; embedded
//! runs have none.

use std::sync::OnceLock;

use datafusion::execution::TaskContext;

/// Engine ids of the task running a partition, when the engine has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskIds {
    /// Stage.
    pub stage_id: Option<i64>,
    /// Task attempt.
    pub task_attempt_id: Option<i64>,
}

/// Hook for engines that know their stage and task ids (set by the
/// cluster integration; embedded runs have none).
pub type TaskIdsFn = fn(&TaskContext, usize) -> TaskIds;

static TASK_IDS: OnceLock<TaskIdsFn> = OnceLock::new();

/// Installs how task ids are read from a task context (once per process).
pub fn set_task_ids_fn(f: TaskIdsFn) {
    let _ = TASK_IDS.set(f);
}

/// The ids of the task running `partition`, when a hook is installed.
pub(crate) fn task_ids(context: &TaskContext, partition: usize) -> TaskIds {
    TASK_IDS.get().map(|f| f(context, partition)).unwrap_or_default()
}
