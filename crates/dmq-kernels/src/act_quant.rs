//! On-the-fly activation quantization: f32 `[M, K]` → signed integers `q ∈ [−2^(b−1),
//! 2^(b−1) − 1]` (i8, 2 ≤ b ≤ 8) with a step size Δ and zero point z per row (or one pair for
//! the whole tensor), so that `x ≈ Δ·(q − z)`.
//!
//! The rule is the one of `dmq-quant` (`q = clamp(round(x/Δ) + z, q_min, q_max)`, round half
//! to even, division by Δ), so a static [`ActQuant`] built from an exported
//! [`AffineParams`] reproduces the fake-quantized activations exactly. Unsigned grids
//! (`[0, 2^b − 1]`) are shifted by `2^(b−1)` into the signed range, which changes neither the
//! value `Δ·(q − z)` nor the product with the weights.
//!
//! [`quantize`] is the fast path (branch-free rounding with the `1.5·2^23` trick, which is
//! exact half-to-even for `|v| ≤ 2^22`); [`quantize_ref`] is the scalar reference with
//! `f32::round_ties_even`. They agree exactly.

use dmq_quant::AffineParams;
use dmq_quant::spec::Granularity;

use crate::error::{KernelError, Result, shape_err};
use crate::layout::QUAD;

/// Which rows share one (Δ, z) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActGranularity {
    /// One pair for the whole `[M, K]` input.
    PerTensor,
    /// One pair per row (per token / per output pixel).
    PerRow,
}

/// Where Δ and z come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActRange {
    /// From the data at run time: min/max (range widened to include 0) for asymmetric
    /// unsigned grids, absmax for symmetric signed grids.
    Dynamic {
        /// Signed symmetric grid (z = 0) instead of unsigned asymmetric.
        symmetric: bool,
    },
    /// Fixed parameters (calibrated or learned, e.g. exported by a PTQ method).
    Static {
        /// Step size Δ > 0.
        delta: f32,
        /// Zero point z in the grid's own code space; must be an integer.
        zero: f32,
        /// Signed grid `[−2^(b−1), 2^(b−1) − 1]` (else unsigned `[0, 2^b − 1]`).
        signed: bool,
    },
}

/// How activations are quantized on the fly before an integer GEMM.
///
/// ```
/// use dmq_kernels::ActQuant;
/// let a8 = ActQuant::dynamic(8)?;                 // per tensor, asymmetric, from min/max
/// let a4 = ActQuant::dynamic(4)?.per_row();       // per token
/// let st = ActQuant::fixed(8, 0.05, 128.0, false)?; // calibrated Δ, z on [0, 255]
/// assert!(ActQuant::dynamic(1).is_err());         // 1-bit activations: use the XNOR kernel
/// # let _ = (a8, a4, st);
/// # Ok::<(), dmq_kernels::KernelError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQuant {
    bits: u32,
    granularity: ActGranularity,
    range: ActRange,
}

fn check_act_bits(bits: u32) -> Result<()> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(KernelError::UnsupportedBits {
            bits,
            supported: "2..=8 (1-bit activations run through the XNOR kernel)".into(),
            context: "activation quantization".into(),
        })
    }
}

impl ActQuant {
    /// Dynamic, asymmetric, unsigned `[0, 2^b − 1]`, one pair for the whole tensor.
    pub fn dynamic(bits: u32) -> Result<Self> {
        check_act_bits(bits)?;
        Ok(Self {
            bits,
            granularity: ActGranularity::PerTensor,
            range: ActRange::Dynamic { symmetric: false },
        })
    }

    /// Dynamic, symmetric, signed (`Δ = absmax / (2^(b−1) − 1)`, z = 0), per tensor.
    pub fn dynamic_symmetric(bits: u32) -> Result<Self> {
        check_act_bits(bits)?;
        Ok(Self {
            bits,
            granularity: ActGranularity::PerTensor,
            range: ActRange::Dynamic { symmetric: true },
        })
    }

