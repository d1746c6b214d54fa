//! TMPQ-DM through the library (docs/algorithms.md §4): a joint search of N sampling
//! timesteps and per-layer bit-widths under a BitOPs budget, written as a
//! [`SearchedConfig`] that [`crate::quantize`] (and `dmq quantize --config`) applies.
//!
//! The super-network is calibrated once per candidate bit-width on the calibration set;
//! candidates select quantizers from it. The fitness is the mean squared error between a
//! candidate's samples and the FP model's samples at `reference_steps` from the same noise
//! (model-agnostic; the paper's FD needs a feature network for the data domain). The search
//! checkpoints after every epoch and resumes.

use std::path::Path;

use burn::tensor::Device;
use burn::tensor::Tensor;
use dmq_calib::config::{default_act_spec, softmax_spec};
use dmq_calib::{CalibSet, Choice, LayerRule, PtqOptions, QuantConfig};
use dmq_eval::harness::{SampleSpec, generate};
use dmq_models::noise::NoiseRng;
use dmq_models::scheduler::DdimScheduler;
use dmq_models::{
    Denoiser, HostTensor, PromptStates, layer_inventory, layer_inventory_with_context,
};
use dmq_quant::file::write_atomic;
use dmq_search::{
    Budget, Candidate, CostModel, Evaluator, Evolution, EvolutionConfig, SearchSpace, SuperNet,
    layer_slots, timestep_groups,
};
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result, file_err};
use crate::method::Progress;
use crate::model::AnyDenoiser;
use crate::scheduler::SchedulerSpec;

/// `format` of a [`SearchedConfig`] file.
pub const SEARCH_FORMAT: &str = "dmq.search.v1";

/// Options of a TMPQ search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchOptions {
    /// Sampling steps N to select (one timestep per group of the training range).
    pub steps: usize,
    /// Candidate bit-widths for weights and activations (the paper: 8, 7, 6, 5).
    pub bit_options: Vec<u32>,
    /// The budget: BitOPs of the whole model at this width over N uniform steps.
    pub budget_bits: u32,
    /// The evolution's options (population, epochs, seed, ...); `x0_index` is set from
    /// `budget_bits`.
    pub evolution: EvolutionConfig,
    /// Samples per fitness evaluation.
    pub fitness_samples: usize,
    /// Noise seed of the fitness samples (keep it apart from the evaluation seed).
    pub fitness_seed: u64,
    /// Steps of the FP reference samples.
    pub reference_steps: usize,
    /// Classifier-free guidance scale (class-conditional models; 1 = none).
    pub guidance: f64,
    /// Calibration samples per activation quantizer of the super-network.
    pub act_samples: usize,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            steps: 10,
            bit_options: vec![8, 7, 6, 5],
            budget_bits: 6,
            evolution: EvolutionConfig {
                population: 20,
                top_k: 4,
                mutations: 10,
                crossovers: 4,
                epochs: 5,
                seed: 0,
                ..EvolutionConfig::default()
            },
            fitness_samples: 32,
            fitness_seed: 7_777,
            reference_steps: 100,
            guidance: 1.5,
            act_samples: 64,
        }
    }
}

/// The outcome of a search, as a config file: per-layer bit-widths (a [`QuantConfig`] with
/// one rule per layer) and the selected timesteps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchedConfig {
    /// [`SEARCH_FORMAT`].
    pub format: String,
    /// The per-layer bit-widths.
    pub config: QuantConfig,
    /// The selected timesteps, ascending.
    pub timesteps: Vec<usize>,
    /// Fitness of the result (MSE against the FP reference samples; lower is better).
    pub fitness: f64,
    /// Its BitOPs per image.
    pub bitops: f64,
    /// The budget it met.
    pub budget_bitops: f64,
    /// Mean bit-width over weights and activations.
    pub mean_bits: f64,
    /// The options of the search.
    pub options: SearchOptions,
}

impl SearchedConfig {
    /// The sampler over the searched timesteps, on the model's own schedule.
    pub fn sampler(&self, schedule: &SchedulerSpec) -> Result<DdimScheduler> {
        Ok(DdimScheduler::with_timesteps(
            &schedule.ddim,
            &self.timesteps,
        )?)
    }

