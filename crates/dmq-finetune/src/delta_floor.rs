//! Keeps learned step sizes positive during fine-tuning: an Adam(W) step larger than a small
//! Δ flips its sign, which wrecks the channel and makes the export refuse it.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use dmq_models::Denoiser;
use dmq_models::layers::LayerMut;
use dmq_quant::range::MIN_DELTA;
use dmq_quant::{ActQuantizer, WeightQuantizer};

/// Clamps to ≥ [`MIN_DELTA`] the activation Δ used at sampling step `step` (the only set an
/// update at that step can move) of every layer whose name passes `wanted`. Uniform, LSQ,
/// per-step uniform and TALSQ quantizers are covered; parameter ids (and optimiser moments)
/// are kept.
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
                ActQuantizer::Lsq(q) => &mut q.delta,
                ActQuantizer::TimeUniform(t) => match t.step_to_set().get(step) {
                    Some(&i) => &mut t.sets[i].delta,
                    None => continue,
                },
                ActQuantizer::TimeLsq(t) => match t.step_to_set().get(step) {
                    Some(&i) => &mut t.sets[i].delta,
                    None => continue,
                },
                // Δ is measured per call and never below the row's range / levels
                ActQuantizer::Dynamic(_) => continue,
            };
            floor_delta(delta);
        }
    });
}

