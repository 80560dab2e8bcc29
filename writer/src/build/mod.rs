//! Build shards: each shard written by exactly one task, in two phases,
//! built on local disk from its rows sorted by key, then uploaded into an
//! attempt folder the task claimed.
//!
//! - `shard_task.rs`: the plan node
//!   [`ShardWriteExec`](shard_task::ShardWriteExec) and the task that
//!   writes one shard from its input partition;
//! - `spec.rs`: what every shard task of a run needs to know;
//! - `task_ids.rs`: the engine's ids of the running task, when it has them;
//! - `shard_result.rs`: the one result row each shard yields;
//! - `merge.rs`: a shard's collected rows sorted and merged into key
//!   order, each key once;
//! - `local_build.rs`: phase 1, a shard built in a staging folder from
//!   those rows, in one of the process's build slots;
//! - `upload.rs`: phase 2, the built shard uploaded, retried into new
//!   attempts;
//! - `claim.rs` and `hostname.rs`: claiming an attempt folder, and the
//!   host its claim marker names;
//! - `ratelimit.rs`: the write limits every backend applies;
//! - `backend/`: the shard backends, SQLite and SlateDB.

pub mod backend;
pub mod claim;
mod hostname;
pub mod local_build;
pub mod merge;
pub mod ratelimit;
pub mod shard_result;
pub mod shard_task;
pub mod spec;
pub mod task_ids;
pub(crate) mod upload;
