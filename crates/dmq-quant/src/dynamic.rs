//! [`DynamicQuantizer`]: activation quantization whose range is measured on every call,
//! per token (SVDQuant's 4-bit activations, docs/algorithms.md §11.2) or per tensor.
//!
//! A static activation quantizer fixes (Δ, z) at calibration; at 4 bits one range for a whole
//! tensor leaves most tokens a handful of levels. A dynamic quantizer takes each row's own
//! range at run time, which the integer kernels do for free in their quantization pass
//! (`dmq_kernels::ActQuant::dynamic(b).per_row()`), with the same arithmetic:
//!
//! ```text
//! asymmetric: lo = min(min x, 0), hi = max(max x, 0), Δ = (hi − lo)/(2^b − 1),
//!             z = clamp(round(−lo/Δ), 0, 2^b − 1), x̂ = (clamp(round(x/Δ) + z, 0, 2^b − 1) − z)·Δ
//! symmetric:  Δ = max|x| / (2^(b−1) − 1), x̂ = clamp(round(x/Δ), −2^(b−1), 2^(b−1) − 1)·Δ
//! ```
//!
//! (Δ = 1 where a row is all zeros; rounding half to even.) A row is the last axis: a token of
//! a `[..., d]` linear input. A convolution quantizes the rows of its im2col matrix (one output
//! position's receptive field), which is what `dmq-models`' `QConv2d` does with this quantizer.

use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::qtensor::AffineParams;
use crate::quantizer::Quantizer;
use crate::spec::QuantSpec;
use crate::ste::round_ste;

/// What a [`DynamicQuantizer`] does (also its record in a layer export).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DynamicSpec {
    /// Bits of the codes, 2..=8.
    pub bits: u8,
    /// Symmetric signed grid (z = 0) instead of the asymmetric unsigned one.
    pub symmetric: bool,
    /// One range per row (token) instead of one for the whole tensor.
    pub per_token: bool,
}

impl DynamicSpec {
    /// Asymmetric, per token, `bits` ∈ 2..=8.
    pub fn per_token(bits: u32) -> Result<Self> {
        Self {
            bits: bits.min(255) as u8,
            symmetric: false,
            per_token: true,
        }
        .checked("DynamicSpec::per_token")
    }

    /// `Ok(self)` when the width is one the kernels run (2..=8; 1-bit activations are the
    /// XNOR path's sign, not a range).
    pub fn checked(self, context: &str) -> Result<Self> {
        if !(2..=8).contains(&self.bits) {
            return Err(QuantError::InvalidBits {
                bits: u32::from(self.bits),
                min: 2,
                max: 8,
                context: context.into(),
            });
        }
        Ok(self)
    }

    /// The equivalent [`QuantSpec`] (bits and signedness; the range is not static).
    pub fn quant_spec(&self) -> QuantSpec {
        let s = QuantSpec::int(u32::from(self.bits)).expect("2..=8 checked at construction");
        if self.symmetric {
            s.with_signed(true).with_symmetric(true)
        } else {
            s
        }
    }
}

/// Dynamic (run-time range) activation fake-quantizer with the straight-through estimator;
/// see the module docs for the formulas. It has no parameters: nothing to calibrate, train
/// or export but its [`DynamicSpec`].
///
/// # Shapes
/// - input: any rank ≥ 1; rows are the last axis when `per_token`
#[derive(Module, Debug)]
pub struct DynamicQuantizer {
    #[module(skip)]
    spec: DynamicSpec,
}

impl DynamicQuantizer {
    /// A quantizer with a checked spec.
    pub fn new(spec: DynamicSpec) -> Result<Self> {
        Ok(Self {
            spec: spec.checked("DynamicQuantizer")?,
        })
    }

    /// Its spec.
    pub fn dynamic_spec(&self) -> DynamicSpec {
        self.spec
    }
}

impl Quantizer for DynamicQuantizer {
    fn spec(&self) -> QuantSpec {
        self.spec.quant_spec()
    }

