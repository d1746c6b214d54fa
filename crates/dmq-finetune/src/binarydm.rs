//! [`binarydm`]: BinaryDM (docs/algorithms.md §6): quantization-aware training of 1-bit weights on
//! real images, initialised from the FP model, with a frozen FP teacher.
//!
//! - **Weights**: the evolvable-basis binarizer (EBB, two bases, [`MultiBasisBinarizer`]) in
//!   the head and tail blocks, the vanilla σ·sign(w) ([`BinaryQuantizer`]) elsewhere; σ from
//!   the weights (mean |w| per output channel) and learnable. `L_EBB = τ·mean_layers(σ_II)`
//!   until the transition iteration, where the second basis is dropped.
//! - **Head and tail** ([`BinaryPlan`]): stages whose feature resolution is at least half
//!   the input (the paper's criterion, from the model's [`dmq_models::Structure`]); for
//!   transformers, which keep one resolution, the first and last transformer blocks.
//! - **Edges**: the first conv, the last layer and the timestep-embedding MLP stay FP (the
//!   reference code's `bnn_modules[0, 1, 2, -1]`), or W8A8 with `edge_bits`.
//! - **Activations**: signed LSQ per tensor (α = 2·mean|x|/√Q_p from the first batch, once —
//!   not the reference's re-initialise-every-call bug, §6.3), with the LSQ gradient scale, on
//!   every binarized layer's input and on the attention-matmul operands (the softmax
//!   probabilities unsigned, §6.3 pitfall c).
//! - **LRM** ([`crate::lrm`]): the block outputs of student and teacher projected on the
//!   teacher's top eigenvectors from the first batch, `λ·mean_blocks MSE`.
//! - **Loss** `L = mean(ε − ε_θ)² + L_EBB + λ·L_LRM`; AdamW; EMA of the weights, whose shadow
//!   is created after the scales are set from data (the §6.4 EMA pitfall).
//!
//! The run checkpoints every `checkpoint_every` steps and resumes exactly (the batch source
//! is asked for the batch of a given step). Scaling: the reference trains ~200k iterations at
//! batch 4 on a 274M-parameter LDM; the defaults here are sized for the 2–3M-parameter
//! Fashion-MNIST models and stated in every results table.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use dmq_calib::config::{default_act_spec, default_weight_spec, softmax_spec};
use dmq_models::Conditioning;
use dmq_models::layers::{LayerKind, LayerMut, LayerRef};
use dmq_models::noise::NoiseRng;
use dmq_models::scheduler::NoiseSchedule;
use dmq_models::train::{Checkpoint, Ema, TrainState, diffusion_batch};
use dmq_models::{
    Denoiser, ForwardCtx, HostTensor, InputCapture, Operand, StageKind, StepContext, Taps,
    layer_inventory, try_for_each_layer_mut,
};
use dmq_quant::{
    ActQuantizer, BinaryQuantizer, LsqQuantizer, MultiBasisBinarizer, QuantSpec, RangeInit,
    UniformQuantizer, WeightQuantizer, init_params,
};
use serde::{Deserialize, Serialize};

use crate::delta_floor::keep_act_deltas_positive;
use crate::error::{FinetuneError, Result};
use crate::lrm::{LrmAxis, LrmProjection, lrm_loss};
use crate::run::refuse_foreign_checkpoint;

/// BinaryDM settings (reference values in parentheses).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryDmConfig {
    /// EBB in the head and tail blocks (`false`: the vanilla binarizer everywhere).
    pub ebb: bool,
    /// LRM feature mimicking.
    pub lrm: bool,
    /// Activation bits (`None` = FP activations, W1A32).
    pub act_bits: Option<u32>,
    /// `None`: first/last layers and the timestep MLP FP (reference code); `Some(8)`: W8A8.
    pub edge_bits: Option<u32>,
    /// Head/tail block prefixes (`None` = the resolution rule of the module docs).
    pub head_tail: Option<Vec<String>>,
    /// Training iterations (reference ~200k).
    pub steps: usize,
    /// Batch size (reference 4).
    pub batch: usize,
    /// AdamW learning rate (reference 8e-5 effective).
    pub lr: f64,
    /// AdamW weight decay (torch's default 0.01).
    pub weight_decay: f64,
    /// τ of `L_EBB` (9e-2).
    pub tau: f64,
    /// Iteration at which EBB drops its second basis (reference 100k of 200k); `None` keeps
    /// two bases (the v1 code's LMB, exported as two bitplanes' worth of bits).
    pub transition: Option<usize>,
    /// λ of LRM (1e-4).
    pub lrm_lambda: f64,
    /// K of LRM: keep ⌈c/K⌉ components (4).
    pub lrm_k: usize,
    /// LRM axis (paper: channels).
    pub lrm_axis: LrmAxis,
    /// EMA decay (reference 0.9999 over 200k steps).
    pub ema_decay: f64,
    /// Save a checkpoint every this many iterations (and at the end).
    pub checkpoint_every: usize,
    /// Seed of the noise and timestep draws.
    pub seed: u64,
}

