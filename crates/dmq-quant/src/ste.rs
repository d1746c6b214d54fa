//! Differentiable building blocks: straight-through rounding, gradient scaling, the
//! clipped sign, and the affine fake-quantization core every uniform quantizer shares.
//!
//! All of them use the `f(x).detach() + (x − x.detach())` pattern: the backward pass sees
//! the identity and the forward value is exactly `f(x)`: `x − x` is an exact 0 however a
//! fusing backend evaluates it, whereas rounding in forms like `(x − g·x) + g·x` (LSQ's
//! gradient scale as first written) leaves ~0.1% of values one ulp off. An exported model,
//! which applies `f` directly, then reproduces the trained forward bit for bit. burn's own `quantize` detaches (no gradient at all), and
//! `round`/`sign` have zero gradient, so quantization-aware training needs these.

use burn::tensor::Tensor;

use crate::error::{QuantError, Result};
use crate::spec::{Granularity, QuantSpec, Rounding};

/// Exact zero forward, identity backward: the gradient path of every STE here.
fn straight_through<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() - x.detach()
}

/// `value + straight_through(x)`, or `value` alone when `x` is outside any autodiff graph
/// (sampling, export checks): adding the exact zero changes nothing there but costs two
/// full passes over every quantized activation.
fn with_straight_through<const D: usize>(value: Tensor<D>, x: Tensor<D>) -> Tensor<D> {
    if x.is_tracked() {
        value.detach() + straight_through(x)
    } else {
        value
    }
}

/// `round(x)` forward, identity backward.
pub fn round_ste<const D: usize>(x: Tensor<D>, rounding: Rounding) -> Tensor<D> {
    with_straight_through(round_value(x.clone(), rounding), x)
}

/// `floor(x)` forward, identity backward (QuEST's floor-STE for AdaRound, §1.3).
pub fn floor_ste<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    with_straight_through(x.clone().floor(), x)
}

/// Rounds without any gradient bookkeeping.
pub(crate) fn round_value<const D: usize>(x: Tensor<D>, rounding: Rounding) -> Tensor<D> {
    match rounding {
        Rounding::HalfToEven => x.round(),
        Rounding::HalfAwayFromZero => {
            let s = sign_pos(x.clone());
            (x.abs() + 0.5).floor() * s
        }
    }
}

/// sign with sign(0) = +1 (the reference `torch.sign(0) = 0` leaves zeros unbinarised).
pub fn sign_pos<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.greater_equal_elem(0.0).float() * 2.0 - 1.0
}

/// Binary sign with the clipped straight-through estimator (BinaryDM `BinaryQuantize`):
/// forward `sign(x)` with sign(0) = +1, backward `1[|x| ≤ 1]`.
pub fn sign_ste<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.is_tracked() {
        sign_pos(x.clone()).detach() + straight_through(x.clamp(-1.0, 1.0))
    } else {
        sign_pos(x)
    }
}

/// Value `x`, gradient scaled by `g` (LSQ's step-size gradient scale).
pub fn grad_scale<const D: usize>(x: Tensor<D>, g: f64) -> Tensor<D> {
    if x.is_tracked() {
        x.clone().detach() + straight_through(x) * g
    } else {
        x
    }
}

/// Uniform affine fake quantization with the straight-through estimator (§1.1):
///
/// ```text
/// x_int = round(x/Δ) + z,  x_q = clamp(x_int, q_min, q_max),  x̂ = (x_q − z)·Δ
/// ```
///
/// Gradients (through autodiff): ∂x̂/∂x = 1 inside the range, 0 when clipped;
/// ∂x̂/∂Δ = round(x/Δ) − x/Δ inside, q_clip − z clipped; ∂x̂/∂z = 0 inside, −Δ clipped.
///
/// `delta` and `zero` hold one value per parameter of the spec's granularity (flat), and are
/// broadcast against `x`. In the float state `x` is returned unchanged.
///
/// # Shapes
/// - `x`: any rank `D`
/// - `delta`, `zero`: `[spec.num_params(x.dims())]`
pub fn fake_quant_affine<const D: usize>(
    x: Tensor<D>,
    delta: Tensor<1>,
    zero: Tensor<1>,
    spec: &QuantSpec,
) -> Result<Tensor<D>> {
    let Some((qmin, qmax)) = spec.int_range() else {
        return Ok(x);
    };
    broadcast_apply(
        x,
        delta,
        zero,
        spec,
        &AffineCore {
            qmin: qmin as f64,
            qmax: qmax as f64,
            rounding: spec.rounding(),
        },
    )
}

