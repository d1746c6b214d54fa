//! Conditioning embeddings of diffusers' DiT: [`Timesteps`] (sinusoidal projection),
//! [`TimestepEmbedding`] (`linear_1` → SiLU → `linear_2`), [`LabelEmbedding`] (class table
//! with the extra null-class row) and their sum [`CombinedTimestepLabelEmbeddings`].

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use crate::context::ForwardCtx;
use crate::error::{ModelError, Result, shape_err};
use crate::layers::{QLinear, QLinearConfig};

/// diffusers `Timesteps` / `get_timestep_embedding`: `[sin(t·ω_k), cos(t·ω_k)]` with
/// `ω_k = exp(−ln(10000)·k/(half − shift))`, `k < half = num_channels/2`; halves swapped
/// when `flip_sin_to_cos`; a zero column appended for odd widths.
///
/// The projection is computed on the host, reproducing PyTorch's float32 steps (the
/// frequencies and the products t·ω are rounded to f32 as torch does) and evaluating
/// sin/cos in f64 before rounding. Arguments reach ~1000 rad, where GPU `sin`/`cos` lose
/// accuracy, so this keeps every backend within float32 rounding of diffusers. It costs one
/// read-back of the `[B]` timesteps per forward pass. Timesteps carry no gradient.
///
/// # Shapes
/// - t: `[B]`; output: `[B, num_channels]`
#[derive(Module, Debug)]
pub struct Timesteps {
    /// Output width.
    pub num_channels: usize,
    /// `[cos, sin]` order instead of `[sin, cos]`.
    pub flip_sin_to_cos: bool,
    /// Frequency denominator shift (`half − shift`).
    pub downscale_freq_shift: f64,
}

impl Timesteps {
    /// DiT's projection: 256 channels, `[cos, sin]`, shift 1.
    pub fn dit() -> Self {
        Self {
            num_channels: super::config::TIMESTEP_PROJ_DIM,
            flip_sin_to_cos: true,
            downscale_freq_shift: 1.0,
        }
    }

    /// The sinusoid for host timestep values.
    pub fn project_host(&self, t: &[f32]) -> Vec<f32> {
        let half = self.num_channels / 2;
        let log_period = -(10000f64.ln() as f32);
        let denom = (half as f64 - self.downscale_freq_shift) as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|k| {
                let exponent = (log_period * k as f32) / denom;
                (exponent as f64).exp() as f32
            })
            .collect();
        let mut out = vec![0f32; t.len() * self.num_channels];
        for (row, &tv) in out.chunks_exact_mut(self.num_channels).zip(t) {
            for (k, &f) in freqs.iter().enumerate() {
                let arg = (tv * f) as f64;
                let (s, c) = (arg.sin() as f32, arg.cos() as f32);
                if self.flip_sin_to_cos {
                    row[k] = c;
                    row[half + k] = s;
                } else {
                    row[k] = s;
                    row[half + k] = c;
                }
            }
        }
        out
    }

    /// Forward pass (reads `t` back to the host; see the type docs).
    pub fn forward(&self, t: Tensor<1>) -> Result<Tensor<2>> {
        let [b] = t.dims();
        let device = t.device();
        let values = t
            .try_into_vec_as::<f32>()
            .map_err(|e| ModelError::Config(format!("could not read the timesteps: {e:?}")))?;
        Ok(Tensor::from_data(
            TensorData::new(self.project_host(&values), [b, self.num_channels]),
            &device,
        ))
    }
}

/// Configuration of a [`TimestepEmbedding`].
#[derive(Config, Debug)]
pub struct TimestepEmbeddingConfig {
    /// Width of the sinusoidal input.
    pub in_channels: usize,
    /// Embedding width.
    pub time_embed_dim: usize,
}

impl TimestepEmbeddingConfig {
    /// Layers `<name>.linear_1`, `<name>.linear_2`.
    pub fn init(&self, name: &str, device: &Device) -> TimestepEmbedding {
        TimestepEmbedding {
            linear_1: QLinearConfig::new(self.in_channels, self.time_embed_dim)
                .init(&format!("{name}.linear_1"), device),
            linear_2: QLinearConfig::new(self.time_embed_dim, self.time_embed_dim)
                .init(&format!("{name}.linear_2"), device),
        }
    }
}

/// diffusers `TimestepEmbedding` (act_fn "silu"): `linear_2(silu(linear_1(x)))`.
///
/// # Shapes
/// - input: `[B, in_channels]`; output: `[B, time_embed_dim]`
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// First projection.
    pub linear_1: QLinear,
    /// Second projection.
    pub linear_2: QLinear,
}

