//! The Stable Diffusion VAE in the diffusers `AutoencoderKL` layout (latent diffusion:
//! images ↔ latents).
//!
//! - [`config`]: [`AutoencoderKlConfig`], diffusers' `vae/config.json`, parsed strictly
//!   (unsupported options are errors naming the option);
//! - [`distribution`]: [`LatentDist`] (diffusers `DiagonalGaussianDistribution`);
//! - [`blocks`]: [`DownEncoderBlock2D`], [`UpDecoderBlock2D`], [`VaeMidBlock`], built from the
//!   UNet's [`crate::unet::ResnetBlock2D`] (without time conditioning),
//!   [`crate::unet::Attention`], [`crate::unet::Downsample2D`] and
//!   [`crate::unet::Upsample2D`];
//! - [`encoder`]: [`Encoder`]; [`decoder`]: [`Decoder`];
//! - [`model`]: [`AutoencoderKL`] (`load`, `encode`, `decode`, the pipelines' latent scaling,
//!   `for_each_layer`).
//!
//! Every quantizable layer is named by its diffusers state-dict path
//! (`encoder.down_blocks.0.resnets.0.conv1`, `decoder.mid_block.attentions.0.to_q`,
//! `quant_conv`; the attention products are `<attention>.qk` and `<attention>.sv`).
//! Numerical parity with diffusers (max abs error ≤ 1e-4) is tested by
//! `crates/dmq-models/tests/t2i/vae.rs` on fixtures written by
//! `python3 scripts/fixtures/vae_parity.py`; see `docs/vae.md`.

pub mod blocks;
pub mod config;
pub mod decoder;
pub mod distribution;
pub mod encoder;
pub mod model;

pub use blocks::{DownEncoderBlock2D, UpDecoderBlock2D, VaeMidBlock};
pub use config::AutoencoderKlConfig;
pub use decoder::Decoder;
pub use distribution::LatentDist;
pub use encoder::Encoder;
pub use model::AutoencoderKL;
