//! Range initialisers (docs/algorithms.md §1.2): max, MSE search, percentile, LSQ init and a
//! running EMA of min/max. They run on the host (one pass over calibration data is cheap
//! next to a forward pass, and host code is exactly reproducible across backends), per
//! tensor, per channel or per group according to the spec.

use serde::{Deserialize, Serialize};

use crate::error::{QuantError, Result};
use crate::qtensor::{AffineParams, check_finite, group_index, round_scalar};
use crate::spec::QuantSpec;

/// Smallest step size any initialiser returns (the reference floors Δ at 1e-8).
pub const MIN_DELTA: f32 = 1e-8;

/// How to choose (Δ, z) from data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RangeInit {
    /// Min/max of the data with 0 included (§1.2.1).
    Max,
    /// Search over `steps` shrinkings `(1 − 0.01·i)` of the raw range, scored by
    /// `mean(|x − x̂|^p)` (§1.2.2; reference: p = 2.4, 80 steps).
    Mse {
        /// Norm exponent p.
        p: f32,
        /// Number of shrink steps.
        steps: usize,
    },
    /// Best of the quantile pairs `(q, 1 − q)` by mean squared error (§1.2.3).
    Percentile {
        /// Candidate upper quantiles, e.g. `[0.999, 0.9999, 0.99999]`.
        quantiles: Vec<f64>,
    },
    /// LSQ's `Δ = 2·mean|x|/sqrt(Q_p)` (§1.2.5).
    Lsq,
}

impl RangeInit {
    /// The reference MSE search: p = 2.4, 80 steps.
    pub fn mse() -> Self {
        RangeInit::Mse { p: 2.4, steps: 80 }
    }

    /// The reference percentile candidates 0.999, 0.9999, 0.99999.
    pub fn percentile() -> Self {
        RangeInit::Percentile {
            quantiles: vec![0.999, 0.9999, 0.99999],
        }
    }
}

/// Splits row-major `data` of `shape` into the spec's parameter groups.
fn split_groups(data: &[f32], shape: &[usize], spec: &QuantSpec) -> Result<Vec<Vec<f32>>> {
    let numel: usize = shape.iter().product();
    if numel != data.len() || numel == 0 {
        return Err(QuantError::ShapeMismatch {
            expected: format!("{numel} (> 0) elements for shape {shape:?}"),
            got: data.len().to_string(),
            context: "range initialisation".into(),
        });
    }
    let n = spec.num_params(shape)?;
    let mut groups = vec![Vec::with_capacity(numel / n); n];
    for (&x, g) in data.iter().zip(group_index(shape, spec.granularity())) {
        groups[g].push(x);
    }
    Ok(groups)
}

/// (Δ, z) for a value range `[lo, hi]` under `spec` (max-style, 0 included in the range).
pub fn params_from_range(spec: &QuantSpec, lo: f32, hi: f32) -> Result<(f32, f32)> {
    let (qmin, qmax) = int_range(spec)?;
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if spec.is_symmetric() {
        let levels = if spec.is_signed() { qmax } else { qmax - qmin };
        if levels <= 0 {
            return Err(QuantError::Unsupported(format!(
                "symmetric signed {}-bit quantization has no positive level; use ≥ 2 bits \
                 or the binary quantizer",
                spec.int_bits().unwrap_or(0)
            )));
        }
        let absmax = if spec.is_signed() {
            lo.abs().max(hi)
        } else {
            hi
        };
        return Ok(((absmax / levels as f32).max(MIN_DELTA), 0.0));
    }
    let delta = ((hi - lo) / (qmax - qmin) as f32).max(MIN_DELTA);
    Ok((
        delta,
        qmin as f32 + round_scalar(-lo / delta, spec.rounding()),
    ))
}

fn int_range(spec: &QuantSpec) -> Result<(i32, i32)> {
    spec.int_range().ok_or_else(|| {
        QuantError::Unsupported("range initialisation of a float pass-through spec".into())
    })
}

/// Scalar fake quantization of one value (reference path for the searches).
fn fq(x: f32, delta: f32, zero: f32, qmin: f32, qmax: f32, spec: &QuantSpec) -> f32 {
    ((round_scalar(x / delta, spec.rounding()) + zero).clamp(qmin, qmax) - zero) * delta
}

