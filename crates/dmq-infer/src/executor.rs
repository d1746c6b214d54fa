//! [`IntegerExecutor`]: the [`LayerExecutor`] that computes quantized layers with the
//! `dmq-kernels` integer GEMMs.
//!
//! Per layer, packed once at load: the weight codes in the kernels' panel layout
//! ([`PackedWeights`]), the bias, and one static activation quantizer ([`ActQuant`]) per
//! exported parameter set. Per call: the f32 input is quantized on the fly with the set of
//! the call's step, multiplied in integers (int8 `vpdpbusd`, 4-bit nibbles, or 1-bit sign
//! application, chosen by the weight's bit-width) and dequantized with the per-channel Δ,
//! z of the weight; a dynamic quantizer (SVDQuant's per-token activations) takes each row's
//! range in the same pass, and an SVDQuant low-rank branch ([`LowRankBranch`]) adds
//! `(x·L2ᵀ)·L1ᵀ` from the same f32 rows into the GEMM's output. Convolutions run as
//! im2col + GEMM. Attention matmuls quantize both
//! operands with their exported parameters and multiply them per (batch, head) in
//! integers.
//!
//! A layer whose export the kernels cannot run (FP weights, per-channel activation
//! quantization, a fractional activation zero point) is left to burn: see
//! [`IntegerExecutor::plan`] for which path every layer takes and why.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use dmq_kernels::act_quant;
use dmq_kernels::conv::{self, Conv2dParams};
use dmq_kernels::{ActQuant, GemmOptions, LowRankBranch, PackedWeights, gemm_acts_f32};
use dmq_models::layers::LayerRef;
use dmq_models::{ConvGeometry, Denoiser, ExecutorError, HostTensor, LayerExecutor, StepContext};
use dmq_quant::{DynamicSpec, QuantizedFile};

use crate::error::{InferError, Result};
use crate::export::{self, ActSets, ExportedWeight};

/// Static activation quantizers, one per exported set, selected by step.
#[derive(Clone, Debug)]
struct StepActs {
    sets: Vec<ActQuant>,
    step_to_set: Vec<usize>,
}

impl StepActs {
    /// One dynamic quantizer (range per row, measured in the quantization pass) for every step.
    fn dynamic(spec: DynamicSpec) -> std::result::Result<Self, String> {
        let bits = u32::from(spec.bits);
        let aq = if spec.symmetric {
            ActQuant::dynamic_symmetric(bits)
        } else {
            ActQuant::dynamic(bits)
        }
        .map_err(|e| e.to_string())?;
        Ok(Self {
            sets: vec![if spec.per_token { aq.per_row() } else { aq }],
            step_to_set: Vec::new(),
        })
    }

    fn from_export(s: &ActSets) -> std::result::Result<Self, String> {
        let sets = s
            .sets
            .iter()
            .map(|p| ActQuant::from_params(p).map_err(|e| e.to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            sets,
            step_to_set: s.step_to_set.clone(),
        })
    }

    fn at(&self, layer: &str, step: usize) -> Result<&ActQuant> {
        // A single set answers every step (a shared quantizer).
        if self.sets.len() == 1 {
            return Ok(&self.sets[0]);
        }
        self.step_to_set
            .get(step)
            .map(|&i| &self.sets[i])
            .ok_or_else(|| InferError::Step {
                layer: layer.into(),
                step,
                len: self.step_to_set.len(),
            })
    }

    fn bits(&self) -> u32 {
        self.sets[0].bits()
    }
}

