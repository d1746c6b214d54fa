//! DiT: diffusers' `DiTTransformer2DModel` (Peebles & Xie, "Scalable Diffusion Models with
//! Transformers", 2023) in the diffusers state-dict layout, built from dmq's quantizable
//! layers.
//!
//! - [`config`] — [`DiTConfig`] from diffusers' `config.json`, strictly validated;
//! - [`patch_embed`] — [`PatchEmbed`] and the 2-D sin-cos positions;
//! - [`embedding`] — timestep sinusoid and MLP, class table with the null class;
//! - [`ada_norm`] — [`AdaLayerNormZero`];
//! - [`attention`] — self-attention with `qk`/`sv` [`QMatmul`](crate::layers::QMatmul)s;
//! - [`feed_forward`] — GELU(tanh) MLP;
//! - [`block`] — [`BasicTransformerBlock`] (adaLN-Zero);
//! - [`model`] — [`DiT`], which implements [`Denoiser`](crate::Denoiser).
//!
//! Numerics follow diffusers 0.42 (`models/transformers/dit_transformer_2d.py`,
//! `models/attention.py`, `models/normalization.py`, `models/embeddings.py`): the parity
//! test `cargo test -p dmq-models --test suite dit_parity::` compares with random-weight diffusers
//! models made by `scripts/fixtures/dit_parity.py` (max abs error ≤ 1e-4).
//!
//! ```no_run
//! # fn main() -> dmq_models::Result<()> {
//! use burn::tensor::{Device, Int, Tensor};
//! use dmq_models::dit::DiT;
//! use dmq_models::{Denoiser, ForwardCtx, StepContext};
//!
//! let device = Device::default();
//! let dit = DiT::from_pretrained("assets/models/dit-fmnist", &device)?;
//! let info = dit.info();
//! let s = info.sample_size;
//! let x = Tensor::<4>::zeros([2, info.in_channels, s, s], &device);
//! let t = Tensor::<1>::from_floats([999.0, 999.0], &device);
//! // class 3 and the null class (unconditional half of classifier-free guidance)
//! let null = info.num_classes.unwrap() as i64;
//! let y = Tensor::<1, Int>::from_ints([3, null], &device);
//! let eps = dit.predict_eps(x, t, Some(y.into()), &ForwardCtx::new(StepContext::single(999.0)))?;
//! # let _ = eps;
//! # Ok(())
//! # }
//! ```

pub mod ada_norm;
pub mod attention;
pub mod block;
pub mod config;
pub mod embedding;
pub mod feed_forward;
pub mod model;
pub mod patch_embed;
pub mod structure;

pub use ada_norm::{AdaLayerNormZero, AdaLayerNormZeroConfig, AdaLnZeroOutput};
pub use attention::{Attention, AttentionConfig};
pub use block::{BasicTransformerBlock, BasicTransformerBlockConfig};
pub use config::DiTConfig;
pub use embedding::{
    CombinedTimestepLabelEmbeddings, CombinedTimestepLabelEmbeddingsConfig, LabelEmbedding,
    TimestepEmbedding, Timesteps,
};
pub use feed_forward::{FeedForward, FeedForwardConfig, GeluProj, gelu_tanh};
pub use model::DiT;
pub use patch_embed::{PatchEmbed, PatchEmbedConfig, sincos_pos_embed_2d};
