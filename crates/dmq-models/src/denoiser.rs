//! The [`Denoiser`] trait: what every algorithm of dmq needs from a diffusion model.

use burn::tensor::{Device, Int, Tensor};

use crate::conditioning::Conditioning;

use crate::context::{ForwardCtx, LayerCall, LayerRecorder, StepContext};
use crate::error::Result;
use crate::layers::{LayerMut, LayerRef};
use crate::structure::Structure;

/// Static facts about a denoiser.
#[derive(Clone, Debug, PartialEq)]
pub struct DenoiserInfo {
    /// Image channels C of x_t.
    pub in_channels: usize,
    /// Spatial size of x_t (square).
    pub sample_size: usize,
    /// Number of classes for class-conditional models; the null (unconditional) label is
    /// `num_classes` itself.
    pub num_classes: Option<usize>,
    /// Width `D` of the encoder hidden states of text-conditional models
    /// ([`Conditioning::Text`] `[B, L, D]`).
    pub cross_attention_dim: Option<usize>,
    /// Output channels (2·C for learned-sigma models, whose first C channels are ε).
    pub out_channels: usize,
}

/// A noise-prediction network: UNet, DiT, or any user model that wants dmq's algorithms.
pub trait Denoiser {
    /// Raw model output for `x_t` at timesteps `t` (one per batch element), with optional
    /// conditioning (class labels or encoder hidden states).
    ///
    /// # Shapes
    /// - x: `[B, C, H, W]`; t: `[B]`; cond: labels `[B]` or states `[B, L, D]`
    /// - output: `[B, out_channels, H, W]`
    fn forward(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        cond: Option<Conditioning>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>>;

    /// Static facts (channels, size, classes).
    fn info(&self) -> DenoiserInfo;

    /// Visits every quantizable layer in forward order.
    fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>));

    /// Visits every quantizable layer mutably (to attach or replace quantizers).
    fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>));

    /// The architecture as data: stages, reconstruction units, timestep-embedding path,
    /// attention projections, shortcuts, resamplers and skip concatenations, named by the
    /// same paths as [`Denoiser::for_each_layer`]. The algorithms read this, never names.
    fn structure(&self) -> Structure;

    /// The predicted noise ε: the first `in_channels` channels of the output.
    fn predict_eps(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        cond: Option<Conditioning>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        let out = self.forward(x, t, cond, ctx)?;
        let info = self.info();
        if info.out_channels == info.in_channels {
            return Ok(out);
        }
        let [b, _, h, w] = out.dims();
        Ok(out.slice([0..b, 0..info.in_channels, 0..h, 0..w]))
    }
}

/// Visits every quantizable layer of `model` until `f` fails, and returns that first error
/// (the layers after it are not visited).
pub fn try_for_each_layer<M: Denoiser + ?Sized, E>(
    model: &M,
    mut f: impl FnMut(LayerRef<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut err = None;
    model.for_each_layer(&mut |l| {
        if err.is_none()
            && let Err(e) = f(l)
        {
            err = Some(e);
        }
    });
    err.map_or(Ok(()), Err)
}

/// Mutable [`try_for_each_layer`]: visits every quantizable layer until `f` fails.
pub fn try_for_each_layer_mut<M: Denoiser + ?Sized, E>(
    model: &mut M,
    mut f: impl FnMut(LayerMut<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut err = None;
    model.for_each_layer_mut(&mut |l| {
        if err.is_none()
            && let Err(e) = f(l)
        {
            err = Some(e);
        }
    });
    err.map_or(Ok(()), Err)
}

/// Token count of the encoder states [`layer_inventory`] feeds a text-conditional model: the
/// CLIP context length Stable Diffusion pipelines pad every prompt to.
pub const TEXT_CONTEXT_LEN: usize = 77;

/// Every quantizable-layer call of one batch-1 forward pass at the model's sample size, in
/// call order: names, kinds, weight shapes and MACs per call (the layer inventory).
/// Text-conditional models are run on [`TEXT_CONTEXT_LEN`] tokens of encoder states (CLIP's
/// context: cross-attention MACs grow with the token count).
pub fn layer_inventory<M: Denoiser + ?Sized>(model: &M, device: &Device) -> Result<Vec<LayerCall>> {
    layer_inventory_with_context(model, TEXT_CONTEXT_LEN, device)
}

/// [`layer_inventory`] with a text-conditional model run on `context_len` tokens (a
/// pipeline's tokenizer length; ignored by the other models).
pub fn layer_inventory_with_context<M: Denoiser + ?Sized>(
    model: &M,
    context_len: usize,
    device: &Device,
) -> Result<Vec<LayerCall>> {
    let info = model.info();
    let s = info.sample_size;
    let x = Tensor::zeros([1, info.in_channels, s, s], device);
    let t = Tensor::from_floats([500.0], device);
    let class = info
        .num_classes
        .map(|_| Conditioning::Class(Tensor::<1, Int>::from_ints([0], device)));
    let class = match (class, info.cross_attention_dim) {
        (None, Some(d)) => Some(Conditioning::text(Tensor::zeros(
            [1, context_len, d],
            device,
        ))),
        (c, _) => c,
    };
    let recorder = LayerRecorder::default();
    let ctx = ForwardCtx::new(StepContext::single(500.0)).with_recorder(&recorder);
    model.forward(x, t, class, &ctx)?;
    Ok(recorder.calls())
}
