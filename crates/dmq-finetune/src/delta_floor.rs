//! Keeps learned activation step sizes positive during fine-tuning: an Adam(W) step larger
//! than a small Δ flips its sign, which wrecks the channel and makes the export refuse it.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use dmq_models::Denoiser;
use dmq_models::layers::LayerMut;
use dmq_quant::ActQuantizer;
use dmq_quant::range::MIN_DELTA;

/// Clamps to ≥ [`MIN_DELTA`] the activation Δ used at sampling step `step` (the only set an
/// update at that step can move) of every layer whose name passes `wanted`. Uniform, per-step
/// uniform and TALSQ quantizers are covered; parameter ids (and optimiser moments) are kept.
pub(crate) fn keep_act_deltas_positive<M: Denoiser + ?Sized>(
    model: &mut M,
    step: usize,
    wanted: &dyn Fn(&str) -> bool,
) {
    model.for_each_layer_mut(&mut |layer| {
        if !wanted(layer.name()) {
            return;
        }
        let slots: Vec<&mut Option<ActQuantizer>> = match layer {
            LayerMut::Linear(l) => vec![&mut l.a_quant],
            LayerMut::Conv2d(l) => vec![&mut l.a_quant],
            LayerMut::Matmul(m) => vec![&mut m.a_quant, &mut m.b_quant],
        };
        for q in slots.into_iter().flatten() {
            let delta = match q {
                ActQuantizer::Uniform(u) => &mut u.delta,
                ActQuantizer::TimeUniform(t) => match t.step_to_set().get(step) {
                    Some(&i) => &mut t.sets[i].delta,
                    None => continue,
                },
                ActQuantizer::TimeLsq(t) => match t.step_to_set().get(step) {
                    Some(&i) => &mut t.sets[i].delta,
                    None => continue,
                },
                _ => continue,
            };
            floor_delta(delta);
        }
    });
}

fn floor_delta(delta: &mut Param<Tensor<1>>) {
    let d = dmq_models::HostTensor::from_tensor(&delta.val()).data;
    if d.iter().all(|&v| v >= MIN_DELTA) {
        return;
    }
    let n = d.len();
    let fixed: Vec<f32> = d.into_iter().map(|v| v.max(MIN_DELTA)).collect();
    let device = delta.val().device();
    let t = Tensor::<1>::from_data(TensorData::new(fixed, [n]), &device);
    *delta = Param::initialized(delta.id, t.require_grad());
}
