//! [`TimeIndexed`]: one quantizer parameter set per sampling step (EfficientDM's TALSQ) or per
//! group of steps (QuEST, TMPQ-DM), selected by an explicit step index.

use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::qtensor::AffineParams;
use crate::quantizer::{Quantizer, to_host};
use crate::spec::QuantSpec;
use crate::{LsqQuantizer, UniformQuantizer};

/// A quantizer whose raw (Δ, z) can be read and replaced, so parameter sets can be copied
/// and interpolated.
pub trait AffineSet: Sized {
    /// Raw parameters (continuous z kept as is).
    fn raw_params(&self) -> Result<AffineParams>;
    /// A copy of `self` (same trainability) with other parameters.
    fn with_params(&self, params: &AffineParams) -> Result<Self>;
}

impl AffineSet for UniformQuantizer {
    fn raw_params(&self) -> Result<AffineParams> {
        self.affine_params(0)
    }
    fn with_params(&self, params: &AffineParams) -> Result<Self> {
        let device = self.delta.val().device();
        let q = UniformQuantizer::from_params(params, &device)?;
        Ok(q.with_trainable(self.delta.is_require_grad(), self.zero.is_require_grad()))
    }
}

impl AffineSet for LsqQuantizer {
    fn raw_params(&self) -> Result<AffineParams> {
        Ok(AffineParams {
            spec: self.spec(),
            delta: to_host(self.delta.val(), "LsqQuantizer delta")?,
            zero: to_host(self.zero.val(), "LsqQuantizer zero")?,
        })
    }
    fn with_params(&self, params: &AffineParams) -> Result<Self> {
        let device = self.delta.val().device();
        LsqQuantizer::from_params(
            params,
            self.zero.is_require_grad(),
            self.uses_grad_scale(),
            &device,
        )
    }
}

/// How to move a time-indexed quantizer to another list of timesteps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resample {
    /// Every new timestep must be one of the old ones; its set is copied (exact; e.g. the
    /// `v[::5]` 100 → 20 step subsampling of EfficientDM).
    SubGrid,
    /// Linear interpolation of Δ and z over t between the neighbouring old timesteps
    /// (clamped to the end sets outside the old range).
    Interpolate,
}

/// `T` parameter sets of a quantizer, selected by the explicit step index.
///
/// `timesteps[i]` is the diffusion timestep t at step index `i`; `step_to_set[i]` says which
/// set step `i` uses (the identity for per-step sets, `i / group` for grouped sets). Calls are
/// never counted: the caller passes the step index of its step context.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use dmq_quant::{QuantSpec, Quantizer, RangeInit, TimeIndexed, UniformQuantizer};
/// let x = Tensor::<1>::from_floats([0.5, -1.0, 2.0], &Device::default());
/// let q = UniformQuantizer::init(QuantSpec::int(4)?, x.clone(), &RangeInit::Max)?;
/// let talsq = TimeIndexed::copied(q, vec![999.0, 499.0, 0.0])?;
/// assert_eq!(talsq.num_steps(), 3);
/// assert!(talsq.fake_quant(x.clone(), 2).is_ok());
/// assert!(talsq.fake_quant(x, 3).is_err()); // no set for step 3
/// # Ok::<(), dmq_quant::QuantError>(())
/// ```
#[derive(Module, Debug)]
pub struct TimeIndexed<Q: Module> {
    /// The parameter sets.
    pub sets: Vec<Q>,
    #[module(skip)]
    timesteps: Vec<f64>,
    #[module(skip)]
    step_to_set: Vec<usize>,
}

impl<Q: Module + Quantizer + AffineSet> TimeIndexed<Q> {
    /// One set per step, each a copy of `q` (EfficientDM's TALSQ initialisation).
    pub fn copied(q: Q, timesteps: Vec<f64>) -> Result<Self> {
        let n = timesteps.len();
        Self::grouped(vec![q; n], timesteps, (0..n).collect())
    }

