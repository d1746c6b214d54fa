//! The BitOPs cost model (docs/algorithms.md §1.7, §4.6) of a candidate and the budget filter.
//!
//! `BitOPs = Σ_selected steps Σ_layers MACs_l · b_w · b_a` (× 2 under batched CFG), with the
//! MACs of one batch-1 forward pass from the layer inventory: attention matmuls count
//! `N²·C` per sample (the reference's `C²·N` and its batch-2/one-sample mix-up are fixed),
//! and every step is counted (the reference counts one step's configuration only).

use std::collections::BTreeMap;

use dmq_models::LayerCall;

use crate::candidate::{Candidate, SearchSpace};
use crate::error::{Result, SearchError};

/// MACs per layer of the search space, and the CFG factor.
#[derive(Clone, Debug, PartialEq)]
pub struct CostModel {
    macs: Vec<f64>,
    factor: f64,
}

impl CostModel {
    /// Sums the MACs of `calls` (one batch-1 forward, e.g. [`dmq_models::layer_inventory`])
    /// per layer of `space`; `cfg` doubles every step (both CFG branches run).
    ///
    /// # Errors
    /// A layer of the space that the inventory never calls.
    pub fn new(calls: &[LayerCall], space: &SearchSpace, cfg: bool) -> Result<Self> {
        let mut per: BTreeMap<&str, f64> = BTreeMap::new();
        for c in calls {
            *per.entry(c.name.as_str()).or_default() += c.macs as f64;
        }
        let macs = space
            .layers
            .iter()
            .map(|l| {
                per.get(l.name.as_str()).copied().ok_or_else(|| {
                    SearchError::Option(format!("layer '{}' is not in the layer inventory", l.name))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            macs,
            factor: if cfg { 2.0 } else { 1.0 },
        })
    }

    /// MACs of one denoiser call per image (batch 1, one CFG branch).
    pub fn macs_per_call(&self) -> f64 {
        self.macs.iter().sum()
    }

    /// BitOPs per image of candidate `c` over its selected steps.
    pub fn bitops(&self, space: &SearchSpace, c: &Candidate) -> f64 {
        let mut total = 0.0;
        for step in 0..c.timesteps.len() {
            for (l, m) in self.macs.iter().enumerate() {
                let (a, b) = space.layer_bits(c, step, l);
                total += m * a as f64 * b as f64;
            }
        }
        total * self.factor
    }

    /// BitOPs per image of `steps` steps with every layer at `w_bits` × `a_bits` (32 × 32 =
    /// the FP model).
    pub fn uniform_bitops(&self, steps: usize, w_bits: u32, a_bits: u32) -> f64 {
        self.macs_per_call() * (w_bits * a_bits) as f64 * steps as f64 * self.factor
    }
}

/// The constraint `BitOPs(c) ≤ max_bitops` (the reference: the all-6-bit configuration).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Largest BitOPs per image allowed.
    pub max_bitops: f64,
}

impl Budget {
    /// Whether `c` fits.
    pub fn allows(&self, cost: &CostModel, space: &SearchSpace, c: &Candidate) -> bool {
        cost.bitops(space, c) <= self.max_bitops * (1.0 + 1e-12)
    }
}
