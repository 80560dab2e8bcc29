//! Token buckets on rows/s and bytes/s, one pair per shard attempt.
//!
//! [`RateLimiter::acquire`] never blocks by itself: it takes the tokens
//! (going into debt when a batch is bigger than what the bucket holds) and
//! returns how long the caller must wait before writing. A batch larger than
//! the bucket therefore waits in proportion to its size, and always returns;
//! callers sleep with whatever fits their thread (`std::thread::sleep` on a
//! blocking thread, `tokio::time::sleep` in async code).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sf_manifest::ratelimit::Bucket;
pub use sf_manifest::ratelimit::{Clock, SystemClock};

/// Write limits for one shard attempt; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RateLimits {
    /// Rows per second.
    pub rows_per_second: Option<f64>,
    /// Key plus value bytes per second.
    pub bytes_per_second: Option<f64>,
}

impl RateLimits {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.rows_per_second.is_some() || self.bytes_per_second.is_some()
    }
}

/// Rows/s and bytes/s buckets for one shard attempt.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rows: Option<Bucket>,
    bytes: Option<Bucket>,
    clock: Arc<dyn Clock>,
}

impl RateLimiter {
    /// A limiter on the system clock.
    pub fn new(limits: RateLimits) -> Self {
        Self::with_clock(limits, Arc::new(SystemClock::default()))
    }

    /// A limiter on `clock`.
    pub fn with_clock(limits: RateLimits, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        let bucket = |r: Option<f64>| r.and_then(|r| Bucket::new(r, now));
        RateLimiter {
            rows: bucket(limits.rows_per_second),
            bytes: bucket(limits.bytes_per_second),
            clock,
        }
    }

    /// Takes `rows` and `bytes` tokens; returns how long to wait before the
    /// write they stand for (zero when within the limits).
    pub fn acquire(&mut self, rows: u64, bytes: u64) -> Duration {
        let unlimited = self.rows.is_none() && self.bytes.is_none();
        if unlimited || sf_manifest::publish::failpoint::sabotaged("skip-rate-limiter") {
            return Duration::ZERO;
        }
        let now = self.clock.now();
        let a = self.rows.as_mut().map_or(Duration::ZERO, |b| b.take(rows as f64, now));
        let b = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(bytes as f64, now));
        a.max(b)
    }

    /// [`acquire`](Self::acquire), then sleep on this (blocking) thread.
    pub fn acquire_blocking(&mut self, rows: u64, bytes: u64) {
        let wait = self.acquire(rows, bytes);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// [`acquire`](Self::acquire), then sleep asynchronously.
    pub async fn acquire_async(&mut self, rows: u64, bytes: u64) {
        let wait = self.acquire(rows, bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use sf_manifest::ratelimit::ManualClock;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn unlimited_never_waits() {
        let mut l = RateLimiter::new(RateLimits::default());
        assert_eq!(l.acquire(u64::MAX, u64::MAX), Duration::ZERO);
    }

    #[test]
    fn holds_the_rate_over_time() {
        let clock = Arc::new(ManualClock::default());
        let limits = RateLimits {
            rows_per_second: Some(100.0),
            bytes_per_second: None,
        };
        let mut l = RateLimiter::with_clock(limits, clock.clone());
        // The first second's burst is free.
        assert_eq!(l.acquire(100, 0), Duration::ZERO);
        // Then each 10 rows cost 0.1 s; the caller sleeps, time advances.
        let mut total = Duration::ZERO;
        for _ in 0..50 {
            let w = l.acquire(10, 0);
            total += w;
            clock.advance(w);
        }
        assert!(
            (secs(total) - 5.0).abs() < 1e-6,
            "500 rows at 100/s after the burst: {total:?}"
        );
    }

    #[test]
    fn a_batch_bigger_than_the_bucket_waits_in_proportion_and_returns() {
        let clock = Arc::new(ManualClock::default());
        let limits = RateLimits {
            rows_per_second: Some(10.0),
            bytes_per_second: Some(1000.0),
        };
        let mut l = RateLimiter::with_clock(limits, clock.clone());
        // 1,000 rows against a bucket of 10: (1000 - 10) / 10 = 99 s, not forever.
        let w = l.acquire(1000, 0);
        assert!((secs(w) - 99.0).abs() < 1e-6, "{w:?}");
        clock.advance(w);
        // The debt is paid: one more row after a tenth of a second is free.
        clock.advance(Duration::from_millis(100));
        assert_eq!(l.acquire(1, 0), Duration::ZERO);
        // The stricter bucket decides: 5,000 bytes at 1,000/s.
        let w = l.acquire(1, 5000);
        assert!((secs(w) - 4.0).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let clock = Arc::new(ManualClock::default());
        let limits = RateLimits {
            rows_per_second: Some(50.0),
            bytes_per_second: None,
        };
        let mut l = RateLimiter::with_clock(limits, clock.clone());
        clock.advance(Duration::from_secs(3600));
        assert_eq!(l.acquire(50, 0), Duration::ZERO);
        let w = l.acquire(50, 0);
        assert!(
            (secs(w) - 1.0).abs() < 1e-6,
            "an hour idle buys one second of burst: {w:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn async_acquire_sleeps_on_the_runtime_clock() {
        let mut l = RateLimiter::new(RateLimits {
            rows_per_second: None,
            bytes_per_second: Some(1e9),
        });
        let start = tokio::time::Instant::now();
        l.acquire_async(0, 3_000_000_000).await;
        assert!(start.elapsed() >= Duration::from_secs(1));
    }
}