impl Default for BinaryDmConfig {
    fn default() -> Self {
        Self {
            ebb: true,
            lrm: true,
            act_bits: Some(4),
            edge_bits: None,
            head_tail: None,
            steps: 2000,
            batch: 16,
            lr: 2e-4,
            weight_decay: 0.01,
            tau: 9e-2,
            transition: Some(1000),
            lrm_lambda: 1e-4,
            lrm_k: 4,
            lrm_axis: LrmAxis::Channels,
            ema_decay: 0.999,
            checkpoint_every: 100,
            seed: 0xB1_0A27,
        }
    }
}

impl BinaryDmConfig {
    /// The ablation name of this configuration (the paper's rows).
    pub fn method(&self) -> &'static str {
        match (self.ebb, self.lrm) {
            (false, false) => "binary-baseline",
            (true, false) => "binarydm-no-lrm",
            (true, true) => "binarydm",
            (false, true) => "binary-lrm",
        }
    }

    fn check(&self) -> Result<()> {
        if self.steps == 0 || self.batch == 0 || self.checkpoint_every == 0 || self.lrm_k == 0 {
            return Err(FinetuneError::Option(
                "BinaryDM steps, batch, checkpoint interval and LRM K must be ≥ 1".into(),
            ));
        }
        let ok = self.lr > 0.0
            && self.lr <= 1.0
            && self.tau >= 0.0
            && self.tau.is_finite()
            && self.lrm_lambda >= 0.0
            && self.lrm_lambda.is_finite()
            && (0.0..1.0).contains(&self.ema_decay)
            && self.weight_decay >= 0.0;
        if !ok {
            return Err(FinetuneError::Option(format!(
                "BinaryDM lr {} must be in (0, 1], τ {} and λ {} ≥ 0, EMA decay {} in [0, 1), weight decay {} ≥ 0",
                self.lr, self.tau, self.lrm_lambda, self.ema_decay, self.weight_decay
            )));
        }
        Ok(())
    }
}

/// Which layers get which treatment, and the LRM blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryPlan {
    /// Head/tail blocks (EBB).
    pub head_tail: Vec<String>,
    /// Layers with the two-basis EBB binarizer.
    pub ebb: Vec<String>,
    /// Layers with the vanilla binarizer.
    pub vanilla: Vec<String>,
    /// FP (or 8-bit) edge layers.
    pub edges: Vec<String>,
    /// Blocks whose outputs LRM mimics.
    pub blocks: Vec<String>,
    /// Weight parameters of the binarized layers and of all linear/conv layers.
    pub binarized_params: usize,
    /// Weight parameters of all linear/conv layers.
    pub layer_params: usize,
}

