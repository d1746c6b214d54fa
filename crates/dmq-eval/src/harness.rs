//! The measuring stick every results table uses: generate N samples from fixed initial noise
//! (labels `i mod K` for class-conditional models), then score them against the Fashion-MNIST
//! test set (FD), against the FP model's samples from the same noise (FD, MSE, PSNR, SSIM),
//! and with the classifier (class accuracy of conditional samples).

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::noise::NoiseRng;
use dmq_models::sampler::{Trajectory, labels};
use dmq_models::scheduler::Scheduler;
use dmq_models::{Denoiser, ForwardCtx, HostTensor};

use crate::classifier::{FEATURE_DIM, FmnistClassifier};
use crate::data::fashion_mnist::{FashionMnistSplit, Padding};
use crate::error::DataError;
use crate::metrics::bitops::{BitOpsCount, LayerBits, bitops};
use crate::metrics::fd::{FeatureStats, frechet_distance};
use crate::metrics::fidelity::{Fidelity, fidelity};

/// How samples are drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleSpec {
    /// Number of samples N.
    pub n: usize,
    /// CFG scale (class-conditional models only; 1 = no guidance).
    pub guidance: f64,
    /// Seed of the initial noise (and the stochastic steps).
    pub seed: u64,
    /// Samples per batch.
    pub batch: usize,
}

/// Samples `spec.n` images with `model` under `scheduler`, in [−1, 1], `[N, C, H, W]`.
/// Batch k starts from the noise of seed `seed + k`, so two models given the same spec
/// start from the same noise. `on_batch(done, total)` reports progress.
/// [`ResumableSampling`](crate::sample_checkpoint::ResumableSampling) is the same with a
/// checkpoint of the finished batches.
pub fn generate<M: Denoiser + ?Sized, S: Scheduler>(
    model: &M,
    scheduler: &S,
    spec: &SampleSpec,
    device: &Device,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<HostTensor, DataError> {
    let info = model.info();
    let (c, s) = (info.in_channels, info.sample_size);
    let empty = HostTensor {
        data: Vec::with_capacity(spec.n * c * s * s),
        shape: vec![0, c, s, s],
    };
    generate_after(model, scheduler, spec, device, empty, &mut |out| {
        on_batch(out.shape[0], spec.n);
        Ok(())
    })
}

/// The batches of [`generate`] that follow `done` (its first whole batches, `[D, C, H, W]`):
/// appends each batch to it and calls `on_batch` with everything so far.
pub(crate) fn generate_after<M: Denoiser + ?Sized, S: Scheduler>(
    model: &M,
    scheduler: &S,
    spec: &SampleSpec,
    device: &Device,
    mut out: HostTensor,
    on_batch: &mut dyn FnMut(&HostTensor) -> Result<(), DataError>,
) -> Result<HostTensor, DataError> {
    if spec.n == 0 || spec.batch == 0 {
        return Err(DataError::Invalid(
            "sample count and batch must be > 0".into(),
        ));
    }
    let info = model.info();
    let (c, s) = (info.in_channels, info.sample_size);
    let mut start = out.shape.first().copied().unwrap_or(0);
    if out.shape.len() != 4
        || out.shape[1..] != [c, s, s]
        || out.data.len() != start * c * s * s
        || start > spec.n
        || (start % spec.batch != 0 && start != spec.n)
    {
        return Err(DataError::Invalid(format!(
            "cannot continue sampling after images of shape {:?} ({} values): expected whole \
             batches of {} of [{c}, {s}, {s}], at most {}",
            out.shape,
            out.data.len(),
            spec.batch,
            spec.n
        )));
    }
    let model_err = |e: dmq_models::ModelError| DataError::Invalid(e.to_string());
    let mut k = (start / spec.batch) as u64;
    while start < spec.n {
        let b = spec.batch.min(spec.n - start);
        let x = NoiseRng::new(spec.seed.wrapping_add(k)).tensor([b, c, s, s], device);
        let class = info.num_classes.map(|nc| {
            dmq_models::Conditioning::Class(labels(
                &(start..start + b).map(|i| i % nc).collect::<Vec<_>>(),
                device,
            ))
        });
        let guidance = if info.num_classes.is_some() {
            spec.guidance
        } else {
            1.0
        };
        let mut traj = Trajectory::new(
            scheduler,
            x,
            class,
            info.num_classes,
            guidance,
            spec.seed ^ (k << 20),
        )
        .map_err(model_err)?;
        while !traj.done() {
            let inp = traj.inputs().map_err(model_err)?;
            let raw = model
                .forward(inp.x, inp.t, inp.cond, &ForwardCtx::new(inp.step))
                .map_err(model_err)?;
            let eps = traj.guide(raw, info.in_channels);
            traj.advance(eps).map_err(model_err)?;
        }
        let h = HostTensor::from_tensor(&traj.sample().clone().clamp(-1.0, 1.0));
        out.data.extend_from_slice(&h.data);
        out.shape[0] += b;
        start += b;
        k += 1;
        on_batch(&out)?;
    }
    Ok(out)
}

/// Labels the harness conditions sample i on: `i mod K`.
pub fn sample_labels(n: usize, num_classes: usize) -> Vec<usize> {
    (0..n).map(|i| i % num_classes).collect()
}

/// Host images `[N, 1, 28, 28]` as a device tensor, rows `from..to`.
fn rows(images: &HostTensor, from: usize, to: usize, device: &Device) -> Tensor<4> {
    let per: usize = images.shape[1..].iter().product();
    let d = images.data[from * per..to * per].to_vec();
    Tensor::from_data(
        TensorData::new(
            d,
            [to - from, images.shape[1], images.shape[2], images.shape[3]],
        ),
        device,
    )
}

/// Classifier features `[N, 128]` (row-major) and predicted classes of `images`.
pub fn features(
    classifier: &FmnistClassifier,
    images: &HostTensor,
    device: &Device,
) -> Result<(Vec<f32>, Vec<usize>), DataError> {
    let n = images.shape[0];
    let mut feats = Vec::with_capacity(n * FEATURE_DIM);
    let mut preds = Vec::with_capacity(n);
    for from in (0..n).step_by(256) {
        let to = (from + 256).min(n);
        let f = classifier.features(rows(images, from, to, device))?;
        let logits = classifier.head(f.clone());
        preds.extend(
            HostTensor::from_tensor(&logits.argmax(1).float().reshape([to - from]))
                .data
                .iter()
                .map(|&v| v as usize),
        );
        feats.extend(HostTensor::from_tensor(&f).data);
    }
    Ok((feats, preds))
}

/// What a sample set is compared with.
pub struct Reference {
    /// Feature statistics of the Fashion-MNIST test set.
    pub test: FeatureStats,
    /// The FP model's samples from the same noise.
    pub fp_images: HostTensor,
    /// Their feature statistics.
    pub fp: FeatureStats,
}

impl Reference {
    /// Statistics of `test` (all of it) and of the FP samples.
    pub fn new(
        classifier: &FmnistClassifier,
        test: &FashionMnistSplit,
        fp_images: HostTensor,
        device: &Device,
    ) -> Result<Self, DataError> {
        let t =
            HostTensor::from_tensor(&test.range_tensor(0, test.len(), Padding::None, device)?);
        let (tf, _) = features(classifier, &t, device)?;
        let (ff, _) = features(classifier, &fp_images, device)?;
        Ok(Self {
            test: FeatureStats::from_rows(&tf, FEATURE_DIM)?,
            fp: FeatureStats::from_rows(&ff, FEATURE_DIM)?,
            fp_images,
        })
    }
}

/// Scores of one sample set.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    /// FD against the test set.
    pub fd_test: f64,
    /// FD against the FP model's samples.
    pub fd_fp: f64,
    /// Fidelity to the FP samples from the same noise.
    pub fidelity: Fidelity,
    /// Fraction of samples the classifier labels with their conditioning class.
    pub class_acc: Option<f64>,
    /// Share of each predicted class (unconditional coverage).
    pub class_share: Vec<f64>,
}

