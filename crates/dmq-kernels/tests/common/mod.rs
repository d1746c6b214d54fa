//! Shared helpers of the kernel tests: a seeded generator and the option sets that
//! exercise every instruction set, thread split and k-blocking this CPU supports.

#![allow(dead_code)] // each test binary uses a subset

use dmq_kernels::{GemmOptions, Isa, PopcntIsa, XnorOptions};

/// SplitMix64: small, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    /// Uniform in `[-1, 1)`.
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.int(-128, 127) as i8).collect()
    }

    pub fn codes(&mut self, n: usize, bits: u32) -> Vec<u8> {
        (0..n).map(|_| self.int(0, (1 << bits) - 1) as u8).collect()
    }

    pub fn bools(&mut self, n: usize) -> Vec<bool> {
        (0..n).map(|_| self.next_u64() & 1 == 1).collect()
    }

    /// Roughly normal-ish f32 data with a few larger values (outliers), scaled by `scale`.
    pub fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = self.unit() + self.unit() + self.unit();
                if self.next_u64().is_multiple_of(61) {
                    4.0 * v * scale
                } else {
                    v * scale
                }
            })
            .collect()
    }
}

/// Every (instruction set, threads, kc) combination worth testing: each available path,
/// single-threaded with the default k-block and a tiny one (k-blocked accumulation), and
/// with the threaded split forced on.
pub fn gemm_options() -> Vec<GemmOptions> {
    let mut out = Vec::new();
    for isa in Isa::available() {
        let base = GemmOptions::default().with_isa(isa);
        out.push(base.with_threads(1));
        out.push(base.with_threads(1).with_kc(8));
        out.push(base.with_threads(2).with_min_macs_per_thread(1));
        out.push(base.with_threads(3).with_min_macs_per_thread(1).with_kc(12));
    }
    out
}

pub fn xnor_options() -> Vec<XnorOptions> {
    let mut out = Vec::new();
    for isa in PopcntIsa::available() {
        let base = XnorOptions {
            isa,
            ..XnorOptions::default()
        };
        out.push(XnorOptions { threads: 1, ..base });
        out.push(XnorOptions {
            threads: 2,
            min_bitops_per_thread: 1,
            ..base
        });
    }
    out
}

/// Prints which paths this machine exercises (visible with `--nocapture`).
pub fn report_paths() {
    eprintln!(
        "isa paths: {:?}; popcnt paths: {:?}; cpu: {:?}",
        Isa::available(),
        PopcntIsa::available(),
        dmq_kernels::cpu_features()
    );
}
