//! SmoothQuant (docs/algorithms.md §11.1): migrate activation outliers into the weights,
//! then naive PTQ.
//!
//! For a linear or conv layer with input channels j, `y = x·Wᵀ = (x / s)·(W·diag(s))ᵀ` for
//! any s > 0. SmoothQuant picks
//!
//! ```text
//! s_j = max|X_j|^α / max|W_·j|^(1−α)        (clamped to [1e-4, 1e4]; s_j = 1 where a max is 0)
//! ```
//!
//! so that channels with large activations are divided down and their weight columns scaled
//! up, balancing the two quantization problems. The divisor lives in the layer
//! ([`dmq_models::layers::QLinear::smooth_by`]): the input is divided by s before the
//! quantizer and the integer path see it, and the weight parameter holds `W·diag(s)`. The
//! graph is not rewritten (a divisor could be folded into a preceding norm's affine where
//! there is one; dividing in the layer works for every layer and costs one elementwise op).
//!
//! α is one value for all layers, or chosen per layer from a grid by the output error of that
//! layer alone, quantized as the config says, on calibration inputs:
//! `mse(Q_a(x/s)·Q_w(W·s)ᵀ, x·Wᵀ)`, against the same layer without smoothing (which is kept
//! when no α beats it). Then [`crate::ptq()`] quantizes the smoothed model.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::layers::LowRank;
use dmq_models::layers::{LayerKind, LayerMut, LayerRef};
use dmq_models::{Denoiser, ForwardCtx, HostTensor, Operand, StepContext, try_for_each_layer_mut};
use dmq_quant::file::round_to_f16;
use dmq_quant::{
    ActQuantizer, DynamicQuantizer, DynamicSpec, QuantSpec, RangeInit, UniformQuantizer,
    WeightQuantizer, init_params,
};
use serde::{Deserialize, Serialize};

use crate::calib_set::CalibSet;
use crate::config::{LayerPlan, QuantConfig};
use crate::error::{CalibError, Result};
use crate::ptq::{PtqOptions, PtqReport, capture_inputs, concat_rows, ptq};
use crate::svd::truncated_svd;

/// SmoothQuant settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmoothOptions {
    /// Migration strengths α: one value is used for every layer; several are searched per
    /// layer (the paper: 0.5 for most models, up to 0.75–0.85 for the hardest).
    pub alphas: Vec<f64>,
    /// Calibration entries whose layer inputs give the statistics and the search.
    pub samples: usize,
    /// Batch of the capture passes.
    pub batch: usize,
    /// At most this many input values per layer in the search.
    pub search_values: usize,
    /// The naive PTQ after smoothing.
    pub ptq: PtqOptions,
}

impl Default for SmoothOptions {
    fn default() -> Self {
        Self {
            alphas: vec![0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
            samples: 32,
            batch: 16,
            search_values: 1 << 18,
            ptq: PtqOptions::default(),
        }
    }
}

/// The choice made for one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SmoothedLayer {
    /// Layer.
    pub layer: String,
    /// Rank of SVDQuant's branch (0: none; always 0 for SmoothQuant).
    #[serde(default)]
    pub rank: usize,
    /// The α used (`None`: smoothing did not lower the error; the layer is left as is).
    pub alpha: Option<f64>,
    /// Output MSE of the layer quantized with the chosen smoothing.
    pub mse: f64,
    /// Output MSE of the layer quantized without smoothing.
    pub mse_unsmoothed: f64,
    /// Largest ratio max|X_j| / median_j max|X_j| of the input channels (the outliers).
    pub outlier_ratio: f64,
}

/// What [`smoothquant`] did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SmoothReport {
    /// Per smoothable layer, in call order.
    pub layers: Vec<SmoothedLayer>,
    /// The PTQ after smoothing.
    pub ptq: PtqReport,
    /// Seconds of statistics and search.
    pub search_s: f64,
}

/// Per-channel max |x| over every other axis; `axis` is the channel axis.
fn channel_absmax(data: &[f32], shape: &[usize], axis: usize) -> Vec<f32> {
    let c = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut m = vec![0f32; c];
    for (i, v) in data.iter().enumerate() {
        let j = (i / inner.max(1)) % c;
        m[j] = m[j].max(v.abs());
    }
    m
}

