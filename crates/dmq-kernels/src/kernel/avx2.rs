//! AVX2 micro-kernels. Both are exact (no i16 saturation is possible):
//!
//! - **8-bit codes** (`c ≤ 255`): codes are zero-extended to i16 (`vpmovzxbw`) and
//!   multiplied with activations widened to i16 by `vpmaddwd`, which adds pairs into i32
//!   (`|pair| ≤ 2·255·128 < 2^31`). `vpmaddubsw` is not used here: its i16 pair sum
//!   saturates for `255·127·2 > 2^15`.
//! - **1..4-bit codes** (`c ≤ 15`): `vpmaddubsw` (u8 code × i8 activation, pairs summed in
//!   i16: `|pair| ≤ 2·15·128 = 3840 < 2^15`, so it never saturates), then `vpmaddwd` with
//!   ones into i32 lanes (one lane = one channel × 4 consecutive k, as in the VNNI kernel).
//!   Nibbles are unpacked with AND / shift; bits with the llama.cpp byte-mask expansion
//!   (`vpshufb` + AND + `vpminub`).

use std::arch::x86_64::*;

use super::{TILE_COLS, TileArgs, split_rows};
use crate::layout::{CodeFormat, PANEL, QUAD};

/// Loads one 64-code block as two registers of 32 unsigned bytes (channels 0..8, 8..16).
trait Block {
    /// Bytes of a block in memory.
    const BYTES: usize;
    /// # Safety
    /// `p` must point to `BYTES` readable bytes; the CPU must have AVX2.
    unsafe fn load(p: *const u8) -> (__m256i, __m256i);
}

struct Nib4;
struct Bit1;

impl Block for Nib4 {
    const BYTES: usize = 32;
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const u8) -> (__m256i, __m256i) {
        // SAFETY: the caller guarantees 32 readable bytes at `p`; unaligned load.
        let v = unsafe { _mm256_loadu_si256(p as *const __m256i) };
        let m = _mm256_set1_epi8(0x0F);
        (
            _mm256_and_si256(v, m),
            _mm256_and_si256(_mm256_srli_epi16(v, 4), m),
        )
    }
}

/// Expands 32 bits into 32 bytes of 0/1 (byte j = bit j).
#[inline]
#[target_feature(enable = "avx2")]
fn expand_bits(bits: u32) -> __m256i {
    let x = _mm256_set1_epi32(bits as i32);
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let y = _mm256_shuffle_epi8(x, shuf);
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_min_epu8(_mm256_and_si256(y, bit), _mm256_set1_epi8(1))
}

impl Block for Bit1 {
    const BYTES: usize = 8;
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const u8) -> (__m256i, __m256i) {
        // SAFETY: the caller guarantees 8 readable bytes at `p`; unaligned read.
        let bits = unsafe { (p as *const u64).read_unaligned() };
        (expand_bits(bits as u32), expand_bits((bits >> 32) as u32))
    }
}

/// Small-code kernel: `MR` rows × one panel over quads `[q0, q1)`.
///
/// # Safety
/// AVX2 available; `a` readable for `(MR − 1)·lda + 4·q1` bytes; `w` for `q1·F::BYTES`
/// bytes; `acc` writable for `MR·TILE_COLS` i32.
#[target_feature(enable = "avx2")]
unsafe fn tile_small<F: Block, const MR: usize>(
    a: *const i8,
    lda: usize,
    w: *const u8,
    q0: usize,
    q1: usize,
    acc: *mut i32,
    accumulate: bool,
) {
    let ones = _mm256_set1_epi16(1);
    let mut c = [[_mm256_setzero_si256(); 2]; MR];
    for q in q0..q1 {
        // SAFETY: block q lies within the q1·BYTES readable bytes.
        let (w0, w1) = unsafe { F::load(w.add(q * F::BYTES)) };
        for r in 0..MR {
            // SAFETY: row r, quad q lies within (MR − 1)·lda + 4·q1 readable bytes.
            let quad = unsafe { (a.add(r * lda + q * QUAD) as *const i32).read_unaligned() };
            let av = _mm256_set1_epi32(quad);
            let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, av), ones);
            let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w1, av), ones);
            c[r][0] = _mm256_add_epi32(c[r][0], p0);
            c[r][1] = _mm256_add_epi32(c[r][1], p1);
        }
    }
    for r in 0..MR {
        for h in 0..2 {
            // SAFETY: row r, channels 8h..8h+8 of the MR × TILE_COLS writable tile.
            unsafe {
                let dst = acc.add(r * TILE_COLS + h * 8) as *mut __m256i;
                let v = if accumulate {
                    _mm256_add_epi32(_mm256_loadu_si256(dst), c[r][h])
                } else {
                    c[r][h]
                };
                _mm256_storeu_si256(dst, v);
            }
        }
    }
}

