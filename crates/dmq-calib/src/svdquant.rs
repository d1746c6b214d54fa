//! SVDQuant (docs/algorithms.md §11.2; Li et al., ICLR 2025): smoothing, then a 16-bit
//! low-rank branch that absorbs the weight outliers, then a 4-bit residual.
//!
//! For each linear and conv layer that the config quantizes on both sides:
//!
//! 1. **Smooth** as SmoothQuant does: `x̂ = x / s`, `Ŵ = W·diag(s)` with
//!    `s_j = max|X_j|^α / max|W_·j|^(1−α)`; smoothing moves the activation outliers into the
//!    weight, where step 2 takes them.
//! 2. **Split** `Ŵ = L1·L2 + R` with `L1·L2` the rank-r truncated SVD of Ŵ ([`crate::svd`]),
//!    factors rounded to f16 (stored at 16 bits), `R = Ŵ − L1·L2`.
//! 3. **Quantize** R with the config's weight spec (per channel or per group) by naive PTQ,
//!    and the input with a **dynamic** per-token quantizer
//!    ([`dmq_quant::DynamicQuantizer`]): each token's own range at run time, as the paper's
//!    4-bit kernels do.
//!
//! The layer computes `y = Q_a(x̂)·Q_w(R)ᵀ + (x̂·L2ᵀ)·L1ᵀ + b`. α is chosen per layer from a
//! grid (or not smoothing) by that layer's output error with steps 2–3 applied, against the
//! FP layer, on calibration inputs. The rank is capped at a fraction of `min(d_in, d_out)`
//! (a branch as wide as the layer would just be the 16-bit layer). Attention matmuls and
//! layers the config leaves partly FP are quantized by the PTQ as configured.

use std::time::Instant;

use burn::tensor::Device;
use dmq_models::Denoiser;
use dmq_models::layers::LayerMut;
use dmq_quant::{ActQuantizer, DynamicQuantizer, DynamicSpec};
use serde::{Deserialize, Serialize};

use crate::calib_set::CalibSet;
use crate::config::QuantConfig;
use crate::error::{CalibError, Result};
use crate::ptq::{PtqReport, ptq};
use crate::smoothquant::{BranchSettings, SmoothOptions, SmoothedLayer, smooth_and_split, targets};

/// SVDQuant settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SvdOptions {
    /// Rank r of the branch (the paper: 32 for 3072-wide layers).
    pub rank: usize,
    /// The branch's rank is at most this fraction of `min(d_in, d_out)`.
    pub max_rank_fraction: f64,
    /// Power iterations of the truncated SVD.
    pub power_iters: usize,
    /// Quantize the targeted layers' inputs per token at run time (the paper's kernels) instead
    /// of with calibrated static ranges.
    pub dynamic_acts: bool,
    /// Smoothing search (α grid, calibration samples) and the PTQ of the residual.
    pub smooth: SmoothOptions,
}

impl Default for SvdOptions {
    fn default() -> Self {
        Self {
            rank: 32,
            max_rank_fraction: 0.5,
            power_iters: 2,
            dynamic_acts: true,
            smooth: SmoothOptions::default(),
        }
    }
}

/// What [`svdquant`] did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SvdReport {
    /// Per targeted layer, in call order: the α and rank chosen, the layer's output error.
    pub layers: Vec<SmoothedLayer>,
    /// The PTQ of the residuals (and of everything else the config quantizes).
    pub ptq: PtqReport,
    /// Parameters of all branches.
    pub branch_params: usize,
    /// Seconds of statistics, search and splitting.
    pub search_s: f64,
}

/// SVDQuant on `model` (FP, no quantizers) under `config` (module docs). `progress(done,
/// total)` after each searched layer.
///
/// # Errors
/// Options out of range (rank 0, fraction outside (0, 1], no α), a quantized model, a layer the
/// calibration set never reaches, activation bits outside 2..=8 for dynamic quantization.
pub fn svdquant<M: Denoiser + ?Sized>(
    model: &mut M,
    config: &QuantConfig,
    calib: &CalibSet,
    opts: &SvdOptions,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SvdReport> {
    if opts.rank == 0 || !(opts.max_rank_fraction > 0.0 && opts.max_rank_fraction <= 1.0) {
        return Err(CalibError::Option(format!(
            "SVDQuant rank {} and max rank fraction {}: the rank must be ≥ 1 and the fraction \
             in (0, 1]",
            opts.rank, opts.max_rank_fraction
        )));
    }
    let plans = config.resolve(&*model, device)?;
    let targeted = targets(&plans);
    // one dynamic spec per targeted layer, from its planned activation bits
    let mut dynamic = std::collections::BTreeMap::new();
    if opts.dynamic_acts {
        for (name, plan) in &targeted {
            let bits = plan.act.and_then(|a| a.int_bits()).ok_or_else(|| {
                CalibError::Option(format!(
                    "layer '{name}': SVDQuant needs integer activations"
                ))
            })?;
            let spec = DynamicSpec::per_token(bits).map_err(|e| CalibError::BadLayerSpec {
                layer: (*name).to_string(),
                what: "SVDQuant's dynamic activations".into(),
                reason: e.to_string(),
            })?;
            dynamic.insert((*name).to_string(), spec);
        }
    }
    // The α search probes with one dynamic spec (the first layer's width); the installed
    // quantizers below take each layer's own width, so the search is exact for configs with
    // one activation width (every preset) and an approximation for mixed ones.
    let probe_dynamic = dynamic.values().next().copied();
    let branch = BranchSettings {
        rank: opts.rank,
        max_rank_fraction: opts.max_rank_fraction,
        dynamic: probe_dynamic,
        power_iters: opts.power_iters,
    };
    let t0 = Instant::now();
    let layers = smooth_and_split(
        model,
        config,
        calib,
        &opts.smooth,
        Some(branch),
        device,
        progress,
    )?;
    let search_s = t0.elapsed().as_secs_f64();
    let ptq = ptq(model, config, calib, &opts.smooth.ptq, device)?;
    let mut branch_params = 0;
    let mut failure = None;
    model.for_each_layer_mut(&mut |l| {
        let name = l.name().to_string();
        let (a_quant, lr) = match l {
            LayerMut::Linear(q) => (&mut q.a_quant, q.low_rank.as_ref()),
            LayerMut::Conv2d(q) => (&mut q.a_quant, q.low_rank.as_ref()),
            LayerMut::Matmul(_) => return,
        };
        branch_params += lr.map_or(0, |b| {
            b.rank() * (b.down.val().dims()[1] + b.up.val().dims()[0])
        });
        if let Some(spec) = dynamic.get(&name) {
            match DynamicQuantizer::new(*spec) {
                Ok(q) => *a_quant = Some(ActQuantizer::Dynamic(q)),
                Err(e) => {
                    failure.get_or_insert(CalibError::from(e));
                }
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(SvdReport {
        layers,
        ptq,
        branch_params,
        search_s,
    })
}
