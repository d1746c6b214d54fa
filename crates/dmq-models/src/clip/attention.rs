//! [`ClipAttention`]: transformers' `CLIPAttention` as the text model uses it (causal
//! self-attention), with its two activation × activation products as quantizable
//! [`QMatmul`]s.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

use crate::context::ForwardCtx;
use crate::error::{Result, shape_err};
use crate::layers::{LayerMut, LayerRef, QLinear, QLinearConfig, QMatmul};

/// The additive causal mask `[1, 1, L, L]`: 0 on and below the diagonal, −∞ above, so a
/// token attends to itself and the tokens before it (every row keeps its diagonal, so no
/// softmax row is all −∞).
pub fn causal_mask(len: usize, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_data(TensorData::new(values, [1, 1, len, len]), device)
}

/// Causal multi-head attention core:
/// `o = sv(softmax(qk(q, kᵀ)·d^(−1/2) + mask), v)` per head, heads split from the last
/// axis, `mask` = [`causal_mask`].
///
/// The scale multiplies the q·kᵀ product (as transformers' eager path does), so `qk` sees
/// the raw q and k, like the UNet's and the DiT's attention
/// ([`multi_head_attention`](crate::layers::multi_head_attention)). Unlike that core this
/// one never hands the pair to an executor's fused attention (which has no mask): each
/// product runs through its [`QMatmul`] (quantizers, executor, captures, taps, recorder).
///
/// # Shapes
/// - q, k, v: `[B, L, H·d]`; output: `[B, L, H·d]`
pub fn causal_attention(
    qk: &QMatmul,
    sv: &QMatmul,
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    ctx: &ForwardCtx<'_>,
) -> Result<Tensor<3>> {
    let [b, n, inner] = q.dims();
    if heads == 0 || !inner.is_multiple_of(heads) || k.dims() != q.dims() || v.dims() != q.dims() {
        return Err(shape_err(
            qk.name(),
            format!("q, k, v of one shape [B, L, H·d] with H = {heads}"),
            format!("{:?}, {:?}, {:?}", q.dims(), k.dims(), v.dims()),
        ));
    }
    let d = inner / heads;
    let scale = (d as f64).powf(-0.5);
    let mask = causal_mask(n, &q.device());
    let split = |t: Tensor<3>| t.reshape([b, n, heads, d]).swap_dims(1, 2); // [B, H, L, d]
    let (q, k, v) = (split(q), split(k), split(v));
    let scores = qk.forward(q, k.swap_dims(2, 3), ctx)? * scale + mask;
    let probs = softmax(scores, 3);
    let o = sv.forward(probs, v, ctx)?; // [B, H, L, d]
    Ok(o.swap_dims(1, 2).reshape([b, n, inner]))
}

/// transformers `CLIPAttention` with a causal mask: `q, k, v = q_proj(x), k_proj(x),
/// v_proj(x)` split into H heads, [`causal_attention`], heads merged, `out_proj`.
///
/// Layers are named by their checkpoint keys (`<name>.q_proj`, ...), the products
/// `<name>.qk` (q·kᵀ) and `<name>.sv` (softmax·v), as in the UNet and the DiT.
///
/// # Shapes
/// - input/output: `[B, L, D]`
#[derive(Module, Debug)]
pub struct ClipAttention {
    /// Query projection `D → D`.
    pub q_proj: QLinear,
    /// Key projection `D → D`.
    pub k_proj: QLinear,
    /// Value projection `D → D`.
    pub v_proj: QLinear,
    /// Output projection `D → D`.
    pub out_proj: QLinear,
    /// `q·kᵀ` per head.
    pub qk: QMatmul,
    /// `softmax·v` per head.
    pub sv: QMatmul,
    /// Heads H.
    pub heads: usize,
}

impl ClipAttention {
    /// Random init (PyTorch's default for the projections); `name` is the checkpoint path
    /// (`text_model.encoder.layers.0.self_attn`).
    pub fn new(name: &str, width: usize, heads: usize, device: &Device) -> Self {
        let proj = |suffix: &str| {
            QLinearConfig::new(width, width).init(&format!("{name}.{suffix}"), device)
        };
        Self {
            q_proj: proj("q_proj"),
            k_proj: proj("k_proj"),
            v_proj: proj("v_proj"),
            out_proj: proj("out_proj"),
            qk: QMatmul::new(&format!("{name}.qk")),
            sv: QMatmul::new(&format!("{name}.sv")),
            heads,
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<3>, ctx: &ForwardCtx<'_>) -> Result<Tensor<3>> {
        let q = self.q_proj.forward(x.clone(), ctx)?;
        let k = self.k_proj.forward(x.clone(), ctx)?;
        let v = self.v_proj.forward(x, ctx)?;
        let o = causal_attention(&self.qk, &self.sv, q, k, v, self.heads, ctx)?;
        self.out_proj.forward(o, ctx)
    }

    /// Visits `q_proj`, `k_proj`, `v_proj`, `qk`, `sv`, `out_proj` (forward order).
    pub fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Linear(&self.q_proj));
        f(LayerRef::Linear(&self.k_proj));
        f(LayerRef::Linear(&self.v_proj));
        f(LayerRef::Matmul(&self.qk));
        f(LayerRef::Matmul(&self.sv));
        f(LayerRef::Linear(&self.out_proj));
    }

    /// Mutable [`Self::for_each_layer`].
    pub fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Linear(&mut self.q_proj));
        f(LayerMut::Linear(&mut self.k_proj));
        f(LayerMut::Linear(&mut self.v_proj));
        f(LayerMut::Matmul(&mut self.qk));
        f(LayerMut::Matmul(&mut self.sv));
        f(LayerMut::Linear(&mut self.out_proj));
    }
}