/// 8-bit kernel: `MR` rows × one panel over quads `[q0, q1)`, activations as i16.
///
/// Sub-block `s` (16 bytes = channels 4s..4s+4 × 4 k) is zero-extended to 16 × i16; with the
/// row's quad broadcast as 4 × i16 per 64 bits, `vpmaddwd` lane `j` holds channel
/// `4s + j/2`, k-pair `j % 2`. The pairs are summed when the tile is stored.
///
/// # Safety
/// AVX2 available; `a16` readable for `(MR − 1)·lda + 4·q1` i16; `w` for `64·q1` bytes;
/// `acc` writable for `MR·TILE_COLS` i32.
#[target_feature(enable = "avx2")]
unsafe fn tile_u8<const MR: usize>(
    a16: *const i16,
    lda: usize,
    w: *const u8,
    q0: usize,
    q1: usize,
    acc: *mut i32,
    accumulate: bool,
) {
    let mut c = [[_mm256_setzero_si256(); 4]; MR];
    for q in q0..q1 {
        let mut av = [_mm256_setzero_si256(); MR];
        for r in 0..MR {
            // SAFETY: row r, quad q (4 × i16 = 8 bytes) lies within the readable range.
            let quad = unsafe { (a16.add(r * lda + q * QUAD) as *const i64).read_unaligned() };
            av[r] = _mm256_set1_epi64x(quad);
        }
        for s in 0..4 {
            // SAFETY: bytes 16s..16s+16 of block q lie within the 64·q1 readable bytes.
            let w16 = unsafe {
                _mm256_cvtepu8_epi16(_mm_loadu_si128(w.add(q * 64 + s * 16) as *const __m128i))
            };
            for r in 0..MR {
                c[r][s] = _mm256_add_epi32(c[r][s], _mm256_madd_epi16(w16, av[r]));
            }
        }
    }
    for r in 0..MR {
        for s in 0..4 {
            let mut lanes = [0i32; 8];
            // SAFETY: `lanes` is 32 writable bytes.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, c[r][s]) };
            for j in 0..4 {
                let v = lanes[2 * j].wrapping_add(lanes[2 * j + 1]);
                // SAFETY: channel 4s + j < 16 of row r of the writable tile.
                unsafe {
                    let dst = acc.add(r * TILE_COLS + 4 * s + j);
                    *dst = if accumulate {
                        (*dst).wrapping_add(v)
                    } else {
                        v
                    };
                }
            }
        }
    }
}

/// One panel of a 1- or 4-bit tile.
///
/// # Safety
/// As [`tile`], with `panel < np`.
unsafe fn tile_small_fmt<F: Block>(rows: usize, t: &mut TileArgs<'_>, panel: usize) {
    let a = t.a.as_ptr();
    let w = t.w[panel].as_ptr();
    // SAFETY: `run_tile` checked AVX2 and the bounds; `acc` has TILE_COLS ≥ 16·(panel + 1).
    let acc = unsafe { t.acc.as_mut_ptr().add(panel * PANEL) };
    split_rows(rows, &[4, 2, 1], |r0, mr| {
        // SAFETY: see above; sub-tile of rows r0..r0 + mr.
        unsafe {
            let a = a.add(r0 * t.lda);
            let acc = acc.add(r0 * TILE_COLS);
            let (lda, q0, q1, ac) = (t.lda, t.q0, t.q1, t.accumulate);
            match mr {
                4 => tile_small::<F, 4>(a, lda, w, q0, q1, acc, ac),
                2 => tile_small::<F, 2>(a, lda, w, q0, q1, acc, ac),
                _ => tile_small::<F, 1>(a, lda, w, q0, q1, acc, ac),
            }
        }
    });
}

/// One panel of an 8-bit tile.
///
/// # Safety
/// As [`tile`], with `panel < np`.
unsafe fn tile_u8_panel(rows: usize, t: &mut TileArgs<'_>, panel: usize) {
    let a16 = t.a16.as_ptr();
    let w = t.w[panel].as_ptr();
    // SAFETY: as in `tile_small_fmt`.
    let acc = unsafe { t.acc.as_mut_ptr().add(panel * PANEL) };
    split_rows(rows, &[2, 1], |r0, mr| {
        // SAFETY: `run_tile` checked AVX2 and the bounds of `a16`, `w` and `acc`.
        unsafe {
            let a16 = a16.add(r0 * t.lda);
            let acc = acc.add(r0 * TILE_COLS);
            let (lda, q0, q1, ac) = (t.lda, t.q0, t.q1, t.accumulate);
            match mr {
                2 => tile_u8::<2>(a16, lda, w, q0, q1, acc, ac),
                _ => tile_u8::<1>(a16, lda, w, q0, q1, acc, ac),
            }
        }
    });
}

/// Entry from [`super::run_tile`]: one register tile of `rows` rows and `np` panels.
///
/// # Safety
/// The CPU supports AVX2 (`Isa::Avx2.is_available()`), `rows ≥ 1` (split into
/// the kernel's row chunks), `1 ≤ np ≤ MAX_NP`, `t.q0 ≤ t.q1`, `t.lda ≥ 4·t.q1` and a multiple
/// of 4, `t.a.len() ≥ (rows − 1)·t.lda + 4·t.q1` (for `U8` the same for `t.a16`),
/// `t.w[p].len() ≥ t.q1·format.block_bytes()` for every `p < np`, and
/// `t.acc.len() ≥ rows·TILE_COLS`: the kernels read and write through raw pointers within
/// exactly these bounds. [`super::run_tile`] asserts all of them before calling.
pub(crate) unsafe fn tile(format: CodeFormat, rows: usize, np: usize, mut t: TileArgs<'_>) {
    for panel in 0..np {
        // SAFETY: the caller upholds this function's contract, and `panel < np`.
        unsafe {
            match format {
                CodeFormat::U8 => tile_u8_panel(rows, &mut t, panel),
                CodeFormat::Nib4 => tile_small_fmt::<Nib4>(rows, &mut t, panel),
                CodeFormat::Bit1 => tile_small_fmt::<Bit1>(rows, &mut t, panel),
            }
        }
    }
}