/// Resolves the layer treatments on `fp` (module docs).
pub fn binary_plan<M: Denoiser + ?Sized>(
    fp: &M,
    cfg: &BinaryDmConfig,
    device: &Device,
) -> Result<BinaryPlan> {
    let calls = layer_inventory(fp, device)?;
    let mut dense: Vec<&dmq_models::LayerCall> = Vec::new();
    for c in calls.iter().filter(|c| c.kind != LayerKind::Matmul) {
        if !dense.iter().any(|d| d.name == c.name) {
            dense.push(c);
        }
    }
    let first = dense
        .iter()
        .find(|c| c.kind == LayerKind::Conv2d)
        .map(|c| c.name.clone());
    let last = dense.last().map(|c| c.name.clone());
    // stages that hold quantizable layers, in forward order
    let structure = fp.structure();
    let blocks: Vec<String> = structure
        .stages
        .iter()
        .filter(|st| {
            calls
                .iter()
                .any(|c| structure.stage_of(&c.name) == Some(*st))
        })
        .map(|st| st.path.clone())
        .collect();
    let head_tail = match &cfg.head_tail {
        Some(h) => {
            if let Some(bad) = h.iter().find(|b| !blocks.contains(b)) {
                return Err(FinetuneError::Option(format!(
                    "head/tail block `{bad}` is not a block of this model (blocks: {blocks:?})"
                )));
            }
            h.clone()
        }
        None => {
            let transformer: Vec<&String> = structure
                .stages
                .iter()
                .filter(|st| st.kind == StageKind::Transformer && blocks.contains(&st.path))
                .map(|st| &st.path)
                .collect();
            match transformer.as_slice() {
                // transformers work at one resolution: the first and the last block
                [first, .., last] => vec![(*first).clone(), (*last).clone()],
                [only] => vec![(*only).clone()],
                // the paper's rule: blocks at no less than half the input resolution
                [] => {
                    let s = fp.info().sample_size;
                    structure
                        .stages
                        .iter()
                        .filter(|st| blocks.contains(&st.path) && 2 * st.resolution >= s)
                        .map(|st| st.path.clone())
                        .collect()
                }
            }
        }
    };
    let mut plan = BinaryPlan {
        head_tail: head_tail.clone(),
        ebb: vec![],
        vanilla: vec![],
        edges: vec![],
        blocks,
        binarized_params: 0,
        layer_params: 0,
    };
    for c in &dense {
        let n: usize = c.weight_shape.iter().product();
        plan.layer_params += n;
        let edge = Some(&c.name) == first.as_ref() || Some(&c.name) == last.as_ref();
        if edge || structure.is_time_mlp(&c.name) {
            plan.edges.push(c.name.clone());
            continue;
        }
        plan.binarized_params += n;
        let in_ht = structure
            .stage_of(&c.name)
            .is_some_and(|st| head_tail.contains(&st.path));
        if cfg.ebb && in_ht {
            plan.ebb.push(c.name.clone());
        } else {
            plan.vanilla.push(c.name.clone());
        }
    }
    Ok(plan)
}

fn binarizer<const D: usize>(w: Tensor<D>, ebb: bool) -> dmq_quant::Result<WeightQuantizer> {
    Ok(if ebb {
        WeightQuantizer::MultiBasis(MultiBasisBinarizer::init(w)?)
    } else {
        WeightQuantizer::Binary(BinaryQuantizer::init(w)?)
    })
}

/// The BinaryDM weight quantizer of one layer: a binarizer (`bin`, two bases if `ebb`), the
/// 8-bit edge quantizer (`edge`), or none.
fn weight_quantizer<const D: usize>(
    w: Tensor<D>,
    slot: &mut Option<WeightQuantizer>,
    bin: bool,
    ebb: bool,
    edge: Option<QuantSpec>,
) -> dmq_quant::Result<()> {
    if bin {
        *slot = Some(binarizer(w, ebb)?);
    } else if let Some(s) = edge {
        *slot = Some(WeightQuantizer::Uniform(UniformQuantizer::init(
            s,
            w,
            &RangeInit::Max,
        )?));
    }
    Ok(())
}

fn signed_lsq(bits: u32) -> Result<QuantSpec> {
    Ok(QuantSpec::signed_symmetric(bits)?)
}

