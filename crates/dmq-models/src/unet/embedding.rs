//! Time and class conditioning of the UNet: the sinusoidal timestep features
//! ([`timestep_embedding`], diffusers `get_timestep_embedding`), the MLP on them
//! ([`TimestepEmbedding`], keys `time_embedding.linear_1/linear_2`) and the learned class
//! table ([`ClassEmbedding`], key `class_embedding.weight`).

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use crate::context::ForwardCtx;
use crate::error::{ModelError, Result, shape_err};
use crate::layers::{QLinear, QLinearConfig};

/// Sinusoidal timestep features, as diffusers' `get_timestep_embedding` (max period 10⁴,
/// scale 1): with `h = dim / 2` and `f_i = exp(−ln(10⁴)·i / (h − freq_shift))`,
/// `[sin(t·f), cos(t·f)]`, or `[cos, sin]` with `flip_sin_to_cos`, zero-padded to `dim`.
///
/// The frequencies are computed on the host in f32 with the same operation order as
/// PyTorch's float32 code, so they agree to the last bit or two.
///
/// # Shapes
/// - t: `[B]`; output: `[B, dim]`
pub fn timestep_embedding(
    t: Tensor<1>,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor<2> {
    let device = t.device();
    let [b] = t.dims();
    let half = dim / 2;
    let log_max = -(10000f64.ln()) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_max * i as f32) / denom).exp())
        .collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &device);
    let args = t.reshape([b, 1]) * freqs.reshape([1, half]);
    let (sin, cos) = (args.clone().sin(), args.cos());
    let mut parts = if flip_sin_to_cos {
        vec![cos, sin]
    } else {
        vec![sin, cos]
    };
    if !dim.is_multiple_of(2) {
        parts.push(Tensor::zeros([b, 1], &device));
    }
    Tensor::cat(parts, 1)
}

/// `linear_2(silu(linear_1(x)))`: the time-embedding MLP (diffusers `TimestepEmbedding`
/// with `act_fn = "silu"`, no condition projection, no post activation).
///
/// # Shapes
/// - input: `[B, in]`; output: `[B, time_embed_dim]`
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// `in → time_embed_dim`.
    pub linear_1: QLinear,
    /// `time_embed_dim → time_embed_dim`.
    pub linear_2: QLinear,
}

impl TimestepEmbedding {
    /// Random init; `name` is the diffusers path (`time_embedding`).
    pub fn new(name: &str, d_in: usize, d_embed: usize, device: &Device) -> Self {
        Self {
            linear_1: QLinearConfig::new(d_in, d_embed).init(&format!("{name}.linear_1"), device),
            linear_2: QLinearConfig::new(d_embed, d_embed)
                .init(&format!("{name}.linear_2"), device),
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<2>, ctx: &ForwardCtx<'_>) -> Result<Tensor<2>> {
        let h = silu(self.linear_1.forward(x, ctx)?);
        self.linear_2.forward(h, ctx)
    }
}

/// A learned class table (diffusers `nn.Embedding(num_class_embeds, time_embed_dim)`),
/// whose row is added to the time embedding. Not a quantizable layer (a lookup).
///
/// # Shapes
/// - weight: `[num_class_embeds, time_embed_dim]`; labels: `[B]`; output: `[B, time_embed_dim]`
#[derive(Module, Debug)]
pub struct ClassEmbedding {
    /// Table `[num_classes, dim]`.
    pub weight: Param<Tensor<2>>,
}

impl ClassEmbedding {
    /// `N(0, 1)` init, as PyTorch's `nn.Embedding`.
    pub fn new(num_classes: usize, dim: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::random(
                [num_classes, dim],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
        }
    }

    /// Rows of the table.
    pub fn num_classes(&self) -> usize {
        self.weight.val().dims()[0]
    }

    /// Looks up `labels`; a label outside `0..num_classes` is an error (read back to the
    /// host to check: B integers).
    pub fn forward(&self, labels: Tensor<1, Int>) -> Result<Tensor<2>> {
        let n = self.num_classes();
        let values = labels
            .clone()
            .into_data()
            .try_into_vec_as::<i64>()
            .map_err(|e| ModelError::Config(format!("class labels: {e:?}")))?;
        if let Some(bad) = values.iter().find(|&&v| v < 0 || v as usize >= n) {
            return Err(shape_err(
                "class_embedding",
                format!("class labels in 0..{n}"),
                format!("label {bad}"),
            ));
        }
        Ok(self.weight.val().select(0, labels))
    }
}
