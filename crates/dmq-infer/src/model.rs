//! [`IntegerModel`]: a denoiser whose quantized layers run through an [`IntegerExecutor`],
//! and [`load_export`], which loads a layer export back into fake-quant form.

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::layers::{LayerMut, LayerRef, LowRank};
use dmq_models::{Denoiser, DenoiserInfo, ForwardCtx, try_for_each_layer_mut};
use dmq_quant::{
    ActQuantizer, AffineParams, BinaryQuantizer, DynamicQuantizer, QuantizedFile, QuantizedTensor,
    TimeIndexed, UniformQuantizer, WeightQuantizer,
};

use crate::error::{Result, export_err};
use crate::executor::IntegerExecutor;
use crate::export::{self, ActSets, ExportedWeight};

fn tensor<const D: usize>(
    shape: &[usize],
    data: &[f32],
    device: &Device,
    origin: &str,
    entry: &str,
) -> Result<Tensor<D>> {
    let dims: [usize; D] = shape.try_into().map_err(|_| {
        export_err(
            origin,
            entry,
            format!("rank {} (expected {D})", shape.len()),
        )
    })?;
    Ok(Tensor::from_data(
        TensorData::new(data.to_vec(), dims),
        device,
    ))
}

fn check_shape(origin: &str, entry: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(export_err(
            origin,
            entry,
            format!("shape {got:?}, the model's layer has {want:?}"),
        ));
    }
    Ok(())
}

/// The weight quantizer that reproduces an exported weight: σ·sign for binarizer codes
/// (1 bit, Δ = 2σ, z = ½), uniform (Δ, z) otherwise. Applied to the dequantized weight, it returns it unchanged.
fn weight_quantizer(q: &QuantizedTensor, device: &Device) -> Result<WeightQuantizer> {
    if q.bits() == 1 && q.params.zero.iter().all(|&z| z == 0.5) {
        let sigma: Vec<f32> = q.params.delta.iter().map(|d| d / 2.0).collect();
        let n = sigma.len();
        return Ok(WeightQuantizer::Binary(BinaryQuantizer {
            sigma: Param::from_tensor(Tensor::from_data(TensorData::new(sigma, [n]), device)),
        }));
    }
    Ok(WeightQuantizer::Uniform(UniformQuantizer::from_params(
        &q.params, device,
    )?))
}

fn act_quantizer(sets: &ActSets, timesteps: &[f64], device: &Device) -> Result<ActQuantizer> {
    let one = |p: &AffineParams| UniformQuantizer::from_params(p, device);
    if sets.sets.len() == 1 {
        return Ok(ActQuantizer::Uniform(one(&sets.sets[0])?));
    }
    let qs = sets
        .sets
        .iter()
        .map(one)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let ts = if timesteps.len() == sets.num_steps() {
        timesteps.to_vec()
    } else {
        // Without recorded timesteps the step index stands in (only resampling reads them).
        (0..sets.num_steps()).map(|s| s as f64).collect()
    };
    Ok(ActQuantizer::TimeUniform(TimeIndexed::grouped(
        qs,
        ts,
        sets.step_to_set.clone(),
    )?))
}

/// Timesteps recorded in the export's metadata (`dmq.timesteps`, a JSON list), if any.
pub fn export_timesteps(file: &QuantizedFile) -> Result<Vec<f64>> {
    match file.metadata.get("dmq.timesteps") {
        None => Ok(Vec::new()),
        Some(s) => serde_json::from_str(s).map_err(|e| {
            export_err(
                file.origin_name(),
                "dmq.timesteps",
                format!("not a list of numbers: {e}"),
            )
        }),
    }
}

