//! [`AutoencoderKlConfig`]: the diffusers `AutoencoderKL` `config.json` (`vae/config.json` of a
//! Stable Diffusion pipeline), parsed strictly.
//!
//! Field names and defaults are diffusers' (`AutoencoderKL.__init__`, diffusers 0.42). What is
//! supported is implemented exactly; any other value of an option that changes the math
//! (another block type or activation, per-channel `latents_mean` / `latents_std`, an unknown
//! key, ...) is a [`ModelError::Config`] naming the option, never silently different numbers.
//! Keys starting with `_` (`_class_name`, `_diffusers_version`, `_name_or_path`, ...) are
//! metadata; `_class_name`, when present, must be `AutoencoderKL`. `sample_size` (diffusers'
//! tiling threshold) and `force_upcast` (an f16 pipeline switch) do not change an f32 forward
//! pass and are only kept.

use std::path::Path;

use serde::{Deserialize, Serialize};

use dmq_quant::Limits;

use crate::error::{ModelError, Result};
use crate::io;
use crate::unet::SampleSize;

/// diffusers class name of the model.
pub const VAE_CLASS_NAME: &str = "AutoencoderKL";
/// The only supported `down_block_types` entry.
pub const DOWN_BLOCK: &str = "DownEncoderBlock2D";
/// The only supported `up_block_types` entry.
pub const UP_BLOCK: &str = "UpDecoderBlock2D";
/// GroupNorm ε of every norm of the VAE (hard-coded `1e-6` in diffusers' `Encoder`/`Decoder`).
pub const VAE_NORM_EPS: f64 = 1e-6;

fn default_channels3() -> usize {
    3
}
fn default_down_types() -> Vec<String> {
    vec![DOWN_BLOCK.into()]
}
fn default_up_types() -> Vec<String> {
    vec![UP_BLOCK.into()]
}
fn default_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn default_one() -> usize {
    1
}
fn default_silu() -> String {
    "silu".into()
}
fn default_latent_channels() -> usize {
    4
}
fn default_groups() -> usize {
    32
}
fn default_sample_size() -> Option<SampleSize> {
    Some(SampleSize::Square(32))
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_true() -> bool {
    true
}
fn default_class_name() -> Option<String> {
    Some(VAE_CLASS_NAME.into())
}

/// The diffusers `AutoencoderKL` config (field names, defaults and meaning as in diffusers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKlConfig {
    /// `_class_name` (must be `AutoencoderKL` when present).
    #[serde(
        rename = "_class_name",
        default = "default_class_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub class_name: Option<String>,
    /// `_diffusers_version` the file was written by (metadata).
    #[serde(
        rename = "_diffusers_version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub diffusers_version: Option<String>,
    /// Channels of the image (encoder input).
    #[serde(default = "default_channels3")]
    pub in_channels: usize,
    /// Channels of the decoded image.
    #[serde(default = "default_channels3")]
    pub out_channels: usize,
    /// One `DownEncoderBlock2D` per level.
    #[serde(default = "default_down_types")]
    pub down_block_types: Vec<String>,
    /// One `UpDecoderBlock2D` per level (deepest first).
    #[serde(default = "default_up_types")]
    pub up_block_types: Vec<String>,
    /// Channels per level (SD: `[128, 256, 512, 512]`).
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more).
    #[serde(default = "default_one")]
    pub layers_per_block: usize,
    /// Only `"silu"` (alias `"swish"`).
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// Channels L of the latent (the encoder outputs `2L` moments: mean and log-variance).
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    /// GroupNorm groups of every norm (resnets, attention, output norms).
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// Image size the model was trained at (diffusers' tiling threshold; no effect here).
    #[serde(default = "default_sample_size")]
    pub sample_size: Option<SampleSize>,
    /// Latent scale s: a diffusion model sees `(z − shift)·s`.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Latent shift (SD3 / Flux VAEs; `null` = 0).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent means (SDXL-style pipelines); only `null` is supported.
    #[serde(default)]
    pub latents_mean: Option<serde_json::Value>,
    /// Per-channel latent stds; only `null` is supported.
    #[serde(default)]
    pub latents_std: Option<serde_json::Value>,
    /// Run in f32 in f16 pipelines (no effect: dmq's VAE runs in f32).
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    /// A 1×1 `quant_conv` on the `2L` moments after the encoder.
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    /// A 1×1 `post_quant_conv` on the latent before the decoder.
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// Self-attention in the encoder's and decoder's mid blocks.
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