impl TimestepEmbedding {
    /// Forward pass.
    pub fn forward(&self, x: Tensor<2>, ctx: &ForwardCtx<'_>) -> Result<Tensor<2>> {
        let h = silu(self.linear_1.forward(x, ctx)?);
        self.linear_2.forward(h, ctx)
    }
}

/// A plain embedding table with diffusers' parameter name `weight` (`nn.Embedding`).
#[derive(Module, Debug)]
pub struct EmbeddingTable {
    /// `[num_embeddings, dim]`.
    pub weight: Param<Tensor<2>>,
}

/// Configuration of a [`LabelEmbedding`].
#[derive(Config, Debug)]
pub struct LabelEmbeddingConfig {
    /// Number of classes.
    pub num_classes: usize,
    /// Embedding width.
    pub hidden_size: usize,
    /// Label-dropout probability of training (diffusers' `class_dropout_prob`, 0.1 in DiT);
    /// when > 0 the table has the extra null-class row `num_classes`.
    #[config(default = 0.1)]
    pub dropout_prob: f64,
}

impl LabelEmbeddingConfig {
    /// N(0, 1) init like `nn.Embedding`.
    pub fn init(&self, device: &Device) -> LabelEmbedding {
        let rows = self.num_classes + usize::from(self.dropout_prob > 0.0);
        LabelEmbedding {
            embedding_table: EmbeddingTable {
                weight: Param::from_tensor(Tensor::random(
                    [rows, self.hidden_size],
                    Distribution::Normal(0.0, 1.0),
                    device,
                )),
            },
            num_classes: self.num_classes,
        }
    }
}

/// diffusers `LabelEmbedding` at inference: a table lookup. Label `num_classes` is the null
/// class of classifier-free guidance. (The random label dropout of training is the
/// trainer's job: it passes the null label.)
///
/// # Shapes
/// - labels: `[B]` in `0..=num_classes`; output: `[B, hidden_size]`
#[derive(Module, Debug)]
pub struct LabelEmbedding {
    /// The class table `[num_classes + 1, hidden_size]`.
    pub embedding_table: EmbeddingTable,
    /// Number of classes (excluding the null class).
    pub num_classes: usize,
}

impl LabelEmbedding {
    /// Rows of the table (valid labels are `0..rows`).
    pub fn rows(&self) -> usize {
        self.embedding_table.weight.val().dims()[0]
    }

    /// Forward pass (labels must already be in range; [`super::DiT`] checks them).
    pub fn forward(&self, labels: Tensor<1, Int>) -> Tensor<2> {
        self.embedding_table.weight.val().select(0, labels)
    }
}

/// Configuration of a [`CombinedTimestepLabelEmbeddings`].
#[derive(Config, Debug)]
pub struct CombinedTimestepLabelEmbeddingsConfig {
    /// Number of classes.
    pub num_classes: usize,
    /// Embedding width D.
    pub embedding_dim: usize,
}

impl CombinedTimestepLabelEmbeddingsConfig {
    /// Submodules under `name` (e.g. `transformer_blocks.0.norm1.emb`).
    pub fn init(&self, name: &str, device: &Device) -> CombinedTimestepLabelEmbeddings {
        let time_proj = Timesteps::dit();
        CombinedTimestepLabelEmbeddings {
            timestep_embedder: TimestepEmbeddingConfig::new(
                time_proj.num_channels,
                self.embedding_dim,
            )
            .init(&format!("{name}.timestep_embedder"), device),
            class_embedder: LabelEmbeddingConfig::new(self.num_classes, self.embedding_dim)
                .init(device),
            time_proj,
        }
    }
}

/// diffusers `CombinedTimestepLabelEmbeddings`:
/// `timestep_embedder(time_proj(t)) + class_embedder(labels)`.
///
/// # Shapes
/// - t_proj (from [`Timesteps::forward`]): `[B, 256]`; labels: `[B]`; output: `[B, D]`
#[derive(Module, Debug)]
pub struct CombinedTimestepLabelEmbeddings {
    /// Sinusoidal projection (no parameters).
    pub time_proj: Timesteps,
    /// MLP on the projection.
    pub timestep_embedder: TimestepEmbedding,
    /// Class table.
    pub class_embedder: LabelEmbedding,
}

impl CombinedTimestepLabelEmbeddings {
    /// The conditioning vector from already projected timesteps (the projection is shared
    /// by all blocks of a forward pass, so the model computes it once).
    pub fn forward(
        &self,
        t_proj: Tensor<2>,
        labels: Tensor<1, Int>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<2>> {
        let [b, _] = t_proj.dims();
        let [bl] = labels.dims();
        if bl != b {
            return Err(shape_err("class labels", format!("[{b}]"), [bl]));
        }
        let t_emb = self.timestep_embedder.forward(t_proj, ctx)?;
        Ok(t_emb + self.class_embedder.forward(labels))
    }
}
