//! [`ClipTextConfig`]: a transformers `CLIPTextConfig` (`text_encoder/config.json`),
//! validated.
//!
//! Field names and defaults are transformers 5.25's (`CLIPTextConfig`); a key the file
//! leaves out takes transformers' default, as `from_pretrained` does.
//!
//! Strictness: every key must be known. The keys that define the text model are parsed
//! and checked; the keys that do not change its forward pass are accepted and ignored:
//! `projection_dim` (only `CLIPTextModelWithProjection` reads it), `attention_dropout` and
//! `dropout` (inference only: transformers applies dropout in training mode alone),
//! `initializer_range` / `initializer_factor` (random init), `architectures`, `dtype` /
//! `torch_dtype` (weights are widened to f32 on load), keys starting with `_`
//! (`_name_or_path`, ...) and the generic `PretrainedConfig` keys older transformers
//! versions wrote into every config (generation defaults, label maps, ...). `model_type`,
//! when present, must be `clip_text_model` (a full `CLIPConfig` with a nested
//! `text_config` is another file). Anything else is a [`ModelError::Config`] naming the key,
//! never silently different numbers.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use dmq_quant::Limits;

use crate::error::{ModelError, Result, at_origin};
use crate::io;

/// `model_type` of a CLIP text config.
pub const CLIP_TEXT_MODEL_TYPE: &str = "clip_text_model";

/// The activation of the encoder MLP (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipActivation {
    /// `"quick_gelu"`: `x·σ(1.702·x)` (OpenAI CLIP, Stable Diffusion 1.x).
    QuickGelu,
    /// `"gelu"`: the exact GELU `x·Φ(x) = 0.5·x·(1 + erf(x/√2))` (OpenCLIP, Stable
    /// Diffusion 2.x).
    Gelu,
}

impl ClipActivation {
    /// The `hidden_act` value, or an error naming the key for an activation this
    /// implementation does not compute.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => Err(config_err(format!(
                "config key 'hidden_act' = \"{other}\": only \"quick_gelu\" and \"gelu\" are \
                 supported"
            ))),
        }
    }

    /// The `hidden_act` value transformers writes.
    pub fn name(self) -> &'static str {
        match self {
            Self::QuickGelu => "quick_gelu",
            Self::Gelu => "gelu",
        }
    }
}

/// Configuration of a [`ClipTextModel`](super::ClipTextModel) in transformers'
/// `CLIPTextConfig` terms.
///
/// `Default` gives transformers' defaults (the text tower of `openai/clip-vit-base-patch32`:
/// 12 layers of width 512, 8 heads, quick_gelu). Stable Diffusion 1.x's text encoder is
/// width 768, 12 heads, 12 layers, `eos_token_id: 2`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipTextConfig {
    /// Token vocabulary size V (rows of the token embedding).
    pub vocab_size: usize,
    /// Model width D.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads H (divides D).
    pub num_attention_heads: usize,
    /// Rows of the position embedding: the longest sequence the model accepts.
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// ε of every LayerNorm.
    pub layer_norm_eps: f64,
    /// BOS id (not used by the forward pass; `None` = `null` in the file).
    pub bos_token_id: Option<u32>,
    /// EOS id. It picks the pooling rule: `2` selects transformers' legacy rule (pool at the
    /// first maximum of the ids, the EOS of CLIP's real vocabulary being its largest id),
    /// any other value pools at the first occurrence of this id (see
    /// [`ClipTextModel::pool_positions`](super::ClipTextModel::pool_positions)).
    pub eos_token_id: u32,
    /// Padding id (not used by the forward pass; `None` = `null` in the file).
    pub pad_token_id: Option<u32>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: Some(49406),
            eos_token_id: 49407,
            pad_token_id: Some(1),
        }
    }
}

/// Keys parsed into [`ClipTextConfig`].
const MODEL_KEYS: [&str; 11] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
];

/// CLIPTextConfig keys that do not change `CLIPTextModel`'s forward pass (see the module
/// docs for why each one is harmless).
const IGNORED_CLIP_KEYS: [&str; 8] = [
    "projection_dim",
    "attention_dropout",
    "dropout",
    "initializer_range",
    "initializer_factor",
    "architectures",
    "dtype",
    "torch_dtype",
];

