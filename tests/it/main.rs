//! ShardForge's cross-crate tests, as one test binary.

mod fixtures;
mod publish;