/// Attaches the binarizers (and 8-bit edges) of `plan`, then the signed LSQ activation
/// quantizers, initialised once on the inputs of `first` (x_t, t, class) as the
/// weight-binarized model sees them. The result is frozen; see [`set_binary_trainable`].
pub fn binarize<M: Denoiser + Module + Clone>(
    fp: &M,
    plan: &BinaryPlan,
    cfg: &BinaryDmConfig,
    first: (Tensor<4>, Tensor<1>, Option<Conditioning>),
    device: &Device,
) -> Result<M> {
    let mut model = fp.clone().no_grad();
    let edge_w = cfg.edge_bits.map(default_weight_spec).transpose()?;
    try_for_each_layer_mut(&mut model, |layer| {
        let name = layer.name().to_string();
        let ebb = plan.ebb.contains(&name);
        let bin = ebb || plan.vanilla.contains(&name);
        match layer {
            LayerMut::Linear(l) => {
                weight_quantizer(l.weight.val(), &mut l.w_quant, bin, ebb, edge_w)
            }
            LayerMut::Conv2d(l) => {
                weight_quantizer(l.weight.val(), &mut l.w_quant, bin, ebb, edge_w)
            }
            LayerMut::Matmul(_) => Ok(()),
        }
        .map_err(|e| FinetuneError::Layer {
            layer: name,
            reason: e.to_string(),
        })
    })?;
    let Some(bits) = cfg.act_bits else {
        return Ok(model);
    };
    let (x, t, cond) = first;
    let cap = InputCapture::all();
    model.forward(
        x,
        t,
        cond,
        &ForwardCtx::new(StepContext::single(500.0)).with_inputs(&cap),
    )?;
    let captured = cap.take();
    let edge_a = cfg.edge_bits;
    let act_q = |name: &str, op: Operand, spec: QuantSpec| -> Result<ActQuantizer> {
        let parts = captured
            .get(&(name.to_string(), op))
            .ok_or_else(|| FinetuneError::Layer {
                layer: name.into(),
                reason: "was not called on the first batch".into(),
            })?;
        let x = dmq_calib::concat_rows(parts, 1 << 20, name)?;
        if x.data.iter().any(|v| !v.is_finite()) {
            return Err(FinetuneError::Layer {
                layer: name.into(),
                reason: "its input on the first batch is not finite".into(),
            });
        }
        let p = init_params(&x.data, &x.shape, &spec, &RangeInit::Lsq)?;
        Ok(ActQuantizer::Lsq(LsqQuantizer::from_params(
            &p, false, true, device,
        )?))
    };
    let structure = fp.structure();
    try_for_each_layer_mut(&mut model, |layer| -> Result<()> {
        let name = layer.name().to_string();
        let bin = plan.ebb.contains(&name) || plan.vanilla.contains(&name);
        match layer {
            LayerMut::Linear(l) if bin => {
                l.a_quant = Some(act_q(&name, Operand::Input, signed_lsq(bits)?)?)
            }
            LayerMut::Conv2d(l) if bin => {
                l.a_quant = Some(act_q(&name, Operand::Input, signed_lsq(bits)?)?)
            }
            LayerMut::Linear(l) => {
                if let Some(b) = edge_a {
                    l.a_quant = Some(act_q(&name, Operand::Input, default_act_spec(b)?)?)
                }
            }
            LayerMut::Conv2d(l) => {
                if let Some(b) = edge_a {
                    l.a_quant = Some(act_q(&name, Operand::Input, default_act_spec(b)?)?)
                }
            }
            LayerMut::Matmul(m) => {
                // the left operand of probabilities·V is a softmax output: unsigned
                let left = if structure.attention.iter().any(|a| a.matmuls[1] == name) {
                    softmax_spec(bits)?
                } else {
                    signed_lsq(bits)?
                };
                m.a_quant = Some(act_q(&name, Operand::Left, left)?);
                m.b_quant = Some(act_q(&name, Operand::Right, signed_lsq(bits)?)?);
            }
        }
        Ok(())
    })?;
    Ok(model.no_grad())
}

/// QAT trainability (the reference trains the whole UNet): every parameter — latent
/// weights, biases, norms, embeddings, σ of both bases, LSQ α — except the zero points (0 for
/// the signed LSQ) and the 8-bit edge quantizers' (Δ, z), which stay as initialised.
pub fn set_binary_trainable<M: Denoiser + Module>(model: M) -> M {
    let mut model = model.set_require_grad(true);
    model.for_each_layer_mut(&mut |layer| {
        let (w, acts): (
            Option<&mut Option<WeightQuantizer>>,
            Vec<&mut Option<ActQuantizer>>,
        ) = match layer {
            LayerMut::Linear(l) => (Some(&mut l.w_quant), vec![&mut l.a_quant]),
            LayerMut::Conv2d(l) => (Some(&mut l.w_quant), vec![&mut l.a_quant]),
            LayerMut::Matmul(m) => (None, vec![&mut m.a_quant, &mut m.b_quant]),
        };
        if let Some(Some(WeightQuantizer::Uniform(u))) = w {
            *u = u.clone().no_grad();
        }
        for a in acts.into_iter().flatten() {
            match a {
                ActQuantizer::Lsq(q) => q.zero = q.zero.clone().set_require_grad(false),
                ActQuantizer::Uniform(u) => *u = u.clone().no_grad(),
                _ => {}
            }
        }
    });
    model
}

