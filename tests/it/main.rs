//! ShardForge's cross-crate tests, as one test binary.

mod cloud_backends;
mod cluster;
mod docs;
mod exit_codes;
mod fault_matrix;
mod faults;
mod fixtures;
mod hostile;
mod many_shards;
mod publish;
mod reader_admin;
mod reader_cache;
mod reader_cli;
mod reader_concurrency;
mod reader_errors;
mod reader_fixtures;
mod reader_memory;
mod reader_refresh;
mod reader_snapshots;
mod reader_versions;
mod scheduled;
mod serve;
mod serve_cache;
mod sessions;
mod warehouse;
mod write_e2e;
