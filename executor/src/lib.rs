//! # sf-executor: ShardForge on Apache DataFusion Ballista
//!
//! The extension that runs the same build on a Ballista cluster
//! ([`cluster`]): plan codecs for ShardForge's nodes (shard writes,
//! warehouse table scans and lookups), the processes behind the
//! `sf-scheduler` and `sf-executor` programs, and the cluster engine
//! `sf-write --cluster df://host:port` submits through. Only this crate
//! knows about Ballista; the programs' command lines live in `sf-cli`.

pub mod cluster;
