//! Machine-peak probes for the benches: f32 FMA throughput of a register-resident loop
//! (AVX2 and AVX-512) and int8 `vpdpbusd` throughput (AVX-512 VNNI), so kernel throughput
//! can be read against this CPU's limits.
//! (Memory bandwidth is measured directly in the bench with a large sum and copy.)

use crate::error::{KernelError, Result};

/// Vector width of the FMA probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FmaWidth {
    /// 256-bit `vfmadd231ps` (AVX2 + FMA).
    Avx2,
    /// 512-bit `vfmadd231ps` (AVX-512 F).
    Avx512,
}

/// Independent accumulator chains (covers FMA latency × issue width on current cores).
const CHAINS: usize = 12;

/// FLOPs done by [`fma_f32`] for `iters` iterations.
pub fn fma_flops(width: FmaWidth, iters: usize) -> u64 {
    let lanes = match width {
        FmaWidth::Avx2 => 8,
        FmaWidth::Avx512 => 16,
    };
    (iters * CHAINS * lanes * 2) as u64
}

/// Runs `iters` iterations of `CHAINS` independent FMAs; returns a checksum (keeps the loop
/// alive). Errors when the CPU lacks the width.
pub fn fma_f32(width: FmaWidth, iters: usize) -> Result<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        let f = crate::detect::cpu_features();
        match width {
            FmaWidth::Avx2 if f.avx2 && f.fma => {
                // SAFETY: AVX2 and FMA detected above.
                return Ok(unsafe { fma_avx2(iters) });
            }
            FmaWidth::Avx512 if f.avx512f => {
                // SAFETY: AVX-512 F detected above.
                return Ok(unsafe { fma_avx512(iters) });
            }
            _ => {}
        }
    }
    let _ = iters;
    Err(KernelError::IsaUnavailable {
        isa: match width {
            FmaWidth::Avx2 => "avx2+fma",
            FmaWidth::Avx512 => "avx512f",
        },
    })
}

/// # Safety
/// AVX2 and FMA must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    let mut out = [0f32; 8];
    // SAFETY: `out` is 32 writable bytes.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

/// # Safety
/// AVX-512 F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

/// Integer ops (2 per multiply-add) done by [`vnni_i8`] for `iters` iterations.
pub fn vnni_ops(iters: usize) -> u64 {
    (iters * CHAINS * 64 * 2) as u64
}

/// Runs `iters` iterations of `CHAINS` independent 512-bit `vpdpbusd` (64 u8 × i8
/// multiply-adds each); returns a checksum. Errors without AVX-512 VNNI.
pub fn vnni_i8(iters: usize) -> Result<i32> {
    #[cfg(target_arch = "x86_64")]
    if crate::detect::Isa::Avx512Vnni.is_available() {
        // SAFETY: AVX-512 F/BW/VNNI detected above.
        return Ok(unsafe { vnni_loop(iters) });
    }
    let _ = iters;
    Err(KernelError::IsaUnavailable { isa: "avx512vnni" })
}

/// # Safety
/// AVX-512 F and VNNI must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn vnni_loop(iters: usize) -> i32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_epi8(3);
    let b = _mm512_set1_epi8(-1);
    let mut acc = [_mm512_setzero_si512(); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    let mut s = _mm512_setzero_si512();
    for v in acc {
        s = _mm512_add_epi32(s, v);
    }
    _mm512_reduce_add_epi32(s)
}

/// Minimum wall time in seconds of `f` over up to `max_runs` runs after one warm-up run,
/// stopping early once `budget` has elapsed (the kernel tables' timer: the minimum is the
/// least noisy estimate on a shared machine).
pub fn min_wall_time(mut f: impl FnMut(), max_runs: usize, budget: std::time::Duration) -> f64 {
    f();
    let start = std::time::Instant::now();
    let mut best = f64::MAX;
    for _ in 0..max_runs.max(1) {
        let t = std::time::Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        if start.elapsed() > budget {
            break;
        }
    }
    best
}