/// Drops the second EBB basis of every layer (the transition).
pub fn collapse_ebb<M: Denoiser + ?Sized>(model: &mut M) -> usize {
    let mut n = 0;
    model.for_each_layer_mut(&mut |layer| {
        let w = match layer {
            LayerMut::Linear(l) => &mut l.w_quant,
            LayerMut::Conv2d(l) => &mut l.w_quant,
            LayerMut::Matmul(_) => return,
        };
        if let Some(WeightQuantizer::MultiBasis(q)) = w
            && q.sigma2.is_some()
        {
            *q = q.clone().collapse();
            n += 1;
        }
    });
    n
}

/// `τ·mean_layers(mean σ_II)` over the layers that still have two bases.
pub fn ebb_loss<M: Denoiser + ?Sized>(model: &M, tau: f64) -> Option<Tensor<1>> {
    let mut terms = Vec::new();
    model.for_each_layer(&mut |layer| {
        let w = match layer {
            LayerRef::Linear(l) => &l.w_quant,
            LayerRef::Conv2d(l) => &l.w_quant,
            LayerRef::Matmul(_) => return,
        };
        if let Some(WeightQuantizer::MultiBasis(q)) = w
            && let Some(m) = q.sigma2_mean()
        {
            terms.push(m);
        }
    });
    let n = terms.len();
    (n > 0).then(|| Tensor::cat(terms, 0).sum() * (tau / n as f64))
}

/// Where a run is.
#[derive(Clone, Debug, PartialEq)]
pub struct BinaryProgress {
    /// Iterations done.
    pub step: usize,
    /// Iterations of the run.
    pub total: usize,
    /// ε-MSE of the last batch.
    pub eps_loss: f64,
    /// Total loss of the last batch.
    pub loss: f64,
}

/// What a run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BinaryDmReport {
    /// Layer treatments.
    pub plan: BinaryPlan,
    /// Iterations restored from a checkpoint.
    pub resumed_steps: usize,
    /// (iteration, smoothed ε-MSE) every 10 iterations.
    pub losses: Vec<(usize, f32)>,
    /// The loss terms, σ_II and the EBB gradient ratio every 10 iterations (kept across a
    /// resume in the checkpoint directory's `diagnostics.json`).
    pub diagnostics: Vec<BinaryDiag>,
    /// Seconds of training, summed over sessions.
    pub train_s: f64,
}

/// What one BinaryDM iteration looked like (recorded every 10 iterations): the loss terms of
/// its batch, so LRM's share of the loss is visible, and the state of the EBB second basis
/// through the transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BinaryDiag {
    /// Iterations done (after this one).
    pub step: usize,
    /// ε-MSE of the batch.
    pub eps_loss: f64,
    /// `λ·L_LRM` of the batch (0 without LRM).
    pub lrm_term: f64,
    /// `L_EBB = τ·mean σ_II` of the batch (0 without EBB or after the transition).
    pub ebb_term: f64,
    /// Mean σ_II over the EBB layers (None: no second basis left).
    pub sigma2_mean: Option<f64>,
    /// `‖∂L/∂σ_II‖ / ‖∂L/∂σ_I‖` over the EBB layers: how hard the loss still pulls on the second
    /// basis relative to the first (None: no second basis).
    pub grad_ratio: Option<f64>,
}

/// Mean σ_II over the layers with two bases, and the EBB gradient ratio from `grads`.
fn ebb_state<M: Denoiser + ?Sized>(
    model: &M,
    grads: &burn::tensor::Gradients,
) -> (Option<f64>, Option<f64>) {
    let (mut s2, mut n, mut g1, mut g2) = (0.0, 0usize, 0.0, 0.0);
    model.for_each_layer(&mut |layer| {
        let w = match layer {
            LayerRef::Linear(l) => &l.w_quant,
            LayerRef::Conv2d(l) => &l.w_quant,
            LayerRef::Matmul(_) => return,
        };
        if let Some(WeightQuantizer::MultiBasis(q)) = w
            && let Some(sigma2) = &q.sigma2
        {
            let sq = |t: Option<Tensor<1>>| {
                t.map_or(0.0, |g| {
                    HostTensor::from_tensor(&g)
                        .data
                        .iter()
                        .map(|v| f64::from(v * v))
                        .sum()
                })
            };
            s2 += HostTensor::from_tensor(&sigma2.val().mean())
                .data
                .first()
                .map_or(0.0, |&v| f64::from(v));
            n += 1;
            g1 += sq(q.sigma1.val().grad(grads));
            g2 += sq(sigma2.val().grad(grads));
        }
    });
    if n == 0 {
        return (None, None);
    }
    let ratio = (g1 > 0.0).then(|| (g2 / g1).sqrt());
    (Some(s2 / n as f64), ratio)
}

