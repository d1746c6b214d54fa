//! QuEST's layer selection (docs/algorithms.md §5.2): glob rules over diffusers names, with
//! defaults read from the model's [`Structure`], resolved on its layer inventory.
//!
//! | set | default | UNet2DModel | DiT |
//! |---|---|---|---|
//! | C_TE, time-embedding alignment (stage A) | every layer that brings the timestep into a block: [`Structure::time_projections`] and the timestep MLPs that belong to a block | every `*.time_emb_proj` (LDM `emb_layers.1`) | each block's adaLN modulation `norm1.linear` and its timestep MLP, the final modulation `proj_out_1` |
//! | C_A, activation-sensitive (stage B) | self-attention q/k/v and the transformer feed-forward layers | `*.to_q`, `*.to_k`, `*.to_v` (LDM AttentionBlock `qkv`) | `attn1.to_q/k/v` and `ff.net.*` (the LDM-4 ImageNet set) |
//! | act Δ of stage B | every activation quantizer off the time-embedding path ([`Structure::on_time_path`]) | | |
//!
//! The reference trains in stage B "every act quantizer whose path does not contain `emb`";
//! on diffusers names that substring would also drop DiT's patch embedding (`pos_embed`), so
//! the path comes from the model's structure instead.

use dmq_calib::glob_match;
use dmq_models::layers::LayerKind;
use dmq_models::{LayerCall, Structure};
use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result};

/// Glob rules for QuEST's two fine-tuned sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectionRules {
    /// Patterns of C_TE.
    pub time_embedding: Vec<String>,
    /// Patterns of C_A.
    pub sensitive: Vec<String>,
}

impl SelectionRules {
    /// The defaults read from `structure` (table in the module docs), as exact layer names.
    pub fn for_structure(structure: &Structure) -> Self {
        let mut time_embedding: Vec<String> = structure.time_projections.clone();
        time_embedding.extend(
            structure
                .time_mlp
                .iter()
                .filter(|n| structure.stage_of(n).is_some())
                .cloned(),
        );
        let mut sensitive: Vec<String> = structure.self_attention_qkv().cloned().collect();
        sensitive.extend(structure.feed_forward.iter().cloned());
        Self {
            time_embedding,
            sensitive,
        }
    }
}

/// QuEST's sets resolved on one model (names in call order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuestSelection {
    /// C_TE: weights (and their input Δ) trained in stage A.
    pub time_embedding: Vec<String>,
    /// C_A: weights trained in stage B.
    pub sensitive: Vec<String>,
    /// Layers (matmuls included) whose activation Δ is trained in stage B.
    pub stage_b_acts: Vec<String>,
    /// Weight + bias parameters of C_TE ∪ C_A.
    pub tuned_params: usize,
    /// Weight + bias parameters of every linear and conv layer.
    pub layer_params: usize,
}

impl QuestSelection {
    /// Fraction of the quantizable layers' parameters that is fine-tuned.
    pub fn tuned_fraction(&self) -> f64 {
        self.tuned_params as f64 / self.layer_params.max(1) as f64
    }
}

fn params(c: &LayerCall) -> usize {
    // weight plus a bias per output channel (every dmq linear/conv of the default models has one)
    c.weight_shape.iter().product::<usize>() + c.weight_shape.first().copied().unwrap_or(0)
}

/// Resolves `rules` on a layer inventory of a model with `structure`. A pattern that
/// matches no linear or conv layer is an error naming it (a typo would otherwise silently
/// fine-tune nothing), and so are sets that overlap.
pub fn select_layers(
    structure: &Structure,
    calls: &[LayerCall],
    rules: &SelectionRules,
) -> Result<QuestSelection> {
    let mut layers: Vec<&LayerCall> = Vec::new();
    for c in calls {
        if !layers.iter().any(|l| l.name == c.name) {
            layers.push(c);
        }
    }
    let dense: Vec<&LayerCall> = layers
        .iter()
        .copied()
        .filter(|c| c.kind != LayerKind::Matmul)
        .collect();
    let pick = |patterns: &[String], what: &str| -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for p in patterns {
            let hits: Vec<&&LayerCall> = dense.iter().filter(|c| glob_match(p, &c.name)).collect();
            if hits.is_empty() {
                return Err(FinetuneError::Option(format!(
                    "QuEST {what} pattern `{p}` matches no linear or conv layer (e.g. `{}`)",
                    dense.first().map_or("", |c| c.name.as_str())
                )));
            }
            for c in hits {
                if !out.contains(&c.name) {
                    out.push(c.name.clone());
                }
            }
        }
        // call order
        out.sort_by_key(|n| dense.iter().position(|c| &c.name == n));
        Ok(out)
    };
    let time_embedding = pick(&rules.time_embedding, "time-embedding")?;
    let sensitive = pick(&rules.sensitive, "activation-sensitive")?;
    if let Some(both) = sensitive.iter().find(|n| time_embedding.contains(n)) {
        return Err(FinetuneError::Option(format!(
            "layer {both} is in both QuEST sets; stage A and stage B must not overlap"
        )));
    }
    let tuned_params = dense
        .iter()
        .filter(|c| time_embedding.contains(&c.name) || sensitive.contains(&c.name))
        .map(|c| params(c))
        .sum();
    Ok(QuestSelection {
        stage_b_acts: layers
            .iter()
            .filter(|c| !structure.on_time_path(&c.name))
            .map(|c| c.name.clone())
            .collect(),
        layer_params: dense.iter().map(|c| params(c)).sum(),
        time_embedding,
        sensitive,
        tuned_params,
    })
}