/// `s_j = a_j^α / w_j^(1−α)`, clamped; 1 where either max is 0.
pub fn smoothing_factors(act_max: &[f32], w_max: &[f32], alpha: f64) -> Vec<f32> {
    act_max
        .iter()
        .zip(w_max)
        .map(|(&a, &w)| {
            if a <= 0.0 || w <= 0.0 || !a.is_finite() || !w.is_finite() {
                1.0
            } else {
                let s = f64::from(a).powf(alpha) / f64::from(w).powf(1.0 - alpha);
                s.clamp(1e-4, 1e4) as f32
            }
        })
        .collect()
}

fn mse(a: &HostTensor, b: &HostTensor) -> f64 {
    let n = a.data.len().max(1) as f64;
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        / n
}

/// SVDQuant's additions to the smoothing search (see [`crate::svdquant`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BranchSettings {
    /// Rank of the branch, before the per-layer cap.
    pub rank: usize,
    /// Largest rank as a fraction of `min(d_in, d_out)`.
    pub max_rank_fraction: f64,
    /// Activations quantized per call instead of with a calibrated static range.
    pub dynamic: Option<DynamicSpec>,
    /// Power iterations of the truncated SVD.
    pub power_iters: usize,
}

impl BranchSettings {
    /// The rank for a `[d_out, d_in]` weight (0: no branch).
    pub fn rank_for(&self, d_in: usize, d_out: usize) -> usize {
        let cap = (self.max_rank_fraction * d_in.min(d_out) as f64).floor() as usize;
        self.rank.min(cap)
    }
}

/// `w [d_out, d_in]` split into SVDQuant's f16 branch: the factors of its rank-r SVD rounded
/// to f16 (as a file stores them).
pub(crate) fn branch_of(
    layer: &str,
    w: &HostTensor,
    rank: usize,
    power_iters: usize,
    device: &Device,
) -> Result<LowRank> {
    let d_out = w.shape[0];
    let d_in = w.data.len() / d_out.max(1);
    let f = truncated_svd(&w.data, d_out, d_in, rank, power_iters);
    let round = |v: &[f32]| v.iter().map(|&x| round_to_f16(x)).collect::<Vec<_>>();
    LowRank::from_host(
        layer,
        &round(&f.down),
        &round(&f.up),
        f.rank,
        d_in,
        d_out,
        device,
    )
    .map_err(|e| CalibError::Option(e.to_string()))
}

/// The quantized output error of one layer (a clone of it), smoothed by `s` if given, on `x`.
pub(crate) struct LayerProbe<'a> {
    pub plan: &'a LayerPlan,
    pub weight_init: &'a RangeInit,
    pub act_init: &'a RangeInit,
    pub x: Tensor<4>,
    pub device: &'a Device,
    pub branch: Option<BranchSettings>,
}

