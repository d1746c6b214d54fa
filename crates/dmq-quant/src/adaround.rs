//! [`AdaRoundQuantizer`]: learned rounding for weights (docs/algorithms.md §1.3).

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData, activation::sigmoid};
use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::qtensor::{AffineParams, QuantizedTensor, check_finite};
use crate::quantizer::{Quantizer, check_weight_shape, to_host};
use crate::spec::{Granularity, QuantSpec};
use crate::ste::floor_ste;

/// Stretch limits of the rectified sigmoid: ζ = 1.1, γ = −0.1.
pub const ZETA: f64 = 1.1;
/// Lower stretch limit γ.
pub const GAMMA: f64 = -0.1;

/// Soft (training) or hard (deployed) rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AdaRoundMode {
    /// `floor(W/Δ) + h(V)`.
    #[default]
    Soft,
    /// `floor(W/Δ) + 1[V ≥ 0]`.
    Hard,
}

/// AdaRound weight quantizer. Δ and z come from PTQ (MSE) initialisation and stay fixed;
/// only the per-element rounding variable V is learned.
///
/// ```text
/// h(V)   = clamp(σ(V)·(ζ − γ) + γ, 0, 1)
/// W_soft = Δ·(clamp(floor(W/Δ) + h(V) + z, q_min, q_max) − z)
/// W_hard = Δ·(clamp(floor(W/Δ) + 1[V ≥ 0] + z, q_min, q_max) − z)
/// init:  V = −ln((ζ − γ)/(frac − γ) − 1),  frac = W/Δ − floor(W/Δ)   ⇒ h(V) = frac
/// ```
///
/// With `floor_ste` (QuEST, §1.3/§5.4) the floor passes gradients to W, so the latent FP
/// weight can be fine-tuned through the hard-rounded quantizer.
///
/// # Shapes
/// - weight: `[C_out, ...]` (per-tensor or per-channel on any axis)
/// - `v`: `[numel]` (flattened like the weight)
#[derive(Module, Debug)]
pub struct AdaRoundQuantizer {
    /// Rounding variables V, flattened.
    pub v: Param<Tensor<1>>,
    /// Step sizes Δ (fixed).
    pub delta: Param<Tensor<1>>,
    /// Zero points z (fixed).
    pub zero: Param<Tensor<1>>,
    #[module(skip)]
    spec: QuantSpec,
    #[module(skip)]
    shape: Vec<usize>,
    #[module(skip)]
    mode: AdaRoundMode,
    #[module(skip)]
    floor_ste: bool,
}

