//! Micro-kernels: one register tile of `C[rows, np·16] (+)= Σ_{k ∈ quads} c[n, k]·a[m, k]`
//! (unsigned weight codes × signed activations, exact i32), per instruction set, and the
//! dispatch from (instruction set, code format, rows, panels) to a monomorphized kernel.
//!
//! Every kernel reads the panel layout of [`crate::layout`] and writes an i32 tile with row
//! stride [`TILE_COLS`]; the drivers in [`crate::gemm`] and the epilogues do the rest.

pub(crate) mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

use crate::detect::Isa;
use crate::layout::{CodeFormat, PANEL, QUAD};

/// Most panels one register tile covers.
pub(crate) const MAX_NP: usize = 4;
/// Columns of the i32 tile buffer ([`MAX_NP`] panels).
pub(crate) const TILE_COLS: usize = MAX_NP * PANEL;

/// Operands of one micro-tile.
pub(crate) struct TileArgs<'a> {
    /// Activations from the tile's first row on, row stride `lda` (signed codes).
    pub a: &'a [i8],
    /// The same activations widened to i16 (only for the AVX2 8-bit kernel; else empty).
    pub a16: &'a [i16],
    /// Row stride of `a` / `a16` (a multiple of 4, at least `4·q1`).
    pub lda: usize,
    /// Panel data of the `np` consecutive panels (entries past `np` are ignored).
    pub w: [&'a [u8]; MAX_NP],
    /// First quad (k = 4·q0).
    pub q0: usize,
    /// One past the last quad.
    pub q1: usize,
    /// Output tile `[rows, TILE_COLS]`.
    pub acc: &'a mut [i32],
    /// Add to `acc` (else overwrite it).
    pub accumulate: bool,
}

/// Largest row count and panel count of one register tile of `isa` for `format`.
pub(crate) fn tile_shape(isa: Isa, format: CodeFormat) -> (usize, usize) {
    match (isa, format) {
        (Isa::Scalar, _) => (4, 2),
        (Isa::Avx2, CodeFormat::U8) => (2, 1),
        (Isa::Avx2, _) => (4, 1),
        (Isa::Avx512Vnni, _) => avx512_shape(),
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_shape() -> (usize, usize) {
    avx512::SHAPE
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_shape() -> (usize, usize) {
    (8, 2)
}

/// Computes one tile of `rows ≤ tile_shape().0` rows and `np ≤ tile_shape().1` panels.
///
/// The caller guarantees `isa` is available (checked once per GEMM by the driver) and the
/// slice lengths: `a.len() ≥ (rows − 1)·lda + 4·q1`, `w[p].len() ≥ q1·block_bytes`,
/// `acc.len() ≥ rows·TILE_COLS`. These are re-checked here (cheap, once per tile) because the
/// SIMD kernels read through raw pointers.
pub(crate) fn run_tile(isa: Isa, format: CodeFormat, rows: usize, np: usize, t: TileArgs<'_>) {
    let bb = format.block_bytes();
    assert!(rows >= 1 && (1..=MAX_NP).contains(&np) && t.q0 <= t.q1);
    assert!(t.lda >= QUAD * t.q1 && t.lda.is_multiple_of(QUAD));
    assert!(t.a.len() >= (rows - 1) * t.lda + QUAD * t.q1);
    assert!(t.acc.len() >= rows * TILE_COLS);
    for p in 0..np {
        assert!(t.w[p].len() >= t.q1 * bb);
    }
    match isa {
        Isa::Scalar => scalar::tile(format, rows, np, t),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(Isa::Avx2.is_available());
            if format == CodeFormat::U8 {
                assert!(t.a16.len() >= (rows - 1) * t.lda + QUAD * t.q1);
            }
            // SAFETY: AVX2 is available and every bound of `avx2::tile`'s contract was
            // asserted above.
            unsafe { avx2::tile(format, rows, np, t) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            assert!(Isa::Avx512Vnni.is_available());
            // SAFETY: AVX-512 VNNI is available and every bound of `avx512::tile`'s
            // contract was asserted above.
            unsafe { avx512::tile(format, rows, np, t) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::tile(format, rows, np, t),
    }
}

/// Splits `rows` into chunks of the sizes in `sizes` (descending), calling `f(r0, chunk)`.
pub(crate) fn split_rows(rows: usize, sizes: &[usize], mut f: impl FnMut(usize, usize)) {
    let mut r = 0;
    for &s in sizes {
        while rows - r >= s {
            f(r, s);
            r += s;
        }
    }
    debug_assert_eq!(r, rows);
}