#[derive(Debug)]
enum IntLayer {
    /// A linear layer, or a convolution run as f32 im2col + GEMM (per-group weights, dynamic
    /// activations, or an SVDQuant branch, which reads the same im2col rows).
    Dense {
        weight: PackedWeights,
        bias: Option<Vec<f32>>,
        acts: StepActs,
        branch: Option<LowRankBranch>,
    },
    /// A convolution whose weight is packed with the reduction axis in `(kh, kw, C_in)`
    /// order ([`conv::pack_conv_weight_hwc`]), for the NHWC im2col fast path.
    ConvHwc {
        weight: PackedWeights,
        bias: Option<Vec<f32>>,
        acts: StepActs,
    },
    /// A convolution with dynamic per-row activations (SVDQuant): weight packed in
    /// `(kh, kw, C_in)` order, rows gathered from NHWC and quantized in blocks without an
    /// f32 im2col matrix, the branch's L2 reordered to match
    /// ([`conv::im2col_dynamic_hwc`]).
    ConvDynamicHwc {
        weight: PackedWeights,
        bias: Option<Vec<f32>>,
        acts: StepActs,
        branch: Option<LowRankBranch>,
    },
    Matmul {
        a: StepActs,
        b: StepActs,
    },
}

/// Which path a layer takes in an [`IntegerExecutor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerPath {
    /// Integer kernel; the format, e.g. `W4A8` or `A8A8` (matmul operands).
    Integer(String),
    /// Left to burn (fake-quant or FP), with the reason.
    Burn(String),
}

/// Runs the quantized layers of an export with integer kernels (see the module docs).
#[derive(Debug)]
pub struct IntegerExecutor {
    layers: BTreeMap<String, IntLayer>,
    plan: Vec<(String, LayerPath)>,
    opts: GemmOptions,
    timings: Mutex<BTreeMap<String, LayerTiming>>,
}

/// Wall time spent in one layer's integer kernel calls (host copies excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerTiming {
    /// Calls.
    pub calls: usize,
    /// Seconds, summed over the calls.
    pub seconds: f64,
}

fn dense_layer(
    file: &QuantizedFile,
    name: &str,
) -> Result<std::result::Result<(IntLayer, String), String>> {
    let w = match export::weight(file, name) {
        Some(ExportedWeight::Quantized(q)) => q,
        Some(ExportedWeight::Float(..)) => return Ok(Err("FP weight".into())),
        None => return Ok(Err("not in the export".into())),
    };
    let dynamic = export::dynamic(file, name, "a")?;
    let acts = match dynamic {
        Some(spec) => StepActs::dynamic(spec),
        None => match ActSets::read(file, name, "a")? {
            Some(sets) => StepActs::from_export(&sets),
            None => return Ok(Err("FP input activations".into())),
        },
    };
    let acts = match acts {
        Ok(a) => a,
        Err(reason) => return Ok(Err(format!("activations: {reason}"))),
    };
    let (d_out, d_in) = (w.shape[0], w.shape[1..].iter().product::<usize>());
    let branch = match export::low_rank(file, name, d_in, d_out)? {
        Some(e) => match LowRankBranch::new(e.down, e.up, e.rank, d_in, d_out) {
            Ok(b) => Some(b),
            Err(err) => {
                return Err(crate::error::export_err(
                    file.origin_name(),
                    format!("{name}.low_rank"),
                    err.to_string(),
                ));
            }
        },
        None => None,
    };
    // Convolutions with a dynamic grid gather NHWC rows and quantize them per row in blocks
    // (the branch reads the same rows), when the weight survives reordering.
    if w.shape.len() == 4
        && let Some(spec) = dynamic
        && spec.per_token
        && let Ok(weight) = conv::pack_conv_weight_hwc(w)
    {
        let [_, c, kh, kw] = w.shape[..] else {
            return Ok(Err(format!("conv weight of shape {:?}", w.shape)));
        };
        let branch = match branch.map(|b| b.for_hwc_conv(c, kh, kw)) {
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => return Ok(Err(format!("branch: {e}"))),
            None => None,
        };
        let bias = checked_bias(file, name, weight.n())?;
        let mut format = format!("W{}A{}-dyn", weight.bits(), acts.bits());
        if let Some(b) = &branch {
            format.push_str(&format!("+LR{}", b.rank()));
        }
        return Ok(Ok((
            IntLayer::ConvDynamicHwc {
                weight,
                bias,
                acts,
                branch,
            },
            format,
        )));
    }
    // Convolutions take the NHWC im2col fast path (quantize, then gather codes) when their
    // parameters allow the reordering (per tensor / per channel) and the activation grid is
    // static; the others the f32 im2col, whose rows a dynamic grid and a branch read.
    if w.shape.len() == 4
        && dynamic.is_none()
        && branch.is_none()
        && let Ok(weight) = conv::pack_conv_weight_hwc(w)
    {
        let bias = checked_bias(file, name, weight.n())?;
        let format = format!("W{}A{}", weight.bits(), acts.bits());
        return Ok(Ok((IntLayer::ConvHwc { weight, bias, acts }, format)));
    }
    let weight = match PackedWeights::from_quantized(w) {
        Ok(p) => p,
        Err(e) => return Ok(Err(format!("weight: {e}"))),
    };
    let bias = checked_bias(file, name, weight.n())?;
    let mut format = format!("W{}A{}", weight.bits(), acts.bits());
    if dynamic.is_some() {
        format.push_str("-dyn");
    }
    if let Some(b) = &branch {
        format.push_str(&format!("+LR{}", b.rank()));
    }
    Ok(Ok((
        IntLayer::Dense {
            weight,
            bias,
            acts,
            branch,
        },
        format,
    )))
}