    fn fake_quant<const D: usize>(&self, x: Tensor<D>, _step: usize) -> Result<Tensor<D>> {
        let dims = x.dims();
        let k = dims[D - 1].max(1);
        let rows = if self.spec.per_token {
            dims.iter().product::<usize>() / k
        } else {
            1
        };
        let cols = dims.iter().product::<usize>() / rows.max(1);
        let x2: Tensor<2> = x.reshape([rows, cols]);
        // The grid comes from the values, not their gradients: ranges are detached.
        let xd = x2.clone().detach();
        let b = u32::from(self.spec.bits);
        let y = if self.spec.symmetric {
            let half = (1i64 << (b - 1)) as f64;
            let absmax = xd.abs().max_dim(1);
            let delta = absmax / (half - 1.0).max(1.0);
            let delta = delta.clone().mask_fill(delta.lower_equal_elem(0.0), 1.0);
            let q = round_ste(x2 / delta.clone(), Default::default()).clamp(-half, half - 1.0);
            q * delta
        } else {
            let levels = ((1i64 << b) - 1) as f64;
            let lo = xd.clone().min_dim(1).clamp_max(0.0);
            let hi = xd.max_dim(1).clamp_min(0.0);
            let delta = (hi - lo.clone()) / levels;
            let delta = delta.clone().mask_fill(delta.lower_equal_elem(0.0), 1.0);
            let zero = (lo.neg() / delta.clone()).round().clamp(0.0, levels);
            let q = (round_ste(x2 / delta.clone(), Default::default()) + zero.clone())
                .clamp(0.0, levels);
            (q - zero) * delta
        };
        Ok(y.reshape(dims))
    }

    fn affine_params(&self, _step: usize) -> Result<AffineParams> {
        Err(QuantError::Data {
            context: "DynamicQuantizer".into(),
            reason: "a dynamic quantizer measures its range per call; it has no static (Δ, z)"
                .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec().unwrap()
    }

    /// Closed form: row [−1, 0, 0.5, 2] at 2 bits asymmetric: lo = −1, hi = 2, Δ = 1, z = 1,
    /// codes clamp(round(x) + 1, 0, 3) = [0, 1, 1 (0.5 rounds to 0), 3] → x̂ = [−1, 0, 0, 2].
    /// Row [0, 0, 0, 0]: Δ = 1, all zero. Row [1, 2, 3, 6] with lo = 0: Δ = 2, z = 0,
    /// codes round([0.5, 1, 1.5, 3]) = [0, 1, 2, 3] → [0, 2, 4, 6].
    #[test]
    fn per_token_asymmetric_matches_closed_form() {
        let device = Device::default();
        let x = Tensor::<2>::from_data(
            TensorData::new(
                vec![
                    -1.0f32, 0.0, 0.5, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 6.0,
                ],
                [3, 4],
            ),
            &device,
        );
        let q = DynamicQuantizer::new(DynamicSpec::per_token(2).unwrap()).unwrap();
        let y = host(q.fake_quant(x, 0).unwrap());
        assert_eq!(
            y,
            vec![-1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 4.0, 6.0]
        );
    }

    /// Symmetric 4 bits: Δ = max|x|/7 per row; the row's extreme maps to ±7 exactly.
    #[test]
    fn symmetric_keeps_row_extremes_and_bounds_error() {
        let device = Device::default();
        let vals: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 30.0) * 0.1)
            .collect();
        let x = Tensor::<2>::from_data(TensorData::new(vals.clone(), [4, 16]), &device);
        let spec = DynamicSpec {
            bits: 4,
            symmetric: true,
            per_token: true,
        };
        let y = host(
            DynamicQuantizer::new(spec)
                .unwrap()
                .fake_quant(x, 0)
                .unwrap(),
        );
        for r in 0..4 {
            let row = &vals[r * 16..(r + 1) * 16];
            let absmax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let delta = absmax / 7.0;
            for (i, (&a, &b)) in row.iter().zip(&y[r * 16..(r + 1) * 16]).enumerate() {
                assert!(
                    (a - b).abs() <= delta / 2.0 + 1e-6,
                    "row {r} col {i}: {a} vs {b}"
                );
                if a.abs() == absmax {
                    assert!((a - b).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn one_bit_and_static_params_are_refused() {
        assert!(matches!(
            DynamicSpec::per_token(1),
            Err(QuantError::InvalidBits { bits: 1, .. })
        ));
        let q = DynamicQuantizer::new(DynamicSpec::per_token(4).unwrap()).unwrap();
        assert!(q.affine_params(0).is_err());
    }
}
