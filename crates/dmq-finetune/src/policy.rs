//! EfficientDM's layer policy (docs/algorithms.md §3.2), computed from the model's layer graph
//! instead of the reference's hard-coded module indices (`special_module_count_list`).
//!
//! Classes, from the layer inventory (call order of one forward pass) and the model's
//! [`Structure`]:
//! - **edges**: the first convolution (it reads x_t: UNet `conv_in`, DiT `pos_embed.proj`) and
//!   the last layer called (UNet `conv_out`, DiT `proj_out_2`);
//! - **time embedding**: the timestep MLPs ([`Structure::time_mlp`]: UNet `time_embedding`,
//!   DiT each block's `norm1.emb.timestep_embedder`);
//! - **skip**: residual shortcut convs ([`Structure::shortcuts`], LDM `skip_connection`);
//! - **downsample**: downsampler convs ([`Structure::downsamplers`], LDM `Downsample.op`);
//! - everything else (convs and linears) gets QALoRA + TALSQ. Attention matmuls stay FP.
//!
//! Reference defaults: edges and time embedding W8A8 with a per-tensor (not temporal)
//! activation quantizer, frozen; skip and downsample convs FP.

use dmq_calib::{LayerRule, QuantConfig};
use dmq_models::layers::LayerKind;
use dmq_models::{LayerCall, Structure};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What happens to one class of layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Treatment {
    /// QALoRA weights and TALSQ activations at the preset's bits, trained.
    Lora,
    /// W8A8 (per-channel weights, per-tensor activations), not trained.
    Int8Frozen,
    /// Full precision.
    Fp,
}

/// Treatment of each special class (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerPolicy {
    /// First convolution and last layer.
    pub edges: Treatment,
    /// Timestep-embedding MLP.
    pub time_embedding: Treatment,
    /// Residual shortcut convolutions.
    pub skip: Treatment,
    /// Downsampler convolutions.
    pub downsample: Treatment,
    /// Quantize the attention matmuls' operands at the preset's activation bits (frozen PTQ
    /// ranges). The reference keeps them FP.
    #[serde(default)]
    pub matmuls: bool,
}

impl Default for LayerPolicy {
    /// The reference's policy.
    fn default() -> Self {
        Self {
            edges: Treatment::Int8Frozen,
            time_embedding: Treatment::Int8Frozen,
            skip: Treatment::Fp,
            downsample: Treatment::Fp,
            matmuls: false,
        }
    }
}

impl LayerPolicy {
    /// The baselines' layer set: every linear and conv fine-tuned at the preset's bits and
    /// the attention matmuls quantized, so that EfficientDM costs what naive PTQ and
    /// Q-Diffusion cost at the same preset (equal-BitOPs comparisons).
    pub fn quantize_everything() -> Self {
        Self {
            edges: Treatment::Lora,
            time_embedding: Treatment::Lora,
            skip: Treatment::Lora,
            downsample: Treatment::Lora,
            matmuls: true,
        }
    }
}

/// The policy resolved on one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyPlan {
    /// The PTQ config that realises the policy on top of the preset (matmuls FP, one rule per
    /// special layer).
    pub config: QuantConfig,
    /// Layers that get QALoRA + TALSQ (call order).
    pub lora: Vec<String>,
    /// Layers quantized W8A8 and frozen.
    pub frozen: Vec<String>,
    /// Layers kept in FP (attention matmuls not listed: they follow `LayerPolicy::matmuls`).
    pub fp: Vec<String>,
}

