//! [`PatchEmbed`]: diffusers' patch embedding (`proj` conv with kernel = stride = p) plus the
//! fixed 2-D sin-cos position embedding of [`sincos_pos_embed_2d`].

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::context::ForwardCtx;
use crate::error::{Result, shape_err};
use crate::layers::{QConv2d, QConv2dConfig};

/// diffusers `get_2d_sincos_pos_embed(embed_dim, (grid_h, grid_w), base_size,
/// interpolation_scale)`, row-major over the `grid_h × grid_w` patches.
///
/// Token `(i, j)` gets `[sin(x_j·ω), cos(x_j·ω), sin(y_i·ω), cos(y_i·ω)]` with
/// `x_j = j / (grid_w/base_size) / interpolation_scale` (float32, as torch builds the grid),
/// `y_i` likewise, and `ω_k = 10000^(−k/(D/4))`, `k < D/4`, evaluated in f64 like diffusers
/// before the final cast to f32. At the training resolution `grid = base_size`, so the
/// positions are the patch indices; at other sizes they are rescaled to the base grid.
///
/// # Shapes
/// - output: `grid_h·grid_w·embed_dim` values (`[N, D]`); `embed_dim` must be a multiple of 4
pub fn sincos_pos_embed_2d(
    embed_dim: usize,
    grid_h: usize,
    grid_w: usize,
    base_size: usize,
    interpolation_scale: f64,
) -> Vec<f32> {
    let axis = |n: usize| -> Vec<f32> {
        let ratio = (n as f64 / base_size as f64) as f32;
        (0..n)
            .map(|i| i as f32 / ratio / interpolation_scale as f32)
            .collect()
    };
    let (ys, xs) = (axis(grid_h), axis(grid_w));
    let quarter = embed_dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / (embed_dim as f64 / 4.0)))
        .collect();
    let half = embed_dim / 2;
    let mut out = vec![0f32; grid_h * grid_w * embed_dim];
    for i in 0..grid_h {
        for j in 0..grid_w {
            let row = &mut out[(i * grid_w + j) * embed_dim..][..embed_dim];
            for (k, &w) in omega.iter().enumerate() {
                let ax = xs[j] as f64 * w;
                let ay = ys[i] as f64 * w;
                row[k] = ax.sin() as f32;
                row[quarter + k] = ax.cos() as f32;
                row[half + k] = ay.sin() as f32;
                row[half + quarter + k] = ay.cos() as f32;
            }
        }
    }
    out
}

/// Configuration of a [`PatchEmbed`].
#[derive(Config, Debug)]
pub struct PatchEmbedConfig {
    /// Height = width of the training input.
    pub sample_size: usize,
    /// Patch size p.
    pub patch_size: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Embedding width D (multiple of 4).
    pub embed_dim: usize,
    /// Scale of the position grid (diffusers' `interpolation_scale`; 1 for DiT).
    #[config(default = 1.0)]
    pub interpolation_scale: f64,
}

impl PatchEmbedConfig {
    /// The conv is named `<name>.proj`.
    pub fn init(&self, name: &str, device: &Device) -> PatchEmbed {
        let grid = self.sample_size / self.patch_size;
        let pos = sincos_pos_embed_2d(self.embed_dim, grid, grid, grid, self.interpolation_scale);
        PatchEmbed {
            proj: QConv2dConfig::new(self.in_channels, self.embed_dim, self.patch_size)
                .with_stride(self.patch_size)
                .init(&format!("{name}.proj"), device),
            pos_embed: Tensor::from_data(
                TensorData::new(pos, [1, grid * grid, self.embed_dim]),
                device,
            ),
            patch_size: self.patch_size,
            base_size: grid,
            interpolation_scale: self.interpolation_scale,
        }
    }
}

/// `tokens = flatten(proj(x)) + pos_embed`, diffusers `PatchEmbed` with `flatten=True`,
/// no layer norm, sin-cos positions. The position table is a constant (a non-persistent
/// buffer in diffusers, so not in checkpoints); inputs of another size get positions
/// computed for their grid with the same `base_size`, as diffusers does.
///
/// # Shapes
/// - input: `[B, C, H, W]` with H, W multiples of p; output: `[B, (H/p)·(W/p), D]`
#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// Patchify conv `[D, C, p, p]`, stride p.
    pub proj: QConv2d,
    /// Positions for the training grid `[1, N, D]` (constant, not a parameter).
    pub pos_embed: Tensor<3>,
    /// Patch size p.
    pub patch_size: usize,
    /// Patches per side at the training resolution.
    pub base_size: usize,
    /// Position grid scale.
    pub interpolation_scale: f64,
}

impl PatchEmbed {
    /// Forward pass.
    pub fn forward(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<3>> {
        let [b, c, h, w] = x.dims();
        let p = self.patch_size;
        if h % p != 0 || w % p != 0 || h == 0 || w == 0 {
            return Err(shape_err(
                "pos_embed",
                format!("[B, C, H, W] with H, W positive multiples of the patch size {p}"),
                [b, c, h, w],
            ));
        }
        let y = self.proj.forward(x, ctx)?;
        let [_, d, gh, gw] = y.dims();
        let tokens = y.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let pos = if gh == self.base_size && gw == self.base_size {
            self.pos_embed.clone()
        } else {
            let v = sincos_pos_embed_2d(d, gh, gw, self.base_size, self.interpolation_scale);
            Tensor::from_data(TensorData::new(v, [1, gh * gw, d]), &tokens.device())
        };
        Ok(tokens + pos)
    }
}
