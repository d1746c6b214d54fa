//! [`QLinear`]: a fully connected layer with optional weight and input quantizers.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use dmq_quant::{ActQuantizer, WeightQuantizer};

use super::{
    LayerKind, LowRank, check_smoothing, check_split, executor_err, quant_act, quant_weight,
    torch_uniform,
};
use crate::context::{ForwardCtx, HostTensor, LayerCall, Operand};
use crate::error::{Result, shape_err};

/// Configuration of a [`QLinear`].
#[derive(Config, Debug)]
pub struct QLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
}

impl QLinearConfig {
    /// A layer named `name` (its diffusers path), PyTorch-style random init.
    pub fn init(&self, name: &str, device: &Device) -> QLinear {
        QLinear {
            weight: Param::from_tensor(torch_uniform(
                [self.d_output, self.d_input],
                self.d_input,
                device,
            )),
            bias: self
                .bias
                .then(|| Param::from_tensor(torch_uniform([self.d_output], self.d_input, device))),
            w_quant: None,
            a_quant: None,
            smooth: None,
            low_rank: None,
            name: name.to_string(),
        }
    }
}

/// `y = Q_a(x / s)·Q_w(W)ᵀ + b`, with `s = 1` unless SmoothQuant set a per-input-channel
/// divisor (and folded it into `W`, so that the FP product is unchanged), plus SVDQuant's
/// low-rank branch `((x / s)·L2ᵀ)·L1ᵀ` when there is one (then `W` holds the residual).
///
/// # Shapes
/// - weight: `[d_output, d_input]` (PyTorch layout, so diffusers checkpoints load as is and
///   per-output-channel quantization is axis 0 for linear and conv alike)
/// - input: `[..., d_input]`; output: `[..., d_output]`
#[derive(Module, Debug)]
pub struct QLinear {
    /// Weight `[d_output, d_input]`.
    pub weight: Param<Tensor<2>>,
    /// Bias `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Weight quantizer (None = FP).
    pub w_quant: Option<WeightQuantizer>,
    /// Input-activation quantizer (None = FP).
    pub a_quant: Option<ActQuantizer>,
    /// SmoothQuant's per-input-channel divisor s `[d_input]` (None = 1): the input is divided
    /// by it before anything else sees it (quantizer, executor, capture), and `weight` holds
    /// `W·diag(s)`.
    pub smooth: Option<Param<Tensor<1>>>,
    /// SVDQuant's 16-bit branch (None = no branch); `weight` then holds `W − L1·L2`.
    pub low_rank: Option<LowRank>,
    #[module(skip)]
    name: String,
}

impl QLinear {
    /// diffusers path of the layer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `[d_output, d_input]`.
    pub fn weight_shape(&self) -> [usize; 2] {
        self.weight.val().dims()
    }

    /// SmoothQuant on an FP layer: `W ← W·diag(s)` and the input divided by `s` from now on
    /// (the FP output is unchanged). `s` must have `d_input` finite positive entries, and the
    /// layer must not be smoothed or quantized yet.
    pub fn smooth_by(&mut self, s: &[f32]) -> Result<()> {
        let [_, d_in] = self.weight_shape();
        check_smoothing(
            &self.name,
            s,
            d_in,
            self.smooth.is_some(),
            self.w_quant.is_some() || self.a_quant.is_some(),
        )?;
        let device = self.weight.val().device();
        let st = Tensor::<1>::from_floats(s, &device);
        let w = self.weight.val() * st.clone().reshape([1, d_in]);
        // a new leaf (the product is a node of the autodiff graph on autodiff devices)
        self.weight = Param::from_tensor(w.detach());
        self.smooth = Some(Param::from_tensor(st).set_require_grad(false));
        Ok(())
    }

    /// SVDQuant's split of an FP layer: `W ← W − L1·L2` and the branch `L1·L2` computed beside
    /// it from now on (the FP output is unchanged up to f32 rounding). The layer must have no
    /// quantizers and no branch yet.
    pub fn split_low_rank(&mut self, branch: LowRank) -> Result<()> {
        let [d_out, d_in] = self.weight_shape();
        check_split(&self.name, &branch, d_in, d_out, self)?;
        let w = self.weight.val() - branch.product();
        self.weight = Param::from_tensor(w.detach());
        self.low_rank = Some(branch);
        Ok(())
    }

    /// Attaches a divisor whose folding the weight already carries (loading a file).
    pub fn attach_smoothing(&mut self, device: &Device) {
        let [_, d_in] = self.weight_shape();
        self.smooth =
            Some(Param::from_tensor(Tensor::ones([d_in], device)).set_require_grad(false));
    }

    /// The weight as the forward pass uses it (quantized when a weight quantizer is set).
    pub fn effective_weight(&self, ctx: &ForwardCtx<'_>) -> Result<Tensor<2>> {
        quant_weight(&self.w_quant, self.weight.val(), ctx, &self.name)
    }

    /// Forward pass.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, ctx: &ForwardCtx<'_>) -> Result<Tensor<D>> {
        let [d_out, d_in] = self.weight_shape();
        let dims = x.dims();
        if dims[D - 1] != d_in {
            return Err(shape_err(&self.name, format!("[..., {d_in}]"), dims));
        }
        if let Some(rec) = ctx.recorder {
            let rows = dims.iter().product::<usize>() / d_in;
            rec.push(LayerCall {
                name: self.name.clone(),
                kind: LayerKind::Linear,
                weight_shape: vec![d_out, d_in],
                macs: (rows * d_in * d_out) as u64,
            });
        }
        let x = match &self.smooth {
            Some(s) => {
                let mut shape = [1usize; D];
                shape[D - 1] = d_in;
                x / s.val().reshape(shape)
            }
            None => x,
        };
        ctx.capture_input(&self.name, Operand::Input, &x);
        // An executor computes the whole layer, its low-rank branch included.
        if let Some(ex) = ctx.executor_for(&self.name) {
            let rows = dims.iter().product::<usize>() / d_in;
            let h = HostTensor {
                shape: vec![rows, d_in],
                ..HostTensor::from_tensor(&x)
            };
            let mut want = dims;
            want[D - 1] = d_out;
            let y: Tensor<2> = ex
                .linear(&self.name, &h, &ctx.step)
                .map_err(executor_err(&self.name))?
                .into_tensor([rows, d_out], &x.device(), &self.name)?;
            let y = y.reshape(want);
            ctx.tap_layer(&self.name, &y)?;
            return Ok(y);
        }
        let branch = self.low_rank.as_ref().map(|lr| lr.linear(x.clone()));
        let x = quant_act(&self.a_quant, x, ctx, &self.name)?;
        let w = self.effective_weight(ctx)?;
        let y = burn::tensor::module::linear(x, w.transpose(), self.bias.as_ref().map(|b| b.val()));
        let y = match branch {
            Some(b) => y + b,
            None => y,
        };
        ctx.tap_layer(&self.name, &y)?;
        Ok(y)
    }
}
