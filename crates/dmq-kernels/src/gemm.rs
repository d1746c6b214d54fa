//! The blocked, multithreaded integer GEMM driver shared by the int8, W4 and W1 formats, and
//! the f32 entry point [`gemm_f32_out`] (quantize activations on the fly → integer GEMM →
//! dequantize), with its scalar reference [`gemm_f32_out_ref`].
//!
//! # What is computed
//!
//! With weights `w[n, k] = Δ_w[n, g]·(c[n, k] − z_c[n, g])` (see [`PackedWeights`]) and
//! activations `x[m, k] = Δ_x[m]·(q[m, k] − z_x[m])` (see [`QuantizedActs`]), per group `g`
//! of `G` consecutive k:
//!
//! ```text
//! acc[m, n, g] = Σ_{k∈g} c[n, k]·q[m, k]                        (exact i32, the kernels)
//! t[m, n, g]   = (acc − z_x[m]·C[n, g]) − z_c[n, g]·(R[m, g] − G·z_x[m])
//! y[m, n]      = bias[n] + Σ_g (Δ_x[m]·Δ_w[n, g])·t[m, n, g]
//! ```
//!
//! with the code sums `C[n, g] = Σ_{k∈g} c[n, k]` (precomputed at packing) and row sums
//! `R[m, g] = Σ_{k∈g} q[m, k]`. The two parenthesised integer terms of `t` are exact (i64);
//! `t` is formed in f32 because `z_c` may be fractional (binary weights have `z_c = ½`).
//! This equals `Σ_k x̂[m, k]·ŵ[n, k]` of the dequantized operands up to f32 rounding.
//!
//! # Blocking
//!
//! For each pair of 16-channel panels (the register tile's width), for each k-block (a
//! group, or `kc` values of k for per-channel weights), for each tile of up to 8 rows: the
//! panel slice of the k-block (≤ 32·kc bytes) stays in L1 while all row tiles stream past
//! it; i32 partial sums live in a `[rows, 32]` scratch between k-blocks.

use dmq_quant::QuantizedTensor;

use crate::act_quant::{self, ActQuant, QuantizedActs};
use crate::detect::Isa;
use crate::error::{KernelError, Result, shape_err};
use crate::kernel::{MAX_NP, TILE_COLS, TileArgs, run_tile, tile_shape};
use crate::layout::{CodeFormat, PANEL, PackedWeights, QUAD};
use crate::parallel::{OutView, available_threads, for_each_part, threads_for};

/// Default multiply-adds per thread below which no extra thread is started (a thread start
/// costs tens of microseconds).
pub const PAR_MIN_MACS: usize = 1 << 22;

/// Instruction set, threads and k-blocking of a GEMM call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmOptions {
    /// Kernel path; requesting one this CPU lacks is [`KernelError::IsaUnavailable`].
    pub isa: Isa,
    /// Most threads to use (small problems use fewer).
    pub threads: usize,
    /// k-block length for per-channel weights (rounded up to a multiple of 4).
    pub kc: usize,
    /// Multiply-adds per thread below which fewer threads are used ([`PAR_MIN_MACS`]; tests
    /// set 1 to force the threaded split on small shapes).
    pub min_macs_per_thread: usize,
}

impl Default for GemmOptions {
    /// The fastest path of this CPU, every hardware thread, `kc = 1024`.
    fn default() -> Self {
        Self {
            isa: Isa::best(),
            threads: available_threads(),
            kc: 1024,
            min_macs_per_thread: PAR_MIN_MACS,
        }
    }
}

impl GemmOptions {
    /// Sets the instruction set.
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = isa;
        self
    }

    /// Sets the most threads to use.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Sets the k-block length.
    pub fn with_kc(mut self, kc: usize) -> Self {
        self.kc = kc;
        self
    }

    /// Sets the multiply-adds per thread below which fewer threads are used.
    pub fn with_min_macs_per_thread(mut self, macs: usize) -> Self {
        self.min_macs_per_thread = macs;
        self
    }
}

