//! ShardForge's cross-crate tests, as one test binary.

mod cloud_backends;
mod cluster;
mod exit_codes;
mod fault_matrix;
mod fixtures;
mod publish;
mod reader_admin;
mod reader_cache;
mod reader_cli;
mod reader_concurrency;
mod reader_errors;
mod reader_fixtures;
mod reader_refresh;
mod reader_snapshots;
mod scheduled;
mod warehouse;
mod write_e2e;
