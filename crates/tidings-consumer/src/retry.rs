//! [`RetryPolicy`]: how often and how long after a failure an event is tried again.
//!
//! The delay before retry `n` (after `n` failed attempts, from 1) is
//! `min(cap, base × 2^(n-1))`, then jittered:
//!
//! - [`Jitter::None`]: exactly that;
//! - [`Jitter::Full`]: uniform in `[0, d]` (spreads a thundering herd the most);
//! - [`Jitter::Equal`]: `d/2` plus uniform in `[0, d/2]` (never retries immediately).
//!
//! Delays are whole milliseconds, the resolution of Tokio's timer (jitter draws a whole
//! number of milliseconds). Randomness comes from a [`JitterRng`] the caller seeds, so a test computes the exact
//! schedule a consumer will follow.

use std::time::Duration;

/// How the exponential delay is randomized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// No randomness.
    None,
    /// Uniform between zero and the delay.
    #[default]
    Full,
    /// Half the delay plus uniform up to the other half.
    Equal,
}

/// A small seedable generator (SplitMix64) for jitter; seed it to replay a schedule.
#[derive(Debug, Clone)]
pub struct JitterRng(u64);

impl JitterRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from the process's hash randomness and the time.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Self(h.finish())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next_u64() % n,
            None => self.next_u64(),
        }
    }
}

/// How many times an event is attempted and how long to wait between attempts.
///
/// ```
/// use std::time::Duration;
/// use tidings::consumer::{Jitter, JitterRng, RetryPolicy};
/// let policy = RetryPolicy::new(4)
///     .base(Duration::from_millis(100))
///     .cap(Duration::from_millis(250))
///     .jitter(Jitter::None);
/// let mut rng = JitterRng::new(7);
/// let delays: Vec<_> = (1..4).map(|n| policy.delay(n, &mut rng)).collect();
/// assert_eq!(delays, [100, 200, 250].map(Duration::from_millis));
/// assert!(policy.should_retry(3) && !policy.should_retry(4));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    cap: Duration,
    jitter: Jitter,
}

impl Default for RetryPolicy {
    /// 5 attempts, 100 ms base, 30 s cap, full jitter.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// At most `max_attempts` attempts in all (the first one included; at least 1),
    /// with the default delays.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }

    /// One attempt, no retries: a failure parks the event at once.
    pub fn no_retries() -> Self {
        Self::new(1)
    }

    /// The delay before the first retry (whole milliseconds; less counts as 0).
    pub fn base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The longest delay.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// How delays are randomized.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether an event that has failed `failed_attempts` times gets another attempt.
    pub fn should_retry(&self, failed_attempts: u32) -> bool {
        failed_attempts < self.max_attempts
    }

    /// The delay before the next attempt of an event that has failed `failed_attempts`
    /// times (from 1).
    pub fn delay(&self, failed_attempts: u32, rng: &mut JitterRng) -> Duration {
        let capped = exponential_millis(self.base, self.cap, failed_attempts);
        let jittered = match self.jitter {
            Jitter::None => capped,
            Jitter::Full => rng.up_to(capped),
            Jitter::Equal => capped / 2 + rng.up_to(capped - capped / 2),
        };
        Duration::from_millis(jittered)
    }
}

/// `base × 2^(failures-1)`, at most `cap`, in whole milliseconds: the exponential step
/// every backoff of this crate shares (retries, the relay's reconnects).
pub(crate) fn exponential_millis(base: Duration, cap: Duration, failures: u32) -> u64 {
    let exp = failures.saturating_sub(1).min(63);
    let millis = base.as_millis().saturating_mul(1u128 << exp);
    u64::try_from(millis.min(cap.as_millis())).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let p = RetryPolicy::new(20)
            .base(Duration::from_millis(10))
            .cap(Duration::from_secs(1));
        let mut rng = JitterRng::new(1);
        for n in 1..20 {
            let full = Duration::from_millis(10 * (1 << (n - 1))).min(Duration::from_secs(1));
            let d = p.delay(n, &mut rng);
            assert!(d <= full, "{n}: {d:?} > {full:?}");
            let e = p.jitter(Jitter::Equal).delay(n, &mut rng);
            assert!(e >= full / 2 && e <= full, "{n}: {e:?}");
        }
        // Huge attempt counts saturate instead of overflowing.
        assert_eq!(
            p.jitter(Jitter::None).delay(u32::MAX, &mut rng),
            Duration::from_secs(1)
        );
    }
}
