//! The build job a job file describes (`job.toml`): what it says
//! ([`schema`]), how it is read (TOML, `SF_*` environment overrides, paths
//! relative to the file: [`document`]) and how it is checked before anything
//! is read or written ([`validate`]).
//!
//! This is the writer's part of a job file: input, key and values,
//! routing, output prefix and backend, write limits, validation gates and
//! retention. A layer above the writer that owns more sections reads the
//! file as a [`JobDocument`], takes its own keys out, and hands the rest to
//! [`JobDocument::into_job`].

pub mod document;
pub mod schema;
pub mod validate;

#[cfg(test)]
mod tests;

pub use document::{
    ENV_PREFIX, ENV_SEPARATOR, JobDocument, KeyIsText, NOT_OVERRIDES, is_override, key_is_text, load, parse,
    read_job_file, resolve_path,
};
pub use schema::{
    Backend, CelMode, CsvOptions, InputConfig, InputFormat, JobConfig, OnInvalid, OutputConfig, RetentionConfig,
    RetryPolicy, RoutingConfig, Strategy, TableConfig, ValueConfig, VectorConfig, VectorShardingConfig, WriteConfig,
    default_memory_limit_mib,
};
