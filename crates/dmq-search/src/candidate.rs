//! The search space (docs/algorithms.md §4.1) and its candidates.
//!
//! A candidate picks one timestep per group and, per quantizable layer, a weight and an
//! input bit-width index into the candidate list (default {8, 6, 5, 4}); for attention
//! matmuls the two genes are the left and right operand bits. In `shared` mode one bit
//! vector serves every step (`groupwise_consistent`, the reference's default); in
//! `per_step` mode each selected step has its own (`groupwise`).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::rng::SearchRng;

/// One quantizable layer of the search space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSlot {
    /// diffusers path.
    pub name: String,
    /// Whether it is an attention matmul (genes = operand bits).
    pub matmul: bool,
}

/// What the search chooses from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    /// Timestep groups (one timestep is picked from each).
    pub groups: Vec<Range<usize>>,
    /// The quantizable layers, in forward order.
    pub layers: Vec<LayerSlot>,
    /// Candidate bit-widths, shared by weights and activations (index 0 = the first).
    pub bit_options: Vec<u32>,
    /// One bit vector per selected step instead of one for all steps.
    pub per_step: bool,
}

/// A point of the search space.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Candidate {
    /// One timestep per group, in group order (so ascending).
    pub timesteps: Vec<usize>,
    /// Bit indices: `bits[s][2·l]` the weight (left) index and `bits[s][2·l + 1]` the input
    /// (right) index of layer l; one row in shared mode, one per step in per-step mode.
    pub bits: Vec<Vec<u8>>,
}

impl SearchSpace {
    /// A space over `groups`, `layers` and `bit_options`.
    ///
    /// # Errors
    /// No groups, no layers, no or more than 255 bit options, or a bit-width outside 1..=8.
    pub fn new(
        groups: Vec<Range<usize>>,
        layers: Vec<LayerSlot>,
        bit_options: Vec<u32>,
        per_step: bool,
    ) -> Result<Self> {
        if groups.is_empty() || groups.iter().any(|g| g.is_empty()) {
            return Err(SearchError::Option(
                "timestep groups must be non-empty".into(),
            ));
        }
        if layers.is_empty() {
            return Err(SearchError::Option(
                "no quantizable layers to search over".into(),
            ));
        }
        if bit_options.is_empty() || bit_options.len() > 255 {
            return Err(SearchError::Option(format!(
                "{} bit options (need 1..=255)",
                bit_options.len()
            )));
        }
        if let Some(b) = bit_options.iter().find(|b| !(1..=8).contains(*b)) {
            return Err(SearchError::Option(format!("bit option {b} outside 1..=8")));
        }
        Ok(Self {
            groups,
            layers,
            bit_options,
            per_step,
        })
    }

    /// Genes per bit row (2 per layer).
    pub fn genes(&self) -> usize {
        2 * self.layers.len()
    }

    /// Bit rows of a candidate (1, or one per step).
    pub fn rows(&self) -> usize {
        if self.per_step { self.groups.len() } else { 1 }
    }

    /// The candidate with every timestep at its group's start and every gene at `index`
    /// (the reference's x0 uses index 2 = 6 bits of {8, 7, 6, 5}).
    pub fn uniform(&self, index: u8) -> Result<Candidate> {
        let c = Candidate {
            timesteps: self.groups.iter().map(|g| g.start).collect(),
            bits: vec![vec![index; self.genes()]; self.rows()],
        };
        self.check(&c)?;
        Ok(c)
    }

    /// A uniformly random candidate.
    pub fn random(&self, rng: &mut SearchRng) -> Candidate {
        Candidate {
            timesteps: self
                .groups
                .iter()
                .map(|g| rng.in_range(g.clone()))
                .collect(),
            bits: (0..self.rows())
                .map(|_| {
                    (0..self.genes())
                        .map(|_| rng.below(self.bit_options.len()) as u8)
                        .collect()
                })
                .collect(),
        }
    }

    /// Each timestep gene resampled inside its group and each bit gene resampled uniformly,
    /// each with probability `p` (§4.5).
    pub fn mutate(&self, parent: &Candidate, p: f64, rng: &mut SearchRng) -> Candidate {
        let mut c = parent.clone();
        for (t, g) in c.timesteps.iter_mut().zip(&self.groups) {
            if rng.uniform() < p {
                *t = rng.in_range(g.clone());
            }
        }
        for row in &mut c.bits {
            for gene in row.iter_mut() {
                if rng.uniform() < p {
                    *gene = rng.below(self.bit_options.len()) as u8;
                }
            }
        }
        c
    }

    /// Uniform crossover per position, timesteps and bit genes alike (§4.5).
    pub fn crossover(&self, a: &Candidate, b: &Candidate, rng: &mut SearchRng) -> Candidate {
        let pick = |rng: &mut SearchRng| rng.uniform() < 0.5;
        Candidate {
            timesteps: a
                .timesteps
                .iter()
                .zip(&b.timesteps)
                .map(|(&x, &y)| if pick(rng) { x } else { y })
                .collect(),
            bits: a
                .bits
                .iter()
                .zip(&b.bits)
                .map(|(ra, rb)| {
                    ra.iter()
                        .zip(rb)
                        .map(|(&x, &y)| if pick(rng) { x } else { y })
                        .collect()
                })
                .collect(),
        }
    }

    /// Checks that `c` lies in the space.
    pub fn check(&self, c: &Candidate) -> Result<()> {
        if c.timesteps.len() != self.groups.len() {
            return Err(SearchError::Candidate(format!(
                "{} timesteps for {} groups",
                c.timesteps.len(),
                self.groups.len()
            )));
        }
        if let Some((i, (t, g))) = c
            .timesteps
            .iter()
            .zip(&self.groups)
            .enumerate()
            .find(|(_, (t, g))| !g.contains(t))
        {
            return Err(SearchError::Candidate(format!(
                "timestep {t} of group {i} outside {g:?}"
            )));
        }
        self.check_bits(c)
    }

    /// Checks the bit rows of `c` only (its timesteps may be any list, e.g. a baseline's
    /// uniform timesteps).
    pub fn check_bits(&self, c: &Candidate) -> Result<()> {
        if c.bits.len() != self.rows() || c.bits.iter().any(|r| r.len() != self.genes()) {
            return Err(SearchError::Candidate(format!(
                "bit rows {:?}, expected {} rows of {} genes",
                c.bits.iter().map(Vec::len).collect::<Vec<_>>(),
                self.rows(),
                self.genes()
            )));
        }
        if let Some(g) = c
            .bits
            .iter()
            .flatten()
            .find(|&&g| g as usize >= self.bit_options.len())
        {
            return Err(SearchError::Candidate(format!(
                "bit index {g} with {} options",
                self.bit_options.len()
            )));
        }
        Ok(())
    }

    /// `(weight or left, input or right)` bits of layer `layer` at selected step `step`.
    pub fn layer_bits(&self, c: &Candidate, step: usize, layer: usize) -> (u32, u32) {
        let row = &c.bits[if self.per_step { step } else { 0 }];
        (
            self.bit_options[row[2 * layer] as usize],
            self.bit_options[row[2 * layer + 1] as usize],
        )
    }

    /// The mean bit-width of a candidate over its genes (for reports).
    pub fn mean_bits(&self, c: &Candidate) -> f64 {
        let n = c.bits.iter().map(Vec::len).sum::<usize>().max(1);
        c.bits
            .iter()
            .flatten()
            .map(|&g| self.bit_options[g as usize] as f64)
            .sum::<f64>()
            / n as f64
    }
}