/// The config keys [`AutoencoderKlConfig`] parses (diffusers names).
const KNOWN_KEYS: [&str; 18] = [
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "act_fn",
    "latent_channels",
    "norm_num_groups",
    "sample_size",
    "scaling_factor",
    "shift_factor",
    "latents_mean",
    "latents_std",
    "force_upcast",
    "use_quant_conv",
    "use_post_quant_conv",
    "mid_block_add_attention",
];

fn cfg_err(msg: impl Into<String>) -> ModelError {
    ModelError::Config(msg.into())
}

impl Default for AutoencoderKlConfig {
    /// diffusers' defaults (one level of 64 channels, scaling factor 0.18215).
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl AutoencoderKlConfig {
    /// The Stable Diffusion 1.x/2.x VAE (`block_out_channels [128, 256, 512, 512]`,
    /// `layers_per_block 2`, 4 latent channels, 32 groups, `sample_size 512`).
    pub fn stable_diffusion() -> Self {
        Self {
            down_block_types: vec![DOWN_BLOCK.into(); 4],
            up_block_types: vec![UP_BLOCK.into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            sample_size: Some(SampleSize::Square(512)),
            ..Self::default()
        }
    }

    /// Parses and validates a `config.json` value (see the module docs for what is rejected).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let config: Self = io::parse_config(value, VAE_CLASS_NAME, &KNOWN_KEYS)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates `dir/config.json` (errors name the file).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(io::CONFIG_FILE);
        Self::from_json(&io::read_config(dir)?).map_err(|e| match e {
            ModelError::Config(msg) => ModelError::Config(format!("{}: {msg}", path.display())),
            other => crate::error::at_origin(other, &path),
        })
    }

    /// The config as diffusers' `config.json` text.
    pub fn to_json_string(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| cfg_err(e.to_string()))
    }

