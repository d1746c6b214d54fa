//! [`QuantConfig`]: which quantizer every layer gets, by glob pattern over diffusers layer
//! names, with first/last-layer policies and named presets (W8A8, W4A8, W4A4, W2A8, W1A4...).
//!
//! Resolution order for each layer: the config's defaults (weights per output channel,
//! activations per tensor, attention matmul operands), then the first/last-layer policy,
//! then every [`LayerRule`] whose pattern matches, in order (later rules win). A rule or
//! policy pattern that matches no layer is an error naming it, and so is a spec a layer
//! cannot take (an axis beyond its weight's rank, a group size that does not divide it).

use burn::tensor::Device;
use dmq_models::layers::LayerKind;
use dmq_models::{Denoiser, LayerCall, layer_inventory};
use dmq_quant::QuantSpec;
use serde::{Deserialize, Serialize};

use crate::error::{CalibError, Result};
use crate::glob::glob_match;

/// What a rule does to one quantizer of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
pub enum Choice {
    /// Leave what the defaults (or earlier rules) chose.
    #[default]
    Keep,
    /// Full precision: no quantizer.
    Fp,
    /// This spec.
    Spec(QuantSpec),
}

impl Choice {
    fn apply(self, current: Option<QuantSpec>) -> Option<QuantSpec> {
        match self {
            Choice::Keep => current,
            Choice::Fp => None,
            Choice::Spec(s) => Some(s),
        }
    }
}

/// An override for the layers whose name matches `pattern`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRule {
    /// Glob over layer names (`*` any run, `?` one character).
    pub pattern: String,
    /// Weight quantizer.
    pub weight: Choice,
    /// Input-activation quantizer (both operands for attention matmuls, unless
    /// `act_right` is given).
    pub act: Choice,
    /// Right-operand quantizer of attention matmuls (`None`: the same as `act`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_right: Option<Choice>,
}

impl LayerRule {
    /// Keeps the matching layers in full precision (weights and activations).
    pub fn fp(pattern: &str) -> Self {
        Self {
            pattern: pattern.into(),
            weight: Choice::Fp,
            act: Choice::Fp,
            act_right: None,
        }
    }

    /// Sets weight and activation bit-widths of the matching layers (default layouts:
    /// weights per output channel, activations per tensor; `None` = FP).
    pub fn bits(pattern: &str, w_bits: Option<u32>, a_bits: Option<u32>) -> Result<Self> {
        Ok(Self {
            pattern: pattern.into(),
            weight: match w_bits {
                Some(b) => Choice::Spec(default_weight_spec(b)?),
                None => Choice::Fp,
            },
            act: match a_bits {
                Some(b) => Choice::Spec(default_act_spec(b)?),
                None => Choice::Fp,
            },
            act_right: None,
        })
    }
}

/// What happens to the first layer (the first convolution called, which reads x_t: UNet
/// `conv_in`, DiT `pos_embed.proj`) and the last layer (the last layer called: UNet
/// `conv_out`, DiT `proj_out_2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum EdgePolicy {
    /// Quantized like every other layer (Q-Diffusion's code makes no exception).
    #[default]
    Same,
    /// W8A8 (EfficientDM; QuEST keeps their activations at 8 bits).
    Int8,
    /// Full precision (BinaryDM).
    Fp,
}

