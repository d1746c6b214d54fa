//! [`Structure`]: the architecture as data. A model describes its stages, reconstruction
//! units, timestep-embedding path, attention projections, residual shortcuts, resamplers and
//! skip concatenations here, so that the algorithms (Q-Diffusion's units, BinaryDM's head and
//! tail, EfficientDM's layer policy, QuEST's selection) read facts instead of matching layer
//! names. A new architecture fills in its [`Structure`]; no algorithm file changes.
//!
//! Every entry names layers or modules by their diffusers paths (the names
//! [`crate::Denoiser::for_each_layer`] reports and the taps the forward pass records).

use serde::{Deserialize, Serialize};

/// What a stage (top-level block) does to the feature map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageKind {
    /// Encoder stage of a UNet (`down_blocks.i`).
    Down,
    /// Bottleneck of a UNet (`mid_block`).
    Mid,
    /// Decoder stage of a UNet (`up_blocks.i`), reading skip connections.
    Up,
    /// A transformer block at constant token count (`transformer_blocks.i`).
    Transformer,
}

/// A top-level block: its output is tapped under `path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Module path (`down_blocks.1`, `mid_block`, `transformer_blocks.3`).
    pub path: String,
    /// Role.
    pub kind: StageKind,
    /// Side of the feature map the stage works at (a transformer: of its token grid), at
    /// the model's sample size. A stage that ends with a resampler is listed at the
    /// resolution before it.
    pub resolution: usize,
}

/// One attention module's layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionLayers {
    /// Module path (`down_blocks.1.attentions.0`, `transformer_blocks.0.attn1`).
    pub path: String,
    /// Query, key and value projections.
    pub qkv: [String; 3],
    /// Output projection.
    pub out: String,
    /// The QKᵀ matmul and the softmax(·)·V matmul.
    pub matmuls: [String; 2],
    /// Keys and values come from another sequence (cross-attention).
    pub cross: bool,
}

/// A layer input that is a channel concatenation `[main ‖ skip]` (a UNet decoder resnet):
/// the two halves come from different places and have different ranges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipConcat {
    /// The layers that read the concatenation.
    pub layers: Vec<String>,
    /// Channels of the main path (the first part).
    pub main_channels: usize,
    /// Channels of the skip connection (the second part).
    pub skip_channels: usize,
}

/// The architecture of a denoiser, as the algorithms need it (module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Structure {
    /// Top-level blocks in forward order.
    pub stages: Vec<Stage>,
    /// Reconstruction units (innermost tapped blocks: a resnet, an attention, a resampler, a
    /// transformer block) in forward order. A layer outside every unit is its own unit.
    pub units: Vec<String>,
    /// Layers of timestep MLPs (sinusoid → embedding), shared or per block.
    pub time_mlp: Vec<String>,
    /// Layers that project the time embedding into a block (a resnet's `time_emb_proj`, an
    /// adaLN modulation).
    pub time_projections: Vec<String>,
    /// Attention modules.
    pub attention: Vec<AttentionLayers>,
    /// Feed-forward layers of transformer blocks.
    pub feed_forward: Vec<String>,
    /// Residual shortcut projections (1×1 convs on the residual path).
    pub shortcuts: Vec<String>,
    /// Downsampling convolutions.
    pub downsamplers: Vec<String>,
    /// Upsampling convolutions.
    pub upsamplers: Vec<String>,
    /// Inputs that concatenate a skip connection.
    pub skip_concats: Vec<SkipConcat>,
}

/// Whether `name` is `prefix` or lies below it (`prefix.…`).
pub fn within(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

impl Structure {
    /// The stage `layer` belongs to, if any.
    pub fn stage_of(&self, layer: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| within(layer, &s.path))
    }

    /// The reconstruction unit of `layer`: the innermost unit containing it, else the
    /// layer itself.
    pub fn unit_of(&self, layer: &str) -> String {
        self.units
            .iter()
            .filter(|u| within(layer, u) && layer != u.as_str())
            .max_by_key(|u| u.len())
            .cloned()
            .unwrap_or_else(|| layer.to_string())
    }

    /// Whether `layer` is part of a timestep MLP.
    pub fn is_time_mlp(&self, layer: &str) -> bool {
        self.time_mlp.iter().any(|n| n == layer)
    }

    /// Whether `layer` lies on the timestep-embedding path: a timestep MLP or a projection
    /// of the embedding into a block.
    pub fn on_time_path(&self, layer: &str) -> bool {
        self.is_time_mlp(layer) || self.time_projections.iter().any(|n| n == layer)
    }

    /// Query, key and value projections of the self-attention modules.
    pub fn self_attention_qkv(&self) -> impl Iterator<Item = &String> {
        self.attention
            .iter()
            .filter(|a| !a.cross)
            .flat_map(|a| a.qkv.iter())
    }

    /// The skip concatenation `layer` reads, if any.
    pub fn skip_concat_of(&self, layer: &str) -> Option<&SkipConcat> {
        self.skip_concats
            .iter()
            .find(|s| s.layers.iter().any(|l| l == layer))
    }

    /// Every layer or module path the structure names, for checking it against a model.
    pub fn named_layers(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        v.extend(self.time_mlp.iter().map(String::as_str));
        v.extend(self.time_projections.iter().map(String::as_str));
        for a in &self.attention {
            v.extend(a.qkv.iter().map(String::as_str));
            v.push(&a.out);
            v.extend(a.matmuls.iter().map(String::as_str));
        }
        v.extend(self.feed_forward.iter().map(String::as_str));
        v.extend(self.shortcuts.iter().map(String::as_str));
        v.extend(self.downsamplers.iter().map(String::as_str));
        v.extend(self.upsamplers.iter().map(String::as_str));
        for s in &self.skip_concats {
            v.extend(s.layers.iter().map(String::as_str));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_respects_component_boundaries() {
        assert!(within("down_blocks.1.resnets.0.conv1", "down_blocks.1"));
        assert!(within("down_blocks.1", "down_blocks.1"));
        assert!(!within("down_blocks.10.resnets.0.conv1", "down_blocks.1"));
        assert!(!within("down_blocks", "down_blocks.1"));
    }

    #[test]
    fn unit_of_picks_the_innermost_unit() {
        let s = Structure {
            units: vec![
                "transformer_blocks.1".into(),
                "transformer_blocks.1.attn1".into(),
            ],
            ..Structure::default()
        };
        assert_eq!(
            s.unit_of("transformer_blocks.1.attn1.to_q"),
            "transformer_blocks.1.attn1"
        );
        assert_eq!(
            s.unit_of("transformer_blocks.1.ff.net.2"),
            "transformer_blocks.1"
        );
        assert_eq!(
            s.unit_of("transformer_blocks.11.ff"),
            "transformer_blocks.11.ff"
        );
        assert_eq!(s.unit_of("conv_in"), "conv_in");
    }
}