    /// Writes the config as JSON (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| file_err(path, "json", e.to_string()))?;
        text.push('\n');
        write_atomic(path, text.as_bytes()).map_err(|e| file_err(path, "write", e.to_string()))
    }

    /// Parses a config written by [`SearchedConfig::save`]; refuses another format and
    /// timesteps that are not strictly ascending.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| file_err(path, "json", e.to_string()))?;
        match v.get("format").and_then(|f| f.as_str()) {
            Some(SEARCH_FORMAT) => {}
            other => {
                return Err(file_err(
                    path,
                    "format",
                    format!("{other:?} is not {SEARCH_FORMAT}"),
                ));
            }
        }
        let c: Self =
            serde_json::from_value(v).map_err(|e| file_err(path, "json", e.to_string()))?;
        if c.timesteps.is_empty() || c.timesteps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(file_err(
                path,
                "timesteps",
                "must be non-empty and strictly ascending",
            ));
        }
        Ok(c)
    }

    /// Whether `text` is a searched config (it names [`SEARCH_FORMAT`]).
    pub fn is_searched_config(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("format").and_then(|f| f.as_str()).map(String::from))
            .is_some_and(|f| f == SEARCH_FORMAT)
    }
}

fn mse(a: &HostTensor, b: &HostTensor) -> f64 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        / a.data.len().max(1) as f64
}

/// Candidate fitness: MSE of its samples against the FP reference.
struct ProxyFitness<'a> {
    fp: &'a AnyDenoiser,
    net: &'a SuperNet,
    space: &'a SearchSpace,
    schedule: &'a SchedulerSpec,
    spec: SampleSpec,
    prompts: Option<&'a PromptStates>,
    reference: HostTensor,
    device: &'a Device,
}

/// The fitness samples of `model`: [`generate`]'s (labels `i mod K` for a class-conditional
/// model), or for a text-conditional one prompts drawn from `prompts` by a generator seeded
/// with the spec's seed (the same prompts for the reference and every candidate), from the
/// same noise (`seed + i` for sample `i`).
fn fitness_samples<M: Denoiser + ?Sized>(
    model: &M,
    sched: &DdimScheduler,
    spec: &SampleSpec,
    prompts: Option<&PromptStates>,
    device: &Device,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<HostTensor> {
    let Some(prompts) = prompts else {
        return Ok(generate(model, sched, spec, device, on_batch)?);
    };
    let info = model.info();
    let (c, s) = (info.in_channels, info.sample_size);
    let mut rng = NoiseRng::new(spec.seed ^ 0x7E47);
    let mut data = Vec::with_capacity(spec.n * c * s * s);
    for start in (0..spec.n).step_by(spec.batch.max(1)) {
        let b = spec.batch.max(1).min(spec.n - start);
        let x: Vec<Tensor<4>> = (start..start + b)
            .map(|i| NoiseRng::new(spec.seed.wrapping_add(i as u64)).tensor([1, c, s, s], device))
            .collect();
        let cond = prompts.draw(&mut rng, b);
        let out = dmq_models::sampler::sample(
            model,
            sched,
            Tensor::cat(x, 0),
            Some(cond),
            spec.guidance,
            spec.seed.wrapping_add(start as u64),
            &mut |_, _| {},
        )?;
        data.extend(HostTensor::from_tensor(&out).data);
        on_batch(start + b, spec.n);
    }
    Ok(HostTensor {
        data,
        shape: vec![spec.n, c, s, s],
    })
}

impl Evaluator for ProxyFitness<'_> {
    fn evaluate(&self, batch: &[Candidate]) -> Vec<dmq_search::Result<f64>> {
        batch
            .iter()
            .map(|c| {
                (|| -> Result<f64> {
                    let mut m = self.fp.clone();
                    self.net.apply(&mut m, self.space, c, 0)?;
                    let sched = DdimScheduler::with_timesteps(&self.schedule.ddim, &c.timesteps)?;
                    let x = fitness_samples(
                        &m,
                        &sched,
                        &self.spec,
                        self.prompts,
                        self.device,
                        &mut |_, _| {},
                    )?;
                    Ok(mse(&x, &self.reference))
                })()
                .map_err(|e| dmq_search::SearchError::Fitness(e.to_string()))
            })
            .collect()
    }
}

/// The candidate as a config: one rule per layer with its weight and input bits (attention
/// matmuls: left and right operand bits; the softmax probabilities unsigned).
fn candidate_config(
    fp: &AnyDenoiser,
    space: &SearchSpace,
    c: &Candidate,
    budget_bits: u32,
) -> Result<QuantConfig> {
    let structure = fp.structure();
    let mut config = QuantConfig::wa(Some(budget_bits), Some(budget_bits))?;
    config.name = format!("tmpq (budget W{budget_bits}A{budget_bits})");
    for (l, slot) in space.layers.iter().enumerate() {
        let (wb, ab) = space.layer_bits(c, 0, l);
        let rule = if slot.matmul {
            let softmax_left = structure
                .attention
                .iter()
                .any(|a| a.matmuls[1] == slot.name);
            LayerRule {
                pattern: slot.name.clone(),
                weight: Choice::Keep,
                act: Choice::Spec(if softmax_left {
                    softmax_spec(wb)?
                } else {
                    default_act_spec(wb)?
                }),
                act_right: Some(Choice::Spec(default_act_spec(ab)?)),
            }
        } else {
            LayerRule::bits(&slot.name, Some(wb), Some(ab))?
        };
        config.rules.push(rule);
    }
    Ok(config)
}