/// A training batch: clean samples `x0` `[B, C, H, W]` (images in [−1, 1], or a latent
/// model's scaled latents) and their conditioning (labels, or text states; the null class or
/// empty prompt already applied for CFG dropout, if wanted).
pub type Batch = (Tensor<4>, Option<Conditioning>);

fn scalar(t: &Tensor<1>) -> f64 {
    HostTensor::from_tensor(t)
        .data
        .first()
        .map_or(f64::NAN, |&v| f64::from(v))
}

/// BinaryDM on `fp` (an autodiff device) with training batches from `data(step)` (asked for
/// every iteration, also the first one twice: once for the initialisation), noised under
/// `schedule` (the model's own training noise schedule). Returns the EMA model (frozen, EBB
/// collapsed if the transition was reached) and the report.
#[allow(clippy::too_many_arguments)]
pub fn binarydm<M: Denoiser + Module + Clone>(
    fp: &M,
    cfg: &BinaryDmConfig,
    schedule: &NoiseSchedule,
    data: &mut dyn FnMut(usize) -> Result<Batch>,
    checkpoint: Option<&Path>,
    device: &Device,
    progress: &mut dyn FnMut(&BinaryProgress),
) -> Result<(M, BinaryDmReport)> {
    cfg.check()?;
    dmq_models::train::require_autodiff(device, "BinaryDM")?;
    let tag = serde_json::json!({ "config": cfg });
    let ck = checkpoint.map(Checkpoint::new);
    refuse_foreign_checkpoint(ck.as_ref(), &tag, "configs")?;
    let teacher = fp.clone().no_grad();
    let plan = binary_plan(&teacher, cfg, device)?;
    let noised = |step: usize, x0: Tensor<4>| {
        let mut rng =
            NoiseRng::new(cfg.seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        diffusion_batch(x0, schedule, &mut rng)
    };
    let (x0, class) = data(0)?;
    let b0 = noised(0, x0)?;
    let mut student = binarize(
        &teacher,
        &plan,
        cfg,
        (b0.x_t.clone(), b0.t.clone(), class.clone()),
        device,
    )?;
    // LRM projections from the teacher's features on the first batch, frozen
    let mut projections: BTreeMap<String, LrmProjection> = BTreeMap::new();
    if cfg.lrm {
        let taps = Taps::new(plan.blocks.iter().cloned());
        teacher.forward(
            b0.x_t.clone(),
            b0.t.clone(),
            class.clone(),
            &ForwardCtx::new(StepContext::single(500.0)).with_taps(&taps),
        )?;
        let feats = taps.take();
        for b in &plan.blocks {
            let f = feats.get(b).ok_or_else(|| FinetuneError::Layer {
                layer: b.clone(),
                reason: "block output is not tapped by this model".into(),
            })?;
            let host = match f {
                dmq_models::TapTensor::R2(x) => HostTensor::from_tensor(x),
                dmq_models::TapTensor::R3(x) => HostTensor::from_tensor(x),
                dmq_models::TapTensor::R4(x) => HostTensor::from_tensor(x),
            };
            projections.insert(
                b.clone(),
                LrmProjection::fit(&host, cfg.lrm_axis, cfg.lrm_k)?,
            );
        }
    }
    let mut optim = dmq_models::train::adamw(cfg.weight_decay as f32).init();
    let mut state = TrainState {
        notes: tag.clone(),
        ..TrainState::default()
    };
    // the shadow is made after the scales are set from data (§6.4 EMA pitfall), and after the
    // collapse when resuming past the transition (the record has one basis then)
    let resumed_past = match &ck {
        Some(ck) => ck
            .state()?
            .is_some_and(|st| cfg.transition.is_some_and(|tr| st.step >= tr)),
        None => false,
    };
    if resumed_past {
        collapse_ebb(&mut student);
    }
    let mut ema = Ema::new(&student, cfg.ema_decay);
    if let Some(ck) = &ck
        && let Some((m, e, o, st)) =
            ck.load(student.clone(), ema.shadow().clone(), optim.clone())?
    {
        student = m;
        ema = Ema::resume(e, cfg.ema_decay, st.ema_updates);
        optim = o;
        state = st;
    }
    let resumed_steps = state.step;
    let diag_path = ck.as_ref().map(|c| c.dir().join("diagnostics.json"));
    let mut diagnostics: Vec<BinaryDiag> = match &diag_path {
        Some(p) if resumed_steps > 0 && p.exists() => std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    diagnostics.retain(|d| d.step <= resumed_steps);
    let mut student = set_binary_trainable(student);
    let session = Instant::now();
    let wall0 = state.wall_s;
    let mut smooth: Option<f64> = None;
    while state.step < cfg.steps {
        let step = state.step;
        if cfg.transition == Some(step) && collapse_ebb(&mut student) > 0 {
            let mut shadow = ema.shadow().clone();
            collapse_ebb(&mut shadow);
            ema = Ema::resume(shadow, cfg.ema_decay, ema.updates());
        }
        let (x0, class) = data(step)?;
        let b = noised(step, x0)?;
        let taps_s = Taps::new(plan.blocks.iter().cloned());
        let ctx = ForwardCtx::new(StepContext::single(0.0));
        let eps = student.predict_eps(
            b.x_t.clone(),
            b.t.clone(),
            class.clone(),
            &if cfg.lrm { ctx.with_taps(&taps_s) } else { ctx },
        )?;
        let eps_loss = (eps - b.noise.clone()).powi_scalar(2).mean();
        let e = scalar(&eps_loss);
        let mut loss = eps_loss;
        let record = (step + 1).is_multiple_of(10);
        let (mut lrm_term, mut ebb_term) = (0.0, 0.0);
        if cfg.lrm {
            let taps_t = Taps::new(plan.blocks.iter().cloned());
            teacher.forward(
                b.x_t.clone(),
                b.t.clone(),
                class,
                &ForwardCtx::new(StepContext::single(0.0)).with_taps(&taps_t),
            )?;
            if let Some(l) = lrm_loss(
                &taps_s.take(),
                &taps_t.take(),
                &projections,
                cfg.lrm_axis,
                device,
            )? {
                let term = l * cfg.lrm_lambda;
                if record {
                    lrm_term = scalar(&term);
                }
                loss = loss + term;
            }
        }
        if cfg.ebb
            && let Some(r) = ebb_loss(&student, cfg.tau)
        {
            if record {
                ebb_term = scalar(&r);
            }
            loss = loss + r;
        }
        let v = scalar(&loss);
        if !v.is_finite() {
            return Err(FinetuneError::NonFinite {
                loss: v,
                epoch: 0,
                step,
            });
        }
        let raw = loss.backward();
        if record {
            let (sigma2_mean, grad_ratio) = ebb_state(&student, &raw);
            diagnostics.push(BinaryDiag {
                step: step + 1,
                eps_loss: e,
                lrm_term,
                ebb_term,
                sigma2_mean,
                grad_ratio,
            });
        }
        let grads = GradientsParams::from_grads(raw, &student);
        student = optim.step(cfg.lr, student, grads);
        // an AdamW step can flip a small 8-bit LSQ Δ negative (seen on a DiT attention operand)
        keep_act_deltas_positive(&mut student, 0, &|_| true);
        ema.update(&student);
        state.step += 1;
        state.ema_updates = ema.updates();
        let s = smooth.map_or(e, |s| 0.98 * s + 0.02 * e);
        smooth = Some(s);
        if state.step.is_multiple_of(10) {
            state.losses.push((state.step, s as f32));
        }
        progress(&BinaryProgress {
            step: state.step,
            total: cfg.steps,
            eps_loss: e,
            loss: v,
        });
        if let Some(ck) = &ck
            && (state.step.is_multiple_of(cfg.checkpoint_every) || state.step == cfg.steps)
        {
            state.wall_s = wall0 + session.elapsed().as_secs_f64();
            ck.save(&student, ema.shadow(), &optim, &state)?;
            if let Some(p) = &diag_path {
                let text = serde_json::to_string(&diagnostics).unwrap_or_else(|_| "[]".into());
                dmq_quant::file::write_atomic(p, text.as_bytes())?;
            }
        }
    }
    state.wall_s = wall0 + session.elapsed().as_secs_f64();
    Ok((
        ema.shadow().clone().no_grad(),
        BinaryDmReport {
            plan,
            resumed_steps,
            losses: state.losses.clone(),
            diagnostics,
            train_s: state.wall_s,
        },
    ))
}
