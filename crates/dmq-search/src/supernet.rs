//! The super-network (docs/algorithms.md §4.3): every quantizable layer holds K calibrated
//! quantizer sets, one per candidate bit-width, calibrated once; a mixed assignment is
//! applied by **selecting** each layer's weight and input quantizers, nothing recalibrated.
//!
//! Calibration per bit-width b: the whole model at WbAb (per-channel weights, per-tensor
//! activations, attention matmuls included) with the caller's ranges (max, as the reference
//! initialises them, or MSE), activation sets per step or step group as configured. The
//! paper then runs Q-Diffusion's reconstruction per set; `SuperNet::from_models` accepts
//! models calibrated any way (e.g. by `dmq_calib::qdiffusion`) to do the same.
//!
//! Each set was calibrated with the same bit-width upstream, so a mixed assignment is an
//! approximation: that is what parameter sharing trades for not recalibrating.

use std::collections::BTreeMap;

use burn::tensor::Device;
use dmq_calib::{CalibSet, PtqOptions, QuantConfig, ptq};
use dmq_models::Denoiser;
use dmq_models::layers::{LayerMut, LayerRef};
use dmq_quant::{ActQuantizer, WeightQuantizer};

use crate::candidate::{Candidate, LayerSlot, SearchSpace};
use crate::error::{Result, SearchError};

/// The quantizers of one layer at one bit-width.
// Few sets per layer and bit-width, built once: boxing the dense variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Set {
    Dense {
        w: Option<WeightQuantizer>,
        a: Option<ActQuantizer>,
    },
    Matmul {
        a: Option<ActQuantizer>,
        b: Option<ActQuantizer>,
    },
}

/// K calibrated quantizer sets per layer (see the module docs).
#[derive(Debug)]
pub struct SuperNet {
    bit_options: Vec<u32>,
    /// `sets[k][layer]`: the quantizers calibrated at `bit_options[k]`.
    sets: Vec<BTreeMap<String, Set>>,
    layers: Vec<LayerSlot>,
}

fn harvest<M: Denoiser + ?Sized>(model: &M) -> BTreeMap<String, Set> {
    let mut out = BTreeMap::new();
    model.for_each_layer(&mut |l| {
        let set = match &l {
            LayerRef::Linear(q) => Set::Dense {
                w: q.w_quant.clone(),
                a: q.a_quant.clone(),
            },
            LayerRef::Conv2d(q) => Set::Dense {
                w: q.w_quant.clone(),
                a: q.a_quant.clone(),
            },
            LayerRef::Matmul(q) => Set::Matmul {
                a: q.a_quant.clone(),
                b: q.b_quant.clone(),
            },
        };
        out.insert(l.name().to_string(), set);
    });
    out
}

/// The search-space layers of `model`, in forward order.
pub fn layer_slots<M: Denoiser + ?Sized>(model: &M) -> Vec<LayerSlot> {
    let mut out = Vec::new();
    model.for_each_layer(&mut |l| {
        out.push(LayerSlot {
            name: l.name().to_string(),
            matmul: matches!(l, LayerRef::Matmul(_)),
        })
    });
    out
}

impl SuperNet {
    /// Calibrates `fp` once per bit-width of `bit_options` by naive PTQ with `opts` (its
    /// ranges — `RangeInit::Max` is the reference code's initialisation, the MSE default is
    /// what the naive baselines use — and its activation grouping `opts.time`) on `calib`.
    /// The paper calibrates each bit-width by reconstruction; build those models with
    /// `dmq_calib::qdiffusion` and use [`SuperNet::from_models`].
    pub fn calibrate<M: Denoiser + Clone>(
        fp: &M,
        bit_options: &[u32],
        calib: &CalibSet,
        opts: &PtqOptions,
        device: &Device,
        progress: &mut dyn FnMut(u32),
    ) -> Result<Self> {
        let mut models = Vec::with_capacity(bit_options.len());
        for &b in bit_options {
            let mut m = fp.clone();
            ptq(
                &mut m,
                &QuantConfig::wa(Some(b), Some(b))?,
                calib,
                opts,
                device,
            )?;
            progress(b);
            models.push(m);
        }
        Self::from_models(bit_options, &models)
    }

    /// A super-network from models already quantized at `bit_options[k]` (one each, same
    /// architecture), however they were calibrated.
    pub fn from_models<M: Denoiser>(bit_options: &[u32], models: &[M]) -> Result<Self> {
        if models.len() != bit_options.len() || models.is_empty() {
            return Err(SearchError::Option(format!(
                "{} models for {} bit options",
                models.len(),
                bit_options.len()
            )));
        }
        let layers = layer_slots(&models[0]);
        let sets: Vec<_> = models.iter().map(|m| harvest(m)).collect();
        if let Some(k) = sets.iter().position(|s| s.len() != layers.len()) {
            return Err(SearchError::Option(format!(
                "the model for {} bits has {} layers, the first {}",
                bit_options[k],
                sets[k].len(),
                layers.len()
            )));
        }
        Ok(Self {
            bit_options: bit_options.to_vec(),
            sets,
            layers,
        })
    }

    /// The bit-widths, index k = set k.
    pub fn bit_options(&self) -> &[u32] {
        &self.bit_options
    }

    /// The layers, in forward order (the search space's).
    pub fn layers(&self) -> &[LayerSlot] {
        &self.layers
    }

    /// Sets every layer of `model` to the quantizers candidate `c` selects at selected
    /// step `step` (any step in shared mode). Only the bits are checked: the timesteps are
    /// the sampler's business (baselines use timesteps outside the groups). `model` has the architecture calibrated.
    pub fn apply<M: Denoiser + ?Sized>(
        &self,
        model: &mut M,
        space: &SearchSpace,
        c: &Candidate,
        step: usize,
    ) -> Result<()> {
        space.check_bits(c)?;
        if space.layers != self.layers || space.bit_options != self.bit_options {
            return Err(SearchError::Option(
                "the search space was not built from this super-network".into(),
            ));
        }
        let index: BTreeMap<&str, usize> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.as_str(), i))
            .collect();
        let row = &c.bits[if space.per_step { step } else { 0 }];
        let mut missing = None;
        model.for_each_layer_mut(&mut |l| {
            let name = l.name().to_string();
            let Some(&i) = index.get(name.as_str()) else {
                missing = Some(name);
                return;
            };
            let (kw, ka) = (row[2 * i] as usize, row[2 * i + 1] as usize);
            let (sw, sa) = (&self.sets[kw][&name], &self.sets[ka][&name]);
            match (l, sw, sa) {
                (LayerMut::Linear(q), Set::Dense { w, .. }, Set::Dense { a, .. }) => {
                    q.w_quant = w.clone();
                    q.a_quant = a.clone();
                }
                (LayerMut::Conv2d(q), Set::Dense { w, .. }, Set::Dense { a, .. }) => {
                    q.w_quant = w.clone();
                    q.a_quant = a.clone();
                }
                (LayerMut::Matmul(q), Set::Matmul { a, .. }, Set::Matmul { b, .. }) => {
                    q.a_quant = a.clone();
                    q.b_quant = b.clone();
                }
                _ => missing = Some(name),
            }
        });
        match missing {
            Some(name) => Err(SearchError::Option(format!(
                "layer '{name}' of the model does not match the super-network"
            ))),
            None => Ok(()),
        }
    }
}