    /// Fixed Δ and integer z on a signed or unsigned `bits`-bit grid (per tensor).
    pub fn fixed(bits: u32, delta: f32, zero: f32, signed: bool) -> Result<Self> {
        check_act_bits(bits)?;
        const CTX: &str = "ActQuant::fixed";
        if !(delta.is_finite() && delta > 0.0) {
            return Err(KernelError::InvalidParam {
                reason: format!("Δ = {delta} (need finite Δ > 0)"),
                context: CTX.into(),
            });
        }
        let (lo, hi) = grid(bits, signed);
        if !zero.is_finite() || zero.fract() != 0.0 || zero < lo as f32 || zero > hi as f32 {
            return Err(KernelError::InvalidParam {
                reason: format!(
                    "z = {zero}: the integer kernels need an integer zero point inside the grid \
                     [{lo}, {hi}]"
                ),
                context: CTX.into(),
            });
        }
        Ok(Self {
            bits,
            granularity: ActGranularity::PerTensor,
            range: ActRange::Static {
                delta,
                zero,
                signed,
            },
        })
    }

    /// The static quantizer of an exported per-tensor activation spec (Δ, z).
    pub fn from_params(params: &AffineParams) -> Result<Self> {
        const CTX: &str = "ActQuant::from_params";
        let bits = params
            .spec
            .int_bits()
            .ok_or_else(|| KernelError::UnsupportedSpec {
                reason: "a float pass-through activation spec".into(),
                context: CTX.into(),
            })?;
        if params.spec.granularity() != Granularity::PerTensor || params.delta.len() != 1 {
            return Err(KernelError::UnsupportedSpec {
                reason: format!(
                    "activation granularity {:?} with {} parameters (need one per-tensor pair)",
                    params.spec.granularity(),
                    params.delta.len()
                ),
                context: CTX.into(),
            });
        }
        params.validate(CTX)?;
        Self::fixed(
            bits,
            params.delta[0],
            params.zero[0],
            params.spec.is_signed(),
        )
    }

    /// One pair per row instead of per tensor (dynamic ranges only).
    pub fn per_row(mut self) -> Self {
        self.granularity = ActGranularity::PerRow;
        self
    }

    /// Bit-width b.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Granularity.
    pub fn granularity(&self) -> ActGranularity {
        self.granularity
    }

    /// Range source.
    pub fn range(&self) -> ActRange {
        self.range
    }
}

/// Integer range of a `bits`-bit grid.
fn grid(bits: u32, signed: bool) -> (i32, i32) {
    if signed {
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    } else {
        (0, (1 << bits) - 1)
    }
}

/// Quantized activations, rows padded to a multiple of 4 with `q = 0`.
///
/// The value of element `(m, k)` is `Δ[m]·(q[m, k] − z[m])`.
///
/// # Shapes
/// - `q`: `[M, K_p]` with `K_p = ceil(K/4)·4`; `delta`, `zero`: `[M]`
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedActs {
    /// Rows M.
    pub m: usize,
    /// Logical row length K.
    pub k: usize,
    /// Row stride `K_p` (K rounded up to a multiple of 4).
    pub kp: usize,
    /// Bit-width b (codes lie in `[−2^(b−1), 2^(b−1) − 1]`).
    pub bits: u32,
    /// Signed codes, `[M, K_p]`.
    pub q: Vec<i8>,
    /// Step size per row.
    pub delta: Vec<f32>,
    /// Integer zero point per row (signed code space).
    pub zero: Vec<i32>,
}

impl QuantizedActs {
    /// Wraps raw signed integers `a[M, K]` (Δ = 1, z = 0) for the integer-only GEMMs.
    pub fn from_i8(a: &[i8], m: usize, k: usize) -> Result<Self> {
        if a.len() != m * k || k == 0 {
            return Err(shape_err(
                format!("{} values for [{m}, {k}] with K ≥ 1", m * k),
                a.len().to_string(),
                "QuantizedActs::from_i8",
            ));
        }
        let kp = k.div_ceil(QUAD) * QUAD;
        let mut q = vec![0i8; m * kp];
        for r in 0..m {
            q[r * kp..r * kp + k].copy_from_slice(&a[r * k..(r + 1) * k]);
        }
        Ok(Self {
            m,
            k,
            kp,
            bits: 8,
            q,
            delta: vec![1.0; m],
            zero: vec![0; m],
        })
    }

    /// Row `r` without padding.
    pub fn row(&self, r: usize) -> &[i8] {
        &self.q[r * self.kp..r * self.kp + self.k]
    }

    /// Dequantized values `Δ·(q − z)`, `[M, K]` (references and error budgets).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.m * self.k);
        for r in 0..self.m {
            let (d, z) = (self.delta[r], self.zero[r]);
            out.extend(self.row(r).iter().map(|&q| (q as i32 - z) as f32 * d));
        }
        out
    }
}