fn checked_bias(file: &QuantizedFile, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
    let bias = export::bias(file, name).map(<[f32]>::to_vec);
    if let Some(b) = &bias
        && b.len() != n
    {
        return Err(crate::error::export_err(
            file.origin_name(),
            format!("{name}.bias"),
            format!("{} values for {n} output channels", b.len()),
        ));
    }
    Ok(bias)
}

fn matmul_layer(
    file: &QuantizedFile,
    name: &str,
) -> Result<std::result::Result<(IntLayer, String), String>> {
    let (Some(a), Some(b)) = (
        ActSets::read(file, name, "a")?,
        ActSets::read(file, name, "b")?,
    ) else {
        return Ok(Err("an FP operand".into()));
    };
    match (StepActs::from_export(&a), StepActs::from_export(&b)) {
        (Ok(a), Ok(b)) => {
            let format = format!("A{}A{}", a.bits(), b.bits());
            Ok(Ok((IntLayer::Matmul { a, b }, format)))
        }
        (Err(r), _) | (_, Err(r)) => Ok(Err(format!("operands: {r}"))),
    }
}

impl IntegerExecutor {
    /// Packs every layer of `model` that `file` (a `dmq-calib` layer export) quantizes in a
    /// form the kernels run; the model supplies layer names and kinds.
    ///
    /// # Errors
    /// A malformed export entry (missing set, bad spec, bias of the wrong length).
    pub fn new<M: Denoiser + ?Sized>(model: &M, file: &QuantizedFile) -> Result<Self> {
        let mut names = Vec::new();
        model.for_each_layer(&mut |l| {
            names.push((l.name().to_string(), matches!(l, LayerRef::Matmul(_))))
        });
        let mut layers = BTreeMap::new();
        let mut plan = Vec::with_capacity(names.len());
        for (name, is_matmul) in names {
            let built = if is_matmul {
                matmul_layer(file, &name)?
            } else {
                dense_layer(file, &name)?
            };
            let path = match built {
                Ok((layer, format)) => {
                    layers.insert(name.clone(), layer);
                    LayerPath::Integer(format)
                }
                Err(reason) => LayerPath::Burn(reason),
            };
            plan.push((name, path));
        }
        Ok(Self {
            layers,
            plan,
            opts: GemmOptions::default(),
            timings: Mutex::new(BTreeMap::new()),
        })
    }