/// Runs TMPQ-DM on `fp` (module docs) and returns the best candidate as a config.
/// `checkpoint`: a JSON file the search saves after every epoch and resumes from.
#[allow(clippy::too_many_arguments)]
pub fn tmpq(
    fp: &AnyDenoiser,
    schedule: &SchedulerSpec,
    calib: &CalibSet,
    opts: &SearchOptions,
    prompts: Option<&PromptStates>,
    checkpoint: Option<&Path>,
    device: &Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SearchedConfig> {
    let bad = |reason: String| PipelineError::Option {
        option: "search".into(),
        reason,
    };
    let budget_index = opts
        .bit_options
        .iter()
        .position(|&b| b == opts.budget_bits)
        .ok_or_else(|| {
            bad(format!(
                "budget bits {} is not one of the bit options {:?}",
                opts.budget_bits, opts.bit_options
            ))
        })?;
    if opts.fitness_samples == 0 || opts.reference_steps == 0 || opts.steps == 0 {
        return Err(bad(
            "steps, fitness samples and reference steps must be ≥ 1".into(),
        ));
    }
    let num_train = schedule.ddim.num_train_timesteps;
    let info = fp.info();
    let text = info.cross_attention_dim.is_some() && info.num_classes.is_none();
    if text && prompts.is_none() {
        return Err(bad(
            "a text-conditional model's fitness samples are prompted: give the prompt states"
                .into(),
        ));
    }
    let prompts = prompts.filter(|_| text);
    let guidance = if info.num_classes.is_some() || text {
        opts.guidance
    } else {
        1.0
    };
    let spec = SampleSpec {
        n: opts.fitness_samples,
        guidance,
        seed: opts.fitness_seed,
        batch: opts.fitness_samples.min(32),
    };
    // the FP reference from the same noise
    let reference_sched = schedule.ddim(opts.reference_steps)?;
    let reference = fitness_samples(fp, &reference_sched, &spec, prompts, device, &mut |d, n| {
        progress(&Progress {
            stage: "reference".into(),
            done: d as u64,
            total: n as u64,
            loss: None,
        })
    })?;
    let k = opts.bit_options.len() as u64;
    let mut done = 0;
    let net = SuperNet::calibrate(
        fp,
        &opts.bit_options,
        calib,
        &PtqOptions {
            act_samples: opts.act_samples,
            ..PtqOptions::default()
        },
        device,
        &mut |_| {
            done += 1;
            progress(&Progress {
                stage: "supernet".into(),
                done,
                total: k,
                loss: None,
            })
        },
    )?;
    let space = SearchSpace::new(
        timestep_groups(opts.steps, num_train)?,
        layer_slots(fp),
        opts.bit_options.clone(),
        false,
    )?;
    // a text model's cross-attention over its prompts' token count
    let calls = match prompts {
        Some(p) => layer_inventory_with_context(fp, p.context_len(), device)?,
        None => layer_inventory(fp, device)?,
    };
    let cost = CostModel::new(&calls, &space, guidance != 1.0)?;
    let budget = Budget {
        max_bitops: cost.bitops(&space, &space.uniform(budget_index as u8)?),
    };
    let evaluator = ProxyFitness {
        fp,
        net: &net,
        space: &space,
        schedule,
        spec,
        prompts,
        reference,
        device,
    };
    let config = EvolutionConfig {
        x0_index: budget_index as u8,
        ..opts.evolution.clone()
    };
    let epochs = config.epochs as u64 + 1;
    let mut evolution = Evolution::new(&space, &cost, budget, config)?;
    if let Some(p) = checkpoint {
        evolution = evolution.with_checkpoint(p);
    }
    let result = evolution.run(&evaluator, &mut |r| {
        progress(&Progress {
            stage: "search".into(),
            done: r.epoch as u64 + 1,
            total: epochs,
            loss: Some(r.best_fitness),
        })
    })?;
    let best = &result.best;
    Ok(SearchedConfig {
        format: SEARCH_FORMAT.into(),
        config: candidate_config(fp, &space, &best.candidate, opts.budget_bits)?,
        timesteps: best.candidate.timesteps.clone(),
        fitness: best.fitness,
        bitops: cost.bitops(&space, &best.candidate),
        budget_bitops: budget.max_bitops,
        mean_bits: space.mean_bits(&best.candidate),
        options: opts.clone(),
    })
}