/// Weight and activation specs for every quantizable layer of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantConfig {
    /// Display name (the preset name, or the user's).
    pub name: String,
    /// Default weight spec of linear and conv layers (`None` = FP weights).
    pub weight: Option<QuantSpec>,
    /// Weights per group of this many input features instead of per output channel, in the
    /// linear layers whose input size it divides (the integer GEMM reads groups along the
    /// reduction axis); convolutions and the other linears stay per output channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_group: Option<usize>,
    /// Default input-activation spec of linear and conv layers (`None` = FP activations).
    pub act: Option<QuantSpec>,
    /// Spec of attention-matmul operands other than the softmax probabilities.
    pub matmul: Option<QuantSpec>,
    /// Spec of the softmax-probability operand (left operand of `*.sv`), unsigned with z = 0.
    pub softmax: Option<QuantSpec>,
    /// Policy for the first and last layers.
    pub edges: EdgePolicy,
    /// Overrides, applied in order after the defaults and the edge policy.
    pub rules: Vec<LayerRule>,
    /// Q-Diffusion's shortcut splitting: a layer that reads a concatenation (a decoder
    /// resnet's `upsampled ‖ skip` input, [`dmq_models::Structure::skip_concats`]) gets one
    /// activation range per half and one weight range per (output channel, half) instead of
    /// one shared by both ([`dmq_quant::Granularity::Split`]). Applied after the rules, to
    /// per-tensor activation and per-output-channel weight specs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_shortcuts: bool,
}

/// Asymmetric unsigned per-output-channel weight spec (the reference default).
pub fn default_weight_spec(bits: u32) -> Result<QuantSpec> {
    Ok(QuantSpec::int(bits)?.per_channel(0))
}

/// Asymmetric unsigned per-tensor activation spec (the reference default).
pub fn default_act_spec(bits: u32) -> Result<QuantSpec> {
    Ok(QuantSpec::int(bits)?)
}

/// Softmax-probability spec: unsigned, z = 0 (`always_zero`), per tensor.
pub fn softmax_spec(bits: u32) -> Result<QuantSpec> {
    Ok(QuantSpec::int(bits)?.with_symmetric(true))
}

impl QuantConfig {
    /// Full precision everywhere.
    pub fn fp() -> Self {
        Self {
            name: "fp".into(),
            weight: None,
            weight_group: None,
            act: None,
            matmul: None,
            softmax: None,
            edges: EdgePolicy::Same,
            rules: vec![],
            split_shortcuts: false,
        }
    }

    /// `W{w}A{a}`: weights at `w_bits` per output channel, layer inputs and attention-matmul
    /// operands at `a_bits` per tensor (softmax probabilities unsigned with z = 0); `None`
    /// keeps that side in FP.
    pub fn wa(w_bits: Option<u32>, a_bits: Option<u32>) -> Result<Self> {
        let name = format!(
            "W{}A{}",
            w_bits.map_or("32".into(), |b| b.to_string()),
            a_bits.map_or("32".into(), |b| b.to_string())
        );
        Ok(Self {
            name,
            weight: w_bits.map(default_weight_spec).transpose()?,
            weight_group: None,
            act: a_bits.map(default_act_spec).transpose()?,
            matmul: a_bits.map(default_act_spec).transpose()?,
            softmax: a_bits.map(softmax_spec).transpose()?,
            edges: EdgePolicy::Same,
            rules: vec![],
            split_shortcuts: false,
        })
    }

    /// A named preset: `fp`, or `WxAy` with x ∈ 1..=8 or 32 and y ∈ 1..=8 or 16/32
    /// (case-insensitive), e.g. `W8A8`, `W4A8`, `W4A4`, `W2A8`, `W1A4`, `W4A32`, optionally
    /// with a weight group `-gG` (G ≥ 1): `W4A16-g128`, `W4A8-g64`, `W4A4-g64` (see
    /// [`QuantConfig::weight_group`]).
    pub fn preset(name: &str) -> Result<Self> {
        let up = name.trim().to_ascii_uppercase();
        if up == "FP" || up == "W32A32" {
            return Ok(Self::fp());
        }
        let bad = || CalibError::UnknownPreset(name.to_string());
        if let Some((base, g)) = up.split_once("-G") {
            let g: usize = g.parse().map_err(|_| bad())?;
            if g == 0 || g > 1 << 20 {
                return Err(bad());
            }
            let mut c = Self::preset(base)?;
            if c.weight.is_none() {
                return Err(bad());
            }
            c.weight_group = Some(g);
            c.name = name.trim().to_string();
            return Ok(c);
        }
        let rest = up.strip_prefix('W').ok_or_else(bad)?;
        let (w, a) = rest.split_once('A').ok_or_else(bad)?;
        let parse = |s: &str| -> Result<Option<u32>> {
            match s.parse::<u32>().map_err(|_| bad())? {
                32 | 16 => Ok(None),
                b @ 1..=8 => Ok(Some(b)),
                _ => Err(bad()),
            }
        };
        Self::wa(parse(w)?, parse(a)?)
    }

