//! # sf-writer: the snapshot build job
//!
//! Job configuration, planning on DataFusion, each shard task's external
//! sort in bounded memory ([`sort`]), shard writers (SQLite and SlateDB),
//! rate limiting, winner selection and publishing. The writer knows
//! prefixes only: warehouse tables live above it, in `sf-warehouse`, and
//! it never reads snapshots back through the online reader.
//!
//! [`job::build`] runs a job file's build on an [`job::Engine`] (embedded
//! DataFusion here; Ballista in `sf-executor`).

pub mod adapter;
pub mod budget;
pub mod claim;
pub mod config;
pub mod error;
pub mod exchange;
pub mod exec;
pub mod finish;
pub mod gates;
mod hostname;
pub mod input;
pub mod job;
pub mod local_build;
pub mod partition;
pub mod plan;
pub mod progress;
pub mod ratelimit;
mod routed_batch;
pub mod shard_result;
pub mod sort;
pub mod spec;
pub mod task_ids;
mod upload;
pub mod value;
pub mod verdict;

pub use error::{Error, Result};
