//! [`SearchRng`]: the search's own seeded generator (SplitMix64), so a seed gives the same
//! search on every machine and a resumed search continues the same sequence.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// SplitMix64; its whole state is one `u64`, saved in checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchRng {
    state: u64,
}

impl SearchRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x5EA2_C4D1_7E57_0001,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in a non-empty range.
    pub fn in_range(&mut self, r: Range<usize>) -> usize {
        r.start + self.below(r.end - r.start)
    }
}
