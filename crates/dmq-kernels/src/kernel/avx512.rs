//! AVX-512 VNNI micro-kernel: `vpdpbusd` multiplies 64 unsigned weight codes (16 channels ×
//! 4 consecutive k) by a broadcast quad of signed activations and adds the 4 products into
//! each channel's i32 lane. One instruction per 64 multiply-adds, exact (`|c·a| ≤ 255·128`,
//! sums bounded by [`crate::layout::MAX_K`]).
//!
//! Weights are the unsigned operand because `dmq-quant` stores unsigned codes `c = q − q_min`
//! (the zero-point corrections happen in the epilogue), so no +128 offset of the activations
//! is needed; the signed int8 GEMM ([`crate::int8`]) stores `c = w + 128` and subtracts
//! `128·Σ_k a[m, k]` per row.
//!
//! Codes are expanded in registers: 4-bit blocks with one shift, one insert and one AND
//! (low nibbles = channels 0..8, high nibbles = channels 8..16 of the block), 1-bit blocks
//! with one masked byte move (`vmovdqu8` with the `u64` as the mask).
//!
//! Register tile: up to 6 rows × 4 panels (24 zmm accumulators; see [`SHAPE`]).

use std::arch::x86_64::*;

use super::{MAX_NP, TILE_COLS, TileArgs, split_rows};
use crate::layout::{CodeFormat, PANEL, QUAD};

/// Loads one 64-code block as 64 unsigned bytes.
trait Block {
    /// Bytes of a block in memory.
    const BYTES: usize;
    /// # Safety
    /// `p` must point to `BYTES` readable bytes; the CPU must have AVX-512 F/BW.
    unsafe fn load(p: *const u8) -> __m512i;
}

struct U8;
struct Nib4;
struct Bit1;

impl Block for U8 {
    const BYTES: usize = 64;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load(p: *const u8) -> __m512i {
        // SAFETY: the caller guarantees 64 readable bytes at `p`; unaligned load.
        unsafe { _mm512_loadu_si512(p as *const __m512i) }
    }
}

impl Block for Nib4 {
    const BYTES: usize = 32;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load(p: *const u8) -> __m512i {
        // SAFETY: the caller guarantees 32 readable bytes at `p`; unaligned load.
        let v = unsafe { _mm256_loadu_si256(p as *const __m256i) };
        let both = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
        _mm512_and_si512(both, _mm512_set1_epi8(0x0F))
    }
}

impl Block for Bit1 {
    const BYTES: usize = 8;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load(p: *const u8) -> __m512i {
        // SAFETY: the caller guarantees 8 readable bytes at `p`; unaligned read.
        let bits = unsafe { (p as *const u64).read_unaligned() };
        _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(1))
    }
}

/// `MR × NP` register tile over quads `[q0, q1)`.
///
/// # Safety
/// AVX-512 F/BW/VNNI available; `a` readable for `(MR − 1)·lda + 4·q1` bytes; `w[p]` for
/// `q1·F::BYTES` bytes (`p < NP`); `acc` writable for `MR·TILE_COLS` i32.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_mr<F: Block, const MR: usize, const NP: usize>(
    a: *const i8,
    lda: usize,
    w: [*const u8; MAX_NP],
    q0: usize,
    q1: usize,
    acc: *mut i32,
    accumulate: bool,
) {
    let mut c = [[_mm512_setzero_si512(); NP]; MR];
    for q in q0..q1 {
        let mut wv = [_mm512_setzero_si512(); NP];
        for p in 0..NP {
            // SAFETY: block q of panel p lies within the q1·BYTES readable bytes.
            wv[p] = unsafe { F::load(w[p].add(q * F::BYTES)) };
        }
        for r in 0..MR {
            // SAFETY: row r, quad q lies within (MR − 1)·lda + 4·q1 readable bytes.
            let quad = unsafe { (a.add(r * lda + q * QUAD) as *const i32).read_unaligned() };
            let av = _mm512_set1_epi32(quad);
            for p in 0..NP {
                c[r][p] = _mm512_dpbusd_epi32(c[r][p], wv[p], av);
            }
        }
    }
    for r in 0..MR {
        for p in 0..NP {
            // SAFETY: row r, panel p of the MR × TILE_COLS writable tile.
            unsafe {
                let dst = acc.add(r * TILE_COLS + p * PANEL) as *mut __m512i;
                let v = if accumulate {
                    _mm512_add_epi32(_mm512_loadu_si512(dst), c[r][p])
                } else {
                    c[r][p]
                };
                _mm512_storeu_si512(dst, v);
            }
        }
    }
}

