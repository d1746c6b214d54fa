//! Configs of the embedded default models (docs/design.md §4), shared by the training example,
//! the benches and the reference timing script.

use crate::dit::DiTConfig;
use crate::error::Result;
use crate::unet::UNetConfig;

/// The diffusers config of `unet-fmnist`: 28×28×1, levels (32, 64, 128) at 28, 14 and 7
/// pixels, one resnet per level (two on the way up), self-attention at 7×7 and in the middle
/// block; about 2.7M parameters.
pub fn unet_fmnist_json() -> serde_json::Value {
    serde_json::json!({
        "sample_size": 28, "in_channels": 1, "out_channels": 1,
        "block_out_channels": [32, 64, 128], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "attention_head_dim": 32, "norm_num_groups": 8, "norm_eps": 1e-5,
        "flip_sin_to_cos": true, "freq_shift": 0, "act_fn": "silu"
    })
}

/// The diffusers config of `dit-fmnist`: 28×28×1, patch 2 (196 tokens), width 128, depth 6,
/// 4 heads, 10 classes (+ the null class for CFG); about 1.9M parameters.
pub fn dit_fmnist_json() -> serde_json::Value {
    serde_json::json!({
        "sample_size": 28, "in_channels": 1, "out_channels": 1, "patch_size": 2,
        "num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 32,
        "num_embeds_ada_norm": 10, "norm_type": "ada_norm_zero",
        "activation_fn": "gelu-approximate", "attention_bias": true,
        "norm_elementwise_affine": false, "norm_eps": 1e-6, "upcast_attention": false
    })
}

/// [`unet_fmnist_json`] parsed.
pub fn unet_fmnist() -> Result<UNetConfig> {
    UNetConfig::from_json(&unet_fmnist_json())
}

/// [`dit_fmnist_json`] parsed.
pub fn dit_fmnist() -> Result<DiTConfig> {
    DiTConfig::from_json_value(&dit_fmnist_json())
}

/// A test-size UNet: 8×8×1, levels (8, 16), one plain and one attention level, a shortcut
/// conv and a downsampler, so every layer kind and policy class appears; a forward pass costs
/// well under a millisecond on the CPU.
pub fn tiny_unet() -> Result<UNetConfig> {
    UNetConfig::from_json(&serde_json::json!({
        "sample_size": 8, "in_channels": 1, "out_channels": 1,
        "block_out_channels": [8, 16], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": 8, "norm_num_groups": 4
    }))
}

/// A test-size DiT: 8×8×1, patch 2 (16 tokens), one block of 2 heads × 4, 3 classes (so CFG
/// and the adaLN-Zero path appear).
pub fn tiny_dit() -> Result<DiTConfig> {
    DiTConfig::from_json_value(&serde_json::json!({
        "sample_size": 8, "in_channels": 1, "out_channels": 1, "patch_size": 2,
        "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 4,
        "num_embeds_ada_norm": 3
    }))
}
