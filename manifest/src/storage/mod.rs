//! Object storage: from a URL to a store, and the wrappers every crate
//! reads and writes through.
//!
//! - [`location`]: URL + options -> object store and path (`file://`,
//!   `s3://`, `gs://`, `az://`, `memory://`), the one place that builds
//!   stores;
//! - [`local`]: the local file system with compare-and-swap;
//! - [`resend`]: reads sent again when the request never reached the
//!   server;
//! - [`body`]: reading a `get` answer in large pieces;
//! - [`overlay`]: a copy-on-write view (read a SlateDB database without
//!   writing to it);
//! - [`guarded`]: remember the last failure, cut a store off when its work
//!   ends.

pub mod body;
pub mod guarded;
pub mod local;
pub mod location;
pub mod overlay;
pub mod resend;
