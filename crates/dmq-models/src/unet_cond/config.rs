//! [`UNet2DConditionConfig`]: the diffusers `UNet2DConditionModel` `config.json` (the
//! Stable Diffusion 1.x UNet), parsed strictly.
//!
//! Field names and defaults are diffusers' (`UNet2DConditionModel.__init__`, diffusers 0.42).
//! What is supported is implemented exactly; every other value of an option that changes the
//! math (another block type, a class or addition embedding, `only_cross_attention`, a
//! Fourier time embedding, an unknown key, ...) is a [`ModelError::Config`] naming the option,
//! never silently different numbers. Keys starting with `_` are metadata.
//!
//! Accepted because they do not change the forward pass of the supported blocks: `dropout`
//! (inference), `upcast_attention` (f32 already), `resnet_skip_time_act`,
//! `resnet_out_scale_factor`, `cross_attention_norm`, `mid_block_only_cross_attention`
//! (read only by diffusers' `Simple*` and `ResnetDownsample*` blocks),
//! `addition_embed_type_num_heads`, `addition_time_embed_dim`,
//! `projection_class_embeddings_input_dim` (read only with a class/addition embedding, which
//! must be null).
//!
//! diffusers' naming quirk is reproduced: for these models `attention_head_dim` is the
//! **number of heads** of each block's transformers (`num_attention_heads` defaults to it),
//! and each head has `channels / heads` channels (integer division). A non-null
//! `num_attention_heads` is refused, as diffusers itself refuses it.

use std::path::Path;

use serde::{Deserialize, Serialize, Serializer};

use dmq_quant::Limits;

use crate::error::{ModelError, Result};
use crate::io;
use crate::unet::SampleSize;

/// diffusers class name of the model.
pub const CLASS_NAME: &str = "UNet2DConditionModel";

/// Keys that do not change the forward pass of the supported configs (module docs).
const HARMLESS_KEYS: [&str; 9] = [
    "sample_size",
    "dropout",
    "upcast_attention",
    "resnet_skip_time_act",
    "resnet_out_scale_factor",
    "cross_attention_norm",
    "mid_block_only_cross_attention",
    "addition_embed_type_num_heads",
    "addition_time_embed_dim",
];

/// One value for every block, or one per block (`down_block_types` order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same value for every block.
    One(T),
    /// One value per block.
    Each(Vec<T>),
}

impl<T: Copy> PerBlock<T> {
    /// The value of down block `i` (`None` when a list is too short; validated away).
    pub fn get(&self, i: usize) -> Option<T> {
        match self {
            PerBlock::One(v) => Some(*v),
            PerBlock::Each(v) => v.get(i).copied(),
        }
    }

    /// Every value given.
    pub fn values(&self) -> Vec<T> {
        match self {
            PerBlock::One(v) => vec![*v],
            PerBlock::Each(v) => v.clone(),
        }
    }

    fn len_ok(&self, n: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Each(v) => v.len() == n,
        }
    }
}

/// Kind of a down block (`down_block_types` entry; a `UNetRes` prefix is accepted as
/// diffusers strips it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownKind {
    /// `DownBlock2D`: resnets only.
    Down,
    /// `CrossAttnDownBlock2D`: each resnet followed by a `Transformer2DModel`.
    CrossAttnDown,
}

/// Kind of an up block (`up_block_types` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpKind {
    /// `UpBlock2D`: resnets only.
    Up,
    /// `CrossAttnUpBlock2D`: each resnet followed by a `Transformer2DModel`.
    CrossAttnUp,
}

/// Shape of one `Transformer2DModel` (a block's `attentions.j`), as diffusers derives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransformerSpec {
    /// Channels C of the feature map (input = output).
    pub channels: usize,
    /// Heads H (diffusers: the block's `attention_head_dim` entry).
    pub heads: usize,
    /// Channels per head d = C / H (integer division); the transformer width is H·d.
    pub head_dim: usize,
    /// `BasicTransformerBlock`s (`transformer_layers_per_block`).
    pub layers: usize,
    /// Width of `encoder_hidden_states`.
    pub cross_attention_dim: usize,
    /// `proj_in`/`proj_out` are linears (true) or 1×1 convs (false).
    pub linear_projection: bool,
    /// Groups of the input GroupNorm (ε 1e-6).
    pub groups: usize,
}

