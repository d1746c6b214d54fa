//! [`ClipTextModel`]: transformers' `CLIPTextModel` (embeddings → causal pre-norm encoder →
//! final LayerNorm → EOS pooling), its loading and its layer inventory.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::checkpoint::{KeyLayout, prepare};
use super::config::ClipTextConfig;
use super::embeddings::ClipTextEmbeddings;
use super::encoder::{ClipEncoder, ClipEncoderLayer};
use crate::context::ForwardCtx;
use crate::error::{ModelError, Result, shape_err};
use crate::io;
use crate::layers::{LayerMut, LayerNorm, LayerNormConfig, LayerRef};

/// File name of the weights in a transformers model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// What [`ClipTextModel::forward`] returns (transformers' `BaseModelOutputWithPooling`).
#[derive(Clone, Debug)]
pub struct ClipTextOutput {
    /// `final_layer_norm` of the last layer's output, `[B, L, D]`: the `prompt_embeds` that
    /// Stable Diffusion conditions its UNet on.
    pub last_hidden_state: Tensor<3>,
    /// `last_hidden_state` at each row's pooling position (see
    /// [`ClipTextModel::pool_positions`]), `[B, D]` (transformers' `pooler_output`).
    pub pooled: Tensor<2>,
}

/// The module tree under `text_model.` (transformers ≤ 4.x's `CLIPTextTransformer`).
#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    /// Token and position embeddings.
    pub embeddings: ClipTextEmbeddings,
    /// The encoder layers.
    pub encoder: ClipEncoder,
    /// LayerNorm after the last layer.
    pub final_layer_norm: LayerNorm,
}

/// transformers' `CLIPTextModel` (the text encoder of Stable Diffusion 1.x/2.x), f32:
///
/// ```text
/// h    = token_embedding[ids] + position_embedding[0..L]            [B, L, D]
/// h    = h + self_attn(layer_norm1(h))    causal mask               per layer
/// h    = h + fc2(act(fc1(layer_norm2(h))))                          act: quick_gelu | gelu
/// last = final_layer_norm(h)
/// pooled[b] = last[b, pos_b]                                         pool_positions
/// ```
///
/// Every field is named by its checkpoint key, and every quantizable layer by the full key
/// stem of the transformers ≤ 4.x layout that Stable Diffusion checkpoints use
/// (`text_model.encoder.layers.0.self_attn.q_proj`, `….mlp.fc1`; products
/// `….self_attn.qk` and `….self_attn.sv`), whichever layout the file had.
///
/// Taps: `text_model.encoder.layers.<i>` (each layer's output) and
/// `text_model.final_layer_norm` ([`TapTensor::R3`](crate::TapTensor::R3), `[B, L, D]`).
///
/// The text encoder runs once per prompt, not per denoising step: time-indexed
/// quantizers see the step of the [`ForwardCtx`] they are given. An attention mask is not
/// supported (the Stable Diffusion pipelines pass none to CLIP text encoders).
#[derive(Module, Debug)]
pub struct ClipTextModel {
    /// The model (key prefix `text_model.`).
    pub text_model: ClipTextTransformer,
    #[module(skip)]
    config: ClipTextConfig,
}

impl ClipTextConfig {
    /// A randomly initialised model of this config (validated first): PyTorch's default
    /// init for the linear layers, N(0, 0.02²) embedding tables, identity LayerNorms.
    pub fn init(&self, device: &Device) -> Result<ClipTextModel> {
        ClipTextModel::new(self, device)
    }
}

impl ClipTextModel {
    /// A randomly initialised model (see [`ClipTextConfig::init`]).
    pub fn new(config: &ClipTextConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let d = config.hidden_size;
        Ok(Self {
            text_model: ClipTextTransformer {
                embeddings: ClipTextEmbeddings::new(
                    config.vocab_size,
                    config.max_position_embeddings,
                    d,
                    device,
                ),
                encoder: ClipEncoder {
                    layers: (0..config.num_hidden_layers)
                        .map(|i| {
                            ClipEncoderLayer::new(
                                &format!("text_model.encoder.layers.{i}"),
                                config,
                                device,
                            )
                        })
                        .collect(),
                },
                final_layer_norm: LayerNormConfig::new(d)
                    .with_eps(config.layer_norm_eps)
                    .init(device),
            },
            config: config.clone(),
        })
    }

