//! QuEST's layer selection (docs/algorithms.md §5.2), as glob rules over diffusers names with
//! defaults per architecture, resolved on the model's layer inventory.
//!
//! | set | UNet2DModel | DiT |
//! |---|---|---|
//! | C_TE, time-embedding alignment (stage A) | every `*.time_emb_proj` (LDM `emb_layers.1`) | the per-block adaLN modulation `*.norm1.linear` and timestep MLP `*.timestep_embedder.linear_?` |
//! | C_A, activation-sensitive (stage B) | attention `*.to_q`, `*.to_k`, `*.to_v` (LDM AttentionBlock `qkv`) | `*.ff.net.*` and `*.attn1.to_q/k/v` (the LDM-4 ImageNet set) |
//! | act Δ of stage B | every activation quantizer outside the time-embedding path | the same |
//!
//! The reference trains in stage B "every act quantizer whose path does not contain `emb`";
//! on diffusers names that substring would also drop DiT's patch embedding (`pos_embed`), so
//! the time-embedding path is matched by component instead (`time_embedding`,
//! `timestep_embedder`, `time_emb_proj`, `emb`).

use dmq_calib::glob_match;
use dmq_models::LayerCall;
use dmq_models::layers::LayerKind;
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
    /// The UNet2DModel defaults (table in the module docs).
    pub fn unet() -> Self {
        Self {
            time_embedding: vec!["*.time_emb_proj".into()],
            sensitive: vec!["*.to_q".into(), "*.to_k".into(), "*.to_v".into()],
        }
    }

    /// The DiT defaults (table in the module docs).
    pub fn dit() -> Self {
        Self {
            time_embedding: vec![
                "*.norm1.linear".into(),
                "*.timestep_embedder.linear_?".into(),
            ],
            sensitive: vec![
                "*.ff.net.*".into(),
                "*.attn1.to_q".into(),
                "*.attn1.to_k".into(),
                "*.attn1.to_v".into(),
            ],
        }
    }

    /// The defaults of the architecture `calls` come from (DiT if it has `transformer_blocks`).
    pub fn for_model(calls: &[LayerCall]) -> Self {
        if calls
            .iter()
            .any(|c| c.name.starts_with("transformer_blocks."))
        {
            Self::dit()
        } else {
            Self::unet()
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

/// Whether `name` lies on the time-embedding path (never in stage B's activation set).
pub fn on_time_embedding_path(name: &str) -> bool {
    name.split('.').any(|p| {
        matches!(
            p,
            "time_embedding" | "timestep_embedder" | "time_emb_proj" | "emb"
        )
    })
}

fn params(c: &LayerCall) -> usize {
    // weight plus a bias per output channel (every dmq linear/conv of the default models has one)
    c.weight_shape.iter().product::<usize>() + c.weight_shape.first().copied().unwrap_or(0)
}

/// Resolves `rules` on a layer inventory. A pattern that matches no linear or conv layer is
/// an error naming it (a typo would otherwise silently fine-tune nothing), and so are sets
/// that overlap.
pub fn select_layers(calls: &[LayerCall], rules: &SelectionRules) -> Result<QuestSelection> {
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
            .filter(|c| !on_time_embedding_path(&c.name))
            .map(|c| c.name.clone())
            .collect(),
        layer_params: dense.iter().map(|c| params(c)).sum(),
        time_embedding,
        sensitive,
        tuned_params,
    })
}
