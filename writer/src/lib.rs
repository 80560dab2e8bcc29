//! # sf-writer: the snapshot build job
//!
//! Job configuration, planning on DataFusion, shard writers (SQLite and
//! SlateDB), rate limiting, winner selection and publishing.

pub mod adapter;
pub mod config;
pub mod error;
pub mod exec;
pub mod finish;
pub mod input;
pub mod job;
pub mod partition;
pub mod plan;
pub mod progress;
pub mod ratelimit;
pub mod value;
pub mod warehouse;

pub use error::{Error, Result};