/// Generic `PretrainedConfig` keys (transformers 4.x wrote all of them into every config):
/// output switches, generation defaults, label maps and encoder-decoder plumbing that
/// `CLIPTextModel` never reads.
const GENERIC_KEYS: [&str; 49] = [
    "transformers_version",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "tie_word_embeddings",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "is_decoder",
    "cross_attention_hidden_size",
    "add_cross_attention",
    "tie_encoder_decoder",
    "finetuning_task",
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "tokenizer_class",
    "prefix",
    "sep_token_id",
    "decoder_start_token_id",
    "task_specific_params",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
];

/// Keys that are harmless only with one value: `Some(check)` for them, `None` for any
/// other key. `model_type` must name the text model; `pruned_heads` must be empty (pruning
/// changes the projections' shapes and the head split).
fn check_conditional_key(key: &str, value: &Value) -> Option<Result<()>> {
    let (ok, expected) = match key {
        "model_type" => (value == CLIP_TEXT_MODEL_TYPE, "\"clip_text_model\""),
        "pruned_heads" => (
            value.is_null() || value.as_object().is_some_and(Map::is_empty),
            "an empty map",
        ),
        _ => return None,
    };
    Some(if ok {
        Ok(())
    } else {
        Err(config_err(format!(
            "config key '{key}' = {value} is not supported (expected {expected})"
        )))
    })
}

fn config_err(msg: impl Into<String>) -> ModelError {
    ModelError::Config(msg.into())
}

fn field<T: DeserializeOwned>(map: &Map<String, Value>, key: &str) -> Result<Option<T>> {
    match map.get(key) {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| config_err(format!("config key '{key}' = {v}: {e}"))),
    }
}

/// A token id key: an integer in `u32`, or `null` where `nullable`.
fn token_id(map: &Map<String, Value>, key: &str, nullable: bool) -> Result<Option<Option<u32>>> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Null) if nullable => Ok(Some(None)),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(|n| Some(Some(n)))
            .ok_or_else(|| {
                config_err(format!(
                    "config key '{key}' = {v}: expected one token id (an integer in 0..2³²){}",
                    if nullable { " or null" } else { "" }
                ))
            }),
    }
}

impl ClipTextConfig {
    /// Parses a transformers `config.json` object and validates it (see the module docs).
    pub fn from_json_value(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| config_err("config.json must be a JSON object"))?;
        for (key, v) in obj {
            let known = key.starts_with('_')
                || MODEL_KEYS.contains(&key.as_str())
                || IGNORED_CLIP_KEYS.contains(&key.as_str())
                || GENERIC_KEYS.contains(&key.as_str());
            if known {
                continue;
            }
            match check_conditional_key(key, v) {
                Some(r) => r?,
                None if key == "text_config" => {
                    return Err(config_err(
                        "config key 'text_config': this is a full CLIPConfig (text and vision); \
                         pass the text encoder's own config.json",
                    ));
                }
                None => {
                    return Err(config_err(format!(
                        "unknown config key '{key}' for CLIPTextModel (refusing to guess its \
                         effect)"
                    )));
                }
            }
        }
        let d = Self::default();
        let cfg = Self {
            vocab_size: field(obj, "vocab_size")?.unwrap_or(d.vocab_size),
            hidden_size: field(obj, "hidden_size")?.unwrap_or(d.hidden_size),
            intermediate_size: field(obj, "intermediate_size")?.unwrap_or(d.intermediate_size),
            num_hidden_layers: field(obj, "num_hidden_layers")?.unwrap_or(d.num_hidden_layers),
            num_attention_heads: field(obj, "num_attention_heads")?
                .unwrap_or(d.num_attention_heads),
            max_position_embeddings: field(obj, "max_position_embeddings")?
                .unwrap_or(d.max_position_embeddings),
            hidden_act: match field::<String>(obj, "hidden_act")? {
                Some(name) => ClipActivation::from_name(&name)?,
                None => d.hidden_act,
            },
            layer_norm_eps: field(obj, "layer_norm_eps")?.unwrap_or(d.layer_norm_eps),
            bos_token_id: token_id(obj, "bos_token_id", true)?.unwrap_or(d.bos_token_id),
            eos_token_id: match token_id(obj, "eos_token_id", false)? {
                Some(Some(id)) => id,
                _ => d.eos_token_id,
            },
            pad_token_id: token_id(obj, "pad_token_id", true)?.unwrap_or(d.pad_token_id),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The transformers `config.json` object of this config: the `CLIPTextConfig` keys
    /// [`Self::from_json_value`] reads, plus `architectures` and `model_type` so that
    /// `CLIPTextModel.from_pretrained` accepts the directory.
    pub fn to_json_value(&self) -> Value {
        serde_json::json!({
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": self.hidden_act.name(),
            "layer_norm_eps": self.layer_norm_eps,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        })
    }

    /// Parses `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| config_err(format!("invalid JSON: {e}")))?;
        Self::from_json_value(&v)
    }

