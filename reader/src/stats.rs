//! Counters of what a reader did: opens, downloads, cache use, ranged
//! reads, refreshes. Cheap (relaxed atomics), for operators and tests.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// What a reader has done since it was built; see [`Reader::stats`](crate::Reader::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReaderStats {
    /// Shards opened (each shard of a snapshot opens once; a shard that a
    /// refresh carries over unchanged is not opened again).
    pub shard_opens: u64,
    /// SQLite shard files downloaded into the cache.
    pub downloads: u64,
    /// Bytes downloaded.
    pub download_bytes: u64,
    /// Cached shard files reused without a download (this or another process
    /// fetched them).
    pub cache_hits: u64,
    /// Cached shard files found damaged and fetched again.
    pub cache_repairs: u64,
    /// Ranged GETs of range-mode shards.
    pub range_requests: u64,
    /// Bytes those GETs returned.
    pub range_bytes: u64,
    /// Refresh attempts (manual and background).
    pub refreshes: u64,
    /// Refresh attempts that failed (the previous snapshot kept serving).
    pub refresh_failures: u64,
    /// Snapshot swaps.
    pub swaps: u64,
    /// Bytes held now by the range-mode block cache.
    pub block_cache_bytes: u64,
    /// Bytes held now by memory-mode shards (keys, values, hash tables;
    /// loads in progress count their reservation), at most
    /// `memory_limit_bytes`.
    pub memory_bytes: u64,
    /// Shards held in memory now.
    pub memory_shards: u64,
    /// Shard opens that were to load into memory but stayed in download
    /// mode because `memory_limit_bytes` was reached.
    pub memory_fallbacks: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) shard_opens: AtomicU64,
    pub(crate) downloads: AtomicU64,
    pub(crate) download_bytes: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_repairs: AtomicU64,
    pub(crate) range_requests: AtomicU64,
    pub(crate) range_bytes: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) refresh_failures: AtomicU64,
    pub(crate) swaps: AtomicU64,
    pub(crate) memory_fallbacks: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ReaderStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReaderStats {
            shard_opens: l(&self.shard_opens),
            downloads: l(&self.downloads),
            download_bytes: l(&self.download_bytes),
            cache_hits: l(&self.cache_hits),
            cache_repairs: l(&self.cache_repairs),
            range_requests: l(&self.range_requests),
            range_bytes: l(&self.range_bytes),
            refreshes: l(&self.refreshes),
            refresh_failures: l(&self.refresh_failures),
            swaps: l(&self.swaps),
            block_cache_bytes: 0,
            memory_bytes: 0,
            memory_shards: 0,
            memory_fallbacks: l(&self.memory_fallbacks),
        }
    }
}
