//! The one token bucket, shared by the writer's limits on shard writes and
//! the reader's limits on lookups, and the clock it reads (replaceable, so
//! that tests move time instead of sleeping).
//!
//! A [`Bucket`] holds `rate` tokens per second, at most `burst` (one
//! second's worth). It may go into debt: taking more tokens than it holds
//! leaves a negative balance that later callers pay by waiting. Nothing
//! here sleeps or loops; each call is arithmetic that says how long the
//! caller would have to wait, so a request for more than the bucket can
//! ever hold gets a finite answer instead of a wait that never ends.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A source of monotonic time, replaceable in tests.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time elapsed since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that only moves when told to ([`advance`](Self::advance)): for
/// tests of anything limited by a [`Bucket`].
#[derive(Debug, Default)]
pub struct ManualClock(Mutex<Duration>);

impl ManualClock {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        *crate::sync::lock(&self.0) += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *crate::sync::lock(&self.0)
    }
}

/// One token bucket: `rate` tokens per second, holding at most `burst`
/// (one second of tokens, and at least one token), full at the start.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl Bucket {
    /// A full bucket of `rate` tokens per second at time `now`; `None`
    /// when `rate` is not a positive finite number (no limit).
    pub fn new(rate: f64, now: Duration) -> Option<Self> {
        if !(rate > 0.0 && rate.is_finite()) {
            return None;
        }
        // One second of tokens is the burst: smooth, yet a request never
        // waits longer than its own size requires.
        let burst = rate.max(1.0);
        Some(Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        })
    }

    /// Tokens per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The most tokens the bucket holds.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    fn seconds(&self, missing: f64) -> Duration {
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(missing / self.rate).unwrap_or(Duration::MAX)
        }
    }

    /// Takes `n` tokens, going into debt when the bucket holds fewer, and
    /// returns how long the caller must wait for the balance to be paid
    /// back (zero when it stays at or above zero). The wait of a request
    /// bigger than the burst is in proportion to its size, and finite.
    pub fn take(&mut self, n: f64, now: Duration) -> Duration {
        self.refill(now);
        self.tokens -= n;
        self.seconds(-self.tokens)
    }

    /// Takes nothing; returns how long until the bucket holds `n` tokens,
    /// or its whole burst when `n` is more (a request bigger than the
    /// bucket is let in when the bucket is full, and its excess becomes
    /// debt). Zero when it holds them now.
    pub fn wait_for(&mut self, n: f64, now: Duration) -> Duration {
        self.refill(now);
        self.seconds(n.min(self.burst) - self.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn no_bucket_without_a_positive_finite_rate() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Bucket::new(bad, Duration::ZERO).is_none(), "{bad}");
        }
    }

    #[test]
    fn debt_is_paid_by_waiting_in_proportion() {
        let mut b = Bucket::new(10.0, Duration::ZERO).expect("bucket");
        assert_eq!(b.take(10.0, Duration::ZERO), Duration::ZERO);
        let w = b.take(1000.0, Duration::ZERO);
        assert!((secs(w) - 100.0).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn wait_for_caps_the_need_at_the_burst_and_refills() {
        let mut b = Bucket::new(4.0, Duration::ZERO).expect("bucket");
        assert_eq!(b.wait_for(1_000_000.0, Duration::ZERO), Duration::ZERO, "full");
        b.take(6.0, Duration::ZERO);
        // -2 tokens: a million-token request waits for a full bucket, 1.5 s.
        let w = b.wait_for(1_000_000.0, Duration::ZERO);
        assert!((secs(w) - 1.5).abs() < 1e-9, "{w:?}");
        let w = b.wait_for(0.0, Duration::from_millis(250));
        assert!((secs(w) - 0.25).abs() < 1e-9, "{w:?}");
        assert_eq!(b.wait_for(0.0, Duration::from_millis(500)), Duration::ZERO);
        // A clock read out of order never adds tokens twice.
        assert!(!b.wait_for(4.0, Duration::from_millis(100)).is_zero());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::default();
        assert_eq!(c.now(), Duration::ZERO);
        c.advance(Duration::from_secs(3));
        assert_eq!(c.now(), Duration::from_secs(3));
    }
}
