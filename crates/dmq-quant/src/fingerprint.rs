//! FNV-1a (64-bit) hashing. std's hashers are randomly keyed per process; these values are
//! stable across runs and machines, so they can key random streams by layer name and tell
//! whether two quantized models (or a checkpoint and the run resuming it) are the same.

/// The FNV-1a 64-bit offset basis.
const OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
/// The FNV-1a 64-bit prime.
const PRIME: u64 = 0x0100_0000_01B3;

/// An incremental FNV-1a (64-bit) hasher: `h = (h ⊕ byte) · prime` per byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv1a {
    /// A hasher at the offset basis (the hash of no bytes).
    pub const fn new() -> Self {
        Self(OFFSET)
    }

    /// Feeds raw bytes.
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(PRIME);
        }
        self
    }

    /// Feeds a length (little-endian u64); prefix variable-length fields with it so that
    /// `("ab", "c")` and `("a", "bc")` hash differently.
    pub fn write_len(&mut self, n: usize) -> &mut Self {
        self.write(&(n as u64).to_le_bytes())
    }

    /// Feeds a length-prefixed string.
    pub fn write_str(&mut self, s: &str) -> &mut Self {
        self.write_len(s.len()).write(s.as_bytes())
    }

    /// Feeds length-prefixed f32 values (their little-endian bits: −0.0 ≠ 0.0, NaN payloads
    /// count).
    pub fn write_f32s(&mut self, v: &[f32]) -> &mut Self {
        self.write_len(v.len());
        for x in v {
            self.write(&x.to_le_bytes());
        }
        self
    }

    /// The hash so far.
    pub const fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a (64-bit) of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    Fnv1a::new().write(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_test_vectors() {
        // from the FNV reference test suite (Fowler/Noll/Vo)
        assert_eq!(fnv1a64(b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xAF63_DC4C_8601_EC8C);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_F739_67E8);
    }

    #[test]
    fn incremental_equals_one_shot_and_lengths_separate_fields() {
        assert_eq!(
            Fnv1a::new().write(b"foo").write(b"bar").finish(),
            fnv1a64(b"foobar")
        );
        let ab_c = Fnv1a::new().write_str("ab").write_str("c").finish();
        let a_bc = Fnv1a::new().write_str("a").write_str("bc").finish();
        assert_ne!(ab_c, a_bc);
        assert_ne!(
            Fnv1a::new().write_f32s(&[0.0]).finish(),
            Fnv1a::new().write_f32s(&[-0.0]).finish()
        );
    }
}
