//! [`UNetConfig`]: the diffusers `UNet2DModel` `config.json`, parsed strictly.
//!
//! Field names and defaults are diffusers' (`UNet2DModel.__init__`, diffusers 0.42). What is
//! supported is implemented exactly; every other value of an option that changes the math
//! (a Fourier time embedding, `scale_shift` time conditioning, another block type, an
//! unknown key, ...) is a [`ModelError::Config`] naming the option, never silently different
//! numbers. Keys starting with `_` (`_class_name`, `_diffusers_version`, `_name_or_path`, ...)
//! are metadata; `sample_size`, `dropout` (inference only) and `num_train_timesteps` (used
//! only by the unsupported `"learned"` time embedding) do not change the forward pass.

use std::path::Path;

use serde::{Deserialize, Serialize, Serializer};

use dmq_quant::Limits;

use crate::error::{ModelError, Result};
use crate::io;

/// The `sample_size` of a diffusers config: one number or `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// Square samples.
    Square(usize),
    /// `[height, width]`.
    Rect([usize; 2]),
}

impl SampleSize {
    /// `[height, width]`.
    pub fn hw(&self) -> [usize; 2] {
        match *self {
            SampleSize::Square(s) => [s, s],
            SampleSize::Rect(hw) => hw,
        }
    }
}

/// Kind of a down block (`down_block_types` entry; a `UNetRes` prefix is accepted as
/// diffusers strips it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownBlockType {
    /// `DownBlock2D`: resnets only.
    Down,
    /// `AttnDownBlock2D`: each resnet followed by self-attention.
    AttnDown,
}

/// Kind of an up block (`up_block_types` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpBlockType {
    /// `UpBlock2D`: resnets only.
    Up,
    /// `AttnUpBlock2D`: each resnet followed by self-attention.
    AttnUp,
}

