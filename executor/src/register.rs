//! Installing ShardForge's extension on Ballista: [`register`] on a
//! client's session config (`sf-write`), a scheduler's configuration
//! (`sf-scheduler`) or an executor's (`sf-executor`), and the task ids an
//! executor reads from Ballista's task identity. Executors also run their
//! stages through [`crate::task_error`], so a task's failure reaches the
//! driver with its kind.

use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use ballista_executor::executor_process::ExecutorProcessConfig;
use ballista_scheduler::config::SchedulerConfig;
use datafusion::execution::TaskContext;
use datafusion::prelude::SessionConfig;
use sf_writer::build::task_ids::TaskIds;

use crate::codec::{ShardForgeLogicalCodec, ShardForgePhysicalCodec};
use crate::metrics::CountedEngine;
use crate::options::ShardForgeOptions;
use crate::store;
use crate::task_error::ShardForgeExecutionEngine;

/// Something ShardForge's Ballista extension can be installed on: a client
/// [`SessionConfig`], a [`SchedulerConfig`] or an [`ExecutorProcessConfig`].
pub trait Register: Sized {
    /// Installs the extension.
    fn register_shardforge(self) -> Self;
}

/// Installs ShardForge's Ballista extension on a client session config, a
/// scheduler config or an executor config.
pub fn register<T: Register>(target: T) -> T {
    target.register_shardforge()
}

/// A session config with Ballista's settings and ShardForge's settings
/// extension: what schedulers and executors start every session from.
fn config_producer() -> SessionConfig {
    SessionConfig::new_with_ballista().with_option_extension(ShardForgeOptions::default())
}

impl Register for SessionConfig {
    fn register_shardforge(self) -> Self {
        let config = if self.options().extensions.get::<ShardForgeOptions>().is_some() {
            self
        } else {
            self.with_option_extension(ShardForgeOptions::default())
        };
        config
            .with_ballista_logical_extension_codec(Arc::new(ShardForgeLogicalCodec::default()))
            .with_ballista_physical_extension_codec(Arc::new(ShardForgePhysicalCodec::default()))
    }
}

impl Register for SchedulerConfig {
    fn register_shardforge(mut self) -> Self {
        self.override_config_producer = Some(Arc::new(config_producer));
        self.override_session_builder = Some(Arc::new(|config: SessionConfig| {
            let runtime = store::runtime_for(&config, None)?;
            Ok(sf_writer::job::session_state_builder(config)
                .with_runtime_env(runtime)
                .build())
        }));
        self.override_logical_codec = Some(Arc::new(ShardForgeLogicalCodec::default()));
        self.override_physical_codec = Some(Arc::new(ShardForgePhysicalCodec::default()));
        self
    }
}

impl Register for ExecutorProcessConfig {
    fn register_shardforge(mut self) -> Self {
        let work_dir = self.work_dir.clone().map(PathBuf::from);
        self.override_logical_codec = Some(Arc::new(ShardForgeLogicalCodec::default()));
        self.override_physical_codec = Some(Arc::new(ShardForgePhysicalCodec::with_staging_dir(work_dir.clone())));
        self.override_config_producer = Some(Arc::new(config_producer));
        self.override_runtime_producer = Some(Arc::new(move |config: &SessionConfig| {
            store::runtime_for(config, work_dir.as_deref())
        }));
        self.override_execution_engine = Some(Arc::new(CountedEngine(ShardForgeExecutionEngine)));
        sf_writer::build::task_ids::set_task_ids_fn(ballista_task_ids);
        self
    }
}

/// Stage and task ids of a Ballista task, read from its task identity
/// `TID <task_id> <job_id>/<stage_id>.<stage_attempt>/<partition>.<task_attempt>`.
///
/// `task_id` is unique per launched task within a job: a re-run or
/// duplicate of a partition gets a new one, so it serves as
/// `task_attempt_id` in the winner rule.
pub fn ballista_task_ids(ctx: &TaskContext, _partition: usize) -> TaskIds {
    ctx.task_id().as_deref().map(parse_task_identity).unwrap_or_default()
}

fn parse_task_identity(identity: &str) -> TaskIds {
    let mut words = identity.split_whitespace();
    if words.next() != Some("TID") {
        return TaskIds::default();
    }
    let task_attempt_id = words.next().and_then(|t| t.parse::<i64>().ok());
    let stage_id = words
        .next()
        .and_then(|path| path.split('/').nth(1))
        .and_then(|stage| stage.split('.').next())
        .and_then(|s| s.parse::<i64>().ok());
    TaskIds {
        stage_id,
        task_attempt_id,
    }
}

#[cfg(test)]
mod tests;
