//! # sf-writer: the snapshot build job
//!
//! Job configuration, planning on DataFusion, each shard task's external
//! sort in bounded memory ([`sort`]), shard writers (SQLite and SlateDB),
//! rate limiting, winner selection and publishing; and warehouse
//! tables on the same snapshots ([`warehouse`]: `save_as_table` with the
//! four save modes, `table` as a DataFusion table with point-lookup
//! pushdown through `sf-reader`, catalogs and SQL).
//!
//! [`job::build`] runs a job file's build on an [`job::Engine`] (embedded
//! DataFusion here; Ballista in `sf-executor`).

pub mod adapter;
pub mod config;
pub mod error;
pub mod exec;
pub mod finish;
pub mod input;
pub mod job;
pub mod partition;
pub mod plan;
pub mod progress;
pub mod ratelimit;
pub mod sort;
pub mod value;
pub mod warehouse;

pub use error::{Error, Result};
