//! Quantizable layers ([`QLinear`], [`QConv2d`], [`QMatmul`]) and the normalisations the
//! diffusers models use, with diffusers parameter names (`weight`, `bias`).
//!
//! Each quantizable layer holds its FP weight (PyTorch layout), an optional weight quantizer
//! and an optional input-activation quantizer. With both off the layer is exactly the FP
//! layer: one code path for FP and quantized models. Every layer knows its diffusers
//! state-dict path (its `name`), which configs, exports and reports use.

mod attention_core;
mod low_rank;
mod norm;
mod qconv2d;
mod qlinear;
mod qmatmul;

pub use attention_core::multi_head_attention;
pub use low_rank::LowRank;
pub use norm::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};
pub use qconv2d::{QConv2d, QConv2dConfig};
pub use qlinear::{QLinear, QLinearConfig};
pub use qmatmul::QMatmul;

use burn::tensor::{Device, Distribution, Tensor};
use dmq_quant::{ActQuantizer, Quantizer, WeightQuantizer};
use serde::{Deserialize, Serialize};

use crate::context::ForwardCtx;
use crate::error::{ModelError, Result};

/// Kind of a quantizable layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LayerKind {
    /// Fully connected (`[out, in]` weight).
    Linear,
    /// 2-D convolution (`[out, in/groups, kh, kw]` weight).
    Conv2d,
    /// Activation × activation product (attention q·kᵀ or softmax·v).
    Matmul,
}

/// Shared access to any quantizable layer of a model.
#[derive(Debug)]
pub enum LayerRef<'a> {
    /// A linear layer.
    Linear(&'a QLinear),
    /// A convolution.
    Conv2d(&'a QConv2d),
    /// An attention matmul.
    Matmul(&'a QMatmul),
}

/// Mutable access to any quantizable layer of a model (to attach quantizers).
#[derive(Debug)]
pub enum LayerMut<'a> {
    /// A linear layer.
    Linear(&'a mut QLinear),
    /// A convolution.
    Conv2d(&'a mut QConv2d),
    /// An attention matmul.
    Matmul(&'a mut QMatmul),
}

impl LayerRef<'_> {
    /// diffusers path of the layer.
    pub fn name(&self) -> &str {
        match self {
            LayerRef::Linear(l) => l.name(),
            LayerRef::Conv2d(l) => l.name(),
            LayerRef::Matmul(l) => l.name(),
        }
    }

    /// Kind of the layer.
    pub fn kind(&self) -> LayerKind {
        match self {
            LayerRef::Linear(_) => LayerKind::Linear,
            LayerRef::Conv2d(_) => LayerKind::Conv2d,
            LayerRef::Matmul(_) => LayerKind::Matmul,
        }
    }
}

impl LayerMut<'_> {
    /// diffusers path of the layer.
    pub fn name(&self) -> &str {
        match self {
            LayerMut::Linear(l) => l.name(),
            LayerMut::Conv2d(l) => l.name(),
            LayerMut::Matmul(l) => l.name(),
        }
    }

    /// Kind of the layer.
    pub fn kind(&self) -> LayerKind {
        match self {
            LayerMut::Linear(_) => LayerKind::Linear,
            LayerMut::Conv2d(_) => LayerKind::Conv2d,
            LayerMut::Matmul(_) => LayerKind::Matmul,
        }
    }
}

/// `x` through an optional activation quantizer at the context's step.
pub(crate) fn quant_act<const D: usize>(
    q: &Option<ActQuantizer>,
    x: Tensor<D>,
    ctx: &ForwardCtx<'_>,
    layer: &str,
) -> Result<Tensor<D>> {
    match q {
        None => Ok(x),
        Some(q) => q
            .fake_quant(x, ctx.step.step)
            .map_err(|source| ModelError::Quant {
                layer: layer.to_string(),
                source,
            }),
    }
}

/// A weight through an optional weight quantizer.
pub(crate) fn quant_weight<const D: usize>(
    q: &Option<WeightQuantizer>,
    w: Tensor<D>,
    ctx: &ForwardCtx<'_>,
    layer: &str,
) -> Result<Tensor<D>> {
    match q {
        None => Ok(w),
        Some(q) => q
            .fake_quant(w, ctx.step.step)
            .map_err(|source| ModelError::Quant {
                layer: layer.to_string(),
                source,
            }),
    }
}

/// Checks a SmoothQuant divisor for layer `name` with `n` input channels.
pub(crate) fn check_smoothing(
    name: &str,
    s: &[f32],
    n: usize,
    smoothed: bool,
    quantized: bool,
) -> Result<()> {
    let bad = |reason: String| ModelError::Config(format!("{name}: smoothing: {reason}"));
    if s.len() != n {
        return Err(bad(format!("{} factors for {n} input channels", s.len())));
    }
    if let Some((i, v)) = s
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v > 0.0))
    {
        return Err(bad(format!(
            "factor {i} is {v}; factors must be finite and > 0"
        )));
    }
    if smoothed {
        return Err(bad("the layer is already smoothed".into()));
    }
    if quantized {
        return Err(bad(
            "smooth before quantizing (the layer has quantizers)".into()
        ));
    }
    Ok(())
}

/// Anything holding quantizers and a weight that a low-rank split can check.
pub(crate) trait SplitTarget {
    fn quantized(&self) -> bool;
    fn has_branch(&self) -> bool;
}

impl SplitTarget for QLinear {
    fn quantized(&self) -> bool {
        self.w_quant.is_some() || self.a_quant.is_some()
    }
    fn has_branch(&self) -> bool {
        self.low_rank.is_some()
    }
}

impl SplitTarget for QConv2d {
    fn quantized(&self) -> bool {
        self.w_quant.is_some() || self.a_quant.is_some()
    }
    fn has_branch(&self) -> bool {
        self.low_rank.is_some()
    }
}

/// Checks an SVDQuant branch for layer `name` with a `[d_out, d_in]` (flattened) weight.
pub(crate) fn check_split(
    name: &str,
    branch: &LowRank,
    d_in: usize,
    d_out: usize,
    layer: &impl SplitTarget,
) -> Result<()> {
    let bad = |reason: String| ModelError::Config(format!("{name}: low-rank split: {reason}"));
    let [r, di] = branch.down.val().dims();
    let [d_o, r2] = branch.up.val().dims();
    if di != d_in || d_o != d_out || r != r2 {
        return Err(bad(format!(
            "factors [{r}, {di}] and [{d_o}, {r2}] for a [{d_out}, {d_in}] weight"
        )));
    }
    if layer.has_branch() {
        return Err(bad("the layer already has a branch".into()));
    }
    if layer.quantized() {
        return Err(bad(
            "split before quantizing (the layer has quantizers)".into()
        ));
    }
    Ok(())
}

/// Wraps an executor's error with the layer's name.
pub(crate) fn executor_err(
    layer: &str,
) -> impl FnOnce(crate::executor::ExecutorError) -> ModelError + '_ {
    move |source| ModelError::Executor {
        layer: layer.to_string(),
        source,
    }
}

/// PyTorch's default init for conv/linear: U(±1/sqrt(fan_in)) for weight and bias
/// (kaiming_uniform with a = √5).
pub(crate) fn torch_uniform<const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    device: &Device,
) -> Tensor<D> {
    let k = 1.0 / (fan_in.max(1) as f64).sqrt();
    Tensor::random(shape, Distribution::Uniform(-k, k), device)
}