fn default_in_channels() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_positional() -> String {
    "positional".into()
}
fn default_down_types() -> Vec<String> {
    [
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_up_types() -> Vec<String> {
    [
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_mid_type() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn default_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}
fn default_layers() -> usize {
    2
}
fn default_one_f() -> f64 {
    1.0
}
fn default_one() -> usize {
    1
}
fn default_conv() -> Option<String> {
    Some("conv".into())
}
fn default_silu() -> String {
    "silu".into()
}
fn default_head_dim() -> Option<usize> {
    Some(8)
}
fn default_groups() -> Option<usize> {
    Some(32)
}
fn default_eps() -> f64 {
    1e-5
}
fn default_shift_mode() -> String {
    "default".into()
}
fn default_class_name() -> Option<String> {
    Some(CLASS_NAME.into())
}

/// Writes integral floats as JSON integers (diffusers declares `freq_shift` and
/// `mid_block_scale_factor` as numbers that are usually integers).
fn num<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// diffusers class name of the model.
pub const CLASS_NAME: &str = "UNet2DModel";

/// Keys of `config.json` that do not change the forward pass (besides `_`-prefixed metadata).
const HARMLESS_KEYS: [&str; 3] = ["sample_size", "dropout", "num_train_timesteps"];

/// The diffusers `UNet2DModel` config (field names, defaults and meaning as in diffusers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// `_class_name` (must be `UNet2DModel` when present).
    #[serde(
        rename = "_class_name",
        default = "default_class_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub class_name: Option<String>,
    /// `_diffusers_version` the file was written by (metadata, kept on save).
    #[serde(
        rename = "_diffusers_version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub diffusers_version: Option<String>,
    /// Input height/width (metadata for the forward pass, required by [`Self::validate`]
    /// because [`crate::DenoiserInfo`] reports it).
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    /// Channels of x_t.
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Output channels.
    #[serde(default = "default_in_channels")]
    pub out_channels: usize,
    /// Map the input to `2x − 1` first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Only `"positional"` (sinusoidal) is supported.
    #[serde(default = "default_positional")]
    pub time_embedding_type: String,
    /// Width of the time embedding (default `4 · block_out_channels[0]`).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Sinusoid frequency shift (`downscale_freq_shift`).
    #[serde(default, serialize_with = "num")]
    pub freq_shift: f64,
    /// Order `[cos, sin]` instead of `[sin, cos]`.
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// `DownBlock2D` / `AttnDownBlock2D` per level.
    #[serde(default = "default_down_types")]
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2D` or `null` (no mid block).
    #[serde(default = "default_mid_type")]
    pub mid_block_type: Option<String>,
    /// `UpBlock2D` / `AttnUpBlock2D` per level (deepest first).
    #[serde(default = "default_up_types")]
    pub up_block_types: Vec<String>,
    /// Channels per level.
    #[serde(default = "default_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "default_layers")]
    pub layers_per_block: usize,
    /// Output scale of the mid block's resnets and attention (`(x + f(x)) / s`).
    #[serde(default = "default_one_f", serialize_with = "num")]
    pub mid_block_scale_factor: f64,
    /// Padding of the stride-2 downsampling convs (0 pads one zero row/column at the
    /// bottom/right instead).
    #[serde(default = "default_one")]
    pub downsample_padding: usize,
    /// Only `"conv"` (or `null`).
    #[serde(default = "default_conv")]
    pub downsample_type: Option<String>,
    /// Only `"conv"` (or `null`).
    #[serde(default = "default_conv")]
    pub upsample_type: Option<String>,
    /// Dropout probability (training only; ignored at inference).
    #[serde(default, serialize_with = "num")]
    pub dropout: f64,
    /// Only `"silu"` (alias `"swish"`).
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// Channels per attention head; `null` = one head over all channels.
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: Option<usize>,
    /// GroupNorm groups of resnets, attentions and the output norm.
    #[serde(default = "default_groups")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm groups of the mid block's attention (default `norm_num_groups`).
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    /// GroupNorm ε.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Only `"default"` (time embedding added after conv1).
    #[serde(default = "default_shift_mode")]
    pub resnet_time_scale_shift: String,
    /// Self-attention in the mid block.
    #[serde(default = "default_true")]
    pub add_attention: bool,
    /// Only `null` (a learned class table added to the time embedding).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Rows of the class embedding table (`None` = unconditional).
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// Only used by the (unsupported) `"learned"` time embedding.
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
}

fn cfg_err(msg: impl Into<String>) -> ModelError {
    ModelError::Config(msg.into())
}

impl UNetConfig {
    /// A config with diffusers' defaults for every option, then the given essentials.
    pub fn new(
        sample_size: usize,
        in_channels: usize,
        out_channels: usize,
        block_out_channels: Vec<usize>,
    ) -> Self {
        let mut c: Self = serde_json::from_str("{}").expect("all fields have defaults");
        c.sample_size = Some(SampleSize::Square(sample_size));
        c.in_channels = in_channels;
        c.out_channels = out_channels;
        c.block_out_channels = block_out_channels;
        c
    }

    /// Parses and validates a `config.json` value (see the module docs for what is rejected).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let accepted = [known_keys(), HARMLESS_KEYS.to_vec()].concat();
        let config: Self = io::parse_config(value, CLASS_NAME, &accepted)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_json(&io::read_config(dir)?)
            .map_err(|e| crate::error::at_origin(e, &dir.join(io::CONFIG_FILE)))
    }

    /// The config as diffusers' `config.json` text.
    pub fn to_json_string(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| cfg_err(e.to_string()))
    }

    /// The config as a JSON value (what [`Self::to_json_string`] writes).
    pub fn to_json_value(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| cfg_err(e.to_string()))
    }

    /// Width of the time embedding.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or_else(|| {
            self.block_out_channels
                .first()
                .copied()
                .unwrap_or(0)
                .saturating_mul(4)
        })
    }

    /// GroupNorm groups (after [`Self::validate`], always set).
    pub fn groups(&self) -> usize {
        self.norm_num_groups.unwrap_or(0)
    }

    /// Square input size (after [`Self::validate`], always set).
    pub fn sample_size(&self) -> usize {
        self.sample_size.map(|s| s.hw()[0]).unwrap_or(0)
    }

    /// Heads and head dim of an attention over `channels` (diffusers:
    /// `heads = channels // attention_head_dim`, one head when it is `null`).
    pub fn attention_heads(&self, channels: usize) -> (usize, usize) {
        match self.attention_head_dim {
            Some(d) if d > 0 => (channels / d, d),
            _ => (1, channels),
        }
    }

    /// Parsed `down_block_types`.
    pub fn down_types(&self) -> Result<Vec<DownBlockType>> {
        self.down_block_types
            .iter()
            .map(|t| match t.strip_prefix("UNetRes").unwrap_or(t) {
                "DownBlock2D" => Ok(DownBlockType::Down),
                "AttnDownBlock2D" => Ok(DownBlockType::AttnDown),
                other => Err(cfg_err(format!(
                    "down_block_types: '{other}' is not supported (DownBlock2D, AttnDownBlock2D)"
                ))),
            })
            .collect()
    }

    /// Parsed `up_block_types`.
    pub fn up_types(&self) -> Result<Vec<UpBlockType>> {
        self.up_block_types
            .iter()
            .map(|t| match t.strip_prefix("UNetRes").unwrap_or(t) {
                "UpBlock2D" => Ok(UpBlockType::Up),
                "AttnUpBlock2D" => Ok(UpBlockType::AttnUp),
                other => Err(cfg_err(format!(
                    "up_block_types: '{other}' is not supported (UpBlock2D, AttnUpBlock2D)"
                ))),
            })
            .collect()
    }

    /// Checks that the config is one this implementation computes exactly as diffusers,
    /// and that it is within [`Limits::current`] (see [`Self::validate_with_limits`]).
    pub fn validate(&self) -> Result<()> {
        self.validate_with_limits(&Limits::current())
    }

    /// Parameters of the model this config builds, counted from the config alone (no layer
    /// is initialised), saturating at `u64::MAX`. Exact for the diffusers structure:
    /// convs, linears, norms, attention projections and the class table.
    pub fn param_count(&self) -> u64 {
        let c = |x: usize| x as u64;
        let ted = c(self.time_embed_dim());
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let conv3 = |i: u64, o: u64| mul(mul(i, o), 9).saturating_add(o);
        let linear = |i: u64, o: u64| mul(i, o).saturating_add(o);
        let resnet = |i: u64, o: u64| {
            let mut n = mul(2, i)
                .saturating_add(conv3(i, o))
                .saturating_add(linear(ted, o))
                .saturating_add(mul(2, o))
                .saturating_add(conv3(o, o));
            if i != o {
                n = n.saturating_add(linear(i, o));
            }
            n
        };
        let attention = |ch: u64| mul(2, ch).saturating_add(mul(4, linear(ch, ch)));
        let ch = &self.block_out_channels;
        let n = ch.len();
        let Some(&c0) = ch.first() else {
            return 0;
        };
        let (c0, l) = (c(c0), c(self.layers_per_block));
        let attn_down: Vec<bool> = self
            .down_block_types
            .iter()
            .map(|t| t.contains("Attn"))
            .collect();
        let attn_up: Vec<bool> = self
            .up_block_types
            .iter()
            .map(|t| t.contains("Attn"))
            .collect();
        let mut total = conv3(c(self.in_channels), c0)
            .saturating_add(linear(c0, ted))
            .saturating_add(linear(ted, ted))
            .saturating_add(mul(c(self.num_class_embeds.unwrap_or(0)), ted));
        let mut input = c0;
        for (i, &o) in ch.iter().enumerate() {
            let o = c(o);
            let block = resnet(input, o).saturating_add(mul(l.saturating_sub(1), resnet(o, o)));
            let attn = if attn_down.get(i).copied().unwrap_or(false) {
                mul(l, attention(o))
            } else {
                0
            };
            let down = if i + 1 < n { conv3(o, o) } else { 0 };
            total = total
                .saturating_add(block)
                .saturating_add(attn)
                .saturating_add(down);
            input = o;
        }
        if self.mid_block_type.is_some() {
            let last = c(ch[n - 1]);
            total = total.saturating_add(mul(2, resnet(last, last)));
            if self.add_attention {
                total = total.saturating_add(attention(last));
            }
        }
        let rev: Vec<u64> = ch.iter().rev().map(|&x| c(x)).collect();
        let mut prev = rev[0];
        for i in 0..n {
            let o = rev[i];
            let skip_in = rev[(i + 1).min(n - 1)];
            for j in 0..=self.layers_per_block {
                let skip = if j == self.layers_per_block {
                    skip_in
                } else {
                    o
                };
                let res_in = if j == 0 { prev } else { o };
                total = total.saturating_add(resnet(res_in.saturating_add(skip), o));
                if attn_up.get(i).copied().unwrap_or(false) {
                    total = total.saturating_add(attention(o));
                }
            }
            if i + 1 < n {
                total = total.saturating_add(conv3(o, o));
            }
            prev = o;
        }
        total
            .saturating_add(mul(2, c0))
            .saturating_add(conv3(c0, c(self.out_channels)))
    }

    /// Blocks (resnets and attentions) of the model this config builds.
    fn block_count(&self) -> u64 {
        let levels = self.block_out_channels.len() as u64;
        let per_level = (self.layers_per_block as u64)
            .saturating_mul(4)
            .saturating_add(2);
        levels.saturating_mul(per_level).saturating_add(3)
    }

    /// [`Self::validate`] with explicit [`Limits`]: every channel count, the sample size and
    /// the class count within `max_dim`, the blocks within `max_layers`, then the
    /// parameter count ([`Self::param_count`]) within `max_params`, before anything else
    /// (so before any layer is initialised). A limit error names `config.json` and the key.
    pub fn validate_with_limits(&self, limits: &Limits) -> Result<()> {
        let origin = io::CONFIG_FILE;
        let lim = ModelError::Limit;
        let mut dims: Vec<(String, usize)> = vec![
            ("in_channels".into(), self.in_channels),
            ("out_channels".into(), self.out_channels),
            ("layers_per_block".into(), self.layers_per_block),
        ];
        dims.extend(
            self.block_out_channels
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("block_out_channels[{i}]"), c)),
        );
        for (key, v) in [
            ("time_embedding_dim", self.time_embedding_dim),
            ("attention_head_dim", self.attention_head_dim),
            ("norm_num_groups", self.norm_num_groups),
            ("attn_norm_num_groups", self.attn_norm_num_groups),
            ("num_class_embeds", self.num_class_embeds),
            ("num_train_timesteps", self.num_train_timesteps),
        ] {
            if let Some(v) = v {
                dims.push((key.into(), v));
            }
        }
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
            && name != CLASS_NAME
        {
            return Err(cfg_err(format!(
                "_class_name is '{name}', expected '{CLASS_NAME}'"
            )));
        }
        if self.time_embedding_type != "positional" {
            return Err(cfg_err(format!(
                "time_embedding_type '{}' is not supported (only \"positional\")",
                self.time_embedding_type
            )));
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(cfg_err(format!(
                "act_fn '{}' is not supported (only \"silu\")",
                self.act_fn
            )));
        }
        if self.resnet_time_scale_shift != "default" {
            return Err(cfg_err(format!(
                "resnet_time_scale_shift '{}' is not supported (only \"default\")",
                self.resnet_time_scale_shift
            )));
        }
        if let Some(t) = &self.class_embed_type {
            return Err(cfg_err(format!(
                "class_embed_type '{t}' is not supported (only null with num_class_embeds)"
            )));
        }
        if self.num_class_embeds == Some(0) {
            return Err(cfg_err("num_class_embeds must be at least 1"));
        }
        for (key, v) in [
            ("downsample_type", &self.downsample_type),
            ("upsample_type", &self.upsample_type),
        ] {
            if let Some(v) = v
                && v != "conv"
            {
                return Err(cfg_err(format!(
                    "{key} '{v}' is not supported (only \"conv\")"
                )));
            }
        }
        if let Some(m) = &self.mid_block_type
            && m != "UNetMidBlock2D"
        {
            return Err(cfg_err(format!(
                "mid_block_type '{m}' is not supported (UNetMidBlock2D or null)"
            )));
        }
        let n = self.block_out_channels.len();
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
        let down = self.down_types()?;
        let up = self.up_types()?;
        if self.block_out_channels.contains(&0) || self.in_channels == 0 || self.out_channels == 0 {
            return Err(cfg_err(
                "block_out_channels, in_channels and out_channels must be positive",
            ));
        }
        if self.layers_per_block == 0 {
            return Err(cfg_err("layers_per_block must be at least 1"));
        }
        if self.time_embed_dim() == 0 {
            return Err(cfg_err("time_embedding_dim must be positive"));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(cfg_err(format!(
                "norm_eps must be positive, got {}",
                self.norm_eps
            )));
        }
        if !(self.mid_block_scale_factor.is_finite() && self.mid_block_scale_factor != 0.0) {
            return Err(cfg_err(format!(
                "mid_block_scale_factor must be finite and non-zero, got {}",
                self.mid_block_scale_factor
            )));
        }
        if !self.freq_shift.is_finite()
            || (self.block_out_channels[0] / 2) as f64 == self.freq_shift
        {
            return Err(cfg_err(format!(
                "freq_shift {} gives a division by zero in the timestep embedding",
                self.freq_shift
            )));
        }
        let g = match self.norm_num_groups {
            Some(g) if g > 0 => g,
            _ => {
                return Err(cfg_err(
                    "norm_num_groups must be a positive integer (null is not supported)",
                ));
            }
        };
        for &c in &self.block_out_channels {
            if !c.is_multiple_of(g) {
                return Err(cfg_err(format!(
                    "norm_num_groups {g} does not divide block_out_channels entry {c}"
                )));
            }
        }
        if self.attention_head_dim == Some(0) {
            return Err(cfg_err("attention_head_dim must be positive or null"));
        }
        let mut attn_channels: Vec<usize> = Vec::new();
        for (i, t) in down.iter().enumerate() {
            if *t == DownBlockType::AttnDown {
                attn_channels.push(self.block_out_channels[i]);
            }
        }
        for (i, t) in up.iter().enumerate() {
            if *t == UpBlockType::AttnUp {
                attn_channels.push(self.block_out_channels[n - 1 - i]);
            }
        }
        let mid_attention = self.mid_block_type.is_some() && self.add_attention;
        if mid_attention {
            attn_channels.push(self.block_out_channels[n - 1]);
            if let Some(ag) = self.attn_norm_num_groups
                && (ag == 0 || !self.block_out_channels[n - 1].is_multiple_of(ag))
            {
                return Err(cfg_err(format!(
                    "attn_norm_num_groups {ag} does not divide the mid block's {} channels",
                    self.block_out_channels[n - 1]
                )));
            }
        }
        for c in attn_channels {
            if self.attention_heads(c).0 == 0 {
                return Err(cfg_err(format!(
                    "attention_head_dim {:?} is larger than an attention's {c} channels (0 heads)",
                    self.attention_head_dim
                )));
            }
        }
        match self.sample_size {
            None => {
                return Err(cfg_err(
                    "sample_size is required (the denoiser reports its input size)",
                ));
            }
            Some(s) => {
                let [h, w] = s.hw();
                if h != w || h == 0 {
                    return Err(cfg_err(format!(
                        "sample_size {h}x{w}: only square, non-empty samples are supported"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The config keys [`UNetConfig`] parses (diffusers names).
fn known_keys() -> Vec<&'static str> {
    vec![
        "in_channels",
        "out_channels",
        "center_input_sample",
        "time_embedding_type",
        "time_embedding_dim",
        "freq_shift",
        "flip_sin_to_cos",
        "down_block_types",
        "mid_block_type",
        "up_block_types",
        "block_out_channels",
        "layers_per_block",
        "mid_block_scale_factor",
        "downsample_padding",
        "downsample_type",
        "upsample_type",
        "act_fn",
        "attention_head_dim",
        "norm_num_groups",
        "attn_norm_num_groups",
        "norm_eps",
        "resnet_time_scale_shift",
        "add_attention",
        "class_embed_type",
        "num_class_embeds",
    ]
}