    /// Sets the first/last-layer policy.
    pub fn with_edges(mut self, edges: EdgePolicy) -> Self {
        self.edges = edges;
        self
    }

    /// Appends an override rule.
    pub fn with_rule(mut self, rule: LayerRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Turns Q-Diffusion's shortcut splitting on or off ([`QuantConfig::split_shortcuts`]).
    pub fn with_split_shortcuts(mut self, on: bool) -> Self {
        self.split_shortcuts = on;
        self
    }

    /// Keeps attention matmuls in FP (EfficientDM does not quantize them).
    pub fn without_matmuls(mut self) -> Self {
        self.matmul = None;
        self.softmax = None;
        self
    }

    /// Resolves the config against `model`'s quantizable layers (in call order).
    pub fn resolve<M: Denoiser + ?Sized>(
        &self,
        model: &M,
        device: &Device,
    ) -> Result<Vec<LayerPlan>> {
        let calls = layer_inventory(model, device)?;
        let mut plans = self.resolve_calls(&calls)?;
        if self.split_shortcuts {
            apply_shortcut_split(&mut plans, &model.structure())?;
        }
        Ok(plans)
    }

    /// Resolves against a recorded layer inventory (one entry per layer; repeated calls of a
    /// layer are merged).
    pub fn resolve_calls(&self, calls: &[LayerCall]) -> Result<Vec<LayerPlan>> {
        let mut plans: Vec<LayerPlan> = Vec::new();
        for c in calls {
            if plans.iter().any(|p| p.name == c.name) {
                continue;
            }
            let (act, act_b) = match c.kind {
                LayerKind::Matmul if c.name.ends_with(".sv") => (self.softmax, self.matmul),
                LayerKind::Matmul => (self.matmul, self.matmul),
                _ => (self.act, None),
            };
            plans.push(LayerPlan {
                name: c.name.clone(),
                kind: c.kind,
                weight_shape: c.weight_shape.clone(),
                weight: match (c.kind, self.weight, self.weight_group) {
                    (LayerKind::Matmul, _, _) => None,
                    (LayerKind::Linear, Some(w), Some(g))
                        if c.weight_shape.len() == 2 && c.weight_shape[1] % g == 0 =>
                    {
                        Some(w.per_group(1, g))
                    }
                    (_, w, _) => w,
                },
                act,
                act_b,
            });
        }
        let example = plans.first().map(|p| p.name.clone()).unwrap_or_default();
        if let (Some(first), Some(last)) = (
            plans.iter().position(|p| p.kind == LayerKind::Conv2d),
            plans.len().checked_sub(1),
        ) && self.edges != EdgePolicy::Same
        {
            for i in [first, last] {
                let p = &mut plans[i];
                match self.edges {
                    EdgePolicy::Fp => {
                        p.weight = None;
                        p.act = None;
                    }
                    EdgePolicy::Int8 => {
                        p.weight = Some(default_weight_spec(8)?);
                        p.act = Some(default_act_spec(8)?);
                    }
                    EdgePolicy::Same => {}
                }
            }
        }
        for rule in &self.rules {
            let mut hit = false;
            for p in plans
                .iter_mut()
                .filter(|p| glob_match(&rule.pattern, &p.name))
            {
                hit = true;
                if p.kind != LayerKind::Matmul {
                    p.weight = rule.weight.apply(p.weight);
                    p.act = rule.act.apply(p.act);
                } else {
                    p.act = rule.act.apply(p.act);
                    p.act_b = rule.act_right.unwrap_or(rule.act).apply(p.act_b);
                }
            }
            if !hit {
                return Err(CalibError::UnmatchedPattern {
                    pattern: rule.pattern.clone(),
                    role: "layer rule".into(),
                    example: example.clone(),
                });
            }
        }
        for p in &plans {
            if let Some(w) = &p.weight {
                w.num_params(&p.weight_shape)
                    .map_err(|e| CalibError::BadLayerSpec {
                        layer: p.name.clone(),
                        what: "its weight spec".into(),
                        reason: e.to_string(),
                    })?;
            }
            for a in [&p.act, &p.act_b].into_iter().flatten() {
                if let dmq_quant::Granularity::PerGroup { .. } = a.granularity() {
                    return Err(CalibError::BadLayerSpec {
                        layer: p.name.clone(),
                        what: "a per-group activation spec".into(),
                        reason: "activations are quantized per tensor or per channel".into(),
                    });
                }
            }
        }
        Ok(plans)
    }
}

/// Shortcut splitting on resolved plans: per-tensor activation specs of the layers that read
/// a skip concatenation become one pair per half, per-output-channel weight specs one pair
/// per (output channel, half). Other granularities are left alone (they are already finer
/// or a user's choice).
pub fn apply_shortcut_split(
    plans: &mut [LayerPlan],
    structure: &dmq_models::Structure,
) -> Result<()> {
    use dmq_quant::Granularity;
    // concatenations feed convolutions (channel axis 1 of input and weight)
    for p in plans.iter_mut().filter(|p| p.kind == LayerKind::Conv2d) {
        let Some(sc) = structure.skip_concat_of(&p.name) else {
            continue;
        };
        let at = sc.main_channels;
        if let Some(w) = p.weight
            && w.granularity() == (Granularity::PerChannel { axis: 0 })
        {
            p.weight = Some(w.with_granularity(Granularity::Split {
                channel: Some(0),
                axis: 1,
                at,
            }));
        }
        if let Some(a) = p.act
            && a.granularity() == Granularity::PerTensor
        {
            p.act = Some(a.with_granularity(Granularity::Split {
                channel: None,
                axis: 1,
                at,
            }));
        }
        if let Some(w) = &p.weight {
            w.num_params(&p.weight_shape)
                .map_err(|e| CalibError::BadLayerSpec {
                    layer: p.name.clone(),
                    what: "its split weight spec".into(),
                    reason: e.to_string(),
                })?;
        }
    }
    Ok(())
}

/// The resolved quantizers of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerPlan {
    /// diffusers path.
    pub name: String,
    /// Layer kind.
    pub kind: LayerKind,
    /// Weight shape (PyTorch layout; empty for matmuls).
    pub weight_shape: Vec<usize>,
    /// Weight spec (`None` = FP; always `None` for matmuls).
    pub weight: Option<QuantSpec>,
    /// Input spec (left operand for matmuls).
    pub act: Option<QuantSpec>,
    /// Right-operand spec (matmuls only).
    pub act_b: Option<QuantSpec>,
}

impl LayerPlan {
    /// Weight bits for cost models (32 when FP; 0 for matmuls, which have no weight).
    pub fn weight_bits(&self) -> u32 {
        match self.kind {
            LayerKind::Matmul => 0,
            _ => self.weight.map_or(32, |s| s.cost_bits()),
        }
    }

    /// Bits of operand `a` (and `b` for matmuls), 32 when FP.
    pub fn act_bits(&self) -> (u32, u32) {
        (
            self.act.map_or(32, |s| s.cost_bits()),
            self.act_b.map_or(32, |s| s.cost_bits()),
        )
    }
}
