//! 2-D convolution (NCHW, stride, zero padding, dilation 1, one group) as im2col + GEMM.
//!
//! `im2col` turns the input `[B, C, H, W]` into `X[B·H_o·W_o, C·kh·kw]`: one row per output
//! pixel, columns ordered `(c, i, j)` like the flattened PyTorch weight
//! `[C_out, C_in, kh, kw] → [C_out, C_in·kh·kw]`. The integer GEMM then gives
//! `Y[B·H_o·W_o, C_out]`, which is transposed back to `[B, C_out, H_o, W_o]`.
//!
//! Activations are quantized on the im2col matrix. With a per-tensor [`ActQuant`] this is
//! the same as quantizing the input (padding zeros are exactly representable: they map to
//! `q = z`); the dynamic range also sees the padding zeros, which the dynamic grid includes
//! anyway. A per-row `ActQuant` means one grid per output pixel.

use dmq_quant::QuantizedTensor;

use crate::act_quant::{self, ActQuant, ActRange, QuantizedActs};
use crate::error::{KernelError, Result, shape_err};
use crate::gemm::{GemmOptions, gemm_acts_f32, gemm_f32_out_ref, gemm_f32_out_with};
use crate::layout::PackedWeights;
use crate::xnor::{self, XnorOptions, XnorWeights};

/// Stride and zero padding (rows, columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Stride `[s_h, s_w]` (≥ 1).
    pub stride: [usize; 2],
    /// Zero padding `[p_h, p_w]` on each side.
    pub padding: [usize; 2],
}

impl Default for Conv2dParams {
    /// Stride 1, no padding.
    fn default() -> Self {
        Self {
            stride: [1, 1],
            padding: [0, 0],
        }
    }
}

impl Conv2dParams {
    /// Stride and padding.
    pub fn new(stride: [usize; 2], padding: [usize; 2]) -> Self {
        Self { stride, padding }
    }