/// Clamps to ≥ [`MIN_DELTA`] every per-channel weight Δ of a step-size quantizer (uniform,
/// LSQ, AdaRound, QALoRA). EfficientDM trains Δ_w with Adam at a fixed 1e-6 per step; at 8
/// bits a channel of small weights (an adaLN row of the DiT) has Δ_w of that order, and one
/// step drove it to −2.7e-6. Binarizer scales σ are not step sizes and are left alone.
pub(crate) fn keep_weight_deltas_positive<M: Denoiser + ?Sized>(model: &mut M) {
    model.for_each_layer_mut(&mut |layer| {
        let slot = match layer {
            LayerMut::Linear(l) => &mut l.w_quant,
            LayerMut::Conv2d(l) => &mut l.w_quant,
            LayerMut::Matmul(_) => return,
        };
        let delta = match slot {
            Some(WeightQuantizer::Uniform(q)) => &mut q.delta,
            Some(WeightQuantizer::Lsq(q)) => &mut q.delta,
            Some(WeightQuantizer::AdaRound(q)) => &mut q.delta,
            Some(WeightQuantizer::QaLora(q)) => &mut q.delta,
            Some(WeightQuantizer::Binary(_) | WeightQuantizer::MultiBasis(_)) | None => return,
        };
        floor_delta(delta);
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use dmq_models::dit::DiT;
    use dmq_models::layers::LayerRef;
    use dmq_quant::{AffineParams, LsqQuantizer, QuantSpec, TimeIndexed};

    /// An LSQ quantizer whose Δ an optimiser step has set to `d` (`from_params` refuses a
    /// negative Δ, so it is set afterwards).
    fn lsq_with_delta(
        spec: QuantSpec,
        zero: f32,
        d: f32,
        (learn_zero, grad_scale): (bool, bool),
        device: &Device,
    ) -> LsqQuantizer {
        let p = AffineParams {
            spec,
            delta: vec![1.0],
            zero: vec![zero],
        };
        let mut q = LsqQuantizer::from_params(&p, learn_zero, grad_scale, device).unwrap();
        q.delta = Param::from_tensor(Tensor::from_data(TensorData::new(vec![d], [1]), device));
        q
    }

    /// A one-block 8×8 DiT.
    fn tiny_dit(device: &Device) -> DiT {
        DiT::new(&dmq_models::defaults::tiny_dit().unwrap(), device).unwrap()
    }

    fn scalar(t: &Tensor<1>) -> f64 {
        f64::from(dmq_models::HostTensor::from_tensor(t).data[0])
    }

    /// EfficientDM's TALSQ: only the set of the trained step is clamped, to the floor.
    #[test]
    fn talsq_steps_stay_positive() {
        let device = Device::default().autodiff(); // training runs on an autodiff device
        let cfg = dmq_models::defaults::tiny_unet().unwrap();
        let mut model = dmq_models::unet::UNet2DModel::new(&cfg, &device).unwrap();
        let spec = QuantSpec::int(4).unwrap();
        let set = |d: f32| lsq_with_delta(spec, 8.0, d, (true, false), &device);
        let mut name = String::new();
        model.for_each_layer_mut(&mut |layer| {
            if let (LayerMut::Conv2d(l), true) = (layer, name.is_empty()) {
                name = l.name().to_string();
                let q = TimeIndexed::grouped(
                    vec![set(-0.5), set(-0.25)],
                    vec![900.0, 100.0],
                    vec![0, 1],
                )
                .unwrap();
                l.a_quant = Some(ActQuantizer::TimeLsq(q));
            }
        });
        keep_act_deltas_positive(&mut model, 1, &|_| true);
        let mut deltas = Vec::new();
        model.for_each_layer(&mut |layer| {
            if let LayerRef::Conv2d(l) = layer
                && let Some(ActQuantizer::TimeLsq(t)) = &l.a_quant
            {
                for q in &t.sets {
                    deltas.push(scalar(&q.delta.val().sum()));
                }
            }
        });
        // only the trained step's set is clamped, to the floor
        assert_eq!(deltas.len(), 2, "{name}");
        assert_eq!(deltas[0], -0.5);
        assert!(
            (deltas[1] - f64::from(MIN_DELTA)).abs() < 1e-12,
            "{deltas:?}"
        );
    }

    /// BinaryDM's signed LSQ on an attention matmul operand: the DiT W1A8 baseline ended QAT
    /// with Δ = −0.0032 there and its export was refused. Every flipped Δ is raised to the
    /// floor, positive ones are untouched, the parameter id (the optimiser's key) is kept.
    #[test]
    fn lsq_matmul_operands_stay_positive() {
        let device = Device::default().autodiff();
        let mut model = tiny_dit(&device);
        let spec = QuantSpec::signed_symmetric(8).unwrap();
        let lsq = |d: f32| lsq_with_delta(spec, 0.0, d, (false, true), &device);
        let mut ids = Vec::new();
        model.for_each_layer_mut(&mut |layer| {
            if let LayerMut::Matmul(m) = layer {
                let (a, b) = (lsq(0.25), lsq(-0.0032));
                ids.push((a.delta.id, b.delta.id));
                m.a_quant = Some(ActQuantizer::Lsq(a));
                m.b_quant = Some(ActQuantizer::Lsq(b));
            }
        });
        assert!(!ids.is_empty(), "the DiT has attention matmuls");
        keep_act_deltas_positive(&mut model, 0, &|_| true);
        let mut seen = Vec::new();
        model.for_each_layer(&mut |layer| {
            if let LayerRef::Matmul(m) = layer
                && let (Some(ActQuantizer::Lsq(a)), Some(ActQuantizer::Lsq(b))) =
                    (&m.a_quant, &m.b_quant)
            {
                let v = |q: &LsqQuantizer| dmq_models::HostTensor::from_tensor(&q.delta.val()).data;
                seen.push(((a.delta.id, b.delta.id), v(a), v(b)));
            }
        });
        assert_eq!(seen.len(), ids.len());
        for ((id, a, b), want) in seen.into_iter().zip(ids) {
            assert_eq!(id, want, "parameter ids kept");
            assert_eq!(a, vec![0.25]);
            assert_eq!(b, vec![MIN_DELTA]);
        }
    }

    /// EfficientDM's Δ_w: the DiT W8A8 run ended with Δ_w = −2.7e-6 on one channel of
    /// `transformer_blocks.4.norm1.linear`, and its export was refused. The flipped channel is
    /// raised to the floor, the others and the parameter id are kept.
    #[test]
    fn qalora_weight_deltas_stay_positive() {
        use dmq_models::layers::LayerRef;
        let device = Device::default().autodiff();
        let mut model = tiny_dit(&device);
        let mut want = None;
        model.for_each_layer_mut(&mut |layer| {
            if let (LayerMut::Linear(l), None) = (layer, &want) {
                let [c_out, _] = l.weight_shape();
                let params = AffineParams {
                    spec: QuantSpec::int(8).unwrap().per_channel(0),
                    delta: vec![0.01; c_out],
                    zero: vec![128.0; c_out],
                };
                let mut q = dmq_quant::QaLoraQuantizer::from_ptq_seeded(
                    l.weight.val(),
                    &params,
                    2,
                    &mut || 0.5,
                )
                .unwrap();
                let mut d = vec![0.01f32; c_out];
                d[1] = -2.7e-6;
                let id = q.delta.id;
                q.delta = Param::initialized(
                    id,
                    Tensor::from_data(TensorData::new(d.clone(), [c_out]), &device),
                );
                d[1] = MIN_DELTA;
                want = Some((l.name().to_string(), id, d));
                l.w_quant = Some(WeightQuantizer::QaLora(q));
            }
        });
        let (name, id, d) = want.expect("the DiT has linear layers");
        keep_weight_deltas_positive(&mut model);
        let mut seen = None;
        model.for_each_layer(&mut |layer| {
            if let LayerRef::Linear(l) = layer
                && l.name() == name
                && let Some(WeightQuantizer::QaLora(q)) = &l.w_quant
            {
                seen = Some((
                    q.delta.id,
                    dmq_models::HostTensor::from_tensor(&q.delta.val()).data,
                ));
            }
        });
        assert_eq!(seen, Some((id, d)));
    }
}
