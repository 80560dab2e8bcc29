//! Publish: the driver's last step, once every shard task has reported.
//! Each shard's winning attempt is picked and verified, the validation
//! gates run, the manifest is written and `_CURRENT` swapped to it, and
//! the build's losing attempts are deleted.
//!
//! - `winners.rs`: picking, verifying and publishing a build's winners;
//! - `gates.rs`: the validation gates (`[validate]`);
//! - `verdict.rs`: how a gate came out.

pub mod gates;
pub mod verdict;
pub mod winners;