    /// Output size `(H_o, W_o)` for an `h × w` input and a `kh × kw` kernel.
    pub fn out_size(&self, h: usize, w: usize, kh: usize, kw: usize) -> Result<(usize, usize)> {
        let [sh, sw] = self.stride;
        let [ph, pw] = self.padding;
        if sh == 0 || sw == 0 || kh == 0 || kw == 0 || h + 2 * ph < kh || w + 2 * pw < kw {
            return Err(shape_err(
                "stride ≥ 1 and a kernel that fits the padded input",
                format!("input {h}×{w}, kernel {kh}×{kw}, stride {sh}×{sw}, padding {ph}×{pw}"),
                "conv2d",
            ));
        }
        Ok(((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1))
    }
}

/// im2col of `x[B, C, H, W]`: returns `X[B·H_o·W_o, C·kh·kw]` and `(H_o, W_o)`.
pub fn im2col(
    x: &[f32],
    x_shape: [usize; 4],
    kh: usize,
    kw: usize,
    params: &Conv2dParams,
) -> Result<(Vec<f32>, usize, usize)> {
    let [b, c, h, w] = x_shape;
    if x.len() != b * c * h * w {
        return Err(shape_err(
            format!("{} values for {x_shape:?}", b * c * h * w),
            x.len().to_string(),
            "im2col",
        ));
    }
    let (ho, wo) = params.out_size(h, w, kh, kw)?;
    let [sh, sw] = params.stride;
    let [ph, pw] = params.padding;
    let k = c * kh * kw;
    let mut out = vec![0f32; b * ho * wo * k];
    for bb in 0..b {
        for oy in 0..ho {
            for ox in 0..wo {
                let row = &mut out[((bb * ho + oy) * wo + ox) * k..][..k];
                for cc in 0..c {
                    let plane = &x[(bb * c + cc) * h * w..][..h * w];
                    for i in 0..kh {
                        let y = (oy * sh + i) as isize - ph as isize;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        for j in 0..kw {
                            let xx = (ox * sw + j) as isize - pw as isize;
                            if xx >= 0 && xx < w as isize {
                                row[(cc * kh + i) * kw + j] = plane[y as usize * w + xx as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((out, ho, wo))
}

/// `[B·H_o·W_o, C_out]` → `[B, C_out, H_o, W_o]`, in blocks of 64 pixels so both sides
/// stay in cache.
pub fn to_nchw(y: &[f32], b: usize, cout: usize, hw: usize) -> Vec<f32> {
    const BLOCK: usize = 64;
    let mut out = vec![0f32; y.len()];
    for bb in 0..b {
        let src = &y[bb * hw * cout..][..hw * cout];
        let dst = &mut out[bb * cout * hw..][..cout * hw];
        for p0 in (0..hw).step_by(BLOCK) {
            let p1 = (p0 + BLOCK).min(hw);
            for co in 0..cout {
                let d = &mut dst[co * hw + p0..co * hw + p1];
                for (i, v) in d.iter_mut().enumerate() {
                    *v = src[(p0 + i) * cout + co];
                }
            }
        }
    }
    out
}

/// Packs a conv weight `[C_out, C_in, kh, kw]` with its reduction axis reordered to
/// `(kh, kw, C_in)`, the column order of [`im2col_quantized_hwc`] (channels contiguous, so
/// im2col copies whole channel runs). Per-tensor or per-output-channel parameters only
/// (a reordering within a row leaves them unchanged; per-group ones would not be).
pub fn pack_conv_weight_hwc(qt: &QuantizedTensor) -> Result<PackedWeights> {
    const CTX: &str = "pack_conv_weight_hwc";
    let [cout, cin, kh, kw] = qt.shape[..] else {
        return Err(shape_err(
            "a conv weight [C_out, C_in, kh, kw]",
            format!("{:?}", qt.shape),
            CTX,
        ));
    };
    if matches!(
        qt.params.spec.granularity(),
        dmq_quant::Granularity::PerGroup { .. }
    ) {
        return Err(KernelError::UnsupportedSpec {
            reason: "per-group weight parameters do not survive reordering the reduction axis"
                .into(),
            context: CTX.into(),
        });
    }
    let codes = qt.codes().map_err(KernelError::from)?;
    let mut perm = vec![0u8; codes.len()];
    let k = cin * kh * kw;
    for co in 0..cout {
        for ci in 0..cin {
            for i in 0..kh {
                for j in 0..kw {
                    perm[co * k + (i * kw + j) * cin + ci] = codes[co * k + (ci * kh + i) * kw + j];
                }
            }
        }
    }
    let hwc = QuantizedTensor::from_codes(&perm, &[cout, kh, kw, cin], qt.params.clone())
        .map_err(KernelError::from)?;
    PackedWeights::from_quantized(&hwc)
}

/// `[B, C, H·W]` → `[B, H·W, C]`, in blocks of 64 pixels so both sides stay in cache.
fn to_nhwc<T: Copy + Default>(x: &[T], b: usize, c: usize, hw: usize) -> Vec<T> {
    let mut nhwc = vec![T::default(); x.len()];
    for bb in 0..b {
        let src = &x[bb * c * hw..][..c * hw];
        let dst = &mut nhwc[bb * hw * c..][..hw * c];
        for p0 in (0..hw).step_by(64) {
            let p1 = (p0 + 64).min(hw);
            for cc in 0..c {
                for p in p0..p1 {
                    dst[p * c + cc] = src[cc * hw + p];
                }
            }
        }
    }
    nhwc
}

/// Im2col row `row` (output position `(b, oy, ox)`) of an NHWC tensor `[B, H, W, C]` into
/// `dst` (`kh·kw·C` values, `(kh, kw, C)` order), taps outside the image set to `pad`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn gather_row<T: Copy>(
    nhwc: &[T],
    [h, w, c]: [usize; 3],
    [kh, kw]: [usize; 2],
    params: &Conv2dParams,
    [ho, wo]: [usize; 2],
    row: usize,
    pad: T,
    dst: &mut [T],
) {
    let [sh, sw] = params.stride;
    let [ph, pw] = params.padding;
    let (bb, oy, ox) = (row / (ho * wo), (row / wo) % ho, row % wo);
    for i in 0..kh {
        let y = (oy * sh + i) as isize - ph as isize;
        for j in 0..kw {
            let xx = (ox * sw + j) as isize - pw as isize;
            let d = &mut dst[(i * kw + j) * c..][..c];
            if y < 0 || y >= h as isize || xx < 0 || xx >= w as isize {
                d.fill(pad);
            } else {
                let at = ((bb * h + y as usize) * w + xx as usize) * c;
                d.copy_from_slice(&nhwc[at..at + c]);
            }
        }
    }
}

/// Quantizes `x[B, C, H, W]` on a static per-tensor grid and lays the codes out as the
/// im2col matrix `[B·H_o·W_o, kh·kw·C]` of [`QuantizedActs`], columns ordered
/// `(kh, kw, C_in)` (rows padded to a multiple of 4 with 0, out-of-image taps set to the
/// code of 0 = z). The input is quantized and transposed to NHWC codes once, then every
/// output pixel copies `kh·kw` runs of `C_in` bytes, split over up to `threads` threads:
/// the codes of quantizing the f32 im2col matrix, with a quarter of its memory traffic and
/// one quantization per input element instead of one per kernel tap.
pub fn im2col_quantized_hwc(
    x: &[f32],
    x_shape: [usize; 4],
    kh: usize,
    kw: usize,
    params: &Conv2dParams,
    act: &ActQuant,
    threads: usize,
) -> Result<(QuantizedActs, usize, usize)> {
    const CTX: &str = "im2col_quantized_hwc";
    let [b, c, h, w] = x_shape;
    if x.len() != b * c * h * w || x.is_empty() {
        return Err(shape_err(
            format!("{} values for {x_shape:?}", b * c * h * w),
            x.len().to_string(),
            CTX,
        ));
    }
    if !matches!(act.range(), ActRange::Static { .. }) {
        return Err(KernelError::UnsupportedSpec {
            reason: "quantizing before im2col needs a static activation grid".into(),
            context: CTX.into(),
        });
    }
    let (ho, wo) = params.out_size(h, w, kh, kw)?;
    let xq = act_quant::quantize(x, 1, x.len(), act)?;
    let (codes, zero, delta) = (xq.row(0), xq.zero[0], xq.delta[0]);
    let pad = zero as i8;
    let nhwc = to_nhwc(codes, b, c, h * w);
    let k = c * kh * kw;
    let kp = k.div_ceil(4) * 4;
    let m = b * ho * wo;
    let mut q = vec![0i8; m * kp];
    let fill = |r0: usize, out: &mut [i8]| {
        for (ri, row) in out.chunks_mut(kp).enumerate() {
            let dst = &mut row[..k];
            gather_row(
                &nhwc,
                [h, w, c],
                [kh, kw],
                params,
                [ho, wo],
                r0 + ri,
                pad,
                dst,
            );
        }
    };
    let t = threads
        .clamp(1, m.max(1))
        .min(if m * k < 1 << 16 { 1 } else { usize::MAX });
    if t <= 1 {
        fill(0, &mut q);
    } else {
        let per = m.div_ceil(t);
        std::thread::scope(|s| {
            for (i, chunk) in q.chunks_mut(per * kp).enumerate() {
                let fill = &fill;
                s.spawn(move || fill(i * per, chunk));
            }
        });
    }
    let acts = QuantizedActs {
        m,
        k,
        kp,
        bits: act.bits(),
        q,
        delta: vec![delta; m],
        zero: vec![zero; m],
    };
    Ok((acts, ho, wo))
}

/// What [`im2col_dynamic_hwc`] returns.
#[derive(Clone, Debug)]
pub struct DynamicRows {
    /// The quantized rows `[B·H_o·W_o, kh·kw·C_in]`.
    pub acts: QuantizedActs,
    /// The branch's down projection `t [B·H_o·W_o, r]`, when a branch was given.
    pub branch_t: Option<Vec<f32>>,
    /// Output height H_o.
    pub ho: usize,
    /// Output width W_o.
    pub wo: usize,
    /// Wall time of the branch's projection (thread time over the threads used), for
    /// profiles.
    pub branch_s: f64,
}

/// The im2col rows of `x[B, C, H, W]` quantized on a **dynamic per-row** grid (each output
/// position's receptive field its own range; SVDQuant's per-token activations), columns in
/// `(kh, kw, C_in)` order for a weight packed by [`pack_conv_weight_hwc`], without the f32
/// im2col matrix: `x` is transposed to NHWC once, and blocks of rows are gathered into a small
/// buffer, quantized row by row and, with a `branch` (in HWC order,
/// [`crate::LowRankBranch::for_hwc_conv`]), projected by its L2 while still in cache. Padding
/// taps are 0 (the row's range includes 0 whenever the receptive field leaves the image, as
/// in the f32 im2col). Rows are split over up to `threads` threads.
///
/// # Errors
/// Wrong input length, a static activation grid, a branch of another input length, a NaN or
/// infinity in `x`.
#[allow(clippy::too_many_arguments)]
pub fn im2col_dynamic_hwc(
    x: &[f32],
    x_shape: [usize; 4],
    kh: usize,
    kw: usize,
    params: &Conv2dParams,
    act: &ActQuant,
    branch: Option<&crate::LowRankBranch>,
    threads: usize,
) -> Result<DynamicRows> {
    const CTX: &str = "im2col_dynamic_hwc";
    const BLOCK: usize = 32;
    let [b, c, h, w] = x_shape;
    if x.len() != b * c * h * w || x.is_empty() {
        return Err(shape_err(
            format!("{} values for {x_shape:?}", b * c * h * w),
            x.len().to_string(),
            CTX,
        ));
    }
    if !matches!(act.range(), ActRange::Dynamic { .. })
        || act.granularity() != crate::ActGranularity::PerRow
    {
        return Err(KernelError::UnsupportedSpec {
            reason: "this gather quantizes per row at run time; use im2col_quantized_hwc for a \
                     static grid"
                .into(),
            context: CTX.into(),
        });
    }
    let k = c * kh * kw;
    if let Some(br) = branch
        && br.k() != k
    {
        return Err(shape_err(
            format!("a branch over {k} inputs"),
            br.k().to_string(),
            CTX,
        ));
    }
    let (ho, wo) = params.out_size(h, w, kh, kw)?;
    let nhwc = to_nhwc(x, b, c, h * w);
    let kp = k.div_ceil(4) * 4;
    let m = b * ho * wo;
    let r = branch.map_or(0, |br| br.rank());
    let mut q = vec![0i8; m * kp];
    let mut delta = vec![0f32; m];
    let mut zero = vec![0i32; m];
    let mut t = vec![0f32; m * r];
    // rows r0.. of one thread: gather a block, quantize each row, project the block
    let fill = |r0: usize, q: &mut [i8], delta: &mut [f32], zero: &mut [i32], t: &mut [f32]| {
        let mut buf = vec![0f32; BLOCK * k];
        let mut branch_s = 0.0;
        let rows = delta.len();
        for b0 in (0..rows).step_by(BLOCK) {
            let nb = BLOCK.min(rows - b0);
            for ri in 0..nb {
                let dst = &mut buf[ri * k..(ri + 1) * k];
                gather_row(
                    &nhwc,
                    [h, w, c],
                    [kh, kw],
                    params,
                    [ho, wo],
                    r0 + b0 + ri,
                    0.0,
                    dst,
                );
            }
            for ri in 0..nb {
                let i = b0 + ri;
                let src = &buf[ri * k..(ri + 1) * k];
                match act_quant::quantize_row_dynamic(src, &mut q[i * kp..i * kp + k], act) {
                    Some((d, z)) => {
                        delta[i] = d;
                        zero[i] = z;
                    }
                    None => return (false, branch_s),
                }
            }
            if let Some(br) = branch {
                let t0 = std::time::Instant::now();
                br.down_rows(&buf[..nb * k], &mut t[b0 * r..(b0 + nb) * r]);
                branch_s += t0.elapsed().as_secs_f64();
            }
        }
        (true, branch_s)
    };
    let nt = threads
        .clamp(1, m.max(1))
        .min(if m * k < 1 << 16 { 1 } else { usize::MAX });
    let per = m.div_ceil(nt);
    let (ok, branch_s) = if nt <= 1 {
        fill(0, &mut q, &mut delta, &mut zero, &mut t)
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = q
                .chunks_mut(per * kp)
                .zip(delta.chunks_mut(per))
                .zip(zero.chunks_mut(per))
                .zip(
                    t.chunks_mut((per * r).max(1))
                        .chain(std::iter::repeat_with(|| &mut [][..])),
                )
                .enumerate()
                .map(|(i, (((qc, dc), zc), tc))| {
                    let fill = &fill;
                    s.spawn(move || fill(i * per, qc, dc, zc, tc))
                })
                .collect();
            let n = handles.len().max(1) as f64;
            let (ok, s) = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .fold((true, 0.0), |(a, s), (b, t)| (a && b, s + t));
            (ok, s / n)
        })
    };
    if !ok {
        // a NaN or an infinity: find it for the error
        let index = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(KernelError::NonFinite {
            value: x[index],
            index,
            context: CTX.into(),
        });
    }
    let acts = QuantizedActs {
        m,
        k,
        kp,
        bits: act.bits(),
        q,
        delta,
        zero,
    };
    Ok(DynamicRows {
        acts,
        branch_t: branch.map(|_| t),
        ho,
        wo,
        branch_s,
    })
}

/// [`conv2d`] for a weight packed by [`pack_conv_weight_hwc`] (shape `[C_out, kh, kw, C_in]`)
/// and a static activation grid: the fast path of the integer inference path. Same result,
/// bit for bit, as [`conv2d_ref`] on the original weight (integer sums do not depend on the
/// order of the reduction axis).
pub fn conv2d_hwc(
    x: &[f32],
    x_shape: [usize; 4],
    w: &PackedWeights,
    act: &ActQuant,
    bias: Option<&[f32]>,
    params: &Conv2dParams,
    opts: &GemmOptions,
) -> Result<(Vec<f32>, [usize; 4])> {
    let [cout, kh, kw, cin] = w.shape()[..] else {
        return Err(shape_err(
            "a weight packed [C_out, kh, kw, C_in]",
            format!("{:?}", w.shape()),
            "conv2d_hwc",
        ));
    };
    if cin != x_shape[1] {
        return Err(shape_err(
            format!("x [B, {cin}, H, W]"),
            format!("{x_shape:?}"),
            "conv2d_hwc",
        ));
    }
    let (acts, ho, wo) = im2col_quantized_hwc(x, x_shape, kh, kw, params, act, opts.threads)?;
    let y = gemm_acts_f32(&acts, w, bias, opts)?;
    let b = x_shape[0];
    Ok((to_nchw(&y, b, cout, ho * wo), [b, cout, ho, wo]))
}

fn conv_weight_shape(shape: &[usize], cin: usize, context: &str) -> Result<(usize, usize, usize)> {
    match *shape {
        [cout, c, kh, kw] if c == cin => Ok((cout, kh, kw)),
        _ => Err(shape_err(
            format!("a conv weight [C_out, {cin}, kh, kw]"),
            format!("{shape:?}"),
            context,
        )),
    }
}

/// Quantized conv2d: `x[B, C_in, H, W]` (f32) with a packed conv weight
/// `[C_out, C_in, kh, kw]` ([`PackedWeights::from_quantized`] of a 4-D export), activations
/// quantized by `act`, optional bias `[C_out]`. Returns `(y, [B, C_out, H_o, W_o])`.
///
/// The integer inference path uses [`conv2d_hwc`] instead (quantize first, im2col on the
/// codes), which needs a static activation grid and a reordered weight.
pub fn conv2d(
    x: &[f32],
    x_shape: [usize; 4],
    w: &PackedWeights,
    act: &ActQuant,
    bias: Option<&[f32]>,
    params: &Conv2dParams,
    opts: &GemmOptions,
) -> Result<(Vec<f32>, [usize; 4])> {
    let (cout, kh, kw) = conv_weight_shape(w.shape(), x_shape[1], "conv2d")?;
    let (cols, ho, wo) = im2col(x, x_shape, kh, kw, params)?;
    let y = gemm_f32_out_with(&cols, w, act, bias, opts)?;
    let b = x_shape[0];
    Ok((to_nchw(&y, b, cout, ho * wo), [b, cout, ho, wo]))
}

/// Scalar reference of [`conv2d`]: im2col + [`gemm_f32_out_ref`] on the
/// [`QuantizedTensor`].
pub fn conv2d_ref(
    x: &[f32],
    x_shape: [usize; 4],
    qt: &QuantizedTensor,
    act: &ActQuant,
    bias: Option<&[f32]>,
    params: &Conv2dParams,
) -> Result<(Vec<f32>, [usize; 4])> {
    let (cout, kh, kw) = conv_weight_shape(&qt.shape, x_shape[1], "conv2d_ref")?;
    let (cols, ho, wo) = im2col(x, x_shape, kh, kw, params)?;
    let y = gemm_f32_out_ref(&cols, qt, act, bias)?;
    let b = x_shape[0];
    Ok((to_nchw(&y, b, cout, ho * wo), [b, cout, ho, wo]))
}

/// Binary × binary conv2d (XNOR-popcount) with a `kh × kw` kernel; the weight is
/// `[C_out, C_in·kh·kw]` sign bitplanes. Activations are binarized per output pixel
/// (β = mean |patch|, as XNOR-Net's K matrix).
pub fn conv2d_xnor(
    x: &[f32],
    x_shape: [usize; 4],
    w: &XnorWeights,
    kernel: [usize; 2],
    bias: Option<&[f32]>,
    params: &Conv2dParams,
    opts: &XnorOptions,
) -> Result<(Vec<f32>, [usize; 4])> {
    let [kh, kw] = kernel;
    if x_shape[1] * kh * kw != w.k() {
        return Err(shape_err(
            format!("C_in·kh·kw = K = {}", w.k()),
            format!("{}·{kh}·{kw}", x_shape[1]),
            "conv2d_xnor",
        ));
    }
    let (cols, ho, wo) = im2col(x, x_shape, kh, kw, params)?;
    let y = xnor::gemm_f32_out_with(&cols, w, bias, opts)?;
    let b = x_shape[0];
    Ok((to_nchw(&y, b, w.n(), ho * wo), [b, w.n(), ho, wo]))
}

/// Direct f32 convolution (six nested loops; tests compare im2col + GEMM against it).
pub fn conv2d_f32_direct(
    x: &[f32],
    x_shape: [usize; 4],
    w: &[f32],
    w_shape: [usize; 4],
    bias: Option<&[f32]>,
    params: &Conv2dParams,
) -> Result<(Vec<f32>, [usize; 4])> {
    let [b, c, h, wd] = x_shape;
    let [cout, cin, kh, kw] = w_shape;
    if cin != c || x.len() != b * c * h * wd || w.len() != cout * cin * kh * kw {
        return Err(shape_err(
            "x [B, C, H, W] and w [C_out, C, kh, kw]",
            format!(
                "{x_shape:?} ({} values), {w_shape:?} ({} values)",
                x.len(),
                w.len()
            ),
            "conv2d_f32_direct",
        ));
    }
    if let Some(bias) = bias
        && bias.len() != cout
    {
        return Err(shape_err(
            format!("bias of {cout}"),
            bias.len().to_string(),
            "conv2d_f32_direct",
        ));
    }
    let (ho, wo) = params.out_size(h, wd, kh, kw)?;
    let [sh, sw] = params.stride;
    let [ph, pw] = params.padding;
    let mut out = vec![0f32; b * cout * ho * wo];
    for bb in 0..b {
        for co in 0..cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = 0f64;
                    for ci in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let y = (oy * sh + i) as isize - ph as isize;
                                let xx = (ox * sw + j) as isize - pw as isize;
                                if y >= 0 && y < h as isize && xx >= 0 && xx < wd as isize {
                                    let xv = x[((bb * c + ci) * h + y as usize) * wd + xx as usize];
                                    let wv = w[((co * cin + ci) * kh + i) * kw + j];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                    }
                    out[((bb * cout + co) * ho + oy) * wo + ox] =
                        (s + bias.map_or(0.0, |b| b[co] as f64)) as f32;
                }
            }
        }
    }
    Ok((out, [b, cout, ho, wo]))
}
