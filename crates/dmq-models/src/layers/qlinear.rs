//! [`QLinear`]: a fully connected layer with optional weight and input quantizers.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use dmq_quant::{ActQuantizer, WeightQuantizer};

use super::{LayerKind, executor_err, quant_act, quant_weight, torch_uniform};
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
            name: name.to_string(),
        }
    }
}

/// `y = Q_a(x)·Q_w(W)ᵀ + b`.
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
        ctx.capture_input(&self.name, Operand::Input, &x);
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
        let x = quant_act(&self.a_quant, x, ctx, &self.name)?;
        let w = self.effective_weight(ctx)?;
        let y = burn::tensor::module::linear(x, w.transpose(), self.bias.as_ref().map(|b| b.val()));
        ctx.tap_layer(&self.name, &y)?;
        Ok(y)
    }
}
