//! Limits on reads: keys per second and value bytes per second, one token
//! bucket each ([`sf_manifest::ratelimit::Bucket`], the one the writer's
//! limits use too).
//!
//! How a read is let in, in full:
//!
//! - before it starts, the reader computes how long the read would have to
//!   wait: until the keys bucket holds the read's keys (or the whole burst,
//!   one second's worth, when the read asks for more than that) and the
//!   bytes bucket is out of debt;
//! - a wait of at most `rate_limit_max_wait` (default 1 s; 0: never wait)
//!   is taken: the keys are taken from the bucket at once (so callers that
//!   come later queue behind), then the read sleeps that long and runs;
//! - a longer wait fails at once, before any work, with
//!   [`Error::RateLimited`], which names the
//!   time after which the same read would be let in. No read waits longer
//!   than `rate_limit_max_wait`, and none waits forever: a read of more
//!   keys than the bucket holds waits for a full bucket and leaves the
//!   rest as debt that later reads pay;
//! - the bytes of the values it returns are charged when it ends (the
//!   reader cannot know them before): a read that brings back more than
//!   the bytes bucket holds puts it into debt, and later reads wait or are
//!   refused until the debt is paid.
//!
//! `sf-serve` keeps one [`ReadLimiter`] per client (per token), with no
//! wait at all, and answers a refused request with 429 and `Retry-After`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sf_manifest::ratelimit::{Bucket, Clock, SystemClock};

use crate::error::{Error, Result};

/// The limits of a [`ReadLimiter`]; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReadLimits {
    /// Keys read per second (a `get` is one key, a `multi_get` its keys, a
    /// search its hits' values fetched plus one).
    pub keys_per_second: Option<f64>,
    /// Bytes of values returned per second.
    pub bytes_per_second: Option<f64>,
    /// The longest a read waits to be let in; a read that would have to
    /// wait longer fails at once with [`Error::RateLimited`].
    pub max_wait: Duration,
}

impl ReadLimits {
    /// Checks each rate is a positive finite number; the error names
    /// `keys_field` or `bytes_field`.
    pub fn validate(&self, keys_field: &str, bytes_field: &str) -> Result<()> {
        for (field, v) in [(keys_field, self.keys_per_second), (bytes_field, self.bytes_per_second)] {
            if let Some(v) = v
                && !(v > 0.0 && v.is_finite())
            {
                return Err(Error::config(
                    field,
                    format!("{v} is not a positive rate; leave it out for no limit"),
                ));
            }
        }
        Ok(())
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.keys_per_second.is_some() || self.bytes_per_second.is_some()
    }
}

#[derive(Debug)]
struct Buckets {
    keys: Option<Bucket>,
    bytes: Option<Bucket>,
}

/// Keys/s and bytes/s buckets shared by every caller of one reader (or one
/// client of `sf-serve`); see the module docs. `Send + Sync`: each call
/// holds its lock only for a few arithmetic operations.
#[derive(Debug)]
pub struct ReadLimiter {
    buckets: Mutex<Buckets>,
    limits: ReadLimits,
    clock: Arc<dyn Clock>,
}

impl ReadLimiter {
    /// A limiter on the system clock.
    pub fn new(limits: ReadLimits) -> Self {
        Self::with_clock(limits, Arc::new(SystemClock::default()))
    }

    /// A limiter on `clock` (tests move a
    /// [`ManualClock`](sf_manifest::ratelimit::ManualClock)).
    pub fn with_clock(limits: ReadLimits, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        let bucket = |r: Option<f64>| r.and_then(|r| Bucket::new(r, now));
        ReadLimiter {
            buckets: Mutex::new(Buckets {
                keys: bucket(limits.keys_per_second),
                bytes: bucket(limits.bytes_per_second),
            }),
            limits,
            clock,
        }
    }

    /// Its limits.
    pub fn limits(&self) -> ReadLimits {
        self.limits
    }