/// Register tile (rows, panels) of this kernel: 6 × 4 panels = 24 zmm accumulators, so each
/// broadcast activation quad feeds 4 `vpdpbusd`.
pub(crate) const SHAPE: (usize, usize) = (6, 4);
/// Row-chunk sizes a tile of any height is split into.
const ROW_SIZES: [usize; 4] = [6, 4, 2, 1];

/// A tile of one code format.
///
/// # Safety
/// As [`tile`].
unsafe fn tile_fmt<F: Block>(rows: usize, np: usize, mut t: TileArgs<'_>) {
    let a = t.a.as_ptr();
    let w: [*const u8; MAX_NP] = std::array::from_fn(|p| t.w[p.min(np - 1)].as_ptr());
    let acc = t.acc.as_mut_ptr();
    split_rows(rows, &ROW_SIZES, |r0, mr| {
        // SAFETY: `run_tile` checked the CPU features and that `a` covers `rows` rows of
        // `lda` (a sub-tile starting at row r0 covers fewer), `w[p]` covers q1 blocks for
        // p < np and `acc` holds `rows × TILE_COLS` values.
        unsafe {
            let a = a.add(r0 * t.lda);
            let acc = acc.add(r0 * TILE_COLS);
            let (lda, q0, q1, ac) = (t.lda, t.q0, t.q1, t.accumulate);
            macro_rules! by_np {
                ($mr:literal) => {
                    match np {
                        1 => tile_mr::<F, $mr, 1>(a, lda, w, q0, q1, acc, ac),
                        2 => tile_mr::<F, $mr, 2>(a, lda, w, q0, q1, acc, ac),
                        3 => tile_mr::<F, $mr, 3>(a, lda, w, q0, q1, acc, ac),
                        _ => tile_mr::<F, $mr, 4>(a, lda, w, q0, q1, acc, ac),
                    }
                };
            }
            match mr {
                8 => by_np!(8),
                6 => by_np!(6),
                4 => by_np!(4),
                2 => by_np!(2),
                _ => by_np!(1),
            }
        }
    });
    let _ = &mut t;
}

/// Entry from [`super::run_tile`]: one register tile of `rows` rows and `np` panels.
///
/// # Safety
/// The CPU supports AVX-512 F/BW and VNNI (`Isa::Avx512Vnni.is_available()`),
/// `rows ≥ 1` (split into the kernel's row chunks), `1 ≤ np ≤ MAX_NP`, `t.q0 ≤ t.q1`, `t.lda ≥ 4·t.q1` and a multiple
/// of 4, `t.a.len() ≥ (rows − 1)·t.lda + 4·t.q1`, `t.w[p].len() ≥ t.q1·format.block_bytes()`
/// for every `p < np`, and `t.acc.len() ≥ rows·TILE_COLS`: the kernels read and write
/// through raw pointers within exactly these bounds. [`super::run_tile`] asserts all of
/// them before calling.
pub(crate) unsafe fn tile(format: CodeFormat, rows: usize, np: usize, t: TileArgs<'_>) {
    // SAFETY: the caller upholds this function's contract, which is `tile_fmt`'s.
    unsafe {
        match format {
            CodeFormat::U8 => tile_fmt::<U8>(rows, np, t),
            CodeFormat::Nib4 => tile_fmt::<Nib4>(rows, np, t),
            CodeFormat::Bit1 => tile_fmt::<Bit1>(rows, np, t),
        }
    }
}
