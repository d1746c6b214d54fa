//! [`QConv2d`]: a 2-D convolution with optional weight and input quantizers.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};
use dmq_quant::{ActQuantizer, Quantizer, WeightQuantizer};

use super::{
    LayerKind, LowRank, check_smoothing, check_split, executor_err, quant_act, quant_weight,
    torch_uniform,
};
use crate::context::{ForwardCtx, HostTensor, LayerCall, Operand};
use crate::error::{Result, shape_err};
use crate::executor::ConvGeometry;

/// Configuration of a [`QConv2d`] (square kernel, symmetric padding, groups = 1).
#[derive(Config, Debug)]
pub struct QConv2dConfig {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel size k (k×k).
    pub kernel: usize,
    /// Stride.
    #[config(default = 1)]
    pub stride: usize,
    /// Zero padding on every side.
    #[config(default = 0)]
    pub padding: usize,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
}

impl QConv2dConfig {
    /// A layer named `name` (its diffusers path), PyTorch-style random init.
    pub fn init(&self, name: &str, device: &Device) -> QConv2d {
        let fan_in = self.c_in * self.kernel * self.kernel;
        QConv2d {
            weight: Param::from_tensor(torch_uniform(
                [self.c_out, self.c_in, self.kernel, self.kernel],
                fan_in,
                device,
            )),
            bias: self
                .bias
                .then(|| Param::from_tensor(torch_uniform([self.c_out], fan_in, device))),
            w_quant: None,
            a_quant: None,
            smooth: None,
            low_rank: None,
            stride: self.stride,
            padding: self.padding,
            name: name.to_string(),
        }
    }
}

/// `y = conv2d(Q_a(x / s), Q_w(W)) + b` (+ the low-rank branch on `x / s`, see
/// [`LowRank`]). A dynamic (per-token) activation quantizer quantizes the rows of the im2col
/// matrix, one output position's receptive field each, as the integer kernels do; the
/// convolution then runs as that matrix times the flattened weight.
///
/// # Shapes
/// - weight: `[C_out, C_in, k, k]`
/// - input: `[B, C_in, H, W]`; output: `[B, C_out, H', W']`,
///   `H' = (H + 2p − k)/s + 1`
#[derive(Module, Debug)]
pub struct QConv2d {
    /// Weight `[C_out, C_in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// Bias `[C_out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Weight quantizer (None = FP).
    pub w_quant: Option<WeightQuantizer>,
    /// Input-activation quantizer (None = FP).
    pub a_quant: Option<ActQuantizer>,
    /// SmoothQuant's per-input-channel divisor s `[C_in]` (None = 1): the input is divided by
    /// it before anything else sees it, and `weight` holds `W·diag(s)` along `C_in`.
    pub smooth: Option<Param<Tensor<1>>>,
    /// SVDQuant's 16-bit branch (None = no branch): a `k×k` convolution to `r` channels and a
    /// 1×1 back; `weight` then holds the residual `W − L1·L2`.
    pub low_rank: Option<LowRank>,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub padding: usize,
    #[module(skip)]
    name: String,
}

