//! [`ClipTextEmbeddings`]: token and learned position embeddings (transformers
//! `CLIPTextEmbeddings`, keys `embeddings.token_embedding.weight` and
//! `embeddings.position_embedding.weight`).

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor};

use crate::error::{Result, shape_err};

/// Std of the random tables of [`ClipTextEmbeddings::new`] (transformers' CLIP init).
const INIT_STD: f64 = 0.02;

/// `h[b, l] = token_embedding[ids[b, l]] + position_embedding[l]`.
///
/// transformers keeps a `position_ids` buffer (`arange(max_position_embeddings)`, not a
/// parameter): positions here are always `0..L`, as transformers computes them when the
/// caller passes none (the Stable Diffusion pipelines never do).
///
/// # Shapes
/// - token table `[V, D]`, position table `[P, D]`
/// - input ids `[B, L]` with `L ≤ P` and ids `< V` (checked by the caller); output `[B, L, D]`
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings {
    /// Token table `[V, D]`.
    pub token_embedding: Embedding,
    /// Position table `[P, D]`.
    pub position_embedding: Embedding,
}

impl ClipTextEmbeddings {
    /// Random N(0, 0.02²) tables.
    pub fn new(vocab: usize, positions: usize, width: usize, device: &Device) -> Self {
        let table = |rows| {
            EmbeddingConfig::new(rows, width)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: INIT_STD,
                })
                .init(device)
        };
        Self {
            token_embedding: table(vocab),
            position_embedding: table(positions),
        }
    }

    /// Rows of the position table: the longest sequence accepted.
    pub fn max_positions(&self) -> usize {
        self.position_embedding.weight.val().dims()[0]
    }

    /// Forward pass (ids already range-checked).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Result<Tensor<3>> {
        let [b, l] = ids.dims();
        let positions: &Param<Tensor<2>> = &self.position_embedding.weight;
        let [p, d] = positions.val().dims();
        if l > p {
            return Err(shape_err(
                "CLIP embeddings",
                format!("[B, L] with L ≤ {p} (max_position_embeddings)"),
                [b, l],
            ));
        }
        let pos = positions.val().slice([0..l, 0..d]).reshape([1, l, d]);
        Ok(self.token_embedding.forward(ids) + pos)
    }
}
