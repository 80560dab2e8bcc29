//! The [`Reader`]: serves `get` and `multi_get` from the snapshot
//! `_CURRENT` (or a pin) names, and swaps to new snapshots on refresh.
//!
//! One room per job, each resting only on those listed after it:
//!
//! - `builder`: [`ReaderBuilder`], the settings and components a reader
//!   is made of, before anything is read;
//! - `lifecycle`: opening a reader (its first snapshot, the warm-up, the
//!   background refresh) and closing it;
//! - `api`: the [`Reader`] handle and what it answers (reads, views,
//!   routes, info, health, stats);
//! - `refresh`: loading a new snapshot and swapping it in, on demand and
//!   in the background loop.
//!
//! Below them all, outside this folder: the state a reader shares with
//! its views (`state`), the reads bound to one snapshot (`view`), and the
//! values a reader reports (`info`).

mod api;
mod builder;
mod lifecycle;
mod refresh;
#[cfg(test)]
mod tests;

pub use api::Reader;
pub use builder::ReaderBuilder;