impl TransformerSpec {
    /// Transformer width H·d.
    pub fn inner_dim(&self) -> usize {
        self.heads * self.head_dim
    }
}

fn default_four() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_positional() -> String {
    "positional".into()
}
fn default_down_types() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_up_types() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_mid_type() -> Option<String> {
    Some(MID_BLOCK.into())
}
fn default_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn default_layers() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn default_one_f() -> f64 {
    1.0
}
fn default_one() -> usize {
    1
}
fn default_three() -> usize {
    3
}
fn default_silu() -> String {
    "silu".into()
}
fn default_groups() -> Option<usize> {
    Some(32)
}
fn default_eps() -> f64 {
    1e-5
}
fn default_cross() -> PerBlock<usize> {
    PerBlock::One(1280)
}
fn default_transformer_layers() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn default_head_dim() -> Option<PerBlock<usize>> {
    Some(PerBlock::One(8))
}
fn default_only_cross() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn default_default() -> String {
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

/// The only supported mid block.
const MID_BLOCK: &str = "UNetMidBlock2DCrossAttn";

/// The diffusers `UNet2DConditionModel` config (field names, defaults and meaning as in
/// diffusers; see the module docs for what is refused).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConditionConfig {
    /// `_class_name` (must be `UNet2DConditionModel` when present).
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
    /// Input height = width (required: [`crate::DenoiserInfo`] reports it).
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    /// Channels of x_t.
    #[serde(default = "default_four")]
    pub in_channels: usize,
    /// Output channels.
    #[serde(default = "default_four")]
    pub out_channels: usize,
    /// Map the input to `2x − 1` first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Order `[cos, sin]` instead of `[sin, cos]` in the timestep sinusoid.
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// Sinusoid frequency shift (`downscale_freq_shift`).
    #[serde(default, serialize_with = "num")]
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` / `DownBlock2D` per level.
    #[serde(default = "default_down_types")]
    pub down_block_types: Vec<String>,
    /// Only `UNetMidBlock2DCrossAttn`.
    #[serde(default = "default_mid_type")]
    pub mid_block_type: Option<String>,
    /// `UpBlock2D` / `CrossAttnUpBlock2D` per level (deepest first).
    #[serde(default = "default_up_types")]
    pub up_block_types: Vec<String>,
    /// Only `false` (every block keeps its self-attention).
    #[serde(default = "default_only_cross")]
    pub only_cross_attention: PerBlock<bool>,
    /// Channels per level.
    #[serde(default = "default_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more); one integer only.
    #[serde(default = "default_layers")]
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the stride-2 downsampling convs: 1, or 0 (one zero row/column padded at
    /// the bottom/right instead).
    #[serde(default = "default_one")]
    pub downsample_padding: usize,
    /// Output divisor of the mid block's resnets (`(x + f(x)) / s`).
    #[serde(default = "default_one_f", serialize_with = "num")]
    pub mid_block_scale_factor: f64,
    /// Dropout probability (training only; ignored at inference).
    #[serde(default, serialize_with = "num")]
    pub dropout: f64,
    /// Only `"silu"` (alias `"swish"`).
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// GroupNorm groups of resnets, transformers and the output norm (null is refused).
    #[serde(default = "default_groups")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm ε of resnets and the output norm (the transformers' GroupNorm uses 1e-6,
    /// their LayerNorms 1e-5, as diffusers).
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Width of `encoder_hidden_states` (one integer only).
    #[serde(default = "default_cross")]
    pub cross_attention_dim: PerBlock<usize>,
    /// `BasicTransformerBlock`s per transformer: one integer, or one per down block (the
    /// mid block uses the last entry, up block i the entry of down block `n−1−i`).
    #[serde(default = "default_transformer_layers")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Only null.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Only null (no projection of `encoder_hidden_states`).
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Only null.
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// **Heads** per transformer (diffusers' naming quirk, module docs): one integer or one
    /// per down block (mid: last entry; up block i: entry `n−1−i`).
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: Option<PerBlock<usize>>,
    /// Only null (diffusers refuses any other value).
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Only `false`.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// `proj_in`/`proj_out` of the transformers: linears (true) or 1×1 convs (false).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Only null.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Only null.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Read only by an addition embedding (no effect here).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Only null (no class table).
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// Upcast q·kᵀ to f32 (no effect: dmq computes in f32).
    #[serde(default)]
    pub upcast_attention: bool,
    /// Only `"default"` (time embedding added after conv1).
    #[serde(default = "default_default")]
    pub resnet_time_scale_shift: String,
    /// Read only by diffusers' `ResnetDownsampleBlock2D`/`Simple*` blocks (no effect here).
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    /// Read only by diffusers' `ResnetDownsampleBlock2D`/`Simple*` blocks (no effect here).
    #[serde(default = "default_one_f", serialize_with = "num")]
    pub resnet_out_scale_factor: f64,
    /// Only `"positional"` (sinusoidal).
    #[serde(default = "default_positional")]
    pub time_embedding_type: String,
    /// Width of the time embedding (default `4 · block_out_channels[0]`).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Only null.
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    /// Only null.
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    /// Only null.
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel of `conv_in` (odd; padding `(k − 1) / 2`).
    #[serde(default = "default_three")]
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out` (odd; padding `(k − 1) / 2`).
    #[serde(default = "default_three")]
    pub conv_out_kernel: usize,
    /// Read only by a class/addition projection embedding (no effect here).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Only `"default"`.
    #[serde(default = "default_default")]
    pub attention_type: String,
    /// Only `false`.
    #[serde(default)]
    pub class_embeddings_concat: bool,
    /// Read only by `UNetMidBlock2DSimpleCrossAttn` (no effect here).
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    /// Read only by diffusers' `Simple*` blocks (no effect here).
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// Read only by the `"text"` addition embedding (no effect here).
    #[serde(default = "default_addition_heads")]
    pub addition_embed_type_num_heads: usize,
}

