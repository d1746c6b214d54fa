//! # dmq-models
//!
//! Model-side building blocks of dmq (docs/design.md §1, §3):
//!
//! - [`layers`]: quantizable layers [`layers::QLinear`], [`layers::QConv2d`],
//!   [`layers::QMatmul`] (FP exactly when their quantizers are off) and diffusers-named norms;
//! - [`context`]: [`StepContext`] (explicit step index for time-indexed quantizers),
//!   taps and layer-call recording;
//! - [`executor`]: [`LayerExecutor`], the hook through which an integer inference path
//!   computes quantizable layers outside burn;
//! - [`denoiser`]: the [`Denoiser`] trait every algorithm works on, and the layer inventory;
//!   [`structure`]: the architecture as data (stages, units, time path, attention, skips);
//! - [`io`]: strict loading/saving of the diffusers layout (`config.json` +
//!   `diffusion_pytorch_model.safetensors`, f32/f16/bf16);
//! - [`unet_cond`], [`vae`], [`clip`]: the text-to-image pieces (diffusers
//!   `UNet2DConditionModel` and `AutoencoderKL`, transformers `CLIPTextModel`);
//! - [`conditioning`]: [`Conditioning`], class labels or text states (with the
//!   unconditional embedding for CFG), the one conditioning type of every denoiser;
//! - [`sampler`]: sampling with batched CFG, per-step callbacks and teacher forcing;
//!   [`noise`]: host-side seeded Gaussian noise (identical on every backend);
//! - [`train`]: EMA, LR schedules, resumable checkpoints, the ε-prediction loss;
//! - [`scheduler`]: DDPM and DDIM over any ascending timestep list, PNDM (PLMS) and
//!   DPM-Solver++, ε / v / x0 prediction, with numerical parity against diffusers.
//!
//! Every tensor API takes or carries a runtime [`burn::tensor::Device`]; no backend is
//! hard-coded. Cargo features pick the compiled-in backends: `flex` (default),
//! `ndarray`, `wgpu`.

pub mod clip;
pub mod conditioning;
pub mod context;
pub mod defaults;
pub mod denoiser;
pub mod dit;
pub mod error;
pub mod executor;
pub mod io;
pub mod layers;
pub mod linalg;
pub mod noise;
pub mod sampler;
pub mod scheduler;
pub mod structure;
pub mod train;
pub mod unet;
pub mod unet_cond;
pub mod vae;

pub use conditioning::{Conditioning, PromptStates};
pub use context::{
    ForwardCtx, HostTensor, InputCapture, LayerCall, LayerRecorder, Operand, StepContext,
    TapTensor, Taps, forward_for_taps,
};
pub use denoiser::{
    Denoiser, DenoiserInfo, layer_inventory, layer_inventory_with_context, try_for_each_layer,
    try_for_each_layer_mut,
};
pub use error::{ModelError, Result};
pub use executor::{ConvGeometry, ExecutorError, LayerExecutor};
pub use structure::{AttentionLayers, SkipConcat, Stage, StageKind, Structure};
