//! Counters of what a reader did: opens, downloads, cache use, ranged
//! reads, refreshes. Cheap (relaxed atomics), for operators and tests.
//!
//! Every counter is also emitted through the [`metrics`] facade, with two
//! gauges of the served snapshot, so a service that embeds the reader and
//! installs a recorder (a Prometheus exporter, say) gets the same figures,
//! under the names in [`METRICS`] (the catalog of every name the reader
//! emits), labelled with what the builder was given
//! ([`ReaderBuilder::with_metric_label`](crate::ReaderBuilder::with_metric_label)).

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
    /// Bytes of the shard cache folder's files (`.db` and `.sum`) after
    /// the last eviction pass of this reader (see
    /// [`ReaderSettings::cache_max_bytes`](crate::ReaderSettings::cache_max_bytes)).
    pub cache_bytes: u64,
    /// Cached shard files this reader's eviction passes removed.
    pub cache_evictions: u64,
    /// Eviction passes that left the folder above `cache_max_bytes`
    /// because every file left was held by a served or kept snapshot.
    pub cache_over_bound: u64,
}

// The one spelling of each name: `METRICS` lists them and the
// registrations in `Counters::new` take them from here.
const SHARD_OPENS: &str = "sf_reader_shard_opens_total";
const DOWNLOADS: &str = "sf_reader_downloads_total";
const DOWNLOAD_BYTES: &str = "sf_reader_download_bytes_total";
const CACHE_HITS: &str = "sf_reader_cache_hits_total";
const CACHE_REPAIRS: &str = "sf_reader_cache_repairs_total";
const RANGE_REQUESTS: &str = "sf_reader_range_requests_total";
const RANGE_BYTES: &str = "sf_reader_range_bytes_total";
const REFRESHES: &str = "sf_reader_refreshes_total";
const REFRESH_FAILURES: &str = "sf_reader_refresh_failures_total";
const SWAPS: &str = "sf_reader_swaps_total";
const MEMORY_FALLBACKS: &str = "sf_reader_memory_fallbacks_total";
const CACHE_EVICTIONS: &str = "sf_reader_cache_evictions_total";
const CACHE_OVER_BOUND: &str = "sf_reader_cache_over_bound_total";
const CACHE_BYTES: &str = "sf_reader_cache_bytes";
const CACHE_MAX_BYTES: &str = "sf_reader_cache_max_bytes";
const SNAPSHOT_CREATED_SECONDS: &str = "sf_reader_snapshot_created_seconds";
const VERSIONS_HELD: &str = "sf_reader_versions_held";

/// Every name the reader emits through the `metrics` facade, with what
/// each counts (a test checks that the reader emits these and nothing
/// else). Counters end in `_total`; two gauges are set when a snapshot
/// is loaded or swapped in, the cache's size after each eviction pass,
/// and its bound once, when the reader has one.
pub const METRICS: &[(&str, &str)] = &[
    (SHARD_OPENS, "shards opened"),
    (DOWNLOADS, "SQLite shard files downloaded into the cache"),
    (DOWNLOAD_BYTES, "bytes downloaded"),
    (CACHE_HITS, "cached shard files reused without a download"),
    (CACHE_REPAIRS, "cached shard files found damaged and fetched again"),
    (RANGE_REQUESTS, "ranged GETs of range-mode shards"),
    (RANGE_BYTES, "bytes those GETs returned"),
    (REFRESHES, "refresh attempts"),
    (REFRESH_FAILURES, "refresh attempts that failed"),
    (SWAPS, "snapshot swaps"),
    (
        MEMORY_FALLBACKS,
        "shards that were to be held in memory but stayed on SQLite (memory_limit_bytes reached)",
    ),
    (CACHE_EVICTIONS, "cached shard files evicted (cache_max_bytes)"),
    (
        CACHE_OVER_BOUND,
        "eviction passes that left the cache above cache_max_bytes: every file left was held",
    ),
    (
        CACHE_BYTES,
        "bytes of the shard cache folder after the last eviction pass (gauge)",
    ),
    (
        CACHE_MAX_BYTES,
        "the shard cache's bound, cache_max_bytes; absent when the cache has none (gauge)",
    ),
    (
        SNAPSHOT_CREATED_SECONDS,
        "the served snapshot's created_at, in Unix seconds (gauge)",
    ),
    (
        VERSIONS_HELD,
        "snapshots held open: the served one and the kept ones (gauge)",
    ),
];

