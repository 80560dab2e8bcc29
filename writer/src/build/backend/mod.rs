//! Shard backends behind one trait, chosen by configuration.
//!
//! Writing a shard has two phases:
//!
//! 1. **Build** ([`ShardBuilder`], blocking, local): the task's rows arrive
//!    as encoded keys and values, by default in key order with each key
//!    once (the run's
//!    [`RowCollector`](crate::route::collect::RowCollector) sees to that),
//!    and are staged on local disk (a SQLite file, or a spool of records
//!    for SlateDB). No remote I/O happens here, so the input stream
//!    is consumed at local speed and only once.
//! 2. **Upload** ([`StagedShard::upload`], async, remote, retryable): the
//!    staged shard goes into one claimed attempt folder. A retryable
//!    failure is retried from the local stage into a *new* attempt, without
//!    reading the input again.
//!
//! Every backend records the same [`ShardContent`] facts (rows, key range,
//! a content checksum) and can [`verify`](ShardBackend::verify) a published
//! attempt against them.
//!
//! The backends in files: `contract` (the traits and what they share),
//! `select` (the configured choice), `sqlite` with `sqlite_pages` (the page
//! writer) and `page_size` (`output.sqlite.page_size`, `"auto"`'s choice), `sqlite_insert` (the INSERT loop) and `sqlite_vec` (the
//! vector tables of unified shards) with `vec0` (sqlite-vec registered on
//! a connection), `slatedb`.

mod contract;
pub mod page_size;
mod select;
pub mod slatedb;
pub mod sqlite;
mod sqlite_insert;
pub mod sqlite_pages;
pub mod sqlite_vec;
pub mod vec0;

pub use contract::{
    AttemptTarget, BuildContext, DuplicatePolicy, Row, ShardBackend, ShardBuilder, ShardContent, StagedShard, Uploaded,
    VectorShard, show_key,
};
pub use page_size::{PageSize, SizeStats};
pub use select::{BackendConfig, backend_for};
pub use slatedb::SlateDbSettings;
pub use sqlite::SqliteSettings;
