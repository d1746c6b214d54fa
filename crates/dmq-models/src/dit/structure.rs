//! [`DiT::structure`]: the DiT's architecture as data ([`crate::structure`]).

use super::model::DiT;
use crate::structure::{AttentionLayers, Stage, StageKind, Structure};

impl DiT {
    /// Stages and units: every `transformer_blocks.i` (at the token grid side
    /// `sample_size / patch_size`); each block's own timestep MLP
    /// (`norm1.emb.timestep_embedder.linear_1/2`); time projections: each block's adaLN
    /// modulation `norm1.linear` and the final modulation `proj_out_1`; self-attention
    /// `attn1`; feed-forward `ff.net.0.proj`, `ff.net.2`.
    pub fn structure(&self) -> Structure {
        let c = self.config();
        let grid = c.sample_size / c.patch_size.max(1);
        let mut s = Structure::default();
        for b in &self.transformer_blocks {
            let a = &b.attn1;
            let path = a
                .to_q
                .name()
                .strip_suffix(".to_q")
                .unwrap_or(a.to_q.name())
                .to_string();
            let block = path
                .strip_suffix(".attn1")
                .unwrap_or(path.as_str())
                .to_string();
            s.stages.push(Stage {
                path: block.clone(),
                kind: StageKind::Transformer,
                resolution: grid,
            });
            s.units.push(block);
            let te = &b.norm1.emb.timestep_embedder;
            s.time_mlp.push(te.linear_1.name().to_string());
            s.time_mlp.push(te.linear_2.name().to_string());
            s.time_projections.push(b.norm1.linear.name().to_string());
            s.attention.push(AttentionLayers {
                path,
                qkv: [
                    a.to_q.name().to_string(),
                    a.to_k.name().to_string(),
                    a.to_v.name().to_string(),
                ],
                out: a.to_out.0.name().to_string(),
                matmuls: [a.qk.name().to_string(), a.sv.name().to_string()],
                cross: false,
            });
            s.feed_forward.push(b.ff.net.0.proj.name().to_string());
            s.feed_forward.push(b.ff.net.2.name().to_string());
        }
        s.time_projections.push(self.proj_out_1.name().to_string());
        s
    }
}