    /// The config as a JSON value (what [`Self::to_json_string`] writes).
    pub fn to_json_value(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| cfg_err(e.to_string()))
    }

    /// Levels n (`block_out_channels.len()`).
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Spatial factor between image and latent: `2^(n−1)`.
    pub fn downsample_factor(&self) -> usize {
        1usize
            << self
                .levels()
                .saturating_sub(1)
                .min(usize::BITS as usize - 1)
    }

    /// The latent shift (`shift_factor`, 0 when `null`).
    pub fn shift(&self) -> f64 {
        self.shift_factor.unwrap_or(0.0)
    }

    /// Parameters of the model this config builds, counted from the config alone (no layer is
    /// initialised), saturating at `u64::MAX`. Exact for the diffusers structure.
    pub fn param_count(&self) -> u64 {
        let c = |x: usize| x as u64;
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let conv = |i: u64, o: u64, k: u64| mul(mul(i, o), k * k).saturating_add(o);
        let norm = |ch: u64| mul(2, ch);
        let resnet = |i: u64, o: u64| {
            let mut n = norm(i)
                .saturating_add(conv(i, o, 3))
                .saturating_add(norm(o))
                .saturating_add(conv(o, o, 3));
            if i != o {
                n = n.saturating_add(conv(i, o, 1));
            }
            n
        };
        let attention = |ch: u64| norm(ch).saturating_add(mul(4, mul(ch, ch).saturating_add(ch)));
        let ch: Vec<u64> = self.block_out_channels.iter().map(|&x| c(x)).collect();
        let (Some(&first), Some(&last)) = (ch.first(), ch.last()) else {
            return 0;
        };
        let (l, lat) = (c(self.layers_per_block), c(self.latent_channels));
        let mid = {
            let mut n = mul(2, resnet(last, last));
            if self.mid_block_add_attention {
                n = n.saturating_add(attention(last));
            }
            n
        };
        // encoder
        let mut total = conv(c(self.in_channels), first, 3);
        let mut input = first;
        for (i, &o) in ch.iter().enumerate() {
            total = total
                .saturating_add(resnet(input, o))
                .saturating_add(mul(l.saturating_sub(1), resnet(o, o)));
            if i + 1 < ch.len() {
                total = total.saturating_add(conv(o, o, 3));
            }
            input = o;
        }
        total = total
            .saturating_add(mid)
            .saturating_add(norm(last))
            .saturating_add(conv(last, mul(2, lat), 3));
        if self.use_quant_conv {
            total = total.saturating_add(conv(mul(2, lat), mul(2, lat), 1));
        }
        if self.use_post_quant_conv {
            total = total.saturating_add(conv(lat, lat, 1));
        }
        // decoder
        total = total.saturating_add(conv(lat, last, 3)).saturating_add(mid);
        let mut prev = last;
        for (i, &o) in ch.iter().rev().enumerate() {
            total = total
                .saturating_add(resnet(prev, o))
                .saturating_add(mul(l, resnet(o, o)));
            if i + 1 < ch.len() {
                total = total.saturating_add(conv(o, o, 3));
            }
            prev = o;
        }
        total
            .saturating_add(norm(first))
            .saturating_add(conv(first, c(self.out_channels), 3))
    }

    /// Blocks (resnets, attentions, resamplers) of the model this config builds.
    fn block_count(&self) -> u64 {
        let levels = self.levels() as u64;
        let per_level = (self.layers_per_block as u64)
            .saturating_mul(2)
            .saturating_add(3);
        levels.saturating_mul(per_level).saturating_add(6)
    }

    /// Checks that the config is one this implementation computes exactly as diffusers, and
    /// that it is within [`Limits::current`] (see [`Self::validate_with_limits`]).
    pub fn validate(&self) -> Result<()> {
        self.validate_with_limits(&Limits::current())
    }

    /// [`Self::validate`] with explicit [`Limits`]: every channel count and the sample size
    /// within `max_dim`, the blocks within `max_layers`, the parameter count
    /// ([`Self::param_count`]) within `max_params`, then the options and the channel/group
    /// divisibility, all before any layer is initialised. Errors name the key.
    pub fn validate_with_limits(&self, limits: &Limits) -> Result<()> {
        let origin = io::CONFIG_FILE;
        let lim = ModelError::Limit;
        let mut dims: Vec<(String, usize)> = vec![
            ("in_channels".into(), self.in_channels),
            ("out_channels".into(), self.out_channels),
            ("layers_per_block".into(), self.layers_per_block),
            ("latent_channels".into(), self.latent_channels),
            ("norm_num_groups".into(), self.norm_num_groups),
            ("block_out_channels".into(), self.block_out_channels.len()),
        ];
        dims.extend(
            self.block_out_channels
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("block_out_channels[{i}]"), c)),
        );
        if let Some(s) = self.sample_size {
            let [h, w] = s.hw();
            dims.push(("sample_size".into(), h));
            dims.push(("sample_size".into(), w));
        }
        for (key, v) in &dims {
            limits.check_dim(*v as u64, origin, key).map_err(lim)?;
        }
        limits
            .check_layers(self.block_count(), origin, "block_out_channels")
            .map_err(lim)?;
        limits
            .check_params(self.param_count(), origin, "block_out_channels")
            .map_err(lim)?;

        if let Some(name) = &self.class_name
            && name != VAE_CLASS_NAME
        {
            return Err(cfg_err(format!(
                "_class_name is '{name}', expected '{VAE_CLASS_NAME}'"
            )));
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(cfg_err(format!(
                "act_fn '{}' is not supported (only \"silu\")",
                self.act_fn
            )));
        }
        for (key, types, want) in [
            ("down_block_types", &self.down_block_types, DOWN_BLOCK),
            ("up_block_types", &self.up_block_types, UP_BLOCK),
        ] {
            if let Some(t) = types.iter().find(|t| *t != want) {
                return Err(cfg_err(format!(
                    "{key}: '{t}' is not supported (only {want})"
                )));
            }
        }
        for (key, v) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
        ] {
            if let Some(v) = v {
                return Err(cfg_err(format!(
                    "{key} = {v} is not supported (only null: per-channel latent statistics)"
                )));
            }
        }
        let n = self.levels();
        if n == 0 {
            return Err(cfg_err("block_out_channels is empty"));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(cfg_err(format!(
                "down_block_types ({}), up_block_types ({}) and block_out_channels ({n}) must have the same length",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        if n > 16 {
            return Err(cfg_err(format!(
                "block_out_channels: {n} levels downsample by 2^{}, more than any image allows",
                n - 1
            )));
        }
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            if v == 0 {
                return Err(cfg_err(format!("{key} must be positive")));
            }
        }
        let g = self.norm_num_groups;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c == 0 || !c.is_multiple_of(g) {
                return Err(cfg_err(format!(
                    "block_out_channels[{i}] = {c} must be a positive multiple of norm_num_groups {g}"
                )));
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor != 0.0) {
            return Err(cfg_err(format!(
                "scaling_factor must be finite and non-zero, got {}",
                self.scaling_factor
            )));
        }
        if !self.shift().is_finite() {
            return Err(cfg_err(format!(
                "shift_factor must be finite, got {}",
                self.shift()
            )));
        }
        if let Some(s) = self.sample_size
            && s.hw().contains(&0)
        {
            return Err(cfg_err("sample_size must be positive"));
        }
        Ok(())
    }
}
