//! ShardForge's cross-crate tests, as one test binary.

mod cloud_backends;
mod cluster;
mod fixtures;
mod publish;
mod reader_admin;
mod reader_cache;
mod reader_cli;
mod reader_concurrency;
mod reader_errors;
mod reader_fixtures;
mod reader_memory;
mod reader_snapshots;
mod warehouse;
mod write_e2e;
