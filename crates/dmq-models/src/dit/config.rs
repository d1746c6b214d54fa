//! [`DiTConfig`]: the diffusers `DiTTransformer2DModel` config (`config.json`), validated.
//!
//! Field names and defaults are diffusers' (`DiTTransformer2DModel.__init__`). A config
//! written by diffusers' older `Transformer2DModel` class for a DiT (the layout of
//! `facebook/DiT-XL-2-256`) is accepted too: its extra keys must have the values that
//! select the patched, class-conditional adaLN-Zero path, and its own defaults fill keys
//! the file leaves out.
//!
//! Strictness: every key must be known. A key or value that would change the math in a
//! way this implementation does not follow is a [`ModelError::Config`] naming it, never
//! silently different numbers. Keys starting with `_` (`_class_name`,
//! `_diffusers_version`, `_name_or_path`, ...) are metadata; `_class_name`, when present,
//! must be `DiTTransformer2DModel` or `Transformer2DModel`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use dmq_quant::Limits;

use crate::error::{ModelError, Result};
use crate::io;

/// `_class_name` written by [`DiTConfig::to_json`].
pub const DIT_CLASS_NAME: &str = "DiTTransformer2DModel";
/// The diffusers version whose numerics the parity tests pin (written as
/// `_diffusers_version` by [`DiTConfig::to_json`]).
pub const DIFFUSERS_VERSION: &str = "0.42.1";
/// Width of the sinusoidal timestep projection (`Timesteps(num_channels=256)` in diffusers'
/// `CombinedTimestepLabelEmbeddings`; not configurable there).
pub const TIMESTEP_PROJ_DIM: usize = 256;

/// Configuration of a [`DiT`](super::DiT) in diffusers' `DiTTransformer2DModel` terms.
///
/// `Default` gives diffusers' defaults (DiT-XL/2 at 256 px: 28 layers, 16 heads of 72).
/// Build a small one with struct update syntax:
/// `DiTConfig { num_layers: 2, num_attention_heads: 2, attention_head_dim: 8, ..Default::default() }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiTConfig {
    /// Attention heads H.
    pub num_attention_heads: usize,
    /// Channels per head d; the model width is D = H·d.
    pub attention_head_dim: usize,
    /// Channels C of the input image/latent.
    pub in_channels: usize,
    /// Output channels; `None` = `in_channels`. `2·in_channels` for learned-sigma models
    /// (first half ε, second half the variance interpolation).
    pub out_channels: Option<usize>,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Dropout probability of attention output and feed-forward (active only when training
    /// on an autodiff device, like PyTorch's train mode).
    pub dropout: f64,
    /// Unused by DiT (diffusers accepts and ignores it); kept so configs round-trip.
    pub norm_num_groups: usize,
    /// Whether `to_q`/`to_k`/`to_v` have a bias (`to_out.0` always has one).
    pub attention_bias: bool,
    /// Height = width of the training input, in pixels/latent cells.
    pub sample_size: usize,
    /// Patch size p (the patch-embedding conv has kernel = stride = p).
    pub patch_size: usize,
    /// Feed-forward activation; only `"gelu-approximate"` (GELU, tanh form) is supported.
    pub activation_fn: String,
    /// Number of classes; the embedding table has one more row, the null label
    /// `num_embeds_ada_norm` used for classifier-free guidance.
    pub num_embeds_ada_norm: Option<usize>,
    /// Upcast q·kᵀ to f32 (no effect here: dmq computes attention in f32).
    pub upcast_attention: bool,
    /// Only `"ada_norm_zero"` is supported.
    pub norm_type: String,
    /// Learnable weight/bias of the pre-feed-forward LayerNorm (`norm3`).
    pub norm_elementwise_affine: bool,
    /// ε of the pre-feed-forward LayerNorm (`norm3`). The adaLN and output norms use 1e-6,
    /// as in diffusers.
    pub norm_eps: f64,
}