fn default_addition_heads() -> usize {
    64
}

fn cfg_err(msg: impl Into<String>) -> ModelError {
    ModelError::Config(msg.into())
}

/// The config keys [`UNet2DConditionConfig`] parses and checks (diffusers names).
const KNOWN_KEYS: &[&str] = &[
    "in_channels",
    "out_channels",
    "center_input_sample",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "only_cross_attention",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "reverse_transformer_layers_per_block",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "attention_head_dim",
    "num_attention_heads",
    "dual_cross_attention",
    "use_linear_projection",
    "class_embed_type",
    "addition_embed_type",
    "num_class_embeds",
    "resnet_time_scale_shift",
    "time_embedding_type",
    "time_embedding_dim",
    "time_embedding_act_fn",
    "timestep_post_act",
    "time_cond_proj_dim",
    "conv_in_kernel",
    "conv_out_kernel",
    "projection_class_embeddings_input_dim",
    "attention_type",
    "class_embeddings_concat",
];

impl UNet2DConditionConfig {
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

    /// Parses and validates a `config.json` value (see the module docs for what is refused).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let accepted = [KNOWN_KEYS, &HARMLESS_KEYS[..]].concat();
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

    /// Number of levels (`block_out_channels.len()`).
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Resnets per down block (after [`Self::validate`]: the single integer).
    pub fn layers(&self) -> usize {
        self.layers_per_block.get(0).unwrap_or(0)
    }

    /// Width of `encoder_hidden_states` (after [`Self::validate`]: the single integer).
    pub fn cross_dim(&self) -> usize {
        self.cross_attention_dim.get(0).unwrap_or(0)
    }

    /// Width of the time embedding (`time_embedding_dim`, default `4·block_out_channels[0]`).
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

    /// Parsed `down_block_types`.
    pub fn down_kinds(&self) -> Result<Vec<DownKind>> {
        self.down_block_types
            .iter()
            .map(|t| match t.strip_prefix("UNetRes").unwrap_or(t) {
                "DownBlock2D" => Ok(DownKind::Down),
                "CrossAttnDownBlock2D" => Ok(DownKind::CrossAttnDown),
                other => Err(cfg_err(format!(
                    "down_block_types: '{other}' is not supported (CrossAttnDownBlock2D, DownBlock2D)"
                ))),
            })
            .collect()
    }

