//! Route and collect: a write's routed input rows encoded and gathered
//! into their shards, in bounded memory.
//!
//! - `encode.rs`: keys and values as the bytes a shard stores;
//! - `routed_batch.rs`: one routed input batch, its shard ids checked and
//!   its keys and values encoded;
//! - `budget.rs`: the memory all of a run's rows share in one process;
//! - `collect.rs`: the rows of many shards collected in chunks under that
//!   budget, spilled to disk beyond it;
//! - `chunk.rs`: one shard's rows in memory, sorted once sealed;
//! - `spill.rs`: sorted rows on disk, as segments of spill files;
//! - `vector.rs`: a build's vectors, checked and carried inside their rows'
//!   values to the shard builder, in the layout of `envelope.rs`;
//! - `exchange.rs`: in one process, every input partition collected, then
//!   the shards built and uploaded in waves.

pub mod budget;
pub mod chunk;
pub mod collect;
pub mod encode;
pub mod envelope;
pub mod exchange;
pub mod routed_batch;
pub mod spill;
pub mod vector;
