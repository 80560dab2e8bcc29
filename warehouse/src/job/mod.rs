//! Job files at the warehouse level, and running them.
//!
//! - [`mod@file`]: the job file `sf-write` reads ([`JobFile`]): the writer's
//!   build job wrapped with warehouse tables as input or output, catalogs,
//!   the canary gate and the cluster section;
//! - [`run`]: running one ([`run_job`]): a snapshot under a prefix through
//!   `sf-writer`, or a table saved or read through the warehouse.

pub mod file;
pub mod run;

pub use file::{ClusterConfig, JobFile, TableOutput};
pub use run::run_job;