/// Where an epilogue call's tile sits.
pub(crate) struct EpiCtx {
    /// First absolute row.
    pub m0: usize,
    /// Rows in the tile.
    pub rows: usize,
    /// First absolute column.
    pub n0: usize,
    /// Valid columns (≤ 32).
    pub cols: usize,
    /// The k-group the accumulators cover.
    pub group: usize,
}

/// Epilogue: consumes a finished `[rows, TILE_COLS]` i32 tile of one group.
pub(crate) type Epilogue<'f, T> = dyn Fn(&EpiCtx, &[i32], &mut OutView<'_, T>) + Sync + 'f;

/// Row sums `R[m, g] = Σ_{k∈g} q[m, k]`, `[M, groups]`.
pub(crate) fn row_sums(acts: &QuantizedActs, group: usize) -> Vec<i32> {
    let groups = acts.k / group;
    let mut out = vec![0i32; acts.m * groups];
    for r in 0..acts.m {
        for (g, chunk) in acts.row(r).chunks(group).enumerate() {
            out[r * groups + g] = chunk.iter().map(|&v| v as i32).sum();
        }
    }
    out
}

/// Runs the integer GEMM of `acts` × `w` and hands every finished tile to `epi`.
pub(crate) fn drive<T: Copy + Default + Send>(
    acts: &QuantizedActs,
    w: &PackedWeights,
    opts: &GemmOptions,
    epi: &Epilogue<'_, T>,
) -> Result<Vec<T>> {
    if acts.k != w.k() || acts.kp != w.k_padded() || acts.q.len() < acts.m * acts.kp {
        return Err(shape_err(
            format!("activations with K = {} (K_p = {})", w.k(), w.k_padded()),
            format!("K = {}, K_p = {}, {} codes", acts.k, acts.kp, acts.q.len()),
            "gemm",
        ));
    }
    let isa = opts.isa.check()?;
    let format = w.format();
    let (m, n, kp) = (acts.m, w.n(), w.k_padded());
    let (mr, np_max) = tile_shape(isa, format);
    let a16: Vec<i16> = if isa == Isa::Avx2 && format == CodeFormat::U8 {
        acts.q.iter().map(|&v| v as i16).collect()
    } else {
        Vec::new()
    };
    let quads = kp / QUAD;
    // k-blocks in quads: (q0, q1, group, first block of its group, last block of its group).
    let mut blocks = Vec::new();
    if w.groups() > 1 {
        let gq = w.group_size() / QUAD;
        for g in 0..w.groups() {
            blocks.push((g * gq, (g + 1) * gq, g, true, true));
        }
    } else {
        let kcq = opts.kc.div_ceil(QUAD).max(1);
        let mut q0 = 0;
        while q0 < quads {
            let q1 = (q0 + kcq).min(quads);
            blocks.push((q0, q1, 0, q0 == 0, q1 == quads));
            q0 = q1;
        }
    }
    let threads = threads_for(m * n * w.k(), opts.min_macs_per_thread, opts.threads);
    let panels = w.panels();
    let part =
        |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, view: &mut OutView<'_, T>| {
            let mut scratch = vec![0i32; rows.len() * TILE_COLS];
            let p_end = cols.end.div_ceil(PANEL);
            let mut p = cols.start / PANEL;
            while p < p_end {
                let np = np_max.min(p_end - p);
                let n0 = p * PANEL;
                let ncols = (np * PANEL).min(cols.end - n0);
                let wp: [&[u8]; MAX_NP] = std::array::from_fn(|i| w.panel((p + i).min(panels - 1)));
                for &(q0, q1, group, first, last) in &blocks {
                    let mut mt = rows.start;
                    while mt < rows.end {
                        let r = mr.min(rows.end - mt);
                        let off = (mt - rows.start) * TILE_COLS;
                        let tile = &mut scratch[off..off + r * TILE_COLS];
                        run_tile(
                            isa,
                            format,
                            r,
                            np,
                            TileArgs {
                                a: &acts.q[mt * kp..],
                                a16: if a16.is_empty() { &[] } else { &a16[mt * kp..] },
                                lda: kp,
                                w: wp,
                                q0,
                                q1,
                                acc: tile,
                                accumulate: !first,
                            },
                        );
                        if last {
                            let ctx = EpiCtx {
                                m0: mt,
                                rows: r,
                                n0,
                                cols: ncols,
                                group,
                            };
                            epi(&ctx, tile, view);
                        }
                        mt += r;
                    }
                }
                p += np;
            }
        };
    Ok(for_each_part(m, n, threads, mr, np_max * PANEL, &part))
}