/// Initialises (Δ, z) from `data` (row-major, `shape`) with `method`.
///
/// NaN or infinity in `data` is an error naming its index.
///
/// ```
/// use dmq_quant::{QuantSpec, RangeInit, init_params};
/// let spec = QuantSpec::int(8)?;
/// let p = init_params(&[-1.0, 0.5, 2.0], &[3], &spec, &RangeInit::Max)?;
/// assert!((p.delta[0] - 3.0 / 255.0).abs() < 1e-7);
/// assert_eq!(p.zero[0], 85.0); // round(1/Δ) = round(85.0)
/// # Ok::<(), dmq_quant::QuantError>(())
/// ```
pub fn init_params(
    data: &[f32],
    shape: &[usize],
    spec: &QuantSpec,
    method: &RangeInit,
) -> Result<AffineParams> {
    check_finite(data, "range initialisation data")?;
    let (qmin, qmax) = int_range(spec)?;
    let groups = split_groups(data, shape, spec)?;
    let mut delta = Vec::with_capacity(groups.len());
    let mut zero = Vec::with_capacity(groups.len());
    for g in &groups {
        let (lo, hi) = min_max(g);
        let (d, z) = match method {
            RangeInit::Max => params_from_range(spec, lo, hi)?,
            RangeInit::Mse { p, steps } => mse_search(g, lo, hi, *p, *steps, spec, qmin, qmax)?,
            RangeInit::Percentile { quantiles } => {
                percentile_search(g, quantiles, spec, qmin, qmax)?
            }
            RangeInit::Lsq => {
                let mean_abs = g.iter().map(|v| v.abs() as f64).sum::<f64>() / g.len() as f64;
                let qp = qmax.max(1) as f64;
                let d = ((2.0 * mean_abs / qp.sqrt()) as f32).max(MIN_DELTA);
                let z = if spec.is_symmetric() {
                    0.0
                } else {
                    (qmin as f32 + round_scalar(-lo.min(0.0) / d, spec.rounding()))
                        .clamp(qmin as f32, qmax as f32)
                };
                (d, z)
            }
        };
        delta.push(d);
        zero.push(z);
    }
    Ok(AffineParams {
        spec: *spec,
        delta,
        zero,
    })
}

fn min_max(g: &[f32]) -> (f32, f32) {
    g.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Candidate `i` of the MSE search: the range shrunk by `1 − 0.01·i`.
fn mse_candidate(
    lo: f32,
    hi: f32,
    i: usize,
    spec: &QuantSpec,
    fqmin: f32,
    fqmax: f32,
) -> Result<(f32, f32)> {
    let shrink = 1.0 - 0.01 * i as f32;
    let (lo_i, hi_i) = (lo * shrink, hi * shrink);
    if spec.is_symmetric() {
        params_from_range(spec, lo_i, hi_i)
    } else {
        // The reference uses the raw (not 0-clamped) range here.
        let d = ((hi_i - lo_i) / (fqmax - fqmin)).max(MIN_DELTA);
        Ok((d, fqmin + round_scalar(-lo_i / d, spec.rounding())))
    }
}

/// Mean of |x − fq(x)|^p over `g`. The power is taken in f32 like the reference's
/// `(pred − tgt).abs().pow(p)` on float tensors (2.3× faster than f64 `powf` here), and
/// summed in f64.
fn lp_error(g: &[f32], d: f32, z: f32, p: f32, fqmin: f32, fqmax: f32, spec: &QuantSpec) -> f64 {
    g.iter()
        .map(|&x| {
            let e = (x - fq(x, d, z, fqmin, fqmax, spec)).abs();
            if e == 0.0 { 0.0 } else { f64::from(e.powf(p)) }
        })
        .sum::<f64>()
        / g.len() as f64
}

/// Below this many value × candidate evaluations the search runs on one thread.
const MSE_PARALLEL_MIN: usize = 1 << 18;

#[allow(clippy::too_many_arguments)]
fn mse_search(
    g: &[f32],
    lo: f32,
    hi: f32,
    p: f32,
    steps: usize,
    spec: &QuantSpec,
    qmin: i32,
    qmax: i32,
) -> Result<(f32, f32)> {
    if !(p.is_finite() && p > 0.0) || steps == 0 {
        return Err(QuantError::Unsupported(format!(
            "MSE search needs p > 0 and steps ≥ 1 (got p = {p}, steps = {steps})"
        )));
    }
    let (fqmin, fqmax) = (qmin as f32, qmax as f32);
    let cands = (0..steps)
        .map(|i| mse_candidate(lo, hi, i, spec, fqmin, fqmax))
        .collect::<Result<Vec<_>>>()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(best_candidate(g, &cands, p, fqmin, fqmax, spec, threads))
}

/// The candidate with the lowest Lp error (the first on ties, as a sequential scan picks).
/// Candidates are independent, so they are spread over `threads` threads; each score is
/// computed the same way on any thread, so the choice does not depend on the thread count.
fn best_candidate(
    g: &[f32],
    cands: &[(f32, f32)],
    p: f32,
    fqmin: f32,
    fqmax: f32,
    spec: &QuantSpec,
    threads: usize,
) -> (f32, f32) {
    let score = |&(d, z): &(f32, f32)| lp_error(g, d, z, p, fqmin, fqmax, spec);
    let threads = threads.min(cands.len());
    let steps = cands.len();
    let scores: Vec<f64> = if threads <= 1 || g.len() * steps < MSE_PARALLEL_MIN {
        cands.iter().map(score).collect()
    } else {
        let per = cands.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = cands
                .chunks(per)
                .map(|c| s.spawn(move || c.iter().map(score).collect::<Vec<f64>>()))
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().expect("MSE search worker panicked"))
                .collect()
        })
    };
    let mut best = (f64::INFINITY, 1.0f32, 0.0f32);
    for (sc, &(d, z)) in scores.iter().zip(cands) {
        if *sc < best.0 {
            best = (*sc, d, z);
        }
    }
    (best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_choice_does_not_depend_on_threads() {
        // heavy-tailed data large enough for the threaded path
        let g: Vec<f32> = (0..60_000u64)
            .map(|i| {
                let u = ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 + 0.5)
                    / (1u64 << 24) as f32;
                (u - 0.5).powi(3) * 8.0
            })
            .collect();
        let spec = QuantSpec::int(4).unwrap();
        let (lo, hi) = min_max(&g);
        let cands: Vec<(f32, f32)> = (0..80)
            .map(|i| mse_candidate(lo, hi, i, &spec, 0.0, 15.0).unwrap())
            .collect();
        let one = best_candidate(&g, &cands, 2.4, 0.0, 15.0, &spec, 1);
        for t in [2, 3, 7] {
            assert_eq!(best_candidate(&g, &cands, 2.4, 0.0, 15.0, &spec, t), one);
        }
        // clipping the sparse tails pays: the chosen range is inside [lo, hi]
        assert!(
            one.0 < 0.99 * (hi - lo) / 15.0,
            "{one:?} vs max-range Δ {}",
            (hi - lo) / 15.0
        );
    }
}

