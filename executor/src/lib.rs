//! # sf-executor: binaries and the Ballista integration
//!
//! The `sf-write` job binary ([`write_cli`]) and the plan nodes, codecs,
//! scheduler and executor that run it on Apache DataFusion Ballista.

pub mod write_cli;