impl LayerProbe<'_> {
    fn act_quantizer(&self, x: &HostTensor, spec: QuantSpec) -> Result<ActQuantizer> {
        if let Some(d) = self.branch.and_then(|b| b.dynamic) {
            return Ok(ActQuantizer::Dynamic(DynamicQuantizer::new(d)?));
        }
        let p = init_params(&x.data, &x.shape, &spec, self.act_init).map_err(|e| {
            CalibError::BadLayerSpec {
                layer: self.plan.name.clone(),
                what: "SmoothQuant search".into(),
                reason: e.to_string(),
            }
        })?;
        Ok(ActQuantizer::Uniform(UniformQuantizer::from_params(
            &p,
            self.device,
        )?))
    }

    /// `x` as the layer takes it (the probe stores it as rank 4 `[rows, C, H, W]` or
    /// `[1, 1, rows, C]`).
    fn run(&self, layer: &LayerRef<'_>, s: Option<&[f32]>) -> Result<HostTensor> {
        let ctx = ForwardCtx::new(StepContext::single(0.0));
        let (Some(wspec), Some(aspec)) = (self.plan.weight, self.plan.act) else {
            return Err(CalibError::Option(
                "a probed layer has weight and act specs".into(),
            ));
        };
        let w_err = |e: dmq_models::ModelError| CalibError::BadLayerSpec {
            layer: self.plan.name.clone(),
            what: "SmoothQuant".into(),
            reason: e.to_string(),
        };
        Ok(match layer {
            LayerRef::Linear(l) => {
                let mut q = (*l).clone();
                if let Some(s) = s {
                    q.smooth_by(s).map_err(w_err)?;
                }
                if let Some(b) = self.branch {
                    let [d_out, d_in] = q.weight_shape();
                    let rank = b.rank_for(d_in, d_out);
                    if rank > 0 {
                        let w = HostTensor::from_tensor(&q.weight.val());
                        let lr = branch_of(&self.plan.name, &w, rank, b.power_iters, self.device)?;
                        q.split_low_rank(lr).map_err(w_err)?;
                    }
                }
                let [r, c] = [self.x.dims()[2], self.x.dims()[3]];
                let x2: Tensor<2> = self.x.clone().reshape([r, c]);
                let xs = match &q.smooth {
                    Some(sm) => x2.clone() / sm.val().reshape([1, c]),
                    None => x2.clone(),
                };
                q.w_quant = Some(WeightQuantizer::Uniform(UniformQuantizer::init(
                    wspec,
                    q.weight.val(),
                    self.weight_init,
                )?));
                q.a_quant = Some(self.act_quantizer(&HostTensor::from_tensor(&xs), aspec)?);
                HostTensor::from_tensor(&q.forward(x2, &ctx).map_err(w_err)?)
            }
            LayerRef::Conv2d(l) => {
                let mut q = (*l).clone();
                if let Some(s) = s {
                    q.smooth_by(s).map_err(w_err)?;
                }
                if let Some(b) = self.branch {
                    let [d_out, c_in, kh, kw] = q.weight_shape();
                    let rank = b.rank_for(c_in * kh * kw, d_out);
                    if rank > 0 {
                        let w = HostTensor::from_tensor(&q.weight.val());
                        let lr = branch_of(&self.plan.name, &w, rank, b.power_iters, self.device)?;
                        q.split_low_rank(lr).map_err(w_err)?;
                    }
                }
                let c = self.x.dims()[1];
                let xs = match &q.smooth {
                    Some(sm) => self.x.clone() / sm.val().reshape([1, c, 1, 1]),
                    None => self.x.clone(),
                };
                q.w_quant = Some(WeightQuantizer::Uniform(UniformQuantizer::init(
                    wspec,
                    q.weight.val(),
                    self.weight_init,
                )?));
                q.a_quant = Some(self.act_quantizer(&HostTensor::from_tensor(&xs), aspec)?);
                HostTensor::from_tensor(&q.forward(self.x.clone(), &ctx).map_err(w_err)?)
            }
            LayerRef::Matmul(_) => {
                return Err(CalibError::Option("matmuls are not smoothed".into()));
            }
        })
    }

    fn fp(&self, layer: &LayerRef<'_>) -> Result<HostTensor> {
        let ctx = ForwardCtx::new(StepContext::single(0.0));
        let err = |e: dmq_models::ModelError| CalibError::Option(e.to_string());
        Ok(match layer {
            LayerRef::Linear(l) => {
                let [r, c] = [self.x.dims()[2], self.x.dims()[3]];
                HostTensor::from_tensor(
                    &l.forward(self.x.clone().reshape([r, c]), &ctx)
                        .map_err(err)?,
                )
            }
            LayerRef::Conv2d(l) => {
                HostTensor::from_tensor(&l.forward(self.x.clone(), &ctx).map_err(err)?)
            }
            LayerRef::Matmul(_) => HostTensor {
                data: vec![],
                shape: vec![0],
            },
        })
    }
}