    /// Kernel options (instruction set, threads).
    pub fn with_options(mut self, opts: GemmOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Every layer of the model in forward order with its path.
    pub fn plan(&self) -> &[(String, LayerPath)] {
        &self.plan
    }

    /// Time spent per layer in the integer kernels since construction or the last
    /// [`reset_timings`](Self::reset_timings) (where the integer path spends its time). An
    /// SVDQuant branch is also timed on its own as `<layer>.low_rank` (its time is part of
    /// its layer's).
    pub fn timings(&self) -> BTreeMap<String, LayerTiming> {
        self.timings.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Clears [`timings`](Self::timings).
    pub fn reset_timings(&self) {
        if let Ok(mut t) = self.timings.lock() {
            t.clear();
        }
    }

    fn timed<T>(&self, layer: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t0 = Instant::now();
        let r = f();
        self.record_time(layer, t0.elapsed().as_secs_f64());
        r
    }

    fn record_time(&self, layer: &str, seconds: f64) {
        if let Ok(mut t) = self.timings.lock() {
            let e = t.entry(layer.to_string()).or_default();
            e.calls += 1;
            e.seconds += seconds;
        }
    }

    /// Number of layers computed by integer kernels.
    pub fn integer_layers(&self) -> usize {
        self.layers.len()
    }

    /// Bytes of the packed weights the kernels hold (codes, Δ, z, code sums, bias).
    pub fn packed_bytes(&self) -> usize {
        self.layers
            .values()
            .map(|l| match l {
                IntLayer::Dense {
                    weight,
                    bias,
                    branch,
                    ..
                }
                | IntLayer::ConvDynamicHwc {
                    weight,
                    bias,
                    branch,
                    ..
                } => {
                    weight.storage_bytes()
                        + 4 * bias.as_ref().map_or(0, Vec::len)
                        + branch.as_ref().map_or(0, LowRankBranch::storage_bytes)
                }
                IntLayer::ConvHwc { weight, bias, .. } => {
                    weight.storage_bytes() + 4 * bias.as_ref().map_or(0, Vec::len)
                }
                IntLayer::Matmul { .. } => 0,
            })
            .sum()
    }

    fn layer(&self, name: &str) -> Result<&IntLayer> {
        self.layers
            .get(name)
            .ok_or_else(|| InferError::UnknownLayer { layer: name.into() })
    }

    #[allow(clippy::type_complexity)]
    fn dense(
        &self,
        name: &str,
    ) -> Result<(
        &PackedWeights,
        Option<&[f32]>,
        &StepActs,
        Option<&LowRankBranch>,
    )> {
        match self.layer(name)? {
            IntLayer::Dense {
                weight,
                bias,
                acts,
                branch,
            } => Ok((weight, bias.as_deref(), acts, branch.as_ref())),
            _ => Err(InferError::UnknownLayer { layer: name.into() }),
        }
    }

    /// `x [rows, K]` → `[rows, N]`.
    pub fn run_linear(&self, name: &str, x: &HostTensor, step: usize) -> Result<HostTensor> {
        let (w, bias, acts, branch) = self.dense(name)?;
        let kernel = |source| InferError::Kernel {
            layer: name.into(),
            source,
        };
        let [rows, k] = x.shape[..] else {
            return Err(shape(name, "[rows, K]", &x.shape));
        };
        if k != w.k() {
            return Err(shape(name, &format!("[rows, {}]", w.k()), &x.shape));
        }
        let q = act_quant::quantize(&x.data, rows, k, acts.at(name, step)?).map_err(kernel)?;
        let mut data = gemm_acts_f32(&q, w, bias, &self.opts).map_err(kernel)?;
        if let Some(b) = branch {
            self.timed(&format!("{name}.low_rank"), || {
                b.apply_add(&x.data, rows, &mut data, self.opts.threads)
                    .map_err(kernel)
            })?;
        }
        Ok(HostTensor {
            data,
            shape: vec![rows, w.n()],
        })
    }

    /// `x [B, C_in, H, W]` → `[B, C_out, H', W']` (im2col + GEMM).
    pub fn run_conv2d(
        &self,
        name: &str,
        x: &HostTensor,
        geometry: ConvGeometry,
        step: usize,
    ) -> Result<HostTensor> {
        let [b, c, h, wd] = x.shape[..] else {
            return Err(shape(name, "[B, C, H, W]", &x.shape));
        };
        let params = Conv2dParams::new([geometry.stride; 2], [geometry.padding; 2]);
        let kernel = |source| InferError::Kernel {
            layer: name.into(),
            source,
        };
        let (conv_fn, w, bias, acts): (ConvFn, _, _, _) = match self.layer(name)? {
            IntLayer::ConvHwc { weight, bias, acts } => {
                (conv::conv2d_hwc, weight, bias.as_deref(), acts)
            }
            IntLayer::ConvDynamicHwc {
                weight,
                bias,
                acts,
                branch,
            } => {
                let [cout, kh, kw, _] = weight.shape()[..] else {
                    return Err(shape(
                        name,
                        "a weight packed [C_out, kh, kw, C_in]",
                        weight.shape(),
                    ));
                };
                let rows = conv::im2col_dynamic_hwc(
                    &x.data,
                    [b, c, h, wd],
                    kh,
                    kw,
                    &params,
                    acts.at(name, step)?,
                    branch.as_ref(),
                    self.opts.threads,
                )
                .map_err(kernel)?;
                let (q, ho, wo, down_s) = (&rows.acts, rows.ho, rows.wo, rows.branch_s);
                let mut y =
                    gemm_acts_f32(q, weight, bias.as_deref(), &self.opts).map_err(kernel)?;
                if let (Some(br), Some(t)) = (branch, &rows.branch_t) {
                    let t0 = Instant::now();
                    br.up_add(t, q.m, &mut y, self.opts.threads)
                        .map_err(kernel)?;
                    self.record_time(
                        &format!("{name}.low_rank"),
                        down_s + t0.elapsed().as_secs_f64(),
                    );
                }
                return Ok(HostTensor {
                    data: conv::to_nchw(&y, b, cout, ho * wo),
                    shape: vec![b, cout, ho, wo],
                });
            }
            IntLayer::Dense {
                weight,
                bias,
                acts,
                branch,
            } => {
                // f32 im2col once: the quantization pass and the branch read the same rows
                let [cout, _, kh, kw] = weight.shape()[..] else {
                    return Err(shape(name, "a 4-D conv weight", weight.shape()));
                };
                let (cols, ho, wo) =
                    conv::im2col(&x.data, [b, c, h, wd], kh, kw, &params).map_err(kernel)?;
                let rows = b * ho * wo;
                let q = act_quant::quantize(&cols, rows, weight.k(), acts.at(name, step)?)
                    .map_err(kernel)?;
                let mut y =
                    gemm_acts_f32(&q, weight, bias.as_deref(), &self.opts).map_err(kernel)?;
                if let Some(br) = branch {
                    self.timed(&format!("{name}.low_rank"), || {
                        br.apply_add(&cols, rows, &mut y, self.opts.threads)
                            .map_err(kernel)
                    })?;
                }
                return Ok(HostTensor {
                    data: conv::to_nchw(&y, b, cout, ho * wo),
                    shape: vec![b, cout, ho, wo],
                });
            }
            IntLayer::Matmul { .. } => return Err(InferError::UnknownLayer { layer: name.into() }),
        };
        let (data, out) = conv_fn(
            &x.data,
            [b, c, h, wd],
            w,
            acts.at(name, step)?,
            bias,
            &params,
            &self.opts,
        )
        .map_err(kernel)?;
        Ok(HostTensor {
            data,
            shape: out.to_vec(),
        })
    }

    /// `a [B, H, N, K] · b [B, H, K, M]` → `[B, H, N, M]`, both operands quantized with their
    /// exported parameters, one integer GEMM per (batch, head).
    pub fn run_matmul(
        &self,
        name: &str,
        a: &HostTensor,
        b: &HostTensor,
        step: usize,
    ) -> Result<HostTensor> {
        let IntLayer::Matmul { a: qa, b: qb } = self.layer(name)? else {
            return Err(InferError::UnknownLayer { layer: name.into() });
        };
        let ([bs, hs, n, k], [bs2, hs2, k2, m]) = (
            <[usize; 4]>::try_from(a.shape.as_slice())
                .map_err(|_| shape(name, "a [B, H, N, K]", &a.shape))?,
            <[usize; 4]>::try_from(b.shape.as_slice())
                .map_err(|_| shape(name, "b [B, H, K, M]", &b.shape))?,
        );
        if (bs, hs, k) != (bs2, hs2, k2) {
            return Err(shape(name, &format!("b [{bs}, {hs}, {k}, M]"), &b.shape));
        }
        let kernel = |source| InferError::Kernel {
            layer: name.into(),
            source,
        };
        let (aq, bq) = (qa.at(name, step)?, qb.at(name, step)?);
        // Attention products are many small GEMMs: spread the (batch, head) pairs over the
        // threads, one single-threaded GEMM each.
        let pairs = bs * hs;
        let threads = self.opts.threads.clamp(1, pairs.max(1));
        let one = self.opts.with_threads(1);
        let mut out = vec![0f32; pairs * n * m];
        let per = pairs.div_ceil(threads);
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = out
                .chunks_mut(per * n * m)
                .enumerate()
                .map(|(c, chunk)| {
                    let one = &one;
                    s.spawn(move || -> Result<()> {
                        for (i, y) in chunk.chunks_mut(n * m).enumerate() {
                            let bh = c * per + i;
                            let a_bh = &a.data[bh * n * k..(bh + 1) * n * k];
                            let b_bh = &b.data[bh * k * m..(bh + 1) * k * m];
                            y.copy_from_slice(
                                &matmul_pair(a_bh, b_bh, n, k, m, aq, bq, one).map_err(kernel)?,
                            );
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(HostTensor {
            data: out,
            shape: vec![bs, hs, n, m],
        })
    }

    /// The fused attention core (see [`LayerExecutor::attention`]): `q, k, v [B, N, H·d]` →
    /// `[B, N, H·d]`, one (image, head) pair per task spread over the threads.
    #[allow(clippy::too_many_arguments)]
    pub fn run_attention(
        &self,
        qk: &str,
        sv: &str,
        [q, k, v]: [&HostTensor; 3],
        heads: usize,
        scale: f32,
        step: usize,
    ) -> Result<HostTensor> {
        let (IntLayer::Matmul { a: qq, b: kq }, IntLayer::Matmul { a: pq, b: vq }) =
            (self.layer(qk)?, self.layer(sv)?)
        else {
            return Err(InferError::UnknownLayer { layer: qk.into() });
        };
        let [bs, n, inner] = <[usize; 3]>::try_from(q.shape.as_slice())
            .map_err(|_| shape(qk, "q [B, N, H·d]", &q.shape))?;
        if heads == 0 || !inner.is_multiple_of(heads) || k.shape != q.shape || v.shape != q.shape {
            return Err(shape(
                qk,
                &format!(
                    "q, k, v of one shape [B, N, H·d] with H = {heads}, q {:?}",
                    q.shape
                ),
                &k.shape,
            ));
        }
        let quants = AttentionQuants {
            q: qq.at(qk, step)?,
            k: kq.at(qk, step)?,
            p: pq.at(sv, step)?,
            v: vq.at(sv, step)?,
        };
        let d = inner / heads;
        let pairs = bs * heads;
        let threads = self.opts.threads.clamp(1, pairs.max(1));
        let one = self.opts.with_threads(1);
        let per = pairs.div_ceil(threads);
        let heads_out: Vec<dmq_kernels::Result<Vec<Vec<f32>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (one, quants) = (&one, &quants);
                    s.spawn(move || {
                        (t * per..((t + 1) * per).min(pairs))
                            .map(|bh| {
                                let (b, h) = (bh / heads, bh % heads);
                                let rows = b * n * inner..(b + 1) * n * inner;
                                let qkv =
                                    [&q.data[rows.clone()], &k.data[rows.clone()], &v.data[rows]];
                                attention_head(qkv, n, inner, h, d, scale, quants, one)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut out = vec![0f32; bs * n * inner];
        let mut bh = 0;
        for chunk in heads_out {
            let chunk = chunk.map_err(|source| InferError::Kernel {
                layer: qk.into(),
                source,
            })?;
            for o in chunk {
                let (b, h) = (bh / heads, bh % heads);
                for (r, row) in o.chunks_exact(d).enumerate() {
                    let at = (b * n + r) * inner + h * d;
                    out[at..at + d].copy_from_slice(row);
                }
                bh += 1;
            }
        }
        Ok(HostTensor {
            data: out,
            shape: vec![bs, n, inner],
        })
    }
}

/// `a [N, K] · b [K, M]` with both operands quantized: the right operand becomes the
/// "weight" `[M, K]` ([`right_operand`]).
#[allow(clippy::too_many_arguments)]
fn matmul_pair(
    a: &[f32],
    b: &[f32],
    n: usize,
    k: usize,
    m: usize,
    aq: &ActQuant,
    bq: &ActQuant,
    opts: &GemmOptions,
) -> dmq_kernels::Result<Vec<f32>> {
    let mut bt = vec![0f32; m * k];
    for kk in 0..k {
        for mm in 0..m {
            bt[mm * k + kk] = b[kk * m + mm];
        }
    }
    let wb = right_operand(&bt, m, k, bq)?;
    let qa = act_quant::quantize(a, n, k, aq)?;
    gemm_acts_f32(&qa, &wb, None, opts)
}

/// The right operand of an activation product, given transposed as `bt [M, K]`, quantized
/// with `bq` and packed as the "weight" of the GEMM: its signed codes shifted to unsigned
/// codes `c = q + 2^(b−1)` with the matching code-space zero point.
fn right_operand(
    bt: &[f32],
    m: usize,
    k: usize,
    bq: &ActQuant,
) -> dmq_kernels::Result<PackedWeights> {
    let half = 1i32 << (bq.bits() - 1);
    let qbt = act_quant::quantize(bt, m, k, bq)?;
    let mut codes = Vec::with_capacity(m * k);
    for r in 0..m {
        codes.extend(qbt.row(r).iter().map(|&q| (q as i32 + half) as u8));
    }
    let zc: Vec<f32> = qbt.zero.iter().map(|&z| (z + half) as f32).collect();
    PackedWeights::from_codes_with_params(&codes, m, k, bq.bits(), k, qbt.delta, zc)
}

/// The quantizers of a fused attention core: `qk` operands, `sv` operands.
struct AttentionQuants<'a> {
    q: &'a ActQuant,
    k: &'a ActQuant,
    p: &'a ActQuant,
    v: &'a ActQuant,
}

/// One head of one image of the fused core: `q, k, v` hold `[N, H·d]` rows of one image;
/// returns `o [N, d]` of head `h`.
///
/// `s = Q(q_h)·Q(k_h)ᵀ` in integers, `p = softmax(s·scale)` row by row in f32, then
/// `o = Q(p)·Q(v_h)` in integers: the same quantized products as the unfused path, with the
/// scores kept in cache instead of a `[B, H, N, N]` round trip through burn.
#[allow(clippy::too_many_arguments)]
fn attention_head(
    [q, k, v]: [&[f32]; 3],
    n: usize,
    inner: usize,
    h: usize,
    d: usize,
    scale: f32,
    quants: &AttentionQuants<'_>,
    opts: &GemmOptions,
) -> dmq_kernels::Result<Vec<f32>> {
    let gather = |t: &[f32]| -> Vec<f32> {
        let mut out = Vec::with_capacity(n * d);
        for r in 0..n {
            out.extend_from_slice(&t[r * inner + h * d..r * inner + (h + 1) * d]);
        }
        out
    };
    // k_h [N, d] is already the transposed right operand of q·kᵀ.
    let kw = right_operand(&gather(k), n, d, quants.k)?;
    let qa = act_quant::quantize(&gather(q), n, d, quants.q)?;
    let mut p = gemm_acts_f32(&qa, &kw, None, opts)?; // [N, N]
    for row in p.chunks_exact_mut(n) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * scale;
        let mut sum = 0f32;
        for x in row.iter_mut() {
            *x = (*x * scale - max).exp();
            sum += *x;
        }
        // Divide (not multiply by 1/sum) as burn's softmax does: the probabilities are
        // quantized next, and the fewer ulps apart the two paths are, the fewer codes flip.
        row.iter_mut().for_each(|x| *x /= sum);
    }
    let mut vt = vec![0f32; d * n]; // v_hᵀ [d, N]
    for r in 0..n {
        for (j, &x) in v[r * inner + h * d..r * inner + (h + 1) * d]
            .iter()
            .enumerate()
        {
            vt[j * n + r] = x;
        }
    }
    let vw = right_operand(&vt, d, n, quants.v)?;
    let pa = act_quant::quantize(&p, n, n, quants.p)?;
    gemm_acts_f32(&pa, &vw, None, opts)
}

type ConvFn = fn(
    &[f32],
    [usize; 4],
    &PackedWeights,
    &ActQuant,
    Option<&[f32]>,
    &Conv2dParams,
    &GemmOptions,
) -> dmq_kernels::Result<(Vec<f32>, [usize; 4])>;

fn shape(layer: &str, expected: &str, got: &[usize]) -> InferError {
    InferError::Shape {
        layer: layer.into(),
        expected: expected.into(),
        got: got.to_vec(),
    }
}

impl LayerExecutor for IntegerExecutor {
    fn handles(&self, layer: &str) -> bool {
        self.layers.contains_key(layer)
    }

    fn linear(
        &self,
        layer: &str,
        x: &HostTensor,
        step: &StepContext,
    ) -> std::result::Result<HostTensor, ExecutorError> {
        Ok(self.timed(layer, || self.run_linear(layer, x, step.step))?)
    }

    fn conv2d(
        &self,
        layer: &str,
        x: &HostTensor,
        geometry: ConvGeometry,
        step: &StepContext,
    ) -> std::result::Result<HostTensor, ExecutorError> {
        Ok(self.timed(layer, || self.run_conv2d(layer, x, geometry, step.step))?)
    }

    fn matmul(
        &self,
        layer: &str,
        a: &HostTensor,
        b: &HostTensor,
        step: &StepContext,
    ) -> std::result::Result<HostTensor, ExecutorError> {
        Ok(self.timed(layer, || self.run_matmul(layer, a, b, step.step))?)
    }

    fn attention(
        &self,
        qk: &str,
        sv: &str,
        qkv: [&HostTensor; 3],
        heads: usize,
        scale: f32,
        step: &StepContext,
    ) -> Option<std::result::Result<HostTensor, ExecutorError>> {
        let both = matches!(
            (self.layers.get(qk), self.layers.get(sv)),
            (Some(IntLayer::Matmul { .. }), Some(IntLayer::Matmul { .. }))
        );
        both.then(|| {
            Ok(self.timed(qk, || {
                self.run_attention(qk, sv, qkv, heads, scale, step.step)
            })?)
        })
    }
}
