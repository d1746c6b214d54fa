//! [`ClipEncoderLayer`] and [`ClipEncoder`]: transformers' pre-norm CLIP transformer
//! layers (`encoder.layers.<i>`).

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::attention::ClipAttention;
use super::config::ClipTextConfig;
use super::mlp::ClipMlp;
use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{LayerMut, LayerNorm, LayerNormConfig, LayerRef};

/// One pre-norm layer:
/// `h = x + self_attn(layer_norm1(x))`, `out = h + mlp(layer_norm2(h))`.
///
/// # Shapes
/// - input/output: `[B, L, D]`
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    /// Causal self-attention.
    pub self_attn: ClipAttention,
    /// LayerNorm before the attention.
    pub layer_norm1: LayerNorm,
    /// MLP.
    pub mlp: ClipMlp,
    /// LayerNorm before the MLP.
    pub layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    /// Random init; `name` is the checkpoint path (`text_model.encoder.layers.0`).
    pub fn new(name: &str, config: &ClipTextConfig, device: &Device) -> Self {
        let d = config.hidden_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_eps(config.layer_norm_eps)
                .init(device)
        };
        Self {
            self_attn: ClipAttention::new(
                &format!("{name}.self_attn"),
                d,
                config.num_attention_heads,
                device,
            ),
            layer_norm1: norm(),
            mlp: ClipMlp::new(
                &format!("{name}.mlp"),
                d,
                config.intermediate_size,
                config.hidden_act,
                device,
            ),
            layer_norm2: norm(),
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<3>, ctx: &ForwardCtx<'_>) -> Result<Tensor<3>> {
        let h = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x)?, ctx)?;
        Ok(h.clone() + self.mlp.forward(self.layer_norm2.forward(h)?, ctx)?)
    }

    /// Visits the attention's layers then the MLP's (forward order).
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        self.self_attn.for_each_layer(f);
        self.mlp.for_each_layer(f);
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        self.self_attn.for_each_layer_mut(f);
        self.mlp.for_each_layer_mut(f);
    }
}

/// The stack of [`ClipEncoderLayer`]s (transformers `CLIPEncoder`).
///
/// # Shapes
/// - input/output: `[B, L, D]`
#[derive(Module, Debug)]
pub struct ClipEncoder {
    /// The layers, `layers.<i>`.
    pub layers: Vec<ClipEncoderLayer>,
}
