//! [`LowRank`]: SVDQuant's 16-bit low-rank branch `L1·L2` beside a quantized residual
//! (docs/algorithms.md §11.2).
//!
//! A layer holding one computes `y = Q_a(x)·Q_w(R)ᵀ + (x·L2ᵀ)·L1ᵀ + b` with `W = L1·L2 + R`:
//! the branch takes the outliers of the (smoothed) weight, so the residual R has a small range
//! for 4 bits. The factors hold values exactly representable in f16 (the calibration rounds
//! them), so a file stores them at 16 bits without changing the model.

use burn::module::{Module, Param};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{ModelError, Result};

/// The branch's factors. For a convolution `down` is the flattened `[r, C_in·k·k]` kernel of a
/// `k×k` convolution to `r` channels (same stride and padding as the layer), `up` a 1×1
/// convolution back to `C_out`.
///
/// # Shapes
/// - `down` (L2): `[r, d_in]` (conv: `[r, C_in·k·k]`, `(c, kh, kw)` order)
/// - `up` (L1): `[d_out, r]`
#[derive(Module, Debug)]
pub struct LowRank {
    /// L2 `[r, d_in]`.
    pub down: Param<Tensor<2>>,
    /// L1 `[d_out, r]`.
    pub up: Param<Tensor<2>>,
}

impl LowRank {
    /// A branch from row-major host factors, checked against the layer's `d_in`/`d_out`.
    pub fn from_host(
        layer: &str,
        down: &[f32],
        up: &[f32],
        rank: usize,
        d_in: usize,
        d_out: usize,
        device: &Device,
    ) -> Result<Self> {
        let bad =
            |reason: String| ModelError::Config(format!("{layer}: low-rank branch: {reason}"));
        if rank == 0 || rank > d_in.min(d_out) {
            return Err(bad(format!(
                "rank {rank} outside 1..={} (min of {d_in} inputs, {d_out} outputs)",
                d_in.min(d_out)
            )));
        }
        if down.len() != rank * d_in || up.len() != d_out * rank {
            return Err(bad(format!(
                "factors of {} and {} values for [{rank}, {d_in}] and [{d_out}, {rank}]",
                down.len(),
                up.len()
            )));
        }
        if let Some(v) = down.iter().chain(up).find(|v| !v.is_finite()) {
            return Err(bad(format!("a factor holds {v}")));
        }
        let t = |v: &[f32], s: [usize; 2]| {
            Param::from_tensor(Tensor::from_data(TensorData::new(v.to_vec(), s), device))
                .set_require_grad(false)
        };
        Ok(Self {
            down: t(down, [rank, d_in]),
            up: t(up, [d_out, rank]),
        })
    }

    /// Rank r.
    pub fn rank(&self) -> usize {
        self.down.val().dims()[0]
    }

    /// Multiply-accumulates of the branch per multiply-accumulate of its `[d_out, d_in]`
    /// layer: `r·(d_in + d_out) / (d_in·d_out)` (both run once per token / output position).
    pub fn macs_ratio(&self) -> f64 {
        let [r, d_in] = self.down.val().dims();
        let [d_out, _] = self.up.val().dims();
        (r * (d_in + d_out)) as f64 / (d_in * d_out).max(1) as f64
    }

    /// `L1·L2`, `[d_out, d_in]`.
    pub fn product(&self) -> Tensor<2> {
        self.up.val().matmul(self.down.val())
    }

    /// `(x·L2ᵀ)·L1ᵀ` for `x [..., d_in]` → `[..., d_out]`.
    pub fn linear<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let h = burn::tensor::module::linear(x, self.down.val().transpose(), None);
        burn::tensor::module::linear(h, self.up.val().transpose(), None)
    }

    /// The branch of a `k×k` convolution: `x [B, C_in, H, W]` → `[B, C_out, H', W']`.
    pub fn conv(
        &self,
        x: Tensor<4>,
        kernel: [usize; 2],
        stride: usize,
        padding: usize,
    ) -> Tensor<4> {
        let [r, _] = self.down.val().dims();
        let [d_out, _] = self.up.val().dims();
        let c_in = x.dims()[1];
        let down = self.down.val().reshape([r, c_in, kernel[0], kernel[1]]);
        let h = burn::tensor::module::conv2d(
            x,
            down,
            None,
            ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1),
        );
        let up = self.up.val().reshape([d_out, r, 1, 1]);
        burn::tensor::module::conv2d(h, up, None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
    }
}
