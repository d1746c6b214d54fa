//! EfficientDM's optimiser groups (docs/algorithms.md §3.3 step 6) as burn per-parameter learning
//! rates: one group per LoRA layer for A and B at `mean(Δ_w)/lora_lr_divisor`, one per layer
//! for Δ_w at `weight_delta_lr`, and the TALSQ Δ_x, z_x at `talsq_lr` (the base group); every
//! group decays linearly to 0 over the run.
//!
//! The scale-aware rule is a learning rate, not a gradient factor: under AdamW a constant
//! gradient factor cancels in the second-moment normalisation (§3.1 pitfall).

use burn::module::{ParamGroup, ParamId};
use burn::optim::lr_scheduler::LrSchedulerConfig;
use burn::optim::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLrScheduler, ModuleLrSchedulerConfig};
use dmq_models::layers::LayerRef;
use dmq_models::{Denoiser, try_for_each_layer};
use dmq_quant::WeightQuantizer;
use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result};

/// Learning-rate settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrConfig {
    /// LoRA lr of a layer = mean(Δ_w)/divisor (reference 2500).
    pub lora_lr_divisor: f64,
    /// lr of Δ_w (reference 1e-6).
    pub weight_delta_lr: f64,
    /// lr of TALSQ Δ_x and z_x (reference 5e-4).
    pub talsq_lr: f64,
}

impl Default for LrConfig {
    fn default() -> Self {
        Self {
            lora_lr_divisor: 2500.0,
            weight_delta_lr: 1e-6,
            talsq_lr: 5e-4,
        }
    }
}

/// The starting learning rates of one LoRA layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerLr {
    /// diffusers path.
    pub layer: String,
    /// mean(Δ_w) over output channels.
    pub mean_delta: f64,
    /// lr of A and B.
    pub lora: f64,
    /// lr of Δ_w.
    pub delta: f64,
    #[serde(skip)]
    lora_ids: Vec<ParamId>,
    #[serde(skip)]
    delta_id: Option<ParamId>,
}

fn check_lr(what: &str, lr: f64) -> Result<()> {
    if lr > 0.0 && lr <= 1.0 && lr.is_finite() {
        Ok(())
    } else {
        Err(FinetuneError::Option(format!(
            "{what} learning rate {lr} must be in (0, 1]"
        )))
    }
}

/// Per-layer learning rates of every QALoRA layer of `model`, in forward order.
pub fn layer_lrs<M: Denoiser + ?Sized>(model: &M, cfg: &LrConfig) -> Result<Vec<LayerLr>> {
    if cfg.lora_lr_divisor.is_nan() || cfg.lora_lr_divisor <= 0.0 {
        return Err(FinetuneError::Option(format!(
            "LoRA lr divisor {} must be > 0",
            cfg.lora_lr_divisor
        )));
    }
    let mut out = Vec::new();
    try_for_each_layer(model, |layer| -> Result<()> {
        let w = match layer {
            LayerRef::Linear(l) => &l.w_quant,
            LayerRef::Conv2d(l) => &l.w_quant,
            LayerRef::Matmul(_) => return Ok(()),
        };
        if let Some(WeightQuantizer::QaLora(q)) = w {
            let mean_delta = q.mean_delta()?;
            out.push(LayerLr {
                layer: layer.name().to_string(),
                mean_delta,
                lora: mean_delta / cfg.lora_lr_divisor,
                delta: cfg.weight_delta_lr,
                lora_ids: vec![q.lora_a.id, q.lora_b.id],
                delta_id: Some(q.delta.id),
            });
        }
        Ok(())
    })?;
    for l in &out {
        check_lr(&format!("{} LoRA", l.layer), l.lora)?;
        check_lr(&format!("{} Δ_w", l.layer), l.delta)?;
    }
    Ok(out)
}

fn linear(initial: f64, total: usize) -> LrSchedulerConfig {
    LrSchedulerConfig::Linear(LinearLrSchedulerConfig::new(initial, 0.0, total.max(1)))
}

/// The per-parameter scheduler: base group (TALSQ) at `cfg.talsq_lr`, then per layer the LoRA
/// and Δ_w groups of `layers`; all decay linearly to 0 at step `total_steps`.
pub fn lr_scheduler(
    layers: &[LayerLr],
    cfg: &LrConfig,
    total_steps: usize,
) -> Result<ModuleLrScheduler> {
    check_lr("TALSQ", cfg.talsq_lr)?;
    let mut sc = ModuleLrSchedulerConfig::new(linear(cfg.talsq_lr, total_steps));
    for l in layers {
        sc = sc.with_group(
            ParamGroup::from_ids(l.lora_ids.clone()),
            linear(l.lora, total_steps),
        );
        if let Some(id) = l.delta_id {
            sc = sc.with_group(ParamGroup::from_ids(vec![id]), linear(l.delta, total_steps));
        }
    }
    sc.init().map_err(FinetuneError::Option)
}
