//! # sf-executor: binaries and the Ballista integration
//!
//! The `sf-write` job binary ([`write_cli`]), the `sf-sql` binary over
//! warehouse tables ([`sql_cli`]) and, in [`cluster`], the
//! extension that runs the same build on Apache DataFusion Ballista: plan
//! codecs, the `sf-scheduler` and `sf-executor` processes, and the cluster
//! engine `sf-write --cluster df://host:port` submits through.

pub mod cluster;
pub mod sql_cli;
pub mod write_cli;
