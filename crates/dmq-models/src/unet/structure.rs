//! [`UNet2DModel::structure`]: the UNet's architecture as data ([`crate::structure`]).

use super::attention::Attention;
use super::blocks::up_resnet_channels;
use super::model::UNet2DModel;
use super::resnet::ResnetBlock2D;
use crate::structure::{AttentionLayers, SkipConcat, Stage, StageKind, Structure};

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
        cross: false,
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

fn add_attention(s: &mut Structure, a: &Attention) {
    s.units.push(a.name().to_string());
    s.attention.push(attention_layers(a));
}

impl UNet2DModel {
    /// Stages `down_blocks.i` (at `sample_size / 2^i`), `mid_block`, `up_blocks.i`;
    /// units: every resnet, attention and resampler; the time MLP `time_embedding.linear_1/2`
    /// and each resnet's `time_emb_proj`; the decoder resnets' `[h ‖ skip]` inputs.
    pub fn structure(&self) -> Structure {
        let c = self.config();
        let size = c.sample_size();
        let levels = c.block_out_channels.len();
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
                if let Some(a) = b.attentions.get(j) {
                    add_attention(&mut s, a);
                }
            }
            for d in &b.downsamplers {
                s.units.push(d.name().to_string());
                s.downsamplers.push(d.conv.name().to_string());
            }
        }
        if let Some(m) = &self.mid_block {
            s.stages.push(Stage {
                path: m.name().to_string(),
                kind: StageKind::Mid,
                resolution: size >> (levels - 1),
            });
            if let Some((first, rest)) = m.resnets.split_first() {
                add_resnet(&mut s, first);
                for (j, r) in rest.iter().enumerate() {
                    if let Some(a) = m.attentions.get(j) {
                        add_attention(&mut s, a);
                    }
                    add_resnet(&mut s, r);
                }
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
                let (main, skip) = up_resnet_channels(c, i, j);
                let mut layers = vec![r.conv1.name().to_string()];
                if let Some(sc) = &r.conv_shortcut {
                    layers.push(sc.name().to_string());
                }
                s.skip_concats.push(SkipConcat {
                    layers,
                    main_channels: main,
                    skip_channels: skip,
                });
                if let Some(a) = b.attentions.get(j) {
                    add_attention(&mut s, a);
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
