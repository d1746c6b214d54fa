//! Portable micro-kernel: decodes each 64-code block and multiply-adds in i32. Exact; it is
//! the fallback on CPUs without AVX2 and the path tests compare the SIMD kernels against on
//! the packed layout (the plain-layout references live next to each public GEMM).

use super::{TILE_COLS, TileArgs};
use crate::layout::{CodeFormat, PANEL, QUAD, decode_block};

/// Largest tile height of this kernel.
const MAX_ROWS: usize = 8;

/// Tile of `rows ≤ 8` rows × `np ≤ 2` panels.
pub(crate) fn tile(format: CodeFormat, rows: usize, np: usize, t: TileArgs<'_>) {
    let bb = format.block_bytes();
    assert!(rows <= MAX_ROWS);
    let mut acc = [0i32; MAX_ROWS * TILE_COLS];
    for p in 0..np {
        for q in t.q0..t.q1 {
            let block = decode_block(format, &t.w[p][q * bb..(q + 1) * bb]);
            for r in 0..rows {
                let a = &t.a[r * t.lda + q * QUAD..r * t.lda + (q + 1) * QUAD];
                let out = &mut acc[r * TILE_COLS + p * PANEL..r * TILE_COLS + (p + 1) * PANEL];
                for (c, o) in out.iter_mut().enumerate() {
                    let codes = &block[c * QUAD..(c + 1) * QUAD];
                    *o += codes
                        .iter()
                        .zip(a)
                        .map(|(&w, &x)| w as i32 * x as i32)
                        .sum::<i32>();
                }
            }
        }
    }
    for r in 0..rows {
        let cols = np * PANEL;
        let src = &acc[r * TILE_COLS..r * TILE_COLS + cols];
        let dst = &mut t.acc[r * TILE_COLS..r * TILE_COLS + cols];
        if t.accumulate {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        } else {
            dst.copy_from_slice(src);
        }
    }
}