/// Linear-interpolated quantile of sorted data (`torch.quantile` convention).
fn quantile_sorted(sorted: &[f32], q: f64) -> f32 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    let j = (i + 1).min(sorted.len() - 1);
    (sorted[i] as f64 + (sorted[j] as f64 - sorted[i] as f64) * frac) as f32
}

fn percentile_search(
    g: &[f32],
    quantiles: &[f64],
    spec: &QuantSpec,
    qmin: i32,
    qmax: i32,
) -> Result<(f32, f32)> {
    if quantiles.is_empty() || quantiles.iter().any(|q| !(0.5..=1.0).contains(q)) {
        return Err(QuantError::Unsupported(format!(
            "percentile candidates must be in [0.5, 1] (got {quantiles:?})"
        )));
    }
    let mut sorted = g.to_vec();
    sorted.sort_by(f32::total_cmp);
    let mut best = (f64::INFINITY, 1.0f32, 0.0f32);
    for &q in quantiles {
        let (lo, hi) = (
            quantile_sorted(&sorted, 1.0 - q),
            quantile_sorted(&sorted, q),
        );
        let (d, z) = params_from_range(spec, lo, hi)?;
        let score = g
            .iter()
            .map(|&x| {
                let e = (x - fq(x, d, z, qmin as f32, qmax as f32, spec)) as f64;
                e * e
            })
            .sum::<f64>()
            / g.len() as f64;
        if score < best.0 {
            best = (score, d, z);
        }
    }
    Ok((best.1, best.2))
}

/// Running min/max with exponential smoothing (§1.2.4):
/// `m ← momentum·m + (1 − momentum)·batch_m`, reference momentum 0.95.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunningRange {
    spec: QuantSpec,
    momentum: f32,
    min: Vec<f32>,
    max: Vec<f32>,
}

impl RunningRange {
    /// An empty tracker (the first batch sets the range).
    pub fn new(spec: QuantSpec, momentum: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&momentum) {
            return Err(QuantError::Unsupported(format!(
                "running-range momentum must be in [0, 1), got {momentum}"
            )));
        }
        Ok(Self {
            spec,
            momentum,
            min: Vec::new(),
            max: Vec::new(),
        })
    }

    /// Folds one batch (row-major, `shape`) into the running range.
    pub fn observe(&mut self, data: &[f32], shape: &[usize]) -> Result<()> {
        check_finite(data, "running-range batch")?;
        let groups = split_groups(data, shape, &self.spec)?;
        let (lo, hi): (Vec<f32>, Vec<f32>) = groups.iter().map(|g| min_max(g)).unzip();
        if self.min.is_empty() {
            (self.min, self.max) = (lo, hi);
        } else if self.min.len() != lo.len() {
            return Err(QuantError::ShapeMismatch {
                expected: format!("{} parameter groups", self.min.len()),
                got: lo.len().to_string(),
                context: "RunningRange::observe".into(),
            });
        } else {
            let m = self.momentum;
            for i in 0..lo.len() {
                self.min[i] = m * self.min[i] + (1.0 - m) * lo[i];
                self.max[i] = m * self.max[i] + (1.0 - m) * hi[i];
            }
        }
        Ok(())
    }

    /// The smoothed range `(min, max)` per group.
    pub fn range(&self) -> (&[f32], &[f32]) {
        (&self.min, &self.max)
    }

    /// (Δ, z) from the smoothed range, max-style.
    pub fn params(&self) -> Result<AffineParams> {
        if self.min.is_empty() {
            return Err(QuantError::Unsupported(
                "RunningRange::params before any batch was observed".into(),
            ));
        }
        let (delta, zero) = self
            .min
            .iter()
            .zip(&self.max)
            .map(|(&lo, &hi)| params_from_range(&self.spec, lo, hi))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        Ok(AffineParams {
            spec: self.spec,
            delta,
            zero,
        })
    }
}