    /// Explicit sets with a step → set map (QuEST's timestep groups).
    pub fn grouped(sets: Vec<Q>, timesteps: Vec<f64>, step_to_set: Vec<usize>) -> Result<Self> {
        if timesteps.is_empty() || timesteps.len() != step_to_set.len() {
            return Err(QuantError::ShapeMismatch {
                expected: format!(
                    "a non-empty step → set map with one entry per timestep ({})",
                    timesteps.len()
                ),
                got: step_to_set.len().to_string(),
                context: "TimeIndexed::grouped".into(),
            });
        }
        if let Some((step, &s)) = step_to_set
            .iter()
            .enumerate()
            .find(|&(_, &s)| s >= sets.len())
        {
            return Err(QuantError::StepOutOfRange {
                step: s,
                len: sets.len(),
                context: format!("TimeIndexed::grouped (set index of step {step})"),
            });
        }
        if let Some(t) = timesteps.iter().find(|t| !t.is_finite()) {
            return Err(QuantError::Unsupported(format!("non-finite timestep {t}")));
        }
        Ok(Self {
            sets,
            timesteps,
            step_to_set,
        })
    }

    /// Groups of `group` consecutive steps share one set: step i uses set `i / group`.
    pub fn uniform_groups(q: Q, timesteps: Vec<f64>, group: usize) -> Result<Self> {
        if group == 0 {
            return Err(QuantError::Unsupported("group size 0".into()));
        }
        let n = timesteps.len();
        let map: Vec<usize> = (0..n).map(|i| i / group).collect();
        Self::grouped(vec![q; n.div_ceil(group)], timesteps, map)
    }

    /// Number of steps covered.
    pub fn num_steps(&self) -> usize {
        self.step_to_set.len()
    }

    /// Timestep of every step index.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Which set each step index uses.
    pub fn step_to_set(&self) -> &[usize] {
        &self.step_to_set
    }

    /// The set used at `step`.
    pub fn select(&self, step: usize) -> Result<&Q> {
        let s = *self
            .step_to_set
            .get(step)
            .ok_or_else(|| QuantError::StepOutOfRange {
                step,
                len: self.step_to_set.len(),
                context: "TimeIndexed".into(),
            })?;
        Ok(&self.sets[s])
    }

    /// A per-step quantizer over `new_timesteps`, by sub-grid selection or interpolation.
    pub fn resample(&self, new_timesteps: &[f64], how: Resample) -> Result<Self> {
        let old: Vec<AffineParams> = (0..self.num_steps())
            .map(|i| self.select(i)?.raw_params())
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..self.timesteps.len()).collect();
        order.sort_by(|&a, &b| self.timesteps[a].total_cmp(&self.timesteps[b]));
        let mut sets = Vec::with_capacity(new_timesteps.len());
        for &t in new_timesteps {
            let params = match how {
                Resample::SubGrid => {
                    let i = self
                        .timesteps
                        .iter()
                        .position(|&o| (o - t).abs() < 1e-6)
                        .ok_or_else(|| {
                            QuantError::Unsupported(format!(
                                "timestep {t} is not on the old grid; use Resample::Interpolate"
                            ))
                        })?;
                    old[i].clone()
                }
                Resample::Interpolate => {
                    let pos = order.partition_point(|&i| self.timesteps[i] < t);
                    if pos == 0 {
                        old[order[0]].clone()
                    } else if pos == order.len() {
                        old[order[order.len() - 1]].clone()
                    } else {
                        let (a, b) = (order[pos - 1], order[pos]);
                        let (ta, tb) = (self.timesteps[a], self.timesteps[b]);
                        let w = if tb > ta {
                            ((t - ta) / (tb - ta)) as f32
                        } else {
                            0.0
                        };
                        lerp_params(&old[a], &old[b], w)
                    }
                }
            };
            sets.push(self.sets[0].with_params(&params)?);
        }
        let n = new_timesteps.len();
        Self::grouped(sets, new_timesteps.to_vec(), (0..n).collect())
    }
}

fn lerp_params(a: &AffineParams, b: &AffineParams, w: f32) -> AffineParams {
    let lerp = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p + (q - p) * w).collect();
    AffineParams {
        spec: a.spec,
        delta: lerp(&a.delta, &b.delta),
        zero: lerp(&a.zero, &b.zero),
    }
}

impl<Q: Module + Quantizer + AffineSet> Quantizer for TimeIndexed<Q> {
    fn spec(&self) -> QuantSpec {
        self.sets[0].spec()
    }

    fn fake_quant<const D: usize>(&self, x: Tensor<D>, step: usize) -> Result<Tensor<D>> {
        self.select(step)?.fake_quant(x, step)
    }

    fn affine_params(&self, step: usize) -> Result<AffineParams> {
        self.select(step)?.affine_params(step)
    }
}
