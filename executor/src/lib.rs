//! # sf-executor: binaries and the Ballista integration
//!
//! The `sf-write` job binary and the plan nodes, codecs, scheduler and
//! executor that run it on Apache DataFusion Ballista.
