//! [`UNet2DConditionModel::structure`]: the conditional UNet's architecture as data
//! ([`crate::structure`]).

use super::attention::Attention;
use super::model::UNet2DConditionModel;
use super::transformer::Transformer2DModel;
use crate::structure::{AttentionLayers, SkipConcat, Stage, StageKind, Structure};
use crate::unet::ResnetBlock2D;

fn attention_layers(a: &Attention) -> AttentionLayers {
    AttentionLayers {
        path: a.name().to_string(),
        qkv: [
            a.to_q.name().to_string(),
            a.to_k.name().to_string(),
            a.to_v.name().to_string(),
        ],
        out: a
            .to_out
            .first()
            .map_or_else(String::new, |l| l.name().to_string()),
        matmuls: [a.qk.name().to_string(), a.sv.name().to_string()],
        cross: a.cross,
    }
}

fn add_resnet(s: &mut Structure, r: &ResnetBlock2D) {
    s.units.push(r.name().to_string());
    s.time_projections
        .extend(r.time_emb_proj.iter().map(|p| p.name().to_string()));
    if let Some(sc) = &r.conv_shortcut {
        s.shortcuts.push(sc.name().to_string());
    }
}

fn add_transformer(s: &mut Structure, t: &Transformer2DModel) {
    s.units.push(t.name().to_string());
    for b in &t.transformer_blocks {
        s.units.push(b.name().to_string());
        s.attention.push(attention_layers(&b.attn1));
        s.attention.push(attention_layers(&b.attn2));
        s.feed_forward.push(b.ff.net.0.proj.name().to_string());
        s.feed_forward.push(b.ff.net.2.name().to_string());
    }
}

impl UNet2DConditionModel {
    /// Stages `down_blocks.i` (at `sample_size / 2^i`), `mid_block`, `up_blocks.i`.
    ///
    /// Units: every resnet, every transformer (`*.attentions.j`, holding its `proj_in` and
    /// `proj_out`), every transformer block inside it (`*.transformer_blocks.k`, holding
    /// `attn1`, `attn2` and `ff`) and every resampler. The time path is
    /// `time_embedding.linear_1/2` and each resnet's `time_emb_proj`; attention entries are
    /// `attn1` (`cross: false`) and `attn2` (`cross: true`, keys and values from
    /// `encoder_hidden_states`); feed-forward layers `ff.net.0.proj`, `ff.net.2`; the
    /// decoder resnets read `[h ‖ skip]`.
    pub fn structure(&self) -> Structure {
        let c = self.config();
        let size = c.sample_size();
        let levels = c.levels();
        let mut s = Structure {
            time_mlp: vec![
                self.time_embedding.linear_1.name().to_string(),
                self.time_embedding.linear_2.name().to_string(),
            ],
            ..Structure::default()
        };
        for (i, b) in self.down_blocks.iter().enumerate() {
            s.stages.push(Stage {
                path: b.name().to_string(),
                kind: StageKind::Down,
                resolution: size >> i,
            });
            for (j, r) in b.resnets.iter().enumerate() {
                add_resnet(&mut s, r);
                if let Some(t) = b.attentions.get(j) {
                    add_transformer(&mut s, t);
                }
            }
            for d in &b.downsamplers {
                s.units.push(d.name().to_string());
                s.downsamplers.push(d.conv.name().to_string());
            }
        }
        let m = &self.mid_block;
        s.stages.push(Stage {
            path: m.name().to_string(),
            kind: StageKind::Mid,
            resolution: size >> (levels - 1),
        });
        if let Some((first, rest)) = m.resnets.split_first() {
            add_resnet(&mut s, first);
            for (t, r) in m.attentions.iter().zip(rest) {
                add_transformer(&mut s, t);
                add_resnet(&mut s, r);
            }
        }
        for (i, b) in self.up_blocks.iter().enumerate() {
            s.stages.push(Stage {
                path: b.name().to_string(),
                kind: StageKind::Up,
                resolution: size >> (levels - 1 - i.min(levels - 1)),
            });
            for (j, r) in b.resnets.iter().enumerate() {
                add_resnet(&mut s, r);
                let (main, skip) = c.up_resnet_channels(i, j);
                let mut layers = vec![r.conv1.name().to_string()];
                if let Some(sc) = &r.conv_shortcut {
                    layers.push(sc.name().to_string());
                }
                s.skip_concats.push(SkipConcat {
                    layers,
                    main_channels: main,
                    skip_channels: skip,
                });
                if let Some(t) = b.attentions.get(j) {
                    add_transformer(&mut s, t);
                }
            }
            for u in &b.upsamplers {
                s.units.push(u.name().to_string());
                s.upsamplers.push(u.conv.name().to_string());
            }
        }
        s
    }
}
