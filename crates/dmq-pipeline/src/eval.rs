//! Evaluation from the library: the sampling protocol of every result table, sample caches
//! keyed by a fingerprint of everything that determines the samples, FD / PSNR / SSIM /
//! class accuracy against the FP model, BitOPs and model bytes, and sample grids.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use dmq_eval::classifier::FmnistClassifier;
use dmq_eval::harness::{Reference, SampleSpec, Scores, bitops_per_image, generate, score};
use dmq_eval::sample_checkpoint::ResumableSampling;
use dmq_models::scheduler::{DdimScheduler, Scheduler};
use dmq_models::{Denoiser, HostTensor};
use dmq_quant::QuantizedFile;
use dmq_quant::fingerprint::fnv1a64;
use serde::Serialize;

use crate::error::Result;

/// A hex fingerprint of a model's parameters: its FP parameters (norms, embeddings,
/// unquantized layers) and its quantized layer export over `num_steps` steps (codes, Δ, z,
/// per-step activation parameters). Caches derived from a model (calibration sets) are
/// keyed by it, so another model under the same name never reuses them.
pub fn weights_fingerprint<M: Denoiser + Module>(model: &M, num_steps: usize) -> Result<String> {
    let fp = dmq_models::io::weights_to_bytes(model, Default::default())?;
    let q = dmq_calib::export_layers(model, num_steps)?.content_hash()?;
    Ok(format!("{:016x}", fnv1a64(&fp) ^ q.rotate_left(1)))
}

/// A hex fingerprint of everything that determines a sample set: the model's FP parameters,
/// its quantized layer export over the sampler's steps, the timestep list, the sampler
/// configuration, the guidance scale, the seed and the count.
pub fn fingerprint<M: Denoiser + Module>(
    model: &M,
    sched: &DdimScheduler,
    spec: &SampleSpec,
) -> Result<String> {
    let fp = dmq_models::io::weights_to_bytes(model, Default::default())?;
    let q = dmq_calib::export_layers(model, sched.num_steps())?.content_hash()?;
    let sampler = format!(
        "{:?}|{:?}|g{}|s{}|n{}|b{}",
        sched.timesteps(),
        sched,
        spec.guidance,
        spec.seed,
        spec.n,
        spec.batch
    );
    Ok(format!(
        "{:016x}",
        fnv1a64(&fp) ^ q.rotate_left(1) ^ fnv1a64(sampler.as_bytes()).rotate_left(7)
    ))
}