    /// Loads a transformers model directory: `config.json` ([`ClipTextConfig`], strict) and
    /// `model.safetensors` (f32/f16/bf16, widened to f32), in either key layout
    /// ([`super::checkpoint`]). Strict: a missing, unused or misshapen tensor is a
    /// [`ModelError::Checkpoint`] naming the file and the key; the `position_ids` buffer is
    /// the one tolerated extra.
    ///
    /// A checkpoint with the `position_ids` buffer is re-serialised without it before
    /// loading, which holds a second copy of the weights in memory for the duration.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = ClipTextConfig::from_dir(dir)?;
        let mut model = Self::new(&config, device)?;
        let path = dir.join(WEIGHTS_FILE);
        let bytes = io::read_file(&path)?;
        let (layout, stripped) = prepare(&bytes, &path)?;
        let bytes = stripped.as_deref().unwrap_or(&bytes);
        match layout {
            KeyLayout::Prefixed => io::load_weights_from_bytes(model, bytes, &path, device),
            KeyLayout::Bare => {
                model.text_model =
                    io::load_weights_from_bytes(model.text_model, bytes, &path, device)?;
                Ok(model)
            }
        }
    }

    /// Writes a transformers model directory (created if needed): `config.json`
    /// ([`ClipTextConfig::to_json_value`]) and `model.safetensors` with f32 weights under
    /// the `text_model.` keys, each written atomically; [`Self::load`] and transformers'
    /// `CLIPTextModel.from_pretrained` read it back. Quantizer state is not written.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        io::save_model_dir(self, dir, &self.config.to_json_value(), WEIGHTS_FILE)
    }

    /// The model's config.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// `[B, L]` ids as a tensor on `device`; rows of different lengths are a
    /// [`ModelError::Shape`].
    pub fn input_ids(rows: &[Vec<u32>], device: &Device) -> Result<Tensor<2, Int>> {
        let l = rows.first().map_or(0, Vec::len);
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != l) {
            return Err(shape_err(
                "CLIP input_ids",
                format!("rows of one length ({l})"),
                format!("row {i} of length {}", r.len()),
            ));
        }
        let values: Vec<i64> = rows.iter().flatten().map(|&v| i64::from(v)).collect();
        Ok(Tensor::from_data(
            TensorData::new(values, [rows.len(), l]),
            device,
        ))
    }

    /// The position each row is pooled at, exactly as transformers' `CLIPTextModel`
    /// computes it:
    /// - `eos_token_id == 2` (the legacy configs of Stable Diffusion 1.x/2.x, written before
    ///   transformers fixed the id): the first position of the row's largest id (`argmax`;
    ///   in CLIP's vocabulary EOS is the largest id);
    /// - otherwise the first position holding `eos_token_id`, or 0 when the row has none
    ///   (`argmax` of an all-false mask).
    ///
    /// `ids` is `[B, L]` row-major.
    pub fn pool_positions(&self, ids: &[i64], len: usize) -> Vec<usize> {
        let first_max = |row: &[i64]| {
            row.iter()
                .enumerate()
                .fold(
                    (0, i64::MIN),
                    |(bi, bv), (i, &v)| {
                        if v > bv { (i, v) } else { (bi, bv) }
                    },
                )
                .0
        };
        let eos = i64::from(self.config.eos_token_id);
        ids.chunks(len.max(1))
            .map(|row| {
                if self.config.legacy_pooling() {
                    first_max(row)
                } else {
                    row.iter().position(|&v| v == eos).unwrap_or(0)
                }
            })
            .collect()
    }

    /// Checks `[B, L]` (B, L ≥ 1, L ≤ `max_position_embeddings`) and reads the ids back to
    /// check `0 ≤ id < vocab_size` before any lookup.
    fn check_ids(&self, input_ids: &Tensor<2, Int>) -> Result<Vec<i64>> {
        let [b, l] = input_ids.dims();
        let p = self.config.max_position_embeddings;
        if b == 0 || l == 0 || l > p {
            return Err(shape_err(
                "CLIP input_ids",
                format!("[B, L] with B ≥ 1 and 1 ≤ L ≤ {p} (max_position_embeddings)"),
                [b, l],
            ));
        }
        let ids = input_ids
            .clone()
            .try_into_vec_as::<i64>()
            .map_err(|e| ModelError::Config(format!("could not read the input ids: {e:?}")))?;
        let v = self.config.vocab_size as i64;
        if let Some((i, id)) = ids.iter().enumerate().find(|&(_, &id)| id < 0 || id >= v) {
            return Err(ModelError::Shape {
                context: "CLIP input_ids".into(),
                expected: format!("token ids in 0..{v} (vocab_size)"),
                got: format!("id {id} at row {}, position {}", i / l, i % l),
            });
        }
        Ok(ids)
    }

    /// Encodes token ids.
    ///
    /// # Shapes
    /// - input_ids: `[B, L]`, `1 ≤ L ≤ max_position_embeddings`, ids `< vocab_size`
    ///   (checked on the host first: a [`ModelError::Shape`] otherwise)
    /// - output: `last_hidden_state` `[B, L, D]`, `pooled` `[B, D]`
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<ClipTextOutput> {
        let ids = self.check_ids(&input_ids)?;
        let [b, l] = input_ids.dims();
        let tm = &self.text_model;
        let mut h = tm.embeddings.forward(input_ids)?;
        for (i, layer) in tm.encoder.layers.iter().enumerate() {
            h = layer.forward(h, ctx)?;
            if ctx.taps.is_some() {
                ctx.tap3(&format!("text_model.encoder.layers.{i}"), &h)?;
            }
        }
        let last = tm.final_layer_norm.forward(h)?;
        if ctx.taps.is_some() {
            ctx.tap3("text_model.final_layer_norm", &last)?;
        }
        let rows: Vec<i64> = self
            .pool_positions(&ids, l)
            .into_iter()
            .enumerate()
            .map(|(row, pos)| (row * l + pos) as i64)
            .collect();
        let d = self.config.hidden_size;
        let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &last.device());
        let pooled = last.clone().reshape([b * l, d]).select(0, index);
        Ok(ClipTextOutput {
            last_hidden_state: last,
            pooled,
        })
    }

    /// Visits every quantizable layer in forward order: per encoder layer `q_proj`,
    /// `k_proj`, `v_proj`, `qk`, `sv`, `out_proj`, `fc1`, `fc2`.
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        for layer in &self.text_model.encoder.layers {
            layer.for_each_layer(f);
        }
    }

    /// Mutable [`Self::for_each_layer`] (to attach quantizers).
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        for layer in &mut self.text_model.encoder.layers {
            layer.for_each_layer_mut(f);
        }
    }
}