/// An element-wise op `f(x, Δ, z)` usable at any rank (so per-group layouts can run at rank 3).
pub(crate) trait BroadcastOp {
    fn apply<const R: usize>(&self, x: Tensor<R>, delta: Tensor<R>, zero: Tensor<R>) -> Tensor<R>;
}

struct AffineCore {
    qmin: f64,
    qmax: f64,
    rounding: Rounding,
}

impl BroadcastOp for AffineCore {
    fn apply<const R: usize>(&self, x: Tensor<R>, d: Tensor<R>, z: Tensor<R>) -> Tensor<R> {
        let v = round_ste(x / d.clone(), self.rounding) + z.clone();
        (v.clamp(self.qmin, self.qmax) - z) * d
    }
}

/// Reshapes the flat per-parameter vectors to broadcast against `x` under the spec's
/// granularity, applies `op(x, Δ, z)`, and restores the layout of `x`.
pub(crate) fn broadcast_apply<const D: usize>(
    x: Tensor<D>,
    delta: Tensor<1>,
    zero: Tensor<1>,
    spec: &QuantSpec,
    op: &impl BroadcastOp,
) -> Result<Tensor<D>> {
    let dims = x.dims();
    let n = spec.num_params(&dims)?;
    for (name, t) in [("delta", &delta), ("zero point", &zero)] {
        let [len] = t.dims();
        if len != n {
            return Err(QuantError::ShapeMismatch {
                expected: format!(
                    "{n} {name} values for input shape {dims:?} ({:?})",
                    spec.granularity()
                ),
                got: format!("{len}"),
                context: "fake quantization".into(),
            });
        }
    }
    match spec.granularity() {
        Granularity::PerTensor => {
            let s = [1usize; D];
            Ok(op.apply(x, delta.reshape(s), zero.reshape(s)))
        }
        Granularity::PerChannel { axis } => {
            let mut s = [1usize; D];
            s[axis] = n;
            Ok(op.apply(x, delta.reshape(s), zero.reshape(s)))
        }
        Granularity::PerGroup { axis, size } => {
            let moved = x.movedim(axis, D - 1);
            let moved_dims = moved.dims();
            let groups = moved_dims[D - 1] / size;
            let rows = n / groups;
            let g3: Tensor<3> = moved.reshape([rows, groups, size]);
            let p = [rows, groups, 1];
            let out = op.apply(g3, delta.reshape(p), zero.reshape(p));
            Ok(out.reshape(moved_dims).movedim(D - 1, axis))
        }
        Granularity::Split { channel, axis, at } => Ok(op.apply(
            x,
            split_broadcast(delta, dims, channel, axis, at),
            split_broadcast(zero, dims, channel, axis, at),
        )),
    }
}

/// The pairs of a [`Granularity::Split`] spread to a tensor that broadcasts against `dims`:
/// full length along `axis` (block 0 for indices `< at`, block 1 after), the channel extent
/// along `channel`, 1 elsewhere. Differentiable in `t` (the blocks are narrowed, repeated and
/// concatenated).
pub(crate) fn split_broadcast<const D: usize>(
    t: Tensor<1>,
    dims: [usize; D],
    channel: Option<usize>,
    axis: usize,
    at: usize,
) -> Tensor<D> {
    let n_ch = channel.map_or(1, |c| dims[c]);
    let pairs: Tensor<2> = t.reshape([n_ch, 2]);
    let block = |b: usize, len: usize| {
        let mut s = [1usize; D];
        if let Some(c) = channel {
            s[c] = n_ch;
        }
        let v: Tensor<D> = pairs.clone().narrow(1, b, 1).reshape(s);
        v.repeat_dim(axis, len)
    };
    Tensor::cat(vec![block(0, at), block(1, dims[axis] - at)], axis)
}