/// Plain `Σ_k c[n, k]·a[m, k]` with an integer correction per row: `scale·acc − shift·R[m]`.
pub(crate) fn gemm_codes_i32(
    acts: &QuantizedActs,
    w: &PackedWeights,
    scale: i32,
    shift: i32,
    opts: &GemmOptions,
) -> Result<Vec<i32>> {
    let rs = row_sums(acts, acts.k.max(1));
    let epi = |c: &EpiCtx, acc: &[i32], out: &mut OutView<'_, i32>| {
        for r in 0..c.rows {
            let corr = shift.wrapping_mul(rs[c.m0 + r]);
            for j in 0..c.cols {
                *out.at(c.m0 + r, c.n0 + j) = scale
                    .wrapping_mul(acc[r * TILE_COLS + j])
                    .wrapping_sub(corr);
            }
        }
    };
    drive(acts, w, opts, &epi)
}

/// `R[m, g] − G·z_x[m]` as f32 (exact integer first: `|Σ (q − z_x)| ≤ K·255`).
#[inline(always)]
pub(crate) fn row_term(rsum: i32, g: usize, zx: i32) -> f32 {
    rsum.wrapping_sub((g as i32).wrapping_mul(zx)) as f32
}

/// One group's contribution `(Δ_x·Δ_w)·t` with `t = (acc − z_x·C) − z_c·rq` (shared by the
/// optimized and reference paths so both perform the same f32 operations). The integer part
/// is exact in wrapping i32: `|acc − z_x·C| = |Σ c·(q − z_x)| ≤ K·255·255 < 2^31` for
/// `K ≤` [`MAX_K`](crate::layout::MAX_K) and `z_x` inside the activation grid.
#[inline(always)]
pub(crate) fn group_term(acc: i32, zx: i32, cs: i32, zc: f32, rq: f32, s: f32) -> f32 {
    let ti = acc.wrapping_sub(zx.wrapping_mul(cs));
    s * (ti as f32 - zc * rq)
}