/// One counter: an atomic for [`ReaderStats`] and its handle in the
/// installed `metrics` recorder (a no-op handle when none is).
#[derive(Debug)]
pub(crate) struct Counter {
    value: AtomicU64,
    metric: metrics::Counter,
}

impl Counter {
    fn new(name: &'static str, labels: &[metrics::Label]) -> Self {
        Counter {
            value: AtomicU64::new(0),
            metric: metrics::counter!(name, labels.to_vec()),
        }
    }

    fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) shard_opens: Counter,
    pub(crate) downloads: Counter,
    pub(crate) download_bytes: Counter,
    pub(crate) cache_hits: Counter,
    pub(crate) cache_repairs: Counter,
    pub(crate) range_requests: Counter,
    pub(crate) range_bytes: Counter,
    pub(crate) refreshes: Counter,
    pub(crate) refresh_failures: Counter,
    pub(crate) swaps: Counter,
    pub(crate) memory_fallbacks: Counter,
    pub(crate) cache_evictions: Counter,
    pub(crate) cache_over_bound: Counter,
    cache_bytes: AtomicU64,
    cache_bytes_gauge: metrics::Gauge,
    labels: Vec<metrics::Label>,
    pub(crate) snapshot_created: metrics::Gauge,
    pub(crate) versions_held: metrics::Gauge,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new(&[])
    }
}

pub(crate) fn bump(c: &Counter, by: u64) {
    c.value.fetch_add(by, Ordering::Relaxed);
    c.metric.increment(by);
}

impl Counters {
    /// Counters registered with the installed `metrics` recorder under
    /// `labels` (registered once here, so a bump costs no lookup).
    pub(crate) fn new(labels: &[(String, String)]) -> Self {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(k, v)| metrics::Label::new(k.clone(), v.clone()))
            .collect();
        let c = |name| Counter::new(name, &labels);
        Counters {
            shard_opens: c(SHARD_OPENS),
            downloads: c(DOWNLOADS),
            download_bytes: c(DOWNLOAD_BYTES),
            cache_hits: c(CACHE_HITS),
            cache_repairs: c(CACHE_REPAIRS),
            range_requests: c(RANGE_REQUESTS),
            range_bytes: c(RANGE_BYTES),
            refreshes: c(REFRESHES),
            refresh_failures: c(REFRESH_FAILURES),
            swaps: c(SWAPS),
            memory_fallbacks: c(MEMORY_FALLBACKS),
            cache_evictions: c(CACHE_EVICTIONS),
            cache_over_bound: c(CACHE_OVER_BOUND),
            cache_bytes: AtomicU64::new(0),
            cache_bytes_gauge: metrics::gauge!(CACHE_BYTES, labels.clone()),
            snapshot_created: metrics::gauge!(SNAPSHOT_CREATED_SECONDS, labels.clone()),
            versions_held: metrics::gauge!(VERSIONS_HELD, labels.clone()),
            labels,
        }
    }

    pub(crate) fn snapshot(&self) -> ReaderStats {
        ReaderStats {
            shard_opens: self.shard_opens.get(),
            downloads: self.downloads.get(),
            download_bytes: self.download_bytes.get(),
            cache_hits: self.cache_hits.get(),
            cache_repairs: self.cache_repairs.get(),
            range_requests: self.range_requests.get(),
            range_bytes: self.range_bytes.get(),
            refreshes: self.refreshes.get(),
            refresh_failures: self.refresh_failures.get(),
            swaps: self.swaps.get(),
            block_cache_bytes: 0,
            memory_bytes: 0,
            memory_shards: 0,
            memory_fallbacks: self.memory_fallbacks.get(),
            cache_bytes: self.cache_bytes.load(Ordering::Relaxed),
            cache_evictions: self.cache_evictions.get(),
            cache_over_bound: self.cache_over_bound.get(),
        }
    }

    /// Publishes the cache's bound (a reader with a bounded cache only, so
    /// that the series exists exactly when there is a bound to compare to).
    pub(crate) fn set_cache_max_bytes(&self, bytes: u64) {
        metrics::gauge!(CACHE_MAX_BYTES, self.labels.clone()).set(bytes as f64);
    }

    /// Records the cache folder's size after an eviction pass.
    pub(crate) fn set_cache_bytes(&self, bytes: u64) {
        self.cache_bytes.store(bytes, Ordering::Relaxed);
        self.cache_bytes_gauge.set(bytes as f64);
    }
}