    /// How long a read of `keys` keys would wait to be let in now; takes
    /// nothing.
    pub fn wait_for(&self, keys: u64) -> Duration {
        let now = self.clock.now();
        let mut b = sf_manifest::sync::lock(&self.buckets);
        Self::wait_locked(&mut b, keys, now)
    }

    fn wait_locked(b: &mut Buckets, keys: u64, now: Duration) -> Duration {
        let k = b.keys.as_mut().map_or(Duration::ZERO, |k| k.wait_for(keys as f64, now));
        let y = b.bytes.as_mut().map_or(Duration::ZERO, |y| y.wait_for(0.0, now));
        k.max(y)
    }

    /// Lets a read of `keys` keys in: how long it must wait first (at most
    /// `max_wait`; its keys are taken already), or
    /// [`Error::RateLimited`] at once, taking nothing, when the wait would
    /// be longer.
    pub fn acquire(&self, keys: u64) -> Result<Duration> {
        let now = self.clock.now();
        let mut b = sf_manifest::sync::lock(&self.buckets);
        let wait = Self::wait_locked(&mut b, keys, now);
        if wait > self.limits.max_wait {
            return Err(Error::RateLimited {
                retry_after: wait,
                max_wait: self.limits.max_wait,
            });
        }
        if let Some(k) = b.keys.as_mut() {
            k.take(keys as f64, now);
        }
        Ok(wait)
    }

