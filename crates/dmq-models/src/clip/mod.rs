//! CLIP text encoder: transformers' `CLIPTextModel` (Radford et al., "Learning
//! Transferable Visual Models From Natural Language Supervision", 2021), the text encoder
//! of Stable Diffusion 1.x/2.x, built from dmq's quantizable layers.
//!
//! - [`config`] — [`ClipTextConfig`] from transformers' `config.json`, strictly validated;
//! - [`embeddings`] — token + position embeddings;
//! - [`attention`] — causal self-attention with `qk`/`sv` [`QMatmul`](crate::layers::QMatmul)s;
//! - [`mlp`] — `fc1` → quick_gelu | gelu → `fc2`;
//! - [`encoder`] — the pre-norm layers;
//! - [`checkpoint`] — the `text_model.`-prefixed (transformers ≤ 4.x) and bare
//!   (transformers 5) key layouts, and the ignored `position_ids` buffer;
//! - [`model`] — [`ClipTextModel`]: loading, forward pass with EOS pooling, layer inventory.
//!
//! Numerics follow transformers 5.25 (`models/clip/modeling_clip.py`): the parity test
//! `cargo test -p dmq-models --test suite t2i::clip::` compares with random-weight transformers
//! models made by `scripts/fixtures/clip_parity.py` (max abs error ≤ 1e-4).
//!
//! ```no_run
//! # fn main() -> dmq_models::Result<()> {
//! use burn::tensor::Device;
//! use dmq_models::clip::ClipTextModel;
//! use dmq_models::{ForwardCtx, StepContext};
//!
//! let device = Device::default();
//! let encoder = ClipTextModel::load("sd15/text_encoder".as_ref(), &device)?;
//! // ids from the tokenizer: BOS, tokens, EOS, padding (77 per row for Stable Diffusion)
//! let ids = ClipTextModel::input_ids(&[vec![49406, 320, 1125, 539, 320, 2368, 49407]], &device)?;
//! let out = encoder.forward(ids, &ForwardCtx::new(StepContext::single(0.0)))?;
//! let prompt_embeds = out.last_hidden_state; // [1, 7, 768]
//! # let _ = prompt_embeds;
//! # Ok(())
//! # }
//! ```

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod embeddings;
pub mod encoder;
pub mod mlp;
pub mod model;

pub use attention::{ClipAttention, causal_attention, causal_mask};
pub use config::{ClipActivation, ClipTextConfig};
pub use embeddings::ClipTextEmbeddings;
pub use encoder::{ClipEncoder, ClipEncoderLayer};
pub use mlp::{ClipMlp, activate, quick_gelu};
pub use model::{ClipTextModel, ClipTextOutput, ClipTextTransformer, WEIGHTS_FILE};
