//! # sf-router: where a key lives
//!
//! Routing is the contract between the writer, which places every row in a
//! shard, and the reader, which must look in the same shard. This crate is
//! that contract's only implementation, used by both sides. It does no I/O.
//!
//! - [`key`]: canonical key bytes (integers as 8-byte signed little-endian,
//!   text as UTF-8, bytes as they are) and the key encodings shards store
//!   (`u64be`, `u32be`, `utf8`, `raw`), with range checks;
//! - hash routing: `xxh3_64(canonical bytes, seed 0) % num_dbs`;
//! - [`cel`]: CEL routing, direct (the result is the db id) or categorical
//!   (the result is a token, its index in `routing_values` the db id), with
//!   `shard_hash()` available in expressions; compiled once;
//! - [`Router::route_batch`]: the Arrow kernel, a `RecordBatch` in and a
//!   `UInt32Array` of db ids out;
//! - [`vector`]: where a vector lives (CLUSTER and LSH routing of
//!   vector-only snapshots), the distances searches score with, and the
//!   exact top-k merge of per-shard results;
//! - [`cell`]: one Arrow cell as a key or a CEL value, the conversion the
//!   kernel and every row-by-row check share.
//!
//! ```
//! use sf_manifest::{Key, KeyEncoding};
//! use sf_router::{Router, Routed};
//!
//! let router = Router::hash(4, KeyEncoding::U64Be).unwrap();
//! // Integer keys 0..9 over 4 shards route to 1,2,3,1,0,0,3,3,2,3.
//! assert_eq!(router.route_key(&Key::Int(0)).unwrap(), Routed::Db(1));
//! assert_eq!(router.route_key(&Key::Int(4)).unwrap(), Routed::Db(0));
//!
//! use arrow::array::{Int64Array, RecordBatch};
//! use std::sync::Arc;
//! let batch = RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(vec![0, 1, 2])) as _)]).unwrap();
//! assert_eq!(router.route_batch(&batch, "id").unwrap().values().to_vec(), vec![1, 2, 3]);
//! ```

pub mod cel;
pub mod cell;
pub mod error;
pub mod filter;
pub mod kernel;
pub mod key;
mod router;
pub mod vector;

pub use cel::{CelRouting, ContextValue, Routed};
pub use cell::{context_value_at, key_at};
pub use error::{Error, Result};
pub use kernel::{cel_column_type_fits, cel_tokens};
pub use key::{canonical_bytes, decode_key, encode_key, encode_key_into, parse_key, shard_hash};
pub use router::{KEY_VARIABLE, Router, key_as_context};