    /// Reads and validates `dir/config.json`; errors name the file.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join(io::CONFIG_FILE);
        Self::from_json_value(&io::read_config(dir.as_ref())?).map_err(|e| match e {
            ModelError::Config(msg) => ModelError::Config(format!("{}: {msg}", path.display())),
            other => at_origin(other, &path),
        })
    }

    /// Parameters of the model this config builds, from the config alone, saturating at
    /// `u64::MAX`: token table V·D, position table P·D, per layer four D×D projections with
    /// bias, two LayerNorms and the MLP, and the final LayerNorm.
    pub fn param_count(&self) -> u64 {
        let c = |x: usize| x as u64;
        let mul = |a: u64, b: u64| a.saturating_mul(b);
        let linear = |i: u64, o: u64| mul(i, o).saturating_add(o);
        let d = c(self.hidden_size);
        let f = c(self.intermediate_size);
        let layer = mul(4, linear(d, d))
            .saturating_add(mul(4, d))
            .saturating_add(linear(d, f))
            .saturating_add(linear(f, d));
        mul(c(self.vocab_size), d)
            .saturating_add(mul(c(self.max_position_embeddings), d))
            .saturating_add(mul(c(self.num_hidden_layers), layer))
            .saturating_add(mul(2, d))
    }

    /// Checks the sizes and values, within [`Limits::current`] (see
    /// [`Self::validate_with_limits`]).
    pub fn validate(&self) -> Result<()> {
        self.validate_with_limits(&Limits::current())
    }

    /// [`Self::validate`] with explicit [`Limits`]: every size within `max_dim`,
    /// `num_hidden_layers` within `max_layers` and the parameter count within `max_params`
    /// (all before any tensor is allocated); sizes ≥ 1, `num_attention_heads` dividing
    /// `hidden_size`, a finite positive `layer_norm_eps`. A limit error names
    /// `config.json` and the key.
    pub fn validate_with_limits(&self, limits: &Limits) -> Result<()> {
        let origin = io::CONFIG_FILE;
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (key, v) in sizes {
            limits
                .check_dim(v as u64, origin, key)
                .map_err(ModelError::Limit)?;
        }
        limits
            .check_layers(self.num_hidden_layers as u64, origin, "num_hidden_layers")
            .map_err(ModelError::Limit)?;
        limits
            .check_params(
                self.param_count(),
                origin,
                "vocab_size, hidden_size, intermediate_size, num_hidden_layers",
            )
            .map_err(ModelError::Limit)?;
        for (key, v) in sizes
            .into_iter()
            .chain([("num_hidden_layers", self.num_hidden_layers)])
        {
            if v == 0 {
                return Err(config_err(format!("config key '{key}' must be ≥ 1")));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(config_err(format!(
                "config key 'num_attention_heads' = {} does not divide 'hidden_size' = {}",
                self.num_attention_heads, self.hidden_size
            )));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(config_err(format!(
                "config key 'layer_norm_eps' = {} must be finite and > 0",
                self.layer_norm_eps
            )));
        }
        Ok(())
    }

    /// Channels per head `D / H`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether the pooled output uses transformers' legacy rule (`eos_token_id == 2`).
    pub fn legacy_pooling(&self) -> bool {
        self.eos_token_id == 2
    }
}