/// SmoothQuant on `model` (FP, no quantizers), then naive PTQ under `config` (module docs).
/// Layers smoothed: linear and conv layers that `config` quantizes on both sides.
/// `progress(done, total)` after each searched layer.
pub fn smoothquant<M: Denoiser + ?Sized>(
    model: &mut M,
    config: &QuantConfig,
    calib: &CalibSet,
    opts: &SmoothOptions,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SmoothReport> {
    let t0 = Instant::now();
    let layers = smooth_and_split(model, config, calib, opts, None, device, progress)?;
    let search_s = t0.elapsed().as_secs_f64();
    let ptq = ptq(model, config, calib, &opts.ptq, device)?;
    Ok(SmoothReport {
        layers,
        ptq,
        search_s,
    })
}

/// The layers SmoothQuant and SVDQuant transform: linear and conv layers that `plans`
/// quantize on both sides.
pub(crate) fn targets(plans: &[LayerPlan]) -> BTreeMap<&str, &LayerPlan> {
    plans
        .iter()
        .filter(|p| p.kind != LayerKind::Matmul && p.weight.is_some() && p.act.is_some())
        .map(|p| (p.name.as_str(), p))
        .collect()
}

/// The per-layer search and its application to `model` (FP): smoothing chosen from
/// `opts.alphas` (or none) by the layer's quantized output error, then, with `branch`,
/// SVDQuant's split of the smoothed weight. Returns the choices in call order.
pub(crate) fn smooth_and_split<M: Denoiser + ?Sized>(
    model: &mut M,
    config: &QuantConfig,
    calib: &CalibSet,
    opts: &SmoothOptions,
    branch: Option<BranchSettings>,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<SmoothedLayer>> {
    if opts.alphas.is_empty() || opts.alphas.iter().any(|a| !(0.0..=1.0).contains(a)) {
        return Err(CalibError::Option(format!(
            "SmoothQuant α values {:?}: give at least one, each in [0, 1]",
            opts.alphas
        )));
    }
    if opts.samples == 0 || calib.is_empty() {
        return Err(CalibError::Option(
            "SmoothQuant needs calibration samples (samples ≥ 1, a non-empty set)".into(),
        ));
    }
    let mut quantized = None;
    model.for_each_layer(&mut |l| {
        let q = match l {
            LayerRef::Linear(q) => {
                q.w_quant.is_some()
                    || q.a_quant.is_some()
                    || q.smooth.is_some()
                    || q.low_rank.is_some()
            }
            LayerRef::Conv2d(q) => {
                q.w_quant.is_some()
                    || q.a_quant.is_some()
                    || q.smooth.is_some()
                    || q.low_rank.is_some()
            }
            LayerRef::Matmul(q) => q.a_quant.is_some() || q.b_quant.is_some(),
        };
        if q && quantized.is_none() {
            quantized = Some(l.name().to_string());
        }
    });
    if let Some(l) = quantized {
        return Err(CalibError::Option(format!(
            "SmoothQuant and SVDQuant start from an FP model; layer '{l}' is already quantized, smoothed or split"
        )));
    }
    let plans = config.resolve(&*model, device)?;
    let smoothable = targets(&plans);
    // inputs of every layer on a spread of calibration entries, a step per pass
    let n = calib.len();
    let k = opts.samples.min(n);
    let idx: Vec<usize> = (0..k).map(|j| j * n / k).collect();
    let mut by_step: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in &idx {
        by_step.entry(calib.step[i]).or_default().push(i);
    }
    let mut captured: BTreeMap<String, Vec<HostTensor>> = BTreeMap::new();
    for ids in by_step.values() {
        for ((name, op), v) in capture_inputs(&*model, calib, ids, opts.batch, device)? {
            if op == Operand::Input && smoothable.contains_key(name.as_str()) {
                captured.entry(name).or_default().extend(v);
            }
        }
    }
    // the choice per layer, from a probe of the layer alone
    let mut choices: BTreeMap<String, (Option<f64>, Vec<f32>)> = BTreeMap::new();
    let mut layers = Vec::new();
    let mut failure: Option<CalibError> = None;
    model.for_each_layer(&mut |l| {
        if failure.is_some() {
            return;
        }
        let name = l.name().to_string();
        let Some(plan) = smoothable.get(name.as_str()) else {
            return;
        };
        let r = (|| -> Result<()> {
            let parts = captured.get(&name).ok_or_else(|| {
                CalibError::CalibSet(format!(
                    "layer '{name}' was never called on the calibration set"
                ))
            })?;
            let x = concat_rows(parts, opts.search_values, &name)?;
            let (xt, act_max, w_max) = match &l {
                LayerRef::Linear(q) => {
                    let [_, c] = q.weight_shape();
                    let rows = x.data.len() / c.max(1);
                    let w = HostTensor::from_tensor(&q.weight.val());
                    (
                        Tensor::<4>::from_data(
                            TensorData::new(x.data.clone(), [1, 1, rows, c]),
                            device,
                        ),
                        channel_absmax(&x.data, &[rows, c], 1),
                        channel_absmax(&w.data, &w.shape, 1),
                    )
                }
                LayerRef::Conv2d(q) => {
                    let w = HostTensor::from_tensor(&q.weight.val());
                    let shape: [usize; 4] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
                    (
                        Tensor::<4>::from_data(TensorData::new(x.data.clone(), shape), device),
                        channel_absmax(&x.data, &x.shape, 1),
                        channel_absmax(&w.data, &w.shape, 1),
                    )
                }
                LayerRef::Matmul(_) => return Ok(()),
            };
            let probe = LayerProbe {
                plan,
                weight_init: &opts.ptq.weight_init,
                act_init: &opts.ptq.act_init,
                x: xt,
                device,
                branch,
            };
            let reference = probe.fp(&l)?;
            let base = mse(&probe.run(&l, None)?, &reference);
            let mut best: (Option<f64>, f64, Vec<f32>) = (None, base, vec![]);
            for &a in &opts.alphas {
                let s = smoothing_factors(&act_max, &w_max, a);
                let e = mse(&probe.run(&l, Some(&s))?, &reference);
                if e < best.1 {
                    best = (Some(a), e, s);
                }
            }
            let mut sorted = act_max.clone();
            sorted.sort_by(f32::total_cmp);
            let median = sorted[sorted.len() / 2].max(f32::MIN_POSITIVE);
            let rank = branch.map_or(0, |b| match &l {
                LayerRef::Linear(q) => {
                    let [o, i] = q.weight_shape();
                    b.rank_for(i, o)
                }
                LayerRef::Conv2d(q) => {
                    let [o, c, kh, kw] = q.weight_shape();
                    b.rank_for(c * kh * kw, o)
                }
                LayerRef::Matmul(_) => 0,
            });
            layers.push(SmoothedLayer {
                layer: name.clone(),
                rank,
                alpha: best.0,
                mse: best.1,
                mse_unsmoothed: base,
                outlier_ratio: f64::from(sorted.last().copied().unwrap_or(0.0) / median),
            });
            choices.insert(name.clone(), (best.0, best.2));
            progress(layers.len(), smoothable.len());
            Ok(())
        })();
        if let Err(e) = r {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let ranks: BTreeMap<&str, usize> = layers.iter().map(|l| (l.layer.as_str(), l.rank)).collect();
    try_for_each_layer_mut(model, |l| -> Result<()> {
        let name = l.name().to_string();
        let Some((alpha, s)) = choices.get(&name) else {
            return Ok(());
        };
        let err = |e: dmq_models::ModelError| CalibError::Option(e.to_string());
        let rank = ranks.get(name.as_str()).copied().unwrap_or(0);
        let power_iters = branch.map_or(0, |b| b.power_iters);
        // the same two steps on either kind of layer
        macro_rules! smooth_then_split {
            ($q:expr) => {{
                if alpha.is_some() {
                    $q.smooth_by(s).map_err(err)?;
                }
                if rank > 0 {
                    let w = HostTensor::from_tensor(&$q.weight.val());
                    $q.split_low_rank(branch_of(&name, &w, rank, power_iters, device)?)
                        .map_err(err)?;
                }
                Ok(())
            }};
        }
        match l {
            LayerMut::Linear(q) => smooth_then_split!(q),
            LayerMut::Conv2d(q) => smooth_then_split!(q),
            LayerMut::Matmul(_) => Ok(()),
        }
    })?;
    Ok(layers)
}
