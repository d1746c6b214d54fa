//! [`AdaLayerNormZero`]: diffusers' adaLN-Zero (`norm1` of every DiT block).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor};

use super::embedding::{CombinedTimestepLabelEmbeddings, CombinedTimestepLabelEmbeddingsConfig};
use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{LayerMut, LayerNorm, LayerNormConfig, LayerRef, QLinear, QLinearConfig};

/// Configuration of an [`AdaLayerNormZero`].
#[derive(Config, Debug)]
pub struct AdaLayerNormZeroConfig {
    /// Width D.
    pub embedding_dim: usize,
    /// Number of classes.
    pub num_embeddings: usize,
}

impl AdaLayerNormZeroConfig {
    /// Submodules `<name>.emb.*` and `<name>.linear`.
    pub fn init(&self, name: &str, device: &Device) -> AdaLayerNormZero {
        let d = self.embedding_dim;
        AdaLayerNormZero {
            emb: CombinedTimestepLabelEmbeddingsConfig::new(self.num_embeddings, d)
                .init(&format!("{name}.emb"), device),
            linear: QLinearConfig::new(d, 6 * d).init(&format!("{name}.linear"), device),
            norm: LayerNormConfig::new(d)
                .with_eps(1e-6)
                .with_affine(false)
                .init(device),
        }
    }
}

/// The six modulation vectors of a DiT block, each `[B, D]`, with the modulated
/// attention input.
#[derive(Clone, Debug)]
pub struct AdaLnZeroOutput {
    /// `norm(x)·(1 + scale_msa) + shift_msa`, `[B, N, D]`.
    pub x: Tensor<3>,
    /// Gate of the attention residual.
    pub gate_msa: Tensor<2>,
    /// Shift before the feed-forward.
    pub shift_mlp: Tensor<2>,
    /// Scale before the feed-forward.
    pub scale_mlp: Tensor<2>,
    /// Gate of the feed-forward residual.
    pub gate_mlp: Tensor<2>,
}

/// diffusers `AdaLayerNormZero`: `c = emb(t, y)`;
/// `[shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] = chunk₆(linear(silu(c)))`;
/// `x' = LN(x)·(1 + scale_msa) + shift_msa` with a non-affine LayerNorm, ε = 1e-6.
///
/// # Shapes
/// - x: `[B, N, D]`; t_proj: `[B, 256]`; labels: `[B]`
#[derive(Module, Debug)]
pub struct AdaLayerNormZero {
    /// Timestep + class embedding.
    pub emb: CombinedTimestepLabelEmbeddings,
    /// `D → 6·D` modulation projection.
    pub linear: QLinear,
    /// Non-affine LayerNorm (no parameters).
    pub norm: LayerNorm,
}

impl AdaLayerNormZero {
    /// Forward pass.
    pub fn forward(
        &self,
        x: Tensor<3>,
        t_proj: Tensor<2>,
        labels: Tensor<1, Int>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<AdaLnZeroOutput> {
        let c = self.emb.forward(t_proj, labels, ctx)?;
        let m = self.linear.forward(silu(c), ctx)?;
        let mut parts = m.chunk(6, 1).into_iter();
        let mut next = || parts.next().expect("six chunks of 6·D");
        let (shift_msa, scale_msa, gate_msa) = (next(), next(), next());
        let (shift_mlp, scale_mlp, gate_mlp) = (next(), next(), next());
        let x = self.norm.forward(x)? * (scale_msa.unsqueeze_dim::<3>(1) + 1.0)
            + shift_msa.unsqueeze_dim::<3>(1);
        Ok(AdaLnZeroOutput {
            x,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        })
    }

    /// Visits `emb.timestep_embedder.linear_1`, `linear_2`, then `linear`.
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        let te = &self.emb.timestep_embedder;
        f(LayerRef::Linear(&te.linear_1));
        f(LayerRef::Linear(&te.linear_2));
        f(LayerRef::Linear(&self.linear));
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        let te = &mut self.emb.timestep_embedder;
        f(LayerMut::Linear(&mut te.linear_1));
        f(LayerMut::Linear(&mut te.linear_2));
        f(LayerMut::Linear(&mut self.linear));
    }
}