/// Weight, bias and input quantizer of a linear (rank 2) or conv (rank 4) layer.
macro_rules! load_dense {
    ($l:ident, $rank:literal, $name:ident, $file:ident, $ts:ident, $device:ident) => {{
        if let Some(w) = export::weight($file, &$name) {
            let (t, q) =
                load_weight::<$rank>(w, &$l.weight_shape(), $file.origin_name(), &$name, $device)?;
            $l.weight = Param::from_tensor(t);
            $l.w_quant = q;
        } else {
            $l.w_quant = None;
        }
        if let (Some(b), Some(lb)) = (export::bias($file, &$name), $l.bias.as_mut()) {
            let origin = $file.origin_name();
            check_shape(
                origin,
                &format!("{}.bias", $name),
                &[b.len()],
                &lb.val().dims(),
            )?;
            *lb = Param::from_tensor(tensor(&[b.len()], b, $device, origin, &$name)?);
        }
        // SmoothQuant: the input divisor goes with the folded weight (or neither)
        $l.smooth = match export::smooth($file, &$name) {
            Some(s) => {
                let origin = $file.origin_name();
                check_shape(
                    origin,
                    &format!("{}.smooth", $name),
                    &[s.len()],
                    &[$l.weight_shape()[1]],
                )?;
                Some(
                    Param::from_tensor(tensor(&[s.len()], s, $device, origin, &$name)?)
                        .set_require_grad(false),
                )
            }
            None => None,
        };
        // SVDQuant: the exported weight is the residual; the branch goes back beside it
        $l.low_rank = {
            let ws = $l.weight_shape();
            let d_in: usize = ws[1..].iter().product();
            match export::low_rank($file, &$name, d_in, ws[0])? {
                Some(e) => Some(LowRank::from_host(
                    &$name, e.down, e.up, e.rank, d_in, ws[0], $device,
                )?),
                None => None,
            }
        };
        $l.a_quant = match export::dynamic($file, &$name, "a")? {
            Some(spec) => Some(ActQuantizer::Dynamic(DynamicQuantizer::new(spec)?)),
            None => ActSets::read($file, &$name, "a")?
                .map(|s| act_quantizer(&s, &$ts, $device))
                .transpose()?,
        };
    }};
}

/// Loads a layer export into `model` in fake-quant form: every quantizable layer gets the
/// exported weight (dequantized codes, or the FP weight), bias and quantizers, so the model
/// computes what the exported integers mean. Layers the export does not name keep their
/// weights and lose their quantizers. Norms and embeddings are not part of the export and
/// stay as they are in `model`.
///
/// # Errors
/// A weight or bias whose shape differs from the model's layer, or a malformed entry.
pub fn load_export<M: Denoiser + ?Sized>(
    model: &mut M,
    file: &QuantizedFile,
    device: &Device,
) -> Result<()> {
    let timesteps = export_timesteps(file)?;
    check_entries_match_layers(&*model, file)?;
    try_for_each_layer_mut(model, |layer| -> Result<()> {
        let name = layer.name().to_string();
        match layer {
            LayerMut::Linear(l) => load_dense!(l, 2, name, file, timesteps, device),
            LayerMut::Conv2d(l) => load_dense!(l, 4, name, file, timesteps, device),
            LayerMut::Matmul(m) => {
                m.a_quant = ActSets::read(file, &name, "a")?
                    .map(|s| act_quantizer(&s, &timesteps, device))
                    .transpose()?;
                m.b_quant = ActSets::read(file, &name, "b")?
                    .map(|s| act_quantizer(&s, &timesteps, device))
                    .transpose()?;
            }
        }
        Ok(())
    })
}