/// h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1).
pub fn rectified_sigmoid<const D: usize>(v: Tensor<D>) -> Tensor<D> {
    (sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
}

/// Inverse of h on (0, 1): `V = −ln((ζ − γ)/(frac − γ) − 1)`.
pub fn inverse_rectified_sigmoid(frac: f32) -> f32 {
    let f = frac as f64;
    (-(((ZETA - GAMMA) / (f - GAMMA)) - 1.0).ln()) as f32
}

impl AdaRoundQuantizer {
    /// Initialises V from the fractional part of `W/Δ` so that the soft weight starts at the
    /// full-precision weight (inside the range). `params` must be per tensor, per channel, or
    /// split (Q-Diffusion's shortcut splitting), not per group.
    pub fn init<const D: usize>(weight: Tensor<D>, params: &AffineParams) -> Result<Self> {
        params.validate("AdaRoundQuantizer")?;
        if let Granularity::PerGroup { axis, .. } = params.spec.granularity()
            && axis + 1 != weight.dims().len()
        {
            return Err(QuantError::Unsupported(
                "AdaRound supports per-tensor, per-channel, split and last-axis per-group \
                 weight parameters"
                    .into(),
            ));
        }
        params.spec.int_range().ok_or_else(|| {
            QuantError::Unsupported("AdaRound needs an integer spec, not float".into())
        })?;
        let device = weight.device();
        let shape = weight.dims().to_vec();
        let groups = params.group_index(&shape)?;
        let w = to_host(weight, "AdaRound weight")?;
        check_finite(&w, "AdaRound weight")?;
        let v: Vec<f32> = w
            .iter()
            .zip(&groups)
            .map(|(&x, &g)| {
                let s = x / params.delta[g];
                inverse_rectified_sigmoid(s - s.floor())
            })
            .collect();
        let (delta, zero) = params.to_tensors(&device);
        Ok(Self {
            v: Param::from_tensor(Tensor::from_data(TensorData::new(v, [w.len()]), &device)),
            delta: Param::from_tensor(delta).set_require_grad(false),
            zero: Param::from_tensor(zero).set_require_grad(false),
            spec: params.spec,
            shape,
            mode: AdaRoundMode::Soft,
            floor_ste: false,
        })
    }

    /// Switches between soft and hard rounding.
    pub fn with_mode(mut self, mode: AdaRoundMode) -> Self {
        self.mode = mode;
        self
    }

    /// Enables QuEST's floor-STE (gradients reach the latent weight).
    pub fn with_floor_ste(mut self, on: bool) -> Self {
        self.floor_ste = on;
        self
    }

    /// Current rounding mode.
    pub fn mode(&self) -> AdaRoundMode {
        self.mode
    }

    /// h(V), flattened.
    pub fn soft_rounding(&self) -> Tensor<1> {
        rectified_sigmoid(self.v.val())
    }

    /// Rounding regulariser `Σ (1 − |2h(V) − 1|^β)` (multiply by λ = 0.01 in the loss).
    pub fn round_regularizer(&self, beta: f64) -> Tensor<1> {
        let h = self.soft_rounding();
        (h * 2.0 - 1.0)
            .abs()
            .powf_scalar(beta)
            .neg()
            .add_scalar(1.0)
            .sum()
    }

    fn broadcast<const D: usize>(&self, t: Tensor<1>) -> Tensor<D> {
        let mut s = [1usize; D];
        match self.spec.granularity() {
            Granularity::PerChannel { axis } => s[axis] = self.shape[axis],
            Granularity::Split { channel, axis, at } => {
                let dims: [usize; D] = std::array::from_fn(|i| self.shape[i]);
                return crate::ste::split_broadcast(t, dims, channel, axis, at);
            }
            Granularity::PerGroup { size, .. } => {
                // groups along the last axis (checked at init): [rows, n_groups, 1] repeated
                // over each group, back to the weight's shape
                let dims: [usize; D] = std::array::from_fn(|i| self.shape[i]);
                let n = self.shape.iter().product::<usize>() / size.max(1);
                let rows = n / (self.shape[D - 1] / size.max(1)).max(1);
                let g: Tensor<3> = t.reshape([rows, n / rows.max(1), 1]);
                return g.repeat_dim(2, size).reshape(dims);
            }
            _ => {}
        }
        t.reshape(s)
    }

    fn rounding_offset(&self) -> Tensor<1> {
        match self.mode {
            AdaRoundMode::Soft => self.soft_rounding(),
            AdaRoundMode::Hard => self.v.val().greater_equal_elem(0.0).float().detach(),
        }
    }
}

impl Quantizer for AdaRoundQuantizer {
    fn spec(&self) -> QuantSpec {
        self.spec
    }

    fn fake_quant<const D: usize>(&self, w: Tensor<D>, _step: usize) -> Result<Tensor<D>> {
        let dims = w.dims();
        check_weight_shape(&self.shape, &dims, "AdaRoundQuantizer::fake_quant")?;
        let (qmin, qmax) = self.spec.int_range().unwrap_or((0, 0));
        let d: Tensor<D> = self.broadcast(self.delta.val());
        let z: Tensor<D> = self.broadcast(self.zero.val());
        let s = w / d.clone();
        let base = if self.floor_ste {
            floor_ste(s)
        } else {
            s.floor().detach()
        };
        let h: Tensor<D> = self.rounding_offset().reshape(dims);
        Ok(((base + h + z.clone()).clamp(qmin as f64, qmax as f64) - z) * d)
    }

    fn affine_params(&self, _step: usize) -> Result<AffineParams> {
        Ok(AffineParams {
            spec: self.spec,
            delta: to_host(self.delta.val(), "AdaRound delta")?,
            zero: to_host(self.zero.val(), "AdaRound zero")?,
        })
    }

    /// Hard-rounded codes `clamp(floor(W/Δ) + 1[V ≥ 0] + z, q_min, q_max)` (scalar reference).
    fn export<const D: usize>(&self, w: Tensor<D>, step: usize) -> Result<QuantizedTensor> {
        let params = self.affine_params(step)?;
        let shape = w.dims().to_vec();
        check_weight_shape(&self.shape, &shape, "AdaRoundQuantizer::export")?;
        let (qmin, qmax) = self.spec.int_range().unwrap_or((0, 0));
        let w = to_host(w, "AdaRound export weight")?;
        check_finite(&w, "AdaRound export weight")?;
        let v = to_host(self.v.val(), "AdaRound V")?;
        let groups = params.group_index(&shape)?;
        let codes: Vec<u8> = (0..w.len())
            .map(|i| {
                let g = groups[i];
                let up = if v[i] >= 0.0 { 1.0 } else { 0.0 };
                let q = (w[i] / params.delta[g]).floor() + up + params.zero[g];
                (q.clamp(qmin as f32, qmax as f32) - qmin as f32) as u8
            })
            .collect();
        QuantizedTensor::from_codes(&codes, &shape, params)
    }
}

/// The annealed β of the rounding regulariser (§1.3): off for the first `warmup` fraction of
/// the `iters` iterations, then linear from `start` (20) to `end` (2):
/// `β(t) = end + (start − end)·max(0, 1 − (t − w·T)/((1 − w)·T))`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BetaSchedule {
    /// Total iterations T.
    pub iters: usize,
    /// Warm-up fraction w (reference 0.2).
    pub warmup: f64,
    /// β at the end of warm-up (reference 20).
    pub start: f64,
    /// β at the last iteration (reference 2).
    pub end: f64,
}

impl BetaSchedule {
    /// The reference schedule for `iters` iterations: warm-up 0.2, β 20 → 2.
    pub fn reference(iters: usize) -> Self {
        Self {
            iters,
            warmup: 0.2,
            start: 20.0,
            end: 2.0,
        }
    }

    /// β at iteration `t`, or `None` while the rounding term is switched off (warm-up).
    pub fn beta(&self, t: usize) -> Option<f64> {
        let total = self.iters as f64;
        let w = self.warmup * total;
        let t = t as f64;
        if t < w {
            return None;
        }
        let rel = ((t - w) / ((1.0 - self.warmup) * total).max(1e-12)).min(1.0);
        Some(self.end + (self.start - self.end) * (1.0 - rel).max(0.0))
    }
}
