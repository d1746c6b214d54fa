//! [`multi_head_attention`]: the scaled dot-product core shared by the UNet's and the
//! DiT's attention, with its two quantizable products.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

use super::{LayerKind, QMatmul, executor_err};
use crate::context::{ForwardCtx, HostTensor, LayerCall};
use crate::error::{Result, shape_err};

/// `o = sv(softmax(qk(q, kᵀ)·d^(−1/2)), v)` per head, heads split from the last axis.
///
/// The scale is applied to the q·kᵀ product (as diffusers' non-fused processors do), so
/// `qk` sees the raw q and k. When the context's executor computes both products and
/// [fuses](crate::LayerExecutor::attention) them, the whole core runs there in one call on
/// the `[B, N, H·d]` layout, with no per-head transposes and no score matrix through burn;
/// taps or input captures on the products turn the fusion off so they see every product.
///
/// # Shapes
/// - q, k, v: `[B, N, H·d]`; output: `[B, N, H·d]`
pub fn multi_head_attention(
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
            format!("q, k, v of one shape [B, N, H·d] with H = {heads}"),
            format!("{:?}, {:?}, {:?}", q.dims(), k.dims(), v.dims()),
        ));
    }
    let d = inner / heads;
    let scale = (d as f64).powf(-0.5);
    if let Some(y) = fused(qk, sv, [&q, &k, &v], heads, scale as f32, ctx)? {
        return Ok(y);
    }
    let split = |t: Tensor<3>| t.reshape([b, n, heads, d]).swap_dims(1, 2); // [B, H, N, d]
    let (q, k, v) = (split(q), split(k), split(v));
    let scores = qk.forward(q, k.swap_dims(2, 3), ctx)? * scale;
    let probs = softmax(scores, 3);
    let o = sv.forward(probs, v, ctx)?; // [B, H, N, d]
    Ok(o.swap_dims(1, 2).reshape([b, n, inner]))
}

/// The executor's fused core, or `None` when the products run one by one.
fn fused(
    qk: &QMatmul,
    sv: &QMatmul,
    [q, k, v]: [&Tensor<3>; 3],
    heads: usize,
    scale: f32,
    ctx: &ForwardCtx<'_>,
) -> Result<Option<Tensor<3>>> {
    let (Some(ex), Some(_)) = (ctx.executor_for(qk.name()), ctx.executor_for(sv.name())) else {
        return Ok(None);
    };
    let observed = ctx.inputs.is_some()
        || ctx
            .taps
            .is_some_and(|t| t.wants(qk.name()) || t.wants(sv.name()));
    if observed {
        return Ok(None);
    }
    let dims = q.dims();
    let host = [q, k, v].map(HostTensor::from_tensor);
    let Some(result) = ex.attention(
        qk.name(),
        sv.name(),
        [&host[0], &host[1], &host[2]],
        heads,
        scale,
        &ctx.step,
    ) else {
        return Ok(None);
    };
    if let Some(rec) = ctx.recorder {
        let [b, n, inner] = dims;
        let macs = (b * n * n * inner) as u64;
        for name in [qk.name(), sv.name()] {
            rec.push(LayerCall {
                name: name.to_string(),
                kind: LayerKind::Matmul,
                weight_shape: vec![],
                macs,
            });
        }
    }
    let y = result
        .map_err(executor_err(qk.name()))?
        .into_tensor(dims, &q.device(), qk.name())?;
    Ok(Some(y))
}