/// One row of the f32 epilogue over a tile's channels:
/// `y[j] = base[j] + (Δ_x·Δ_w[j])·t[j]` with `base` = the bias (or 0) for the first group
/// (`first = Some(bias)`), else the running `y[j]`.
#[inline(always)]
fn epilogue_row_body(
    y: &mut [f32],
    a: &[i32],
    cs: &[i32],
    zc: &[f32],
    dw: &[f32],
    first: Option<Option<&[f32]>>,
    zx: i32,
    rq: f32,
    dx: f32,
) {
    let n = y.len();
    let (a, cs, zc, dw) = (&a[..n], &cs[..n], &zc[..n], &dw[..n]);
    match first {
        Some(Some(b)) => {
            let b = &b[..n];
            for j in 0..n {
                y[j] = b[j] + group_term(a[j], zx, cs[j], zc[j], rq, dx * dw[j]);
            }
        }
        Some(None) => {
            for j in 0..n {
                y[j] = 0.0 + group_term(a[j], zx, cs[j], zc[j], rq, dx * dw[j]);
            }
        }
        None => {
            for j in 0..n {
                y[j] += group_term(a[j], zx, cs[j], zc[j], rq, dx * dw[j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn epilogue_row_avx2(
    y: &mut [f32],
    a: &[i32],
    cs: &[i32],
    zc: &[f32],
    dw: &[f32],
    first: Option<Option<&[f32]>>,
    zx: i32,
    rq: f32,
    dx: f32,
) {
    epilogue_row_body(y, a, cs, zc, dw, first, zx, rq, dx)
}

/// [`epilogue_row_body`], AVX2-compiled when available (element-wise, so the results do
/// not depend on the vector width).
fn epilogue_row(
    y: &mut [f32],
    a: &[i32],
    cs: &[i32],
    zc: &[f32],
    dw: &[f32],
    first: Option<Option<&[f32]>>,
    zx: i32,
    rq: f32,
    dx: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::detect::cpu_features().avx2 {
        // SAFETY: AVX2 detected.
        return unsafe { epilogue_row_avx2(y, a, cs, zc, dw, first, zx, rq, dx) };
    }
    epilogue_row_body(y, a, cs, zc, dw, first, zx, rq, dx)
}

fn check_bias(bias: Option<&[f32]>, n: usize) -> Result<()> {
    match bias {
        Some(b) if b.len() != n => Err(shape_err(
            format!("bias of {n} values"),
            b.len().to_string(),
            "gemm bias",
        )),
        _ => Ok(()),
    }
}

fn rows_of(x: &[f32], k: usize, context: &str) -> Result<usize> {
    if k == 0 || !x.len().is_multiple_of(k) {
        return Err(shape_err(
            format!("a multiple of K = {k} values ([M, K] row-major)"),
            x.len().to_string(),
            context,
        ));
    }
    Ok(x.len() / k)
}

/// f32 GEMM through the integer kernels, with default options.
///
/// `y[M, N] = x̂[M, K]·ŵ[N, K]ᵀ + bias`, where `x̂` is `x` quantized on the fly by `act` and
/// `ŵ` the dequantized packed weight (see the [module docs](self) for the exact formula).
///
/// # Shapes
/// - `x`: `[M, K]` row-major (M = `x.len() / K`); `bias`: `[N]`; output `[M, N]`
///
/// ```
/// use dmq_kernels::{ActQuant, PackedWeights, gemm_f32_out};
/// use dmq_quant::{AffineParams, QuantSpec, QuantizedTensor};
///
/// let (n, k) = (3, 8);
/// let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
/// let params = AffineParams {
///     spec: QuantSpec::int(4)?.per_channel(0),
///     delta: vec![0.15; n],
///     zero: vec![7.0; n],
/// };
/// let qt = QuantizedTensor::quantize(&w, &[n, k], &params)?;
/// let packed = PackedWeights::from_quantized(&qt)?;         // W4 panels, packed once
/// let x = vec![0.5f32; 2 * k];                               // M = 2
/// let y = gemm_f32_out(&x, &packed, &ActQuant::dynamic(8)?, None)?;
/// assert_eq!(y.len(), 2 * n);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn gemm_f32_out(
    x: &[f32],
    w: &PackedWeights,
    act: &ActQuant,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    gemm_f32_out_with(x, w, act, bias, &GemmOptions::default())
}

/// [`gemm_f32_out`] with explicit options (instruction set, threads).
pub fn gemm_f32_out_with(
    x: &[f32],
    w: &PackedWeights,
    act: &ActQuant,
    bias: Option<&[f32]>,
    opts: &GemmOptions,
) -> Result<Vec<f32>> {
    let m = rows_of(x, w.k(), "gemm_f32_out")?;
    check_bias(bias, w.n())?;
    let acts = act_quant::quantize(x, m, w.k(), act)?;
    gemm_acts_f32(&acts, w, bias, opts)
}

/// The integer GEMM and f32 epilogue on already-quantized activations.
pub fn gemm_acts_f32(
    acts: &QuantizedActs,
    w: &PackedWeights,
    bias: Option<&[f32]>,
    opts: &GemmOptions,
) -> Result<Vec<f32>> {
    check_bias(bias, w.n())?;
    let groups = w.groups();
    let gsize = w.group_size();
    let rs = row_sums(acts, gsize);
    let (dw, zc, cs) = (w.delta(), w.zero_codes(), w.code_sums());
    let n = w.n();
    let epi = |c: &EpiCtx, acc: &[i32], out: &mut OutView<'_, f32>| {
        let g = c.group;
        // Group-major parameters: contiguous along the tile's channels.
        let at = g * n + c.n0;
        let (dw, zc, cs) = (
            &dw[at..at + c.cols],
            &zc[at..at + c.cols],
            &cs[at..at + c.cols],
        );
        for r in 0..c.rows {
            let m = c.m0 + r;
            let (dx, zx) = (acts.delta[m], acts.zero[m]);
            let rq = row_term(rs[m * groups + g], gsize, zx);
            let a = &acc[r * TILE_COLS..r * TILE_COLS + c.cols];
            let y = out.row_mut(m, c.n0, c.cols);
            let first = if g == 0 {
                Some(bias.map(|b| &b[c.n0..c.n0 + c.cols]))
            } else {
                None
            };
            epilogue_row(y, a, cs, zc, dw, first, zx, rq, dx);
        }
    };
    drive(acts, w, opts, &epi)
}

/// Scalar reference of [`gemm_f32_out`], straight from the [`QuantizedTensor`]: codes
/// unpacked by `dmq-quant`, parameters looked up per element with
/// [`dmq_quant::AffineParams::group_index`], activations by [`act_quant::quantize_ref`],
/// plain loops. It performs the same f32 operations per group, so it matches the optimized
/// path exactly.
pub fn gemm_f32_out_ref(
    x: &[f32],
    qt: &QuantizedTensor,
    act: &ActQuant,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    const CTX: &str = "gemm_f32_out_ref";
    if qt.shape.len() < 2 {
        return Err(shape_err(
            "a weight of rank ≥ 2",
            format!("{:?}", qt.shape),
            CTX,
        ));
    }
    let n = qt.shape[0];
    let k: usize = qt.shape[1..].iter().product();
    let m = rows_of(x, k, CTX)?;
    check_bias(bias, n)?;
    let (qmin, _) = qt
        .params
        .spec
        .int_range()
        .ok_or_else(|| KernelError::UnsupportedSpec {
            reason: "float spec".into(),
            context: CTX.into(),
        })?;
    let codes = qt.codes()?;
    let gi = qt.params.group_index(&qt.shape)?;
    let acts = act_quant::quantize_ref(x, m, k, act)?;
    let mut y = vec![0f32; m * n];
    for mm in 0..m {
        let a = acts.row(mm);
        let (dx, zx) = (acts.delta[mm], acts.zero[mm]);
        for nn in 0..n {
            let mut out = bias.map_or(0.0, |b| b[nn]);
            let mut kk = 0;
            while kk < k {
                // One run of consecutive k sharing a parameter index = one group.
                let p = gi[nn * k + kk];
                let (mut acc, mut cs, mut rsum, mut len) = (0i32, 0i32, 0i32, 0usize);
                while kk < k && gi[nn * k + kk] == p {
                    let c = codes[nn * k + kk] as i32;
                    acc += c * a[kk] as i32;
                    cs += c;
                    rsum += a[kk] as i32;
                    len += 1;
                    kk += 1;
                }
                let zc = qt.params.zero[p] - qmin as f32;
                let rq = row_term(rsum, len, zx);
                out += group_term(acc, zx, cs, zc, rq, dx * qt.params.delta[p]);
            }
            y[mm * n + nn] = out;
        }
    }
    Ok(y)
}
