//! Seeded randomness for tests: every randomized test prints its seed and replays it
//! from `TIDINGS_SEED`; `TIDINGS_SOAK` multiplies the rounds for longer runs.

use std::hash::{BuildHasher, Hasher};

/// The environment variable that replays a seed.
pub const SEED_VAR: &str = "TIDINGS_SEED";
/// The environment variable that multiplies round counts (for example `TIDINGS_SOAK=50`).
pub const SOAK_VAR: &str = "TIDINGS_SOAK";

/// The seed for this run: `TIDINGS_SEED` if set, else a fresh one. Printed either way,
/// with the test's name, so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var(SEED_VAR)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        });
    eprintln!("{test}: {SEED_VAR}={seed} (set it to replay this run)");
    seed
}

/// `base` rounds, times `TIDINGS_SOAK` when set.
pub fn rounds(base: u32) -> u32 {
    let factor = std::env::var(SOAK_VAR)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    base.saturating_mul(factor)
}

/// A small, fast, seedable generator (SplitMix64) for tests that need no distributions.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// 32 bytes for seeding other generators.
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }
}