/// Per-row (or per-tensor, repeated) grid: Δ, z in the unsigned/signed code space, q_min,
/// q_max, and the shift `off` into the signed i8 range.
#[derive(Clone, Copy)]
struct RowGrid {
    delta: f32,
    zero: f32,
    qmin: f32,
    qmax: f32,
    off: i32,
}

fn check_shape(x: &[f32], m: usize, k: usize, context: &str) -> Result<()> {
    if k == 0 || x.len() != m * k {
        return Err(shape_err(
            format!("{} values for [{m}, {k}] with K ≥ 1", m * k),
            x.len().to_string(),
            context,
        ));
    }
    Ok(())
}

fn check_finite(x: &[f32], context: &str) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(KernelError::NonFinite {
            value: x[index],
            index,
            context: context.into(),
        }),
        None => Ok(()),
    }
}

/// The grid of one range (`rows` = the data it covers).
fn grid_for(aq: &ActQuant, lo: f32, hi: f32) -> RowGrid {
    let b = aq.bits;
    let half = 1i32 << (b - 1);
    match aq.range {
        ActRange::Static {
            delta,
            zero,
            signed,
        } => {
            let (qmin, qmax) = grid(b, signed);
            RowGrid {
                delta,
                zero,
                qmin: qmin as f32,
                qmax: qmax as f32,
                off: qmin + half,
            }
        }
        ActRange::Dynamic { symmetric: true } => {
            let absmax = lo.abs().max(hi.abs());
            let d = absmax / (half - 1).max(1) as f32;
            let delta = if d > 0.0 && d.is_finite() { d } else { 1.0 };
            RowGrid {
                delta,
                zero: 0.0,
                qmin: -half as f32,
                qmax: (half - 1) as f32,
                off: 0,
            }
        }
        ActRange::Dynamic { symmetric: false } => {
            let levels = ((1i32 << b) - 1) as f32;
            let (lo, hi) = (lo.min(0.0), hi.max(0.0));
            let d = (hi - lo) / levels;
            let delta = if d > 0.0 && d.is_finite() { d } else { 1.0 };
            let zero = (-lo / delta).round_ties_even().clamp(0.0, levels) + 0.0;
            RowGrid {
                delta,
                zero,
                qmin: 0.0,
                qmax: levels,
                off: half,
            }
        }
    }
}

fn min_max(row: &[f32]) -> (f32, f32) {
    row.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// The grid of every row; `range` gives the (min, max) of a slice.
fn grids(
    x: &[f32],
    m: usize,
    k: usize,
    aq: &ActQuant,
    range: impl Fn(&[f32]) -> (f32, f32),
) -> Vec<RowGrid> {
    match (aq.range, aq.granularity) {
        (ActRange::Static { .. }, _) => vec![grid_for(aq, 0.0, 0.0); m],
        (ActRange::Dynamic { .. }, ActGranularity::PerTensor) => {
            let (lo, hi) = range(x);
            vec![grid_for(aq, lo, hi); m]
        }
        (ActRange::Dynamic { .. }, ActGranularity::PerRow) => (0..m)
            .map(|r| {
                let (lo, hi) = range(&x[r * k..(r + 1) * k]);
                grid_for(aq, lo, hi)
            })
            .collect(),
    }
}

fn assemble(m: usize, k: usize, bits: u32, q: Vec<i8>, g: &[RowGrid]) -> QuantizedActs {
    QuantizedActs {
        m,
        k,
        kp: k.div_ceil(QUAD) * QUAD,
        bits,
        q,
        delta: g.iter().map(|g| g.delta).collect(),
        zero: g.iter().map(|g| g.zero as i32 - g.off).collect(),
    }
}

/// 1.5·2^23: adding and subtracting it rounds an `|v| ≤ 2^22` to an integer, half to even,
/// in the default rounding mode; the bits of `c + MAGIC` are `MAGIC_BITS + c` for an
/// integer `|c| < 2^22`.
const MAGIC: f32 = 12_582_912.0;
const MAGIC_BITS: i32 = 0x4B40_0000;
const LIM: f32 = 4_194_304.0;

/// One pass over a slice: min, max, and whether a NaN/infinity is present (`v·0` is NaN
/// exactly for those, and a NaN survives the sum). Eight independent lanes so it vectorizes.
#[inline(always)]
fn scan_body(x: &[f32]) -> (f32, f32, bool) {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    let mut bad = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
            bad[i] += c[i] * 0.0;
        }
    }
    for (i, &v) in tail.iter().enumerate() {
        lo[i] = if v < lo[i] { v } else { lo[i] };
        hi[i] = if v > hi[i] { v } else { hi[i] };
        bad[i] += v * 0.0;
    }
    let lo = lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let hi = hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    (lo, hi, bad.iter().any(|b| b.is_nan()))
}