/// Classifies every linear and conv layer of `calls` under `policy` and builds the PTQ config
/// from `preset` (whose weight spec must be per output channel).
pub fn plan_layers(
    preset: &QuantConfig,
    structure: &Structure,
    calls: &[LayerCall],
    policy: &LayerPolicy,
) -> Result<PolicyPlan> {
    let mut names: Vec<(String, LayerKind)> = Vec::new();
    for c in calls {
        if c.kind != LayerKind::Matmul && !names.iter().any(|(n, _)| *n == c.name) {
            names.push((c.name.clone(), c.kind));
        }
    }
    let first = names.iter().position(|(_, k)| *k == LayerKind::Conv2d);
    let last = names.len().checked_sub(1);
    let mut config = if policy.matmuls {
        preset.clone()
    } else {
        preset.clone().without_matmuls()
    };
    config.name = format!("{} (EfficientDM policy)", preset.name);
    let mut plan = PolicyPlan {
        config,
        lora: vec![],
        frozen: vec![],
        fp: vec![],
    };
    for (i, (name, _)) in names.iter().enumerate() {
        let treatment = if Some(i) == first || Some(i) == last {
            policy.edges
        } else if structure.is_time_mlp(name) {
            policy.time_embedding
        } else if structure.shortcuts.contains(name) {
            policy.skip
        } else if structure.downsamplers.contains(name) {
            policy.downsample
        } else {
            Treatment::Lora
        };
        match treatment {
            Treatment::Lora => {
                if preset.weight.is_none() {
                    plan.fp.push(name.clone());
                } else {
                    plan.lora.push(name.clone());
                }
            }
            Treatment::Int8Frozen => {
                plan.config
                    .rules
                    .push(LayerRule::bits(name, Some(8), Some(8))?);
                plan.frozen.push(name.clone());
            }
            Treatment::Fp => {
                plan.config.rules.push(LayerRule::fp(name));
                plan.fp.push(name.clone());
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, kind: LayerKind) -> LayerCall {
        LayerCall {
            name: name.into(),
            kind,
            weight_shape: vec![4, 4],
            macs: 1,
        }
    }

    #[test]
    fn classes_follow_the_graph() {
        use LayerKind::*;
        let calls = vec![
            call("time_embedding.linear_1", Linear),
            call("time_embedding.linear_2", Linear),
            call("conv_in", Conv2d),
            call("down_blocks.0.resnets.0.conv1", Conv2d),
            call("down_blocks.0.resnets.0.conv_shortcut", Conv2d),
            call("down_blocks.0.downsamplers.0.conv", Conv2d),
            call("mid_block.attentions.0.qk", Matmul),
            call("mid_block.attentions.0.to_q", Linear),
            call("conv_out", Conv2d),
        ];
        let unet = Structure {
            time_mlp: vec![
                "time_embedding.linear_1".into(),
                "time_embedding.linear_2".into(),
            ],
            shortcuts: vec!["down_blocks.0.resnets.0.conv_shortcut".into()],
            downsamplers: vec!["down_blocks.0.downsamplers.0.conv".into()],
            ..Structure::default()
        };
        let p = plan_layers(
            &QuantConfig::preset("W4A4").unwrap(),
            &unet,
            &calls,
            &LayerPolicy::default(),
        )
        .unwrap();
        assert_eq!(
            p.frozen,
            vec![
                "time_embedding.linear_1",
                "time_embedding.linear_2",
                "conv_in",
                "conv_out"
            ]
        );
        assert_eq!(
            p.lora,
            vec![
                "down_blocks.0.resnets.0.conv1",
                "mid_block.attentions.0.to_q"
            ]
        );
        assert_eq!(
            p.fp,
            vec![
                "down_blocks.0.resnets.0.conv_shortcut",
                "down_blocks.0.downsamplers.0.conv"
            ]
        );
        assert!(p.config.matmul.is_none() && p.config.softmax.is_none());
        // DiT: the per-block timestep MLP is frozen, the adaLN linear is trained
        let dit = vec![
            call("pos_embed.proj", Conv2d),
            call(
                "transformer_blocks.0.norm1.emb.timestep_embedder.linear_1",
                Linear,
            ),
            call("transformer_blocks.0.norm1.linear", Linear),
            call("proj_out_2", Linear),
        ];
        let policy = LayerPolicy {
            skip: Treatment::Lora,
            ..LayerPolicy::default()
        };
        let dit_structure = Structure {
            time_mlp: vec!["transformer_blocks.0.norm1.emb.timestep_embedder.linear_1".into()],
            time_projections: vec!["transformer_blocks.0.norm1.linear".into()],
            ..Structure::default()
        };
        let p = plan_layers(
            &QuantConfig::preset("W4A8").unwrap(),
            &dit_structure,
            &dit,
            &policy,
        )
        .unwrap();
        assert_eq!(p.lora, vec!["transformer_blocks.0.norm1.linear"]);
        // the baselines' layer set: everything trained, matmuls quantized as the preset says
        let all = plan_layers(
            &QuantConfig::preset("W4A8").unwrap(),
            &dit_structure,
            &dit,
            &LayerPolicy::quantize_everything(),
        )
        .unwrap();
        assert_eq!(all.lora.len(), 4);
        assert!(all.frozen.is_empty() && all.fp.is_empty());
        assert!(all.config.matmul.is_some() && all.config.softmax.is_some());
        assert_eq!(p.frozen.len(), 3);
    }
}
