//! Plan: the write as a DataFusion plan.
//!
//! A build routes its input with two functions, puts a write node over the
//! routed rows, and lets the engine plan the node into a
//! [`ShardWriteExec`](crate::build::shard_task::ShardWriteExec) laid out for
//! where it runs:
//!
//! ```text
//! ShardWriteExec
//!   RepartitionExec Hash(__sf_partition_key, num_dbs)    on a cluster only
//!     ProjectionExec key, values, sf_shard_id(..), sf_partition_key(..)
//!       <input plan>
//! ```
//!
//! - `udf.rs`: routing as DataFusion functions (`sf_shard_id`), and the
//!   partition keys that put shard `i` in partition `i`
//!   (`sf_partition_key`);
//! - `node.rs`: the logical write node and its planners;
//! - `layout.rs`: the physical rule that lays the shard partitions out;
//! - `vector_route.rs`: the shard of each vector of a vector-only build,
//!   computed inside `sf_shard_id`.

pub mod layout;
pub mod node;
pub mod udf;
pub mod vector_route;