impl Default for DiTConfig {
    fn default() -> Self {
        Self {
            num_attention_heads: 16,
            attention_head_dim: 72,
            in_channels: 4,
            out_channels: None,
            num_layers: 28,
            dropout: 0.0,
            norm_num_groups: 32,
            attention_bias: true,
            sample_size: 32,
            patch_size: 2,
            activation_fn: "gelu-approximate".into(),
            num_embeds_ada_norm: Some(1000),
            upcast_attention: false,
            norm_type: "ada_norm_zero".into(),
            norm_elementwise_affine: false,
            norm_eps: 1e-5,
        }
    }
}

/// Keys of diffusers' `DiTTransformer2DModel` config.
const DIT_KEYS: [&str; 16] = [
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "num_layers",
    "dropout",
    "norm_num_groups",
    "attention_bias",
    "sample_size",
    "patch_size",
    "activation_fn",
    "num_embeds_ada_norm",
    "upcast_attention",
    "norm_type",
    "norm_elementwise_affine",
    "norm_eps",
];

fn config_err(msg: impl Into<String>) -> ModelError {
    ModelError::Config(msg.into())
}

/// Defaults of diffusers' `Transformer2DModel.__init__` for the keys DiT shares.
fn transformer2d_defaults() -> Map<String, Value> {
    let v = json!({
        "num_attention_heads": 16,
        "attention_head_dim": 88,
        "in_channels": null,
        "out_channels": null,
        "num_layers": 1,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "attention_bias": false,
        "sample_size": null,
        "patch_size": null,
        "activation_fn": "geglu",
        "num_embeds_ada_norm": null,
        "upcast_attention": false,
        "norm_type": "layer_norm",
        "norm_elementwise_affine": true,
        "norm_eps": 1e-5,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("literal object"),
    }
}

/// Checks a `Transformer2DModel`-only key: it must have a value under which that class
/// computes exactly what `DiTTransformer2DModel` computes.
fn check_transformer2d_key(key: &str, value: &Value, sample_size: Option<u64>) -> Result<()> {
    let ok = match key {
        // Cross-attention, discrete (VQ) inputs, gated attention, caption projection: other
        // architectures.
        "cross_attention_dim" | "num_vector_embeds" | "caption_channels" => value.is_null(),
        "only_cross_attention" | "double_self_attention" => value == &Value::Bool(false),
        "attention_type" => value == "default",
        // Only read on the continuous (non-patched) input path and by ada_norm_single.
        "use_linear_projection" => value.is_boolean(),
        "use_additional_conditions" => value.is_null() || value.is_boolean(),
        // Scales the 2-D sin-cos positions; DiTTransformer2DModel fixes it at 1.
        "interpolation_scale" => match value {
            Value::Null => sample_size.is_none_or(|s| (s / 64).max(1) == 1),
            v => v.as_f64() == Some(1.0),
        },
        _ => {
            return Err(config_err(format!(
                "unknown config key '{key}' (not a DiTTransformer2DModel/Transformer2DModel \
                 option this implementation knows; refusing to guess its effect)"
            )));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(config_err(format!(
            "config key '{key}' = {value} selects a Transformer2DModel variant that is not a \
             DiT; not supported"
        )))
    }
}

fn field<T: DeserializeOwned>(map: &Map<String, Value>, key: &str) -> Result<T> {
    let v = map.get(key).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v.clone())
        .map_err(|e| config_err(format!("config key '{key}' = {v}: {e}")))
}

impl DiTConfig {
    /// Parses a diffusers `config.json` object and validates it (see the module docs).
    pub fn from_json_value(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| config_err("config.json must be a JSON object"))?;
        let class = match obj.get("_class_name") {
            None => DIT_CLASS_NAME.to_string(),
            Some(Value::String(s)) if s == DIT_CLASS_NAME || s == "Transformer2DModel" => s.clone(),
            Some(other) => {
                return Err(config_err(format!(
                    "config key '_class_name' = {other}: expected \"{DIT_CLASS_NAME}\" or \
                     \"Transformer2DModel\""
                )));
            }
        };
        let mut map: Map<String, Value> = if class == DIT_CLASS_NAME {
            match serde_json::to_value(Self::default()) {
                Ok(Value::Object(m)) => m,
                _ => unreachable!("DiTConfig serialises to an object"),
            }
        } else {
            transformer2d_defaults()
        };
        let sample_size = obj.get("sample_size").and_then(Value::as_u64);
        for (key, v) in obj {
            if key.starts_with('_') {
                continue;
            }
            if DIT_KEYS.contains(&key.as_str()) {
                map.insert(key.clone(), v.clone());
            } else if class == DIT_CLASS_NAME && key != "interpolation_scale" {
                return Err(config_err(format!(
                    "unknown config key '{key}' for {DIT_CLASS_NAME} (refusing to guess its effect)"
                )));
            } else {
                check_transformer2d_key(key, v, sample_size)?;
            }
        }
        for key in ["in_channels", "sample_size", "patch_size"] {
            if map.get(key).is_none_or(Value::is_null) {
                return Err(config_err(format!(
                    "config key '{key}' is required for a patched DiT"
                )));
            }
        }
        let cfg = Self {
            num_attention_heads: field(&map, "num_attention_heads")?,
            attention_head_dim: field(&map, "attention_head_dim")?,
            in_channels: field(&map, "in_channels")?,
            out_channels: field(&map, "out_channels")?,
            num_layers: field(&map, "num_layers")?,
            dropout: field(&map, "dropout")?,
            norm_num_groups: field(&map, "norm_num_groups")?,
            attention_bias: field(&map, "attention_bias")?,
            sample_size: field(&map, "sample_size")?,
            patch_size: field(&map, "patch_size")?,
            activation_fn: field(&map, "activation_fn")?,
            num_embeds_ada_norm: field(&map, "num_embeds_ada_norm")?,
            upcast_attention: field(&map, "upcast_attention")?,
            norm_type: field(&map, "norm_type")?,
            norm_elementwise_affine: field(&map, "norm_elementwise_affine")?,
            norm_eps: field(&map, "norm_eps")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| config_err(format!("invalid JSON: {e}")))?;
        Self::from_json_value(&v)
    }

    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_json_value(&io::read_config(dir.as_ref())?)
            .map_err(|e| crate::error::at_origin(e, &dir.as_ref().join(io::CONFIG_FILE)))
    }

    /// The config as diffusers writes it for `DiTTransformer2DModel` (with `_class_name`
    /// and `_diffusers_version`).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("DiTConfig serialises");
        if let Value::Object(m) = &mut v {
            m.insert("_class_name".into(), DIT_CLASS_NAME.into());
            m.insert("_diffusers_version".into(), DIFFUSERS_VERSION.into());
        }
        v
    }

    /// Checks that the options are supported and consistent, and within
    /// [`Limits::current`] (see [`Self::validate_with_limits`]).
    pub fn validate(&self) -> Result<()> {
        self.validate_with_limits(&Limits::current())
    }

    /// Parameters (plus the fixed position-embedding table) of the model this config
    /// builds, counted from the config alone, saturating at `u64::MAX`: patch embedding and
    /// its `(sample_size/patch_size)²·D` position table, per block an adaLN-Zero with its
    /// own timestep/label embedding, attention and feed-forward, and the output projection.
    pub fn param_count(&self) -> u64 {
        let c = |x: usize| x as u64;
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let linear = |i: u64, o: u64| mul(i, o).saturating_add(o);
        let d = mul(c(self.num_attention_heads), c(self.attention_head_dim));
        let p2 = mul(c(self.patch_size), c(self.patch_size));
        let grid = c(self.sample_size) / c(self.patch_size.max(1));
        let classes = c(self.num_embeds_ada_norm.unwrap_or(0)).saturating_add(1);
        let embed = linear(c(TIMESTEP_PROJ_DIM), d)
            .saturating_add(linear(d, d))
            .saturating_add(mul(classes, d));
        let block = embed
            .saturating_add(linear(d, mul(6, d)))
            .saturating_add(mul(4, linear(d, d)))
            .saturating_add(if self.norm_elementwise_affine {
                mul(2, d)
            } else {
                0
            })
            .saturating_add(linear(d, mul(4, d)))
            .saturating_add(linear(mul(4, d), d));
        let patch = linear(mul(c(self.in_channels), p2), d);
        let pos = mul(mul(grid, grid), d);
        let out = linear(d, mul(2, d)).saturating_add(linear(d, mul(p2, c(self.out_channels()))));
        patch
            .saturating_add(pos)
            .saturating_add(mul(c(self.num_layers), block))
            .saturating_add(out)
    }

    /// [`Self::validate`] with explicit [`Limits`]: every size key within `max_dim`, the
    /// width `num_attention_heads·attention_head_dim` too (computed without overflow),
    /// `num_layers` within `max_layers`, then the parameter count ([`Self::param_count`])
    /// within `max_params`, before anything else (so before any layer is initialised). A
    /// limit error names `config.json` and the key.
    pub fn validate_with_limits(&self, limits: &Limits) -> Result<()> {
        let origin = io::CONFIG_FILE;
        let lim = ModelError::Limit;
        for (key, v) in [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels()),
            ("sample_size", self.sample_size),
            ("patch_size", self.patch_size),
            ("norm_num_groups", self.norm_num_groups),
            ("num_embeds_ada_norm", self.num_embeds_ada_norm.unwrap_or(0)),
        ] {
            limits.check_dim(v as u64, origin, key).map_err(lim)?;
        }
        let width =
            (self.num_attention_heads as u64).saturating_mul(self.attention_head_dim as u64);
        limits
            .check_dim(width, origin, "num_attention_heads·attention_head_dim")
            .map_err(lim)?;
        limits
            .check_layers(self.num_layers as u64, origin, "num_layers")
            .map_err(lim)?;
        limits
            .check_params(self.param_count(), origin, "num_layers")
            .map_err(lim)?;
        if self.norm_type != "ada_norm_zero" {
            return Err(config_err(format!(
                "config key 'norm_type' = \"{}\": only \"ada_norm_zero\" (DiT) is supported",
                self.norm_type
            )));
        }
        if self.activation_fn != "gelu-approximate" {
            return Err(config_err(format!(
                "config key 'activation_fn' = \"{}\": only \"gelu-approximate\" is supported",
                self.activation_fn
            )));
        }
        match self.num_embeds_ada_norm {
            None | Some(0) => {
                return Err(config_err(
                    "config key 'num_embeds_ada_norm' (number of classes) must be ≥ 1 for \
                     ada_norm_zero",
                ));
            }
            Some(_) => {}
        }
        let positive = [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels()),
            ("num_layers", self.num_layers),
            ("sample_size", self.sample_size),
            ("patch_size", self.patch_size),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(config_err(format!("config key '{key}' must be ≥ 1")));
            }
        }
        if !self.sample_size.is_multiple_of(self.patch_size) {
            return Err(config_err(format!(
                "config key 'sample_size' = {} is not a multiple of 'patch_size' = {}",
                self.sample_size, self.patch_size
            )));
        }
        if !self.inner_dim().is_multiple_of(4) {
            return Err(config_err(format!(
                "num_attention_heads·attention_head_dim = {} must be a multiple of 4 (2-D \
                 sin-cos position embedding)",
                self.inner_dim()
            )));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(config_err(format!(
                "config key 'norm_eps' = {} must be positive",
                self.norm_eps
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(config_err(format!(
                "config key 'dropout' = {} must be in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Model width D = heads · head dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output channels (`out_channels`, or `in_channels` when unset).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Number of classes (the null label is this value). Panics only on an unvalidated
    /// config without classes.
    pub fn num_classes(&self) -> usize {
        self.num_embeds_ada_norm
            .expect("validated DiTConfig has num_embeds_ada_norm")
    }

    /// Patches per side at the configured sample size.
    pub fn grid_size(&self) -> usize {
        self.sample_size / self.patch_size
    }
}