/// Every quantized tensor (`<layer>.weight`) and every activation spec (`<layer>.<a|b>.spec`)
/// of `file` must name a quantizable layer of `model`: an export of another architecture
/// is refused instead of loading as an FP model under a quantized label. (Float tensors are
/// not checked here: a self-contained model file also holds norms and embeddings, which its
/// reader checks against the model's parameters.)
fn check_entries_match_layers<M: Denoiser + ?Sized>(model: &M, file: &QuantizedFile) -> Result<()> {
    let mut layers = std::collections::BTreeSet::new();
    model.for_each_layer(&mut |l| {
        layers.insert(l.name().to_string());
    });
    let origin = file.origin_name();
    for name in file.quantized.keys() {
        let layer = name.strip_suffix(".weight").unwrap_or(name);
        if !layers.contains(layer) {
            return Err(export_err(
                origin,
                name.as_str(),
                "matches no quantizable layer of the model (an export of another model?)",
            ));
        }
    }
    for key in file.half.keys() {
        let layer = key
            .strip_suffix(".low_rank.down")
            .or_else(|| key.strip_suffix(".low_rank.up"))
            .unwrap_or(key);
        if !layers.contains(layer) {
            return Err(export_err(
                origin,
                key.as_str(),
                "matches no quantizable layer's low-rank branch (an export of another model?)",
            ));
        }
    }
    for key in file.metadata.keys() {
        if let Some(rest) = key
            .strip_suffix(".spec")
            .or_else(|| key.strip_suffix(".dynamic"))
            && let Some((layer, op)) = rest.rsplit_once('.')
            && (op == "a" || op == "b")
            && !layers.contains(layer)
        {
            return Err(export_err(
                origin,
                key.as_str(),
                "matches no quantizable layer of the model (an export of another model?)",
            ));
        }
    }
    Ok(())
}

fn load_weight<const D: usize>(
    w: ExportedWeight<'_>,
    want: &[usize],
    origin: &str,
    name: &str,
    device: &Device,
) -> Result<(Tensor<D>, Option<WeightQuantizer>)> {
    let entry = format!("{name}.weight");
    match w {
        ExportedWeight::Quantized(q) => {
            check_shape(origin, &entry, &q.shape, want)?;
            Ok((
                q.dequantize_tensor::<D>(device)?,
                Some(weight_quantizer(q, device)?),
            ))
        }
        ExportedWeight::Float(shape, data) => {
            check_shape(origin, &entry, shape, want)?;
            Ok((tensor(shape, data, device, origin, &entry)?, None))
        }
    }
}

/// A denoiser whose quantized layers are computed by an [`IntegerExecutor`]; the rest
/// (norms, embeddings, FP layers, layers the kernels cannot run) runs in burn on the
/// wrapped model, which [`IntegerModel::from_export`] puts in the export's fake-quant form.
///
/// It is a [`Denoiser`], so every sampler, metric and harness of dmq runs it unchanged.
#[derive(Debug)]
pub struct IntegerModel<M> {
    model: M,
    executor: IntegerExecutor,
}

impl<M: Denoiser> IntegerModel<M> {
    /// Loads `file` into `model` ([`load_export`]) and packs its quantized layers for the
    /// integer kernels.
    pub fn from_export(mut model: M, file: &QuantizedFile, device: &Device) -> Result<Self> {
        load_export(&mut model, file, device)?;
        let executor = IntegerExecutor::new(&model, file)?;
        Ok(Self { model, executor })
    }

    /// The executor (its [`IntegerExecutor::plan`] says which layers run in integers).
    pub fn executor(&self) -> &IntegerExecutor {
        &self.executor
    }

    /// The wrapped model in fake-quant form (the reference the integer path is tested
    /// against).
    pub fn fake_quant(&self) -> &M {
        &self.model
    }
}

impl<M: Denoiser> Denoiser for IntegerModel<M> {
    fn forward(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        class: Option<dmq_models::Conditioning>,
        ctx: &ForwardCtx<'_>,
    ) -> dmq_models::Result<Tensor<4>> {
        self.model
            .forward(x, t, class, &ctx.with_executor(&self.executor))
    }

    fn info(&self) -> DenoiserInfo {
        self.model.info()
    }

    fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        self.model.for_each_layer(f)
    }

    fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        self.model.for_each_layer_mut(f)
    }

    fn structure(&self) -> dmq_models::Structure {
        self.model.structure()
    }
}
