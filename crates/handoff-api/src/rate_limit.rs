//! Per-key request rate limits (the contract's 429): a token bucket for every key or session
//! that makes requests, so that one runaway client is refused instead of slowing everyone's pops.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many requests one key may make: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// A bucket left alone this long is full again and says nothing a new one would not.
const FORGET_IDLE_AFTER: Duration = Duration::from_secs(60);
/// Buckets kept before idle ones are forgotten: keys are few, but sessions come and go.
const MAX_BUCKETS_BEFORE_PRUNING: usize = 10_000;

/// The buckets of every key seen lately. Without a limit it lets everything through and keeps
/// nothing.
#[derive(Debug)]
pub struct RateLimiter {
    limit: Option<RateLimit>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    pub fn new(limit: Option<RateLimit>) -> RateLimiter {
        RateLimiter {
            limit: limit.filter(|l| l.per_second > 0 && l.burst > 0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's token from `key_id`'s bucket at `now`, or says after how many whole
    /// seconds (at least one) the next token will be there.
    pub fn check(&self, key_id: &str, now: Instant) -> Result<(), u64> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let rate = f64::from(limit.per_second);
        let burst = f64::from(limit.burst);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_BUCKETS_BEFORE_PRUNING && !buckets.contains_key(key_id) {
            buckets.retain(|_, bucket| now.duration_since(bucket.refilled_at) < FORGET_IDLE_AFTER);
        }
        if !buckets.contains_key(key_id) {
            let full = Bucket {
                tokens: burst,
                refilled_at: now,
            };
            buckets.insert(key_id.to_owned(), full);
        }
        let bucket = buckets.get_mut(key_id).expect("inserted above");
        let elapsed = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    /// The configured limit, if any.
    pub fn limit(&self) -> Option<RateLimit> {
        self.limit
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(Some(RateLimit { per_second, burst }))
    }

    #[test]
    fn a_key_gets_its_burst_at_once_then_waits_for_the_rate() {
        let limiter = limiter(2, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("k", t0), Ok(()));
        }
        assert_eq!(limiter.check("k", t0), Err(1));
        // Half a second at 2 a second is one token.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(limiter.check("k", later), Ok(()));
        assert_eq!(limiter.check("k", later), Err(1));
    }

    #[test]
    fn the_wait_named_is_long_enough_at_a_slow_rate() {
        let limiter = RateLimiter::new(Some(RateLimit {
            per_second: 1,
            burst: 1,
        }));
        let t0 = Instant::now();
        assert_eq!(limiter.check("k", t0), Ok(()));
        let refused_for = limiter.check("k", t0).unwrap_err();
        assert_eq!(refused_for, 1);
        assert_eq!(
            limiter.check("k", t0 + Duration::from_secs(refused_for)),
            Ok(())
        );
    }

    #[test]
    fn keys_have_buckets_of_their_own() {
        let limiter = limiter(1, 1);
        let t0 = Instant::now();
        assert_eq!(limiter.check("a", t0), Ok(()));
        assert!(limiter.check("a", t0).is_err());
        assert_eq!(limiter.check("b", t0), Ok(()));
    }

    #[test]
    fn an_idle_bucket_fills_to_the_burst_and_no_further() {
        let limiter = limiter(10, 2);
        let t0 = Instant::now();
        assert_eq!(limiter.check("k", t0), Ok(()));
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!(limiter.check("k", much_later), Ok(()));
        assert_eq!(limiter.check("k", much_later), Ok(()));
        assert!(limiter.check("k", much_later).is_err());
    }

    #[test]
    fn without_a_limit_everything_passes_and_nothing_is_kept() {
        for limiter in [
            RateLimiter::new(None),
            RateLimiter::new(Some(RateLimit {
                per_second: 0,
                burst: 5,
            })),
        ] {
            let t0 = Instant::now();
            for _ in 0..1000 {
                assert_eq!(limiter.check("k", t0), Ok(()));
            }
            assert_eq!(limiter.tracked(), 0);
        }
    }

    #[test]
    fn idle_buckets_are_forgotten_once_many_are_kept() {
        let limiter = limiter(1, 1);
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS_BEFORE_PRUNING {
            limiter.check(&format!("session-{i}"), t0).unwrap();
        }
        assert_eq!(limiter.tracked(), MAX_BUCKETS_BEFORE_PRUNING);
        let later = t0 + FORGET_IDLE_AFTER;
        limiter.check("newcomer", later).unwrap();
        assert_eq!(limiter.tracked(), 1);
    }
}
