//! The snapshot format: what is stored under a prefix, encoded and decoded
//! without any I/O (docs/FORMAT.md).
//!
//! - [`sharding`]: key encodings, keys, the sharding spec (the routing
//!   contract `sf-router` implements);
//! - [`manifest`]: the SQLite manifest codec (bytes in, bytes out);
//! - [`current`], [`run_record`], [`layout`]: `_CURRENT`, run records, and
//!   the object keys of everything under a prefix;
//! - [`kv`]: the table every SQLite shard holds;
//! - [`checksum`]: the shard checksums writers record and readers verify;
//! - `untrusted`: opening SQLite files from the bucket as untrusted input;
//! - [`vector`], [`npy`]: vector snapshots (`custom.vector`, the ids and
//!   chunks of a sqlite-vec shard) and their routing artifacts;
//! - [`ids`]: the identifiers (`RunId`, `DbId`, `Attempt`) and timestamps;
//! - [`json`], [`base64`], [`duration`]: the text encodings the format and
//!   the settings use.

pub mod base64;
pub mod checksum;
pub mod current;
pub mod duration;
pub mod ids;
pub mod json;
pub mod kv;
pub mod layout;
pub mod manifest;
pub mod npy;
pub mod run_record;
pub mod sharding;
#[cfg(feature = "codec")]
pub mod untrusted;
pub mod vector;
