//! The publish protocol: how a build makes a snapshot visible, and what
//! may be deleted afterwards.
//!
//! ```text
//!  shards/run_id=R/db=NNNNN/attempt=AA/   written by tasks, claimed by the build
//!            |
//!  manifests/<ts>_run_id=R/manifest        create-if-absent, immutable
//!            |
//!  _CURRENT                                compare-and-swap on its version
//!            |
//!  losing attempts deleted                 only the build's own (gc)
//! ```
//!
//! - [`manifest_store`]: the [`ManifestStore`](crate::ManifestStore) trait
//!   (create-if-absent manifests, compare-and-swap on `_CURRENT`, history,
//!   run records) and its object-store implementation;
//! - [`gc`]: the one set of rules for what may be deleted (a build's own
//!   losing attempts; cleanup of old and abandoned runs), never what a kept
//!   manifest references;
//! - [`failpoint`]: named fail points at the crash windows of a build (test
//!   builds only).

pub mod failpoint;
#[cfg(feature = "store")]
pub mod gc;
#[cfg(feature = "store")]
pub mod manifest_store;