    /// Parsed `up_block_types`.
    pub fn up_kinds(&self) -> Result<Vec<UpKind>> {
        self.up_block_types
            .iter()
            .map(|t| match t.strip_prefix("UNetRes").unwrap_or(t) {
                "UpBlock2D" => Ok(UpKind::Up),
                "CrossAttnUpBlock2D" => Ok(UpKind::CrossAttnUp),
                other => Err(cfg_err(format!(
                    "up_block_types: '{other}' is not supported (UpBlock2D, CrossAttnUpBlock2D)"
                ))),
            })
            .collect()
    }

    /// The transformers' shape at down-block index `i` (`attention_head_dim[i]`,
    /// `transformer_layers_per_block[i]`) over `channels`. The mid block is `i = n − 1`;
    /// up block `u` reads the entries of `i = n − 1 − u` (diffusers reverses the lists).
    pub fn transformer_spec(&self, i: usize, channels: usize) -> TransformerSpec {
        let heads = self
            .attention_head_dim
            .as_ref()
            .and_then(|h| h.get(i))
            .unwrap_or(1);
        TransformerSpec {
            channels,
            heads,
            head_dim: channels.checked_div(heads).unwrap_or(0),
            layers: self.transformer_layers_per_block.get(i).unwrap_or(1),
            cross_attention_dim: self.cross_dim(),
            linear_projection: self.use_linear_projection,
            groups: self.groups(),
        }
    }

    /// Channels `(main, skip)` of the input `[h ‖ skip]` of resnet `j` of up block `index`
    /// (diffusers: resnet 0 reads the level below, the last resnet the skip of the level
    /// above); `(0, 0)` for an index beyond the levels.
    pub fn up_resnet_channels(&self, index: usize, j: usize) -> (usize, usize) {
        let n = self.block_out_channels.len();
        // channels of up level u = those of down level n − 1 − u
        let level = |u: usize| {
            n.checked_sub(u + 1)
                .and_then(|i| self.block_out_channels.get(i))
                .copied()
                .unwrap_or(0)
        };
        let prev_out = level(index.saturating_sub(1));
        let c_out = level(index);
        let c_in = level((index + 1).min(n.saturating_sub(1)));
        let skip = if j == self.layers() { c_in } else { c_out };
        let main = if j == 0 { prev_out } else { c_out };
        (main, skip)
    }

    /// Every distinct transformer shape of the model with its count, in forward order.
    /// Uses the block kinds as given (unknown kinds count as plain blocks), so it is usable
    /// before validation for the size checks; its length is at most `2·levels + 1`.
    fn transformers(&self) -> Vec<(TransformerSpec, u64)> {
        let ch = &self.block_out_channels;
        let n = ch.len();
        let l = self.layers() as u64;
        let mut v = Vec::new();
        for (i, t) in self.down_block_types.iter().enumerate().take(n) {
            if t.ends_with("CrossAttnDownBlock2D") {
                v.push((self.transformer_spec(i, ch[i]), l));
            }
        }
        if n > 0 {
            v.push((self.transformer_spec(n - 1, ch[n - 1]), 1));
        }
        for (u, t) in self.up_block_types.iter().enumerate().take(n) {
            if t.ends_with("CrossAttnUpBlock2D") {
                let i = n - 1 - u;
                v.push((self.transformer_spec(i, ch[i]), l.saturating_add(1)));
            }
        }
        v
    }

