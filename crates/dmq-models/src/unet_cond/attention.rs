//! [`Attention`]: diffusers' `Attention` (with `AttnProcessor2_0`) as the
//! `BasicTransformerBlock` uses it: `attn1` self-attention over the pixels, `attn2`
//! cross-attention from the pixels to `encoder_hidden_states`; no bias on `to_q`/`to_k`/
//! `to_v`, a bias on `to_out.0`, no norm, no residual inside.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use crate::context::ForwardCtx;
use crate::error::{Result, shape_err};
use crate::layers::{LayerMut, LayerRef, QLinear, QLinearConfig, QMatmul, multi_head_attention};

/// Configuration of an [`Attention`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionConfig {
    /// Query width D (= the transformer width).
    pub query_dim: usize,
    /// Heads H.
    pub heads: usize,
    /// Channels per head d (`inner = H·d`).
    pub dim_head: usize,
    /// Width of the key/value sequence for cross-attention (`None`: self-attention, keys and
    /// values from the queries' sequence).
    pub cross_attention_dim: Option<usize>,
}

impl AttentionConfig {
    /// Layers `<name>.to_q|to_k|to_v|to_out.0` and matmuls `<name>.qk`, `<name>.sv`.
    pub fn init(&self, name: &str, device: &Device) -> Attention {
        let inner = self.heads * self.dim_head;
        let kv_dim = self.cross_attention_dim.unwrap_or(self.query_dim);
        let proj = |d_in: usize, suffix: &str| {
            QLinearConfig::new(d_in, inner)
                .with_bias(false)
                .init(&format!("{name}.{suffix}"), device)
        };
        Attention {
            to_q: proj(self.query_dim, "to_q"),
            to_k: proj(kv_dim, "to_k"),
            to_v: proj(kv_dim, "to_v"),
            to_out: vec![
                QLinearConfig::new(inner, self.query_dim).init(&format!("{name}.to_out.0"), device),
            ],
            qk: QMatmul::new(&format!("{name}.qk")),
            sv: QMatmul::new(&format!("{name}.sv")),
            heads: self.heads,
            cross: self.cross_attention_dim.is_some(),
            name: name.to_string(),
        }
    }
}

/// `to_out.0(sv(softmax(qk(q, kᵀ)·d^(−1/2)), v))` per head, with `q = to_q(x)` and
/// `k, v = to_k(c), to_v(c)` where `c = x` (self-attention, `attn1`) or
/// `c = encoder_hidden_states` (cross-attention, `attn2`).
///
/// The scale is applied to the q·kᵀ product (as the DiT's and the UNet's attention), so the
/// `qk` matmul sees the raw q and k. Self-attention goes through
/// [`multi_head_attention`] (which an executor may fuse); cross-attention has keys of
/// another length than the queries, which the fused core does not take, so it runs the two
/// products one by one ([`cross_attention_core`]).
///
/// # Shapes
/// - x: `[B, N, D]`; context: `[B, L, D_kv]`; output: `[B, N, D]`
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection `D → H·d` (no bias).
    pub to_q: QLinear,
    /// Key projection `D_kv → H·d` (no bias).
    pub to_k: QLinear,
    /// Value projection `D_kv → H·d` (no bias).
    pub to_v: QLinear,
    /// Output projection `H·d → D` (one element: key `to_out.0`; diffusers' `to_out.1` is a
    /// parameterless dropout).
    pub to_out: Vec<QLinear>,
    /// `q·kᵀ` per head (`<path>.qk`).
    pub qk: QMatmul,
    /// `softmax·v` per head (`<path>.sv`).
    pub sv: QMatmul,
    /// Heads H.
    pub heads: usize,
    /// Keys and values come from `encoder_hidden_states`.
    pub cross: bool,
    #[module(skip)]
    name: String,
}

impl Attention {
    /// diffusers path (`down_blocks.0.attentions.0.transformer_blocks.0.attn2`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass. `context` is required for cross-attention and must be `None` for
    /// self-attention (a mismatch is a shape error).
    pub fn forward(
        &self,
        x: Tensor<3>,
        context: Option<&Tensor<3>>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<3>> {
        let out_proj = self
            .to_out
            .first()
            .ok_or_else(|| shape_err(&self.name, "one to_out projection", 0))?;
        let q = self.to_q.forward(x.clone(), ctx)?;
        let o = match (self.cross, context) {
            (false, None) => {
                let k = self.to_k.forward(x.clone(), ctx)?;
                let v = self.to_v.forward(x, ctx)?;
                multi_head_attention(&self.qk, &self.sv, q, k, v, self.heads, ctx)?
            }
            (true, Some(c)) => {
                let k = self.to_k.forward(c.clone(), ctx)?;
                let v = self.to_v.forward(c.clone(), ctx)?;
                cross_attention_core(&self.qk, &self.sv, q, k, v, self.heads, ctx)?
            }
            (cross, c) => {
                return Err(shape_err(
                    &self.name,
                    if cross {
                        "encoder_hidden_states for cross-attention"
                    } else {
                        "no context for self-attention"
                    },
                    c.map(|c| c.dims()),
                ));
            }
        };
        out_proj.forward(o, ctx)
    }

    /// Visits `to_q`, `to_k`, `to_v`, `qk`, `sv`, `to_out.0` (forward order).
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Linear(&self.to_q));
        f(LayerRef::Linear(&self.to_k));
        f(LayerRef::Linear(&self.to_v));
        f(LayerRef::Matmul(&self.qk));
        f(LayerRef::Matmul(&self.sv));
        for l in &self.to_out {
            f(LayerRef::Linear(l));
        }
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Linear(&mut self.to_q));
        f(LayerMut::Linear(&mut self.to_k));
        f(LayerMut::Linear(&mut self.to_v));
        f(LayerMut::Matmul(&mut self.qk));
        f(LayerMut::Matmul(&mut self.sv));
        for l in &mut self.to_out {
            f(LayerMut::Linear(l));
        }
    }
}

/// `o = sv(softmax(qk(q, kᵀ)·d^(−1/2)), v)` per head for keys/values of another length
/// than the queries (the unfused path of [`multi_head_attention`], same operation order).
///
/// # Shapes
/// - q: `[B, N, H·d]`; k, v: `[B, L, H·d]`; scores `[B, H, N, L]`; output: `[B, N, H·d]`
pub fn cross_attention_core(
    qk: &QMatmul,
    sv: &QMatmul,
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    ctx: &ForwardCtx<'_>,
) -> Result<Tensor<3>> {
    let [b, n, inner] = q.dims();
    let [bk, l, ik] = k.dims();
    if heads == 0 || !inner.is_multiple_of(heads) || bk != b || ik != inner || v.dims() != k.dims()
    {
        return Err(shape_err(
            qk.name(),
            format!("q [B, N, H·d], k and v [B, L, H·d] with H = {heads}"),
            format!("{:?}, {:?}, {:?}", q.dims(), k.dims(), v.dims()),
        ));
    }
    let d = inner / heads;
    let scale = (d as f64).powf(-0.5);
    let q = q.reshape([b, n, heads, d]).swap_dims(1, 2); // [B, H, N, d]
    let k = k.reshape([b, l, heads, d]).swap_dims(1, 2); // [B, H, L, d]
    let v = v.reshape([b, l, heads, d]).swap_dims(1, 2);
    let scores = qk.forward(q, k.swap_dims(2, 3), ctx)? * scale;
    let probs = softmax(scores, 3);
    let o = sv.forward(probs, v, ctx)?; // [B, H, N, d]
    Ok(o.swap_dims(1, 2).reshape([b, n, inner]))
}
