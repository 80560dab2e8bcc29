//! The SlateDB backend: one SlateDB database per shard, rooted at the
//! attempt folder itself (docs/FORMAT.md).
//!
//! Phase 1 ([`ShardBuilder`](crate::build::backend::ShardBuilder)) needs
//! the rows sorted by key, each key once (the shard sorter's output). It
//! streams them to a local spool file of records (`u32` LE key length, key, `u32` LE value
//! length, value), so memory is the write buffer whatever the shard's size.
//! The checksum is xxh3-128 over exactly those records, in key order
//! (`xxh3_128-kv:<hex>`): it describes the logical content, so it can be
//! recomputed from any SlateDB scan of the shard.
//!
//! Phase 2 ([`StagedShard::upload`](super::StagedShard::upload)) writes the spool into a fresh database
//! and leaves it ready for read-only use:
//!
//! 1. Write with the WAL off (the spool is the log: a failed upload is
//!    redone from it into a new attempt) and no timed flushes; the memtable
//!    becomes an L0 SST each time it reaches `l0_sst_size_mib`, then once
//!    more at the end. Rows go in write batches under the attempt's rate
//!    limits.
//! 2. Close the writer, then, when more than one SST was written, run one
//!    compaction that merges every L0 SST into a single sorted run (a
//!    standalone SlateDB compactor driven by a scheduler that proposes
//!    exactly that merge), so that a lookup reads one SST, and delete the
//!    L0 SSTs it replaced.
//! 3. Record a durable checkpoint (no expiry, named [`CHECKPOINT_NAME`]) of
//!    the final state. Its UUID, in simple hex, is the shard's
//!    `checkpoint_id`.
//!
//! Every object the upload writes is hashed as it is written (`digest`),
//! and the upload reports one checksum of the objects it left
//! (`objects_checksum`). Verification before publishing checks the
//! database's structure (a checkpoint of ours, nothing written after it,
//! no WAL) and re-reads every object of the attempt folder against that
//! checksum: a damaged, missing or extra object fails it, and no row is
//! read back through SlateDB. Without an objects checksum (a result that
//! carries none) it reads every row back and checks the content checksum.
//!
//! A reader opens the shard without writing to it through
//! `DbReader::builder(attempt_path, store).with_checkpoint_id(uuid)`, where
//! `uuid` is the manifest's `checkpoint_id`: at a checkpoint SlateDB neither
//! records a checkpoint of its own nor polls the manifest or replays a WAL.
//! Shards written by the reference carry a random `checkpoint_id` that names
//! no checkpoint; [`read_all`] shows how to read those without writing to
//! them too.
//!
//! SlateDB retries failing object-store calls forever. Every remote step
//! here therefore has a stall timeout (`stall_timeout_secs`), after which
//! the attempt fails as retryable and SlateDB's store is cut off, so that
//! its background tasks stop too.
//!
//! The backend in files: `backend` (the
//! [`ShardBackend`](crate::build::backend::ShardBackend)), `settings` (the
//! knobs), `spool` (phase 1), `upload` (phase 2), `compaction` (the final
//! merge), `digest` (the objects hashed as they are written), `read`
//! (verification and reading back), and `ops`, what they
//! all share: the per-operation context with its guarded store, stall
//! timeout and errors.

mod backend;
mod compaction;
mod digest;
mod ops;
mod read;
mod settings;
mod spool;
#[cfg(test)]
mod tests;
mod upload;

pub use backend::SlateDbBackend;
pub use ops::CHECKPOINT_NAME;
pub use read::read_all;
pub use settings::SlateDbSettings;
