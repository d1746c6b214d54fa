//! UNet in the diffusers `UNet2DModel` layout (the DDPM / ADM-style UNet of
//! `google/ddpm-cifar10-32` and our embedded `unet-fmnist`).
//!
//! - [`config`]: [`UNetConfig`], diffusers' `config.json`, parsed strictly (unsupported
//!   options are errors naming the option);
//! - [`embedding`]: sinusoidal timestep features, the time MLP and the class table;
//! - [`resnet`]: [`ResnetBlock2D`]; [`attention`]: [`Attention`] (spatial self-attention with
//!   the `qk`/`sv` [`crate::layers::QMatmul`]s); [`sampling`]: [`Downsample2D`],
//!   [`Upsample2D`];
//! - [`blocks`]: [`DownBlock`] (`DownBlock2D`/`AttnDownBlock2D`), [`MidBlock`]
//!   (`UNetMidBlock2D`), [`UpBlock`] (`UpBlock2D`/`AttnUpBlock2D`);
//! - [`checkpoint`]: renaming of deprecated attention keys in old checkpoints;
//! - [`model`]: [`UNet2DModel`] with `from_pretrained`/`save_pretrained` and the
//!   [`crate::Denoiser`] implementation.
//!
//! Every quantizable layer is named by its diffusers state-dict path
//! (`down_blocks.1.attentions.0.to_q`; the attention products are `<attention>.qk` and
//! `<attention>.sv`). Numerical parity with diffusers (max abs error ≤ 1e-4) is tested by
//! `crates/dmq-models/tests/unet_parity.rs` on fixtures written by
//! `python3 scripts/fixtures/unet_parity.py`; run it with
//! `cargo test -p dmq-models --test suite unet_parity::`.

pub mod attention;
pub mod blocks;
pub mod checkpoint;
pub mod config;
pub mod embedding;
pub mod model;
pub mod resnet;
pub mod sampling;
pub mod structure;

pub use attention::{Attention, AttentionConfig};
pub use blocks::{DownBlock, MidBlock, UpBlock};
pub use config::{DownBlockType, SampleSize, UNetConfig, UpBlockType};
pub use embedding::{ClassEmbedding, TimestepEmbedding, timestep_embedding};
pub use model::UNet2DModel;
pub use resnet::{ResnetBlock2D, ResnetBlock2DConfig};
pub use sampling::{Downsample2D, Upsample2D, upsample_nearest2x};