    /// Parameters of the model this config builds, counted from the config alone (no layer
    /// is initialised), saturating at `u64::MAX`. Exact for the supported structure.
    pub fn param_count(&self) -> u64 {
        let c = |x: usize| x as u64;
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let ted = c(self.time_embed_dim());
        let conv = |i: u64, o: u64, k: u64| mul(mul(i, o), mul(k, k)).saturating_add(o);
        let linear = |i: u64, o: u64| mul(i, o).saturating_add(o);
        let resnet = |i: u64, o: u64| {
            let mut n = mul(2, i)
                .saturating_add(conv(i, o, 3))
                .saturating_add(linear(ted, o))
                .saturating_add(mul(2, o))
                .saturating_add(conv(o, o, 3));
            if i != o {
                n = n.saturating_add(linear(i, o));
            }
            n
        };
        let cross = c(self.cross_dim());
        let transformer = |s: &TransformerSpec| {
            let (ch, inner) = (c(s.channels), c(s.inner_dim()));
            let block = mul(6, inner) // norm1..3
                .saturating_add(mul(mul(3, inner), inner)) // attn1 q, k, v
                .saturating_add(linear(inner, inner)) // attn1 out
                .saturating_add(mul(inner, inner)) // attn2 q
                .saturating_add(mul(mul(2, cross), inner)) // attn2 k, v
                .saturating_add(linear(inner, inner)) // attn2 out
                .saturating_add(linear(inner, mul(8, inner))) // GEGLU proj
                .saturating_add(linear(mul(4, inner), inner)); // ff.net.2
            mul(2, ch)
                .saturating_add(linear(ch, inner))
                .saturating_add(linear(inner, ch))
                .saturating_add(mul(c(s.layers), block))
        };
        let ch = &self.block_out_channels;
        let n = ch.len();
        let Some(&c0) = ch.first() else {
            return 0;
        };
        let (c0, l) = (c(c0), c(self.layers()));
        let mut total = conv(c(self.in_channels), c0, c(self.conv_in_kernel))
            .saturating_add(linear(c0, ted))
            .saturating_add(linear(ted, ted));
        let mut input = c0;
        for (i, &o) in ch.iter().enumerate() {
            let o = c(o);
            total = total
                .saturating_add(resnet(input, o))
                .saturating_add(mul(l.saturating_sub(1), resnet(o, o)));
            if i + 1 < n {
                total = total.saturating_add(conv(o, o, 3));
            }
            input = o;
        }
        let last = c(ch[n - 1]);
        total = total.saturating_add(mul(2, resnet(last, last)));
        let up_resnet = |u: usize, j: usize, o: u64| {
            let (main, skip) = self.up_resnet_channels(u, j);
            resnet(c(main).saturating_add(c(skip)), o)
        };
        for u in 0..n {
            let o = c(ch[n - 1 - u]);
            // resnet 0 reads the level below, the last one the skip of the level above,
            // the ones between [o ‖ o]
            total = total.saturating_add(up_resnet(u, 0, o));
            if l > 0 {
                total = total
                    .saturating_add(up_resnet(u, self.layers(), o))
                    .saturating_add(mul(l - 1, resnet(mul(2, o), o)));
            }
            if u + 1 < n {
                total = total.saturating_add(conv(o, o, 3));
            }
        }
        for (s, count) in self.transformers() {
            total = total.saturating_add(mul(count, transformer(&s)));
        }
        total.saturating_add(mul(2, c0)).saturating_add(conv(
            c0,
            c(self.out_channels),
            c(self.conv_out_kernel),
        ))
    }

    /// Blocks (resnets, transformers and their transformer blocks) of the model.
    fn block_count(&self) -> u64 {
        let n = self.block_out_channels.len() as u64;
        let l = self.layers() as u64;
        let resnets = n
            .saturating_mul(l.saturating_mul(2).saturating_add(1))
            .saturating_add(2);
        self.transformers().iter().fold(resnets, |acc, (s, count)| {
            acc.saturating_add(count.saturating_mul(1 + s.layers as u64))
        })
    }

    /// Checks that the config is one this implementation computes exactly as diffusers,
    /// within [`Limits::current`] (see [`Self::validate_with_limits`]).
    pub fn validate(&self) -> Result<()> {
        self.validate_with_limits(&Limits::current())
    }

    /// [`Self::validate`] with explicit [`Limits`]: every size within `max_dim`, the blocks
    /// within `max_layers`, the parameter count within `max_params`, checked first (before
    /// any layer is initialised); a limit error names `config.json` and the key. Then every
    /// option (module docs).
    pub fn validate_with_limits(&self, limits: &Limits) -> Result<()> {
        self.check_sizes(limits)?;
        self.check_options()?;
        self.check_shapes()
    }