/// Scores `images` (drawn with [`generate`] and the reference's spec).
pub fn score(
    classifier: &FmnistClassifier,
    reference: &Reference,
    images: &HostTensor,
    num_classes: Option<usize>,
    device: &Device,
) -> Result<Scores, DataError> {
    if images.shape != reference.fp_images.shape {
        return Err(DataError::Metric(format!(
            "samples {:?} and FP reference {:?} differ in shape",
            images.shape, reference.fp_images.shape
        )));
    }
    let (f, preds) = features(classifier, images, device)?;
    let stats = FeatureStats::from_rows(&f, FEATURE_DIM)?;
    let s = &images.shape;
    let fid = fidelity(
        &images.data,
        &reference.fp_images.data,
        [s[0], s[1], s[2], s[3]],
    )?;
    let class_acc = num_classes.map(|k| {
        let want = sample_labels(preds.len(), k);
        preds.iter().zip(&want).filter(|(p, w)| p == w).count() as f64 / preds.len() as f64
    });
    let mut share = vec![0.0; 10];
    for &p in &preds {
        if p < 10 {
            share[p] += 1.0 / preds.len() as f64;
        }
    }
    Ok(Scores {
        fd_test: frechet_distance(&stats, &reference.test)?,
        fd_fp: frechet_distance(&stats, &reference.fp)?,
        fidelity: fid,
        class_acc,
        class_share: share,
    })
}

/// BitOPs per generated image of a model with per-layer `bits` over `steps` sampling steps
/// (×2 under CFG, whose batched call evaluates both branches).
pub fn bitops_per_image(
    calls: &[dmq_models::LayerCall],
    bits: &BTreeMap<String, (u32, u32)>,
    steps: usize,
    cfg: bool,
) -> BitOpsCount {
    let b: BTreeMap<String, LayerBits> = bits
        .iter()
        .map(|(k, &(a, b))| (k.clone(), LayerBits { a, b }))
        .collect();
    bitops(calls, &b, steps * if cfg { 2 } else { 1 })
}