/// `spec.n` samples of `model` (in [−1, 1], `[N, C, H, W]`). With `cache = Some(dir)`, a
/// finished set is kept in `dir` under its [`fingerprint`] and returned again without
/// sampling; an unfinished run is checkpointed per batch and resumes.
pub fn sample<M: Denoiser + Module>(
    model: &M,
    sched: &DdimScheduler,
    spec: &SampleSpec,
    cache: Option<&Path>,
    device: &Device,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<HostTensor> {
    sample_path(model, model, "", sched, spec, cache, device, on_batch)
}

/// [`sample`] through the integer path: `integer` (an [`dmq_infer::IntegerModel`] of
/// `model`'s export) draws the samples; the cache key is `model`'s fingerprint marked as
/// the integer path's, so fake-quant and integer samples never share a cache entry.
#[allow(clippy::too_many_arguments)]
pub fn sample_integer<M: Denoiser + Module>(
    model: &M,
    integer: &dyn Denoiser,
    sched: &DdimScheduler,
    spec: &SampleSpec,
    cache: Option<&Path>,
    device: &Device,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<HostTensor> {
    sample_path(model, integer, "-int", sched, spec, cache, device, on_batch)
}

#[allow(clippy::too_many_arguments)]
fn sample_path<M: Denoiser + Module>(
    model: &M,
    sampler_model: &dyn Denoiser,
    tag: &str,
    sched: &DdimScheduler,
    spec: &SampleSpec,
    cache: Option<&Path>,
    device: &Device,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<HostTensor> {
    let Some(dir) = cache else {
        return Ok(generate(sampler_model, sched, spec, device, on_batch)?);
    };
    let fp = format!("{}{tag}", fingerprint(model, sched, spec)?);
    std::fs::create_dir_all(dir)
        .map_err(|e| crate::error::file_err(dir, "cache directory", e.to_string()))?;
    let done = dir.join(format!("samples-{fp}.safetensors"));
    if let Ok(f) = QuantizedFile::load(&done)
        && f.metadata.get("fingerprint") == Some(&fp)
        && let Some((shape, data)) = f.float.get("images")
    {
        return Ok(HostTensor {
            data: data.clone(),
            shape: shape.clone(),
        });
    }
    let partial = dir.join(format!("samples-{fp}.partial.safetensors"));
    let run = ResumableSampling::open(&partial, &fp, sampler_model, sched, spec)?;
    let images = run.generate(sampler_model, sched, device, on_batch)?;
    let mut f = QuantizedFile::default();
    f.float
        .insert("images".into(), (images.shape.clone(), images.data.clone()));
    f.metadata.insert("fingerprint".into(), fp);
    f.save(&done)?;
    Ok(images)
}

/// The metric classifier and the test-set statistics (Fashion-MNIST: the embedded models'
/// domain).
pub struct Evaluator {
    /// The classifier whose features FD is computed on.
    pub classifier: FmnistClassifier,
    /// Test-set and FP-sample statistics.
    pub reference: Reference,
}

impl Evaluator {
    /// Loads the classifier from `classifier_dir`, the test split from `data_dir`, and builds
    /// the reference statistics with the FP samples `fp_images`.
    pub fn new(
        classifier_dir: &Path,
        data_dir: &Path,
        fp_images: HostTensor,
        device: &Device,
    ) -> Result<Self> {
        use dmq_eval::data::fashion_mnist::{Split, load_split};
        let classifier = FmnistClassifier::load(classifier_dir, device)?;
        let test = load_split(data_dir, Split::Test)?;
        let reference = Reference::new(&classifier, &test, fp_images, device)?;
        Ok(Self {
            classifier,
            reference,
        })
    }

    /// Scores samples drawn from the same noise as the FP reference.
    pub fn score(
        &self,
        images: &HostTensor,
        num_classes: Option<usize>,
        device: &Device,
    ) -> Result<Scores> {
        Ok(score(
            &self.classifier,
            &self.reference,
            images,
            num_classes,
            device,
        )?)
    }
}

/// The cost of a model per generated image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cost {
    /// BitOPs per image over all steps (×2 under CFG).
    pub bitops: f64,
    /// Bytes of the deployed model (packed layers + other parameters at f32).
    pub model_bytes: usize,
}

/// BitOPs and model bytes of `model` sampled with `steps` steps (`cfg`: guidance doubles
/// every call). An SVDQuant branch counts its MACs at 16 × 16 bits.
pub fn cost<M: Denoiser + Module>(
    model: &M,
    steps: usize,
    cfg: bool,
    device: &Device,
) -> Result<Cost> {
    cost_with_context(
        model,
        steps,
        cfg,
        dmq_models::denoiser::TEXT_CONTEXT_LEN,
        device,
    )
}

/// [`cost`] of a text-conditional model whose prompts are `context_len` tokens long.
pub fn cost_with_context<M: Denoiser + Module>(
    model: &M,
    steps: usize,
    cfg: bool,
    context_len: usize,
    device: &Device,
) -> Result<Cost> {
    let calls = dmq_models::layer_inventory_with_context(model, context_len, device)?;
    let bits = dmq_calib::layer_bits(model);
    // SVDQuant's 16-bit branches, beside their layers' own calls
    let ratio = dmq_calib::branch_macs_ratio(model);
    let branch_macs: f64 = calls
        .iter()
        .filter_map(|c| ratio.get(&c.name).map(|r| c.macs as f64 * r))
        .sum();
    let per_image = (steps * if cfg { 2 } else { 1 }) as f64;
    Ok(Cost {
        bitops: bitops_per_image(&calls, &bits, steps, cfg).bitops
            + branch_macs * 16.0 * 16.0 * per_image,
        model_bytes: dmq_calib::model_bytes(model, steps)?,
    })
}

/// The first (up to) 40 images of each set side by side (10 per row), as one PNG.
pub fn grid_png(path: &Path, sets: &[&HostTensor], device: &Device) -> Result<PathBuf> {
    let mut panels = Vec::new();
    for h in sets {
        let n = h.shape[0].min(40);
        let per: usize = h.shape[1..].iter().product();
        let t = Tensor::<4>::from_data(
            TensorData::new(
                h.data[..n * per].to_vec(),
                [n, h.shape[1], h.shape[2], h.shape[3]],
            ),
            device,
        );
        panels.push(dmq_eval::image::grid(t, 10.min(n.max(1)), 2)?);
    }
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)
            .map_err(|e| crate::error::file_err(d, "output directory", e.to_string()))?;
    }
    dmq_eval::image::side_by_side(&panels, 12).save_png(path)?;
    Ok(path.to_path_buf())
}
