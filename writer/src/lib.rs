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
pub mod config;
pub mod error;
pub mod exchange;
pub mod exec;
pub mod finish;
pub mod gates;
pub mod input;
pub mod job;
pub mod partition;
pub mod plan;
pub mod progress;
pub mod ratelimit;
pub mod sort;
pub mod value;
pub mod verdict;

pub use error::{Error, Result};
