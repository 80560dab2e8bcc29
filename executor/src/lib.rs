//! # sf-executor: ShardForge on Apache DataFusion Ballista
//!
//! The same build on a Ballista cluster: plan codecs for ShardForge's
//! nodes (shard writes, warehouse table scans and lookups), the cluster
//! engine `sf-write --cluster df://host:port` submits through, and the
//! processes behind the `sf-scheduler` and `sf-executor` programs. Only
//! this crate knows about Ballista; the programs' command lines live in
//! `sf-cli`.
//!
//! The shard writer is a custom plan node, so a stock Ballista scheduler or
//! executor cannot run it. [`register()`] is the one function that installs
//! ShardForge's extension, on the client's session (`sf-write`), the
//! scheduler's configuration (`sf-scheduler`) and the executor's
//! (`sf-executor`):
//!
//! | room | what it brings |
//! |---|---|
//! | [`mod@register`] | installs the extension; executors fill `stage_id` / `task_attempt_id` of every shard result from Ballista's task identity |
//! | [`codec`] | logical and physical codecs for `ShardWriteNode` / `ShardWriteExec` and the `sf_shard_id` / `sf_partition_key` functions |
//! | planner | the scheduler's sessions use `sf_writer::job::session_state_builder`: `ShardWriteNode` plans into `ShardWriteExec` and the `ShardWriteLayout` rule lays out `num_dbs` hash partitions |
//! | [`options`] | the job's storage options (no credentials) and memory limit, carried by every session |
//! | [`store`] | object stores resolved on each process from those options and its own environment |
//! | [`engine`] | [`ClusterEngine`], the writer's engine on a cluster, for builds and for a driver's pooled sessions |
//! | [`task_error`] | executors classify a task's failure where it happens and send its kind with the text Ballista carries back |
//! | [`client`] | the driver's side of a query: submit, follow the job (a task's failure keeps the kind its executor gave it; a job failed for want of executors, and a scheduler that cannot be reached or is lost, are the engine being unavailable), fetch each result partition once |
//! | [`mod@driver`] | a `sf_warehouse::Driver` on the cluster a job file names |
//! | [`scheduler_process`], [`executor_process`] | the `sf-scheduler` and `sf-executor` processes |
//! | [`mod@metrics`] | what the scheduler and executors count (jobs, tasks running and pending, task failures by kind, executors alive), served at `/metrics` with `--metrics-listen` |
//!
//! On the cluster the plan splits into two stages at the hash
//! repartition:
//!
//! ```text
//! stage 1: ShuffleWriterExec Hash(__sf_partition_key, num_dbs)
//!            ProjectionExec key, values, sf_shard_id(..), sf_partition_key(..)
//!              DataSourceExec (the input)
//! stage 2: ShuffleWriterExec (results, num_dbs partitions)
//!            ShardWriteExec (sorts its shard's rows itself)
//!              ShuffleReaderExec Hash(__sf_partition_key, num_dbs)
//! ```
//!
//! Ballista's shuffle partitions with DataFusion's hash partitioner, so
//! partition `i` of stage 2 holds exactly shard `i`; `ShardWriteExec`
//! checks every row's shard id anyway.
//!
//! ```no_run
//! use datafusion::prelude::SessionConfig;
//! use ballista_core::extension::SessionConfigExt;
//!
//! // A client session that can ship ShardForge plans.
//! let config = sf_executor::register(SessionConfig::new_with_ballista());
//! # let _ = config;
//! ```

pub mod client;
pub mod codec;
pub mod driver;
pub mod engine;
pub mod executor_process;
pub mod metrics;
pub mod options;
mod process;
pub mod register;
pub mod scheduler_process;
pub mod store;
pub mod task_error;

pub use driver::{driver, driver_for_job};
pub use engine::{ClusterEngine, SchedulerUrl, engine_for};
pub use register::{Register, ballista_task_ids, register};