    /// [`acquire`](Self::acquire), then sleep the wait on the runtime.
    pub async fn admit(&self, keys: u64) -> Result<()> {
        let wait = self.acquire(keys)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Charges `keys` more keys and `bytes` bytes of values read, after
    /// the fact (their debt, if any, is paid by the reads that follow).
    pub fn charge(&self, keys: u64, bytes: u64) {
        let now = self.clock.now();
        let mut b = sf_manifest::sync::lock(&self.buckets);
        if keys > 0
            && let Some(k) = b.keys.as_mut()
        {
            k.take(keys as f64, now);
        }
        if bytes > 0
            && let Some(y) = b.bytes.as_mut()
        {
            y.take(bytes as f64, now);
        }
    }
}

/// The bytes of the values found.
pub(crate) fn value_bytes<'a>(values: impl IntoIterator<Item = &'a Option<bytes::Bytes>>) -> u64 {
    values.into_iter().flatten().map(|v| v.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_manifest::Classified;
    use sf_manifest::ratelimit::ManualClock;

    fn limiter(keys: Option<f64>, bytes: Option<f64>, max_wait: Duration) -> (Arc<ManualClock>, ReadLimiter) {
        let clock = Arc::new(ManualClock::default());
        let limits = ReadLimits {
            keys_per_second: keys,
            bytes_per_second: bytes,
            max_wait,
        };
        (clock.clone(), ReadLimiter::with_clock(limits, clock))
    }

    fn close(d: Duration, secs: f64) -> bool {
        (d.as_secs_f64() - secs).abs() < 1e-6
    }

    #[test]
    fn the_bucket_refills_with_time() {
        let (clock, l) = limiter(Some(10.0), None, Duration::ZERO);
        assert_eq!(l.acquire(10).expect("the first second is free"), Duration::ZERO);
        let e = l.acquire(1).expect_err("empty");
        let Error::RateLimited { retry_after, .. } = e else {
            panic!("{e:?}")
        };
        assert!(close(retry_after, 0.1), "{retry_after:?}");
        clock.advance(Duration::from_millis(100));
        assert_eq!(l.acquire(1).expect("refilled"), Duration::ZERO);
        // An hour idle buys one second of burst, no more.
        clock.advance(Duration::from_secs(3600));
        assert_eq!(l.acquire(10).expect("burst"), Duration::ZERO);
        assert!(l.acquire(1).is_err());
    }

    #[test]
    fn a_read_bigger_than_the_bucket_waits_a_bounded_time_or_fails_at_once() {
        // Waiting allowed: a million keys against a bucket of 10 run once
        // the bucket is full; the excess is debt the next reads pay.
        let (clock, l) = limiter(Some(10.0), None, Duration::from_secs(2));
        assert_eq!(l.acquire(1_000_000).expect("a full bucket lets it in"), Duration::ZERO);
        let e = l.acquire(1).expect_err("the debt is far above the wait allowed");
        assert!(
            matches!(e, Error::RateLimited { retry_after, .. } if close(retry_after, 99_999.1)),
            "{e:?}"
        );
        assert_eq!(e.kind(), sf_manifest::ErrorKind::Unavailable, "retryable later");
        assert!(e.to_string().contains("try again in"), "{e}");
        clock.advance(Duration::from_secs(99_999));
        // 0.1 s short of 1 token: within the wait allowed.
        let w = l.acquire(1).expect("bounded wait");
        assert!(close(w, 0.1), "{w:?}");
        // A big read after a partial refill waits for a full bucket.
        let (clock, l) = limiter(Some(10.0), None, Duration::from_secs(2));
        l.acquire(10).expect("burst");
        clock.advance(Duration::from_millis(500));
        let w = l.acquire(500).expect("waits for the rest of a full bucket");
        assert!(close(w, 0.5), "{w:?}");
        // Without waiting: refused at once with the time it would take.
        let (_clock, l) = limiter(Some(10.0), None, Duration::ZERO);
        l.acquire(5).expect("half");
        let e = l.acquire(1_000_000).expect_err("not full");
        assert!(
            matches!(e, Error::RateLimited { retry_after, .. } if close(retry_after, 0.5)),
            "{e:?}"
        );
    }

    #[test]
    fn bytes_are_charged_after_the_read_and_refuse_the_next_until_paid() {
        let (clock, l) = limiter(None, Some(1000.0), Duration::ZERO);
        assert_eq!(l.acquire(1).expect("no debt"), Duration::ZERO);
        l.charge(0, 3000);
        let e = l.acquire(1).expect_err("in debt");
        assert!(
            matches!(e, Error::RateLimited { retry_after, .. } if close(retry_after, 2.0)),
            "{e:?}"
        );
        assert!(close(l.wait_for(1), 2.0));
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.acquire(1).expect("paid"), Duration::ZERO);
    }

    #[test]
    fn concurrent_callers_share_the_bucket_without_losing_a_token() {
        let (_clock, l) = limiter(Some(100.0), None, Duration::from_secs(3600));
        let l = Arc::new(l);
        let waits: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let l = Arc::clone(&l);
                    s.spawn(move || {
                        (0..50)
                            .map(|_| l.acquire(1).expect("within an hour"))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("thread")).collect()
        });
        // 400 keys against 100/s: the first 100 free, each later one
        // queued 10 ms behind the one before it, whatever thread took it.
        let mut waits: Vec<f64> = waits.iter().map(Duration::as_secs_f64).collect();
        waits.sort_by(f64::total_cmp);
        assert_eq!(waits.iter().filter(|w| **w == 0.0).count(), 100);
        assert!((waits[399] - 3.0).abs() < 1e-6, "{}", waits[399]);
    }

    #[tokio::test(start_paused = true)]
    async fn admit_sleeps_the_wait_on_the_runtime_clock() {
        let l = ReadLimiter::new(ReadLimits {
            keys_per_second: Some(1000.0),
            bytes_per_second: None,
            max_wait: Duration::from_secs(5),
        });
        l.charge(3000, 0);
        let start = tokio::time::Instant::now();
        l.admit(1).await.expect("within the wait");
        assert!(start.elapsed() >= Duration::from_secs(2), "{:?}", start.elapsed());
    }

    #[test]
    fn nonsense_rates_name_their_field() {
        for bad in [0.0, -5.0, f64::NAN] {
            let limits = ReadLimits {
                keys_per_second: Some(bad),
                ..Default::default()
            };
            let e = limits
                .validate("max_keys_per_second", "b")
                .expect_err("bad")
                .to_string();
            assert!(e.contains("max_keys_per_second"), "{e}");
        }
        ReadLimits::default().validate("a", "b").expect("no limit is valid");
    }
}