impl QConv2d {
    /// diffusers path of the layer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `[C_out, C_in, k, k]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        self.weight.val().dims()
    }

    /// SmoothQuant on an FP layer: `W ← W·diag(s)` along `C_in` and the input divided by `s`
    /// per channel from now on (the FP output is unchanged; convolution is linear in each
    /// input channel). Same preconditions as [`crate::layers::QLinear::smooth_by`].
    pub fn smooth_by(&mut self, s: &[f32]) -> Result<()> {
        let [_, c_in, _, _] = self.weight_shape();
        check_smoothing(
            &self.name,
            s,
            c_in,
            self.smooth.is_some(),
            self.w_quant.is_some() || self.a_quant.is_some(),
        )?;
        let device = self.weight.val().device();
        let st = Tensor::<1>::from_floats(s, &device);
        let w = self.weight.val() * st.clone().reshape([1, c_in, 1, 1]);
        // a new leaf (the product is a node of the autodiff graph on autodiff devices)
        self.weight = Param::from_tensor(w.detach());
        self.smooth = Some(Param::from_tensor(st).set_require_grad(false));
        Ok(())
    }

    /// SVDQuant's split (see [`crate::layers::QLinear::split_low_rank`]); `branch.down` is
    /// `[r, C_in·k·k]`.
    pub fn split_low_rank(&mut self, branch: LowRank) -> Result<()> {
        let [c_out, c_in, kh, kw] = self.weight_shape();
        check_split(&self.name, &branch, c_in * kh * kw, c_out, self)?;
        let w = self.weight.val() - branch.product().reshape([c_out, c_in, kh, kw]);
        self.weight = Param::from_tensor(w.detach());
        self.low_rank = Some(branch);
        Ok(())
    }

    /// Attaches a divisor whose folding the weight already carries (loading a file).
    pub fn attach_smoothing(&mut self, device: &Device) {
        let [_, c_in, _, _] = self.weight_shape();
        self.smooth =
            Some(Param::from_tensor(Tensor::ones([c_in], device)).set_require_grad(false));
    }

    /// The weight as the forward pass uses it.
    pub fn effective_weight(&self, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        quant_weight(&self.w_quant, self.weight.val(), ctx, &self.name)
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let [c_out, c_in, kh, kw] = self.weight_shape();
        let [b, c, h, w] = x.dims();
        let (p, s) = (self.padding, self.stride);
        if c != c_in || h + 2 * p < kh || w + 2 * p < kw {
            return Err(shape_err(
                &self.name,
                format!(
                    "[B, {c_in}, H ≥ {}, W ≥ {}]",
                    kh.saturating_sub(2 * p),
                    kw.saturating_sub(2 * p)
                ),
                [b, c, h, w],
            ));
        }
        if let Some(rec) = ctx.recorder {
            let (ho, wo) = ((h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1);
            rec.push(LayerCall {
                name: self.name.clone(),
                kind: LayerKind::Conv2d,
                weight_shape: vec![c_out, c_in, kh, kw],
                macs: (b * c_out * ho * wo * c_in * kh * kw) as u64,
            });
        }
        let x = match &self.smooth {
            Some(sm) => x / sm.val().reshape([1, c_in, 1, 1]),
            None => x,
        };
        ctx.capture_input(&self.name, Operand::Input, &x);
        if let Some(ex) = ctx.executor_for(&self.name) {
            let (ho, wo) = ((h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1);
            let geometry = ConvGeometry {
                stride: s,
                padding: p,
            };
            let y = ex
                .conv2d(
                    &self.name,
                    &HostTensor::from_tensor(&x),
                    geometry,
                    &ctx.step,
                )
                .map_err(executor_err(&self.name))?
                .into_tensor([b, c_out, ho, wo], &x.device(), &self.name)?;
            ctx.tap_layer(&self.name, &y)?;
            return Ok(y);
        }
        let branch = self
            .low_rank
            .as_ref()
            .map(|lr| lr.conv(x.clone(), [kh, kw], s, p));
        let wt = self.effective_weight(ctx)?;
        let bias = self.bias.as_ref().map(|b| b.val());
        let y = if let Some(ActQuantizer::Dynamic(q)) = &self.a_quant {
            // im2col rows [B, L, C_in·k·k] quantized per row, times W [C_out, C_in·k·k]ᵀ.
            let (ho, wo) = ((h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1);
            let cols = im2col_rows(x, [kh, kw], s, p);
            let cols = q.fake_quant(cols, ctx.step.step).map_err(|source| {
                crate::error::ModelError::Quant {
                    layer: self.name.clone(),
                    source,
                }
            })?;
            let wm = wt.reshape([1, c_out, c_in * kh * kw]).swap_dims(1, 2);
            let mut y = cols.matmul(wm); // [B, L, C_out]
            if let Some(bias) = bias {
                y = y + bias.reshape([1, 1, c_out]);
            }
            y.swap_dims(1, 2).reshape([b, c_out, ho, wo])
        } else {
            let x = quant_act(&self.a_quant, x, ctx, &self.name)?;
            burn::tensor::module::conv2d(x, wt, bias, ConvOptions::new([s, s], [p, p], [1, 1], 1))
        };
        let y = match branch {
            Some(br) => y + br,
            None => y,
        };
        ctx.tap_layer(&self.name, &y)?;
        Ok(y)
    }
}

/// The im2col matrix of `x [B, C, H, W]` as rows `[B, H'·W', C·kh·kw]`, columns in
/// `(c, kh, kw)` order (the flattened weight's order): one strided slice of the padded input
/// per kernel offset, stacked. burn's `unfold4d` computes the same with a one-hot
/// convolution, `C·kh·kw` times the work of the layer itself.
fn im2col_rows(x: Tensor<4>, [kh, kw]: [usize; 2], stride: usize, pad: usize) -> Tensor<3> {
    use burn::tensor::Slice;
    let [b, c, h, w] = x.dims();
    let (ho, wo) = (
        (h + 2 * pad - kh) / stride + 1,
        (w + 2 * pad - kw) / stride + 1,
    );
    let xp = if pad > 0 {
        x.pad((pad, pad, pad, pad), 0.0f32)
    } else {
        x
    };
    let st = stride as isize;
    let mut parts = Vec::with_capacity(kh * kw);
    for dy in 0..kh {
        for dx in 0..kw {
            let (y0, x0) = (dy as isize, dx as isize);
            let part = xp.clone().slice([
                Slice::new(0, None, 1),
                Slice::new(0, None, 1),
                Slice::new(y0, Some(y0 + st * (ho as isize - 1) + 1), st),
                Slice::new(x0, Some(x0 + st * (wo as isize - 1) + 1), st),
            ]);
            parts.push(part); // [B, C, H', W']
        }
    }
    // [B, C, kh·kw, H', W'] → [B, C·kh·kw, L] → [B, L, C·kh·kw]
    Tensor::stack::<5>(parts, 2)
        .reshape([b, c * kh * kw, ho * wo])
        .swap_dims(1, 2)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;

    /// im2col rows times the flattened weight is the convolution, for strides 1 and 2 and
    /// paddings 0 and 1 (column order (c, kh, kw) included).
    #[test]
    fn im2col_rows_times_weight_is_the_convolution() {
        let device = Device::default();
        device.seed(3);
        for (stride, pad) in [(1, 1), (1, 0), (2, 1), (2, 0)] {
            let x = Tensor::<4>::random([2, 3, 7, 6], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
            let want = burn::tensor::module::conv2d(
                x.clone(),
                w.clone(),
                None,
                ConvOptions::new([stride; 2], [pad; 2], [1, 1], 1),
            );
            let [b, o, ho, wo] = want.dims();
            let rows = im2col_rows(x, [3, 3], stride, pad);
            let got = rows
                .matmul(w.reshape([1, 4, 27]).swap_dims(1, 2))
                .swap_dims(1, 2)
                .reshape([b, o, ho, wo]);
            let d: f32 = (got - want).abs().max().into_scalar();
            assert!(d < 1e-4, "stride {stride} pad {pad}: {d}");
        }
    }
}
