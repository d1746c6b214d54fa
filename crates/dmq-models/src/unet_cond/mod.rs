//! Text-conditional UNet in the diffusers `UNet2DConditionModel` layout (the Stable
//! Diffusion 1.x UNet): down blocks `CrossAttnDownBlock2D`/`DownBlock2D`, mid block
//! `UNetMidBlock2DCrossAttn`, up blocks `UpBlock2D`/`CrossAttnUpBlock2D`, each
//! cross-attention block a `Transformer2DModel` whose `BasicTransformerBlock`s attend to the
//! text encoder's hidden states.
//!
//! - [`config`]: [`UNet2DConditionConfig`], diffusers' `unet/config.json` parsed strictly
//!   (unsupported options are errors naming the option);
//! - [`attention`]: [`Attention`] (`attn1` self-, `attn2` cross-attention, with the `qk`/`sv`
//!   [`crate::layers::QMatmul`]s); [`feed_forward`]: [`FeedForward`] with [`Geglu`];
//! - [`projection`]: [`Projection`], `proj_in`/`proj_out` as 1×1 conv or linear under one key;
//! - [`transformer`]: [`BasicTransformerBlock`], [`Transformer2DModel`];
//! - [`blocks`]: [`DownBlock`], [`MidBlock`], [`UpBlock`] (resnets and resamplers are
//!   [`crate::unet`]'s);
//! - [`model`]: [`UNet2DConditionModel`] (`load`, `save_pretrained`, `forward`, layer
//!   inventory); [`structure`](mod@structure): its [`crate::Structure`].
//!
//! Every quantizable layer is named by its diffusers state-dict path
//! (`down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`; the attention products
//! are `<attention>.qk` and `<attention>.sv`). Numerical parity with diffusers (max abs error
//! ≤ 1e-4) is tested by `crates/dmq-models/tests/t2i/unet_cond.rs` on fixtures written by
//! `python3 scripts/fixtures/unet_cond_parity.py`; docs/unet_cond.md describes the API.

pub mod attention;
pub mod blocks;
pub mod config;
pub mod feed_forward;
pub mod model;
pub mod projection;
pub mod structure;
pub mod transformer;

pub use attention::{Attention, AttentionConfig, cross_attention_core};
pub use blocks::{DownBlock, MidBlock, UpBlock};
pub use config::{DownKind, PerBlock, TransformerSpec, UNet2DConditionConfig, UpKind};
pub use feed_forward::{FeedForward, Geglu};
pub use model::UNet2DConditionModel;
pub use projection::Projection;
pub use transformer::{BasicTransformerBlock, Transformer2DModel};
