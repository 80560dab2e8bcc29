//! # sf-writer: the snapshot build job
//!
//! Job configuration, planning on DataFusion, each shard task's external
//! sort in bounded memory, shard writers (SQLite and SlateDB), rate
//! limiting, winner selection and publishing. The writer knows snapshot
//! prefixes only, and never reads snapshots back through the online
//! reader.
//!
//! [`job::build`] runs a job file's build on an [`job::Engine`] (embedded
//! DataFusion here; Ballista in `sf-executor`).
//!
//! ## The map
//!
//! The folders follow a build's rows from the plan to the published
//! snapshot:
//!
//! ```text
//! plan ──> route ──> build ──> publish
//! ```
//!
//! - [`plan`]: the write as a DataFusion plan, routing functions included;
//! - [`route`]: routed rows encoded and collected into their shards in
//!   bounded memory, and the in-process exchange;
//! - [`build`]: one task per shard, sorting its rows, building the shard
//!   locally with a backend (SQLite, SlateDB) and uploading it into a
//!   claimed attempt;
//! - [`publish`]: winners picked and verified, the validation gates, the
//!   manifest written and `_CURRENT` swapped.
//!
//! A job's `[vector]` section adds each row's vector to its shard in the
//! reference's sqlite-vec layout (docs/vectors.md): the vectors are
//! checked and carried with their rows by [`route::vector`], placed by
//! [`plan::vector_route`] for vector-only jobs (planned by
//! [`job::vector_plan`]), and written beside the `kv` pages by
//! [`build::backend::sqlite_vec`].
//!
//! Around them: [`config`] (the job file), [`input`] (reading the input),
//! [`job`] (running a build end to end), [`progress`] (a run's counters)
//! and [`error`].

pub mod build;
pub mod config;
pub mod error;
pub mod input;
pub mod job;
pub mod plan;
pub mod progress;
pub mod publish;
pub mod route;

pub use error::{Error, Result};
