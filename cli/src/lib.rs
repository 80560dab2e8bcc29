//! # sf-cli: ShardForge's command-line programs
//!
//! Every program is a thin binary (`src/bin/*.rs`) over one module here,
//! and every module is a thin face over a library crate:
//!
//! | program | module | library |
//! |---|---|---|
//! | `sf-write` | [`write`](mod@write) | `sf-warehouse::run_job` (snapshots through `sf-writer`, tables through the warehouse), `sf-executor` for `--cluster` |
//! | `sf-read` | [`read`] | `sf-reader` (reads and admin) |
//! | `sf-sql` | [`sql`] | `sf-warehouse` |
//! | `sf-serve` | [`serve`] | `sf-server` (over `sf-reader`) |
//! | `sf-scheduler`, `sf-executor` | [`cluster`] | `sf-executor` |
//!
//! What they share lives once: the exit-code table ([`exit`], derived from
//! the error kind every library reports), the output formats
//! ([`output`]: json, jsonl, table), and the runner that sets up logging
//! and the runtime and turns an error into its exit code ([`run`]).

pub mod cluster;
pub mod exit;
pub mod output;
pub mod read;
pub mod read_config;
pub mod read_exec;
pub mod read_ops;
pub mod read_shell;
pub mod report;
pub mod run;
pub mod serve;
pub mod sql;
pub mod write;

pub use exit::{EXIT_CODES, Failure};