/// Quantizes one row into signed codes (branch-free, vectorizable).
#[inline(always)]
fn quantize_row_body(src: &[f32], dst: &mut [i8], g: RowGrid) {
    let off = MAGIC_BITS + g.off;
    for (d, &v) in dst.iter_mut().zip(src) {
        let t = (v / g.delta).clamp(-LIM, LIM);
        let r = (t + MAGIC) - MAGIC;
        let c = (r + g.zero).clamp(g.qmin, g.qmax);
        *d = ((c + MAGIC).to_bits() as i32 - off) as i8;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_avx2(x: &[f32]) -> (f32, f32, bool) {
    scan_body(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_row_avx2(src: &[f32], dst: &mut [i8], g: RowGrid) {
    quantize_row_body(src, dst, g)
}

fn has_avx2() -> bool {
    crate::detect::cpu_features().avx2
}

/// [`scan_body`], AVX2-compiled when the CPU has it (same results: min, max and the NaN
/// test are exact operations).
fn scan(x: &[f32]) -> (f32, f32, bool) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 detected.
        return unsafe { scan_avx2(x) };
    }
    scan_body(x)
}

fn quantize_row(src: &[f32], dst: &mut [i8], g: RowGrid) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 detected.
        return unsafe { quantize_row_avx2(src, dst, g) };
    }
    quantize_row_body(src, dst, g)
}

/// One row on a dynamic per-row grid: scans `src` (range and finiteness), quantizes it into
/// `dst` and returns the row's `(Δ, z)` as [`QuantizedActs`] stores them, the same values
/// [`quantize`] gives that row. `None` when `src` holds a NaN or an infinity.
pub(crate) fn quantize_row_dynamic(
    src: &[f32],
    dst: &mut [i8],
    aq: &ActQuant,
) -> Option<(f32, i32)> {
    let (lo, hi, bad) = scan(src);
    if bad {
        return None;
    }
    let g = grid_for(aq, lo, hi);
    quantize_row(src, dst, g);
    Some((g.delta, g.zero as i32 - g.off))
}

/// Quantizes `x[M, K]` (fast path: one scan for range and finiteness, one branch-free
/// quantization pass, both AVX2-compiled when available).
///
/// # Errors
/// Wrong length, or a NaN/infinity in `x`.
pub fn quantize(x: &[f32], m: usize, k: usize, aq: &ActQuant) -> Result<QuantizedActs> {
    const CTX: &str = "act_quant::quantize";
    check_shape(x, m, k, CTX)?;
    let (lo, hi, bad) = scan(x);
    if bad {
        check_finite(x, CTX)?;
    }
    // The whole-tensor range is already known (per tensor, or a single row).
    let g = grids(x, m, k, aq, |s| {
        if s.len() == x.len() {
            (lo, hi)
        } else {
            let (l, h, _) = scan(s);
            (l, h)
        }
    });
    let kp = k.div_ceil(QUAD) * QUAD;
    let mut q = vec![0i8; m * kp];
    for r in 0..m {
        quantize_row(&x[r * k..(r + 1) * k], &mut q[r * kp..r * kp + k], g[r]);
    }
    Ok(assemble(m, k, aq.bits, q, &g))
}

/// Quantizes `x[M, K]`: scalar reference (`round_ties_even`, then clamp).
pub fn quantize_ref(x: &[f32], m: usize, k: usize, aq: &ActQuant) -> Result<QuantizedActs> {
    check_shape(x, m, k, "act_quant::quantize_ref")?;
    check_finite(x, "act_quant::quantize_ref")?;
    let g = grids(x, m, k, aq, min_max);
    let kp = k.div_ceil(QUAD) * QUAD;
    let mut q = vec![0i8; m * kp];
    for r in 0..m {
        let gr = g[r];
        for kk in 0..k {
            let v = (x[r * k + kk] / gr.delta).round_ties_even() + gr.zero;
            q[r * kp + kk] = (v.clamp(gr.qmin, gr.qmax) as i32 - gr.off) as i8;
        }
    }
    Ok(assemble(m, k, aq.bits, q, &g))
}