    fn check_sizes(&self, limits: &Limits) -> Result<()> {
        let origin = io::CONFIG_FILE;
        let lim = ModelError::Limit;
        let mut dims: Vec<(String, usize)> = vec![
            ("in_channels".into(), self.in_channels),
            ("out_channels".into(), self.out_channels),
            ("conv_in_kernel".into(), self.conv_in_kernel),
            ("conv_out_kernel".into(), self.conv_out_kernel),
            ("block_out_channels".into(), self.block_out_channels.len()),
            ("down_block_types".into(), self.down_block_types.len()),
            ("up_block_types".into(), self.up_block_types.len()),
        ];
        let lists: [(&str, Vec<usize>); 4] = [
            ("layers_per_block", self.layers_per_block.values()),
            ("cross_attention_dim", self.cross_attention_dim.values()),
            (
                "transformer_layers_per_block",
                self.transformer_layers_per_block.values(),
            ),
            (
                "attention_head_dim",
                self.attention_head_dim
                    .as_ref()
                    .map(PerBlock::values)
                    .unwrap_or_default(),
            ),
        ];
        for (key, values) in lists {
            dims.push((key.into(), values.len()));
            dims.extend(values.into_iter().map(|v| (key.to_string(), v)));
        }
        dims.extend(
            self.block_out_channels
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("block_out_channels[{i}]"), c)),
        );
        for (key, v) in [
            ("time_embedding_dim", self.time_embedding_dim),
            ("norm_num_groups", self.norm_num_groups),
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
            .map_err(lim)
    }

    /// Options that select code paths this implementation does not have.
    fn check_options(&self) -> Result<()> {
        if let Some(name) = &self.class_name
            && name != CLASS_NAME
        {
            return Err(cfg_err(format!(
                "_class_name is '{name}', expected '{CLASS_NAME}'"
            )));
        }
        let only = |key: &str, value: &str, want: &[&str], shown: &str| {
            if want.contains(&value) {
                Ok(())
            } else {
                Err(cfg_err(format!(
                    "{key} '{value}' is not supported (only {shown})"
                )))
            }
        };
        only(
            "time_embedding_type",
            &self.time_embedding_type,
            &["positional"],
            "\"positional\"",
        )?;
        only("act_fn", &self.act_fn, &["silu", "swish"], "\"silu\"")?;
        only(
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            &["default"],
            "\"default\"",
        )?;
        only(
            "attention_type",
            &self.attention_type,
            &["default"],
            "\"default\"",
        )?;
        match &self.mid_block_type {
            Some(m) if m == MID_BLOCK => {}
            other => {
                return Err(cfg_err(format!(
                    "mid_block_type {other:?} is not supported (only \"{MID_BLOCK}\")"
                )));
            }
        }
        let must_be_null: [(&str, bool); 11] = [
            ("class_embed_type", self.class_embed_type.is_some()),
            ("addition_embed_type", self.addition_embed_type.is_some()),
            ("num_class_embeds", self.num_class_embeds.is_some()),
            ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
            ("encoder_hid_dim_type", self.encoder_hid_dim_type.is_some()),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_some(),
            ),
            ("timestep_post_act", self.timestep_post_act.is_some()),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block
                    .as_ref()
                    .is_some_and(|v| !v.is_null()),
            ),
            // diffusers itself raises for any non-null value (its naming issue #2011)
            ("num_attention_heads", self.num_attention_heads.is_some()),
            ("attention_head_dim", self.attention_head_dim.is_none()),
        ];
        for (key, bad) in must_be_null {
            if bad {
                let what = if key == "attention_head_dim" {
                    "must be set (null is not supported)"
                } else {
                    "is not supported (only null)"
                };
                return Err(cfg_err(format!("{key} {what}")));
            }
        }
        for (key, bad) in [
            ("dual_cross_attention", self.dual_cross_attention),
            ("class_embeddings_concat", self.class_embeddings_concat),
            (
                "only_cross_attention",
                self.only_cross_attention.values().contains(&true),
            ),
        ] {
            if bad {
                return Err(cfg_err(format!("{key} true is not supported (only false)")));
            }
        }
        if matches!(self.layers_per_block, PerBlock::Each(_)) {
            return Err(cfg_err(
                "layers_per_block as a list is not supported (one integer)",
            ));
        }
        if matches!(self.cross_attention_dim, PerBlock::Each(_)) {
            return Err(cfg_err(
                "cross_attention_dim as a list is not supported (one integer)",
            ));
        }
        Ok(())
    }

    /// Sizes that must fit together (diffusers would fail or compute something else).
    fn check_shapes(&self) -> Result<()> {
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
        let down = self.down_kinds()?;
        let up = self.up_kinds()?;
        for (key, ok) in [
            ("only_cross_attention", self.only_cross_attention.len_ok(n)),
            (
                "transformer_layers_per_block",
                self.transformer_layers_per_block.len_ok(n),
            ),
            (
                "attention_head_dim",
                self.attention_head_dim
                    .as_ref()
                    .is_some_and(|h| h.len_ok(n)),
            ),
        ] {
            if !ok {
                return Err(cfg_err(format!(
                    "{key} must be one value or one per down block ({n})"
                )));
            }
        }
        if self.block_out_channels.contains(&0) || self.in_channels == 0 || self.out_channels == 0 {
            return Err(cfg_err(
                "block_out_channels, in_channels and out_channels must be positive",
            ));
        }
        if self.layers() == 0 {
            return Err(cfg_err("layers_per_block must be at least 1"));
        }
        if self.cross_dim() == 0 {
            return Err(cfg_err("cross_attention_dim must be positive"));
        }
        if self.transformer_layers_per_block.values().contains(&0) {
            return Err(cfg_err("transformer_layers_per_block must be at least 1"));
        }
        if self.time_embed_dim() == 0 {
            return Err(cfg_err("time_embedding_dim must be positive"));
        }
        for (key, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k.is_multiple_of(2) {
                return Err(cfg_err(format!(
                    "{key} {k} is not supported (odd kernels only: the output keeps the input size)"
                )));
            }
        }
        if self.downsample_padding > 1 {
            return Err(cfg_err(format!(
                "downsample_padding {} is not supported (0 or 1: larger paddings break the skip connections)",
                self.downsample_padding
            )));
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
        if let Some(&c) = self
            .block_out_channels
            .iter()
            .find(|c| !c.is_multiple_of(g))
        {
            return Err(cfg_err(format!(
                "norm_num_groups {g} does not divide block_out_channels entry {c}"
            )));
        }
        let mut specs: Vec<(String, TransformerSpec)> = Vec::new();
        for (i, k) in down.iter().enumerate() {
            if *k == DownKind::CrossAttnDown {
                let s = self.transformer_spec(i, self.block_out_channels[i]);
                specs.push((format!("down_blocks.{i}"), s));
            }
        }
        specs.push((
            "mid_block".into(),
            self.transformer_spec(n - 1, self.block_out_channels[n - 1]),
        ));
        for (u, k) in up.iter().enumerate() {
            if *k == UpKind::CrossAttnUp {
                let s = self.transformer_spec(n - 1 - u, self.block_out_channels[n - 1 - u]);
                specs.push((format!("up_blocks.{u}"), s));
            }
        }
        for (block, s) in specs {
            if s.heads == 0 || s.head_dim == 0 {
                return Err(cfg_err(format!(
                    "attention_head_dim: {block} has {} heads for {} channels (diffusers: heads = attention_head_dim, head size = channels / heads must be ≥ 1)",
                    s.heads, s.channels
                )));
            }
            if s.linear_projection && s.inner_dim() != s.channels {
                return Err(cfg_err(format!(
                    "attention_head_dim: {block} has {} heads for {} channels; with use_linear_projection the heads must divide the channels (diffusers fails to reshape otherwise)",
                    s.heads, s.channels
                )));
            }
        }
        match self.sample_size {
            None => Err(cfg_err(
                "sample_size is required (the denoiser reports its input size)",
            )),
            Some(s) => {
                let [h, w] = s.hw();
                if h != w || h == 0 {
                    Err(cfg_err(format!(
                        "sample_size {h}x{w}: only square, non-empty samples are supported"
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }
}
