//! Scoring a text-to-image pipeline trained on Fashion-MNIST (the embedded `t2i-fmnist`) with
//! the same metric classifier and statistics as the class-conditional models.
//!
//! Image `i` of an evaluation set is prompted with class `i mod 10`
//! ([`dmq_eval::harness::sample_labels`]), so the class accuracy of
//! [`crate::eval::Evaluator::score`] is the **prompt accuracy**: the share of images the
//! classifier assigns to the prompted class. The pipeline's 32×32 images (the 28×28 images
//! padded by 2 for the VAE's three levels) are cropped back to the central 28×28.

use burn::tensor::Device;
use dmq_eval::data::fashion_mnist::CLASS_NAMES;
use dmq_models::HostTensor;
use dmq_models::clip::ClipTextModel;
use dmq_models::scheduler::Scheduler;
use dmq_models::{Denoiser, ForwardCtx, LayerRecorder, StepContext};

use crate::error::{PipelineError, Result};
use crate::eval::{Cost, cost_with_context};
use crate::text_to_image::{GenerateOptions, TextToImage};

/// The evaluation prompt of a class: `"a photo of a {name}"`, the name lower-cased.
pub fn class_prompt(label: usize) -> Result<String> {
    let name = CLASS_NAMES
        .get(label)
        .ok_or_else(|| PipelineError::Option {
            option: "class".into(),
            reason: format!(
                "{label} is not a Fashion-MNIST class (0..{})",
                CLASS_NAMES.len()
            ),
        })?;
    Ok(format!("a photo of a {}", name.to_lowercase()))
}

/// The prompts of an `n`-image evaluation set: image `i` gets [`class_prompt`]`(i mod 10)`.
pub fn eval_prompts(n: usize) -> Result<Vec<String>> {
    dmq_eval::harness::sample_labels(n, CLASS_NAMES.len())
        .into_iter()
        .map(class_prompt)
        .collect()
}

/// `(channels, height = width)` of the images `pipe` makes with `unet`.
pub fn image_shape<M: Denoiser + ?Sized>(pipe: &TextToImage, unet: &M) -> (usize, usize) {
    let vae = pipe.vae.config();
    (
        vae.out_channels,
        unet.info().sample_size * vae.downsample_factor(),
    )
}

/// Whether the images of `pipe` are scored by the Fashion-MNIST metric classifier: one
/// channel, at least 28×28 (cropped to the central 28×28 by [`generate_images`]).
pub fn fmnist_scorable<M: Denoiser + ?Sized>(pipe: &TextToImage, unet: &M) -> bool {
    let (c, s) = image_shape(pipe, unet);
    c == 1 && s >= FMNIST_SIZE
}

/// Fashion-MNIST's image side.
pub const FMNIST_SIZE: usize = 28;

/// Generates one image per prompt with `unet` through `pipe` under `sampler` (guidance and
/// seed from `opts`), `batch` prompts at a time (image `i` from seed `opts.seed + i`
/// whatever the batching), each cropped to its central `crop × crop` when `crop` is given
/// (`on_batch(done, total)` after each batch).
///
/// # Shapes
/// - output: `[P, C, H, W]` (or `[P, C, crop, crop]`) in `[-1, 1]`
#[allow(clippy::too_many_arguments)]
pub fn generate_images<M: Denoiser + ?Sized, S: Scheduler>(
    pipe: &TextToImage,
    unet: &M,
    prompts: &[String],
    sampler: &S,
    opts: &GenerateOptions,
    batch: usize,
    crop: Option<usize>,
    device: &Device,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<HostTensor> {
    if batch == 0 {
        return Err(PipelineError::Option {
            option: "batch".into(),
            reason: "must be at least 1".into(),
        });
    }
    let mut shape = None;
    let mut data = Vec::new();
    for start in (0..prompts.len()).step_by(batch) {
        let end = (start + batch).min(prompts.len());
        let refs: Vec<&str> = prompts[start..end].iter().map(String::as_str).collect();
        let o = GenerateOptions {
            seed: opts.seed.wrapping_add(start as u64),
            ..opts.clone()
        };
        let img = pipe.generate_with_sampler(unet, &refs, sampler, &o, device)?;
        let [b, c, h, w] = img.dims();
        let img = match crop {
            Some(k) if h < k || w < k => {
                return Err(PipelineError::Option {
                    option: "crop".into(),
                    reason: format!("the pipeline makes {h}×{w} images, smaller than {k}×{k}"),
                });
            }
            Some(k) => {
                let (top, left) = ((h - k) / 2, (w - k) / 2);
                img.slice([0..b, 0..c, top..top + k, left..left + k])
            }
            None => img,
        };
        let [_, _, h, w] = img.dims();
        data.extend(HostTensor::from_tensor(&img).data);
        shape = Some([c, h, w]);
        on_batch(end, prompts.len());
    }
    let [c, h, w] = shape.unwrap_or([1, 0, 0]);
    Ok(HostTensor {
        shape: vec![prompts.len(), c, h, w],
        data,
    })
}

/// BitOPs and bytes per generated image of a text-to-image pipeline sampled with `unet`
/// over `steps` steps (`cfg`: guidance doubles every UNet call):
/// - the UNet as [`crate::eval::cost`] counts it, its cross-attention on the tokenizer's
///   context length;
/// - the text encoder (one prompt) and the VAE decoder (one latent) once per image, with FP
///   activations: their MACs × w · 32, w = the component's weight bits
///   (`pipe.component_bits`, 32 for f32);
/// - bytes: the UNet's deployed bytes plus the text encoder's and the VAE's stored bytes
///   ([`crate::component_quant::storage_bytes`]).
pub fn pipeline_cost<M: Denoiser + burn::module::Module>(
    pipe: &TextToImage,
    unet: &M,
    steps: usize,
    cfg: bool,
    device: &Device,
) -> Result<Cost> {
    let len = pipe.tokenizer.max_length();
    let c = cost_with_context(unet, steps, cfg, len, device)?;
    let macs = |rec: &LayerRecorder| rec.calls().iter().map(|c| c.macs as f64).sum::<f64>();
    let rec = LayerRecorder::default();
    let ids = pipe.tokenizer.encode_padded(&[""], len)?;
    let ctx = ForwardCtx::new(StepContext::single(0.0)).with_recorder(&rec);
    pipe.text_encoder
        .forward(ClipTextModel::input_ids(&ids, device)?, &ctx)?;
    let text_macs = macs(&rec);
    let rec = LayerRecorder::default();
    let info = unet.info();
    let z = burn::tensor::Tensor::<4>::zeros(
        [1, info.in_channels, info.sample_size, info.sample_size],
        device,
    );
    let ctx = ForwardCtx::new(StepContext::single(0.0)).with_recorder(&rec);
    pipe.vae.decode(z, &ctx)?;
    let vae_macs = macs(&rec);
    // the components: FP activations, their weights at `component_bits` (32: f32)
    let bits = pipe.component_bits;
    let w = |b: Option<u32>| f64::from(b.unwrap_or(32));
    let component_bytes =
        crate::component_quant::storage_bytes(&pipe.text_encoder, bits.text_encoder)?
            + crate::component_quant::storage_bytes(&pipe.vae, bits.vae)?;
    Ok(Cost {
        bitops: c.bitops + (text_macs * w(bits.text_encoder) + vae_macs * w(bits.vae)) * 32.0,
        model_bytes: c.model_bytes + component_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_follow_the_harness_labels() {
        let p = eval_prompts(12).unwrap();
        assert_eq!(p[0], "a photo of a t-shirt/top");
        assert_eq!(p[1], "a photo of a trouser");
        assert_eq!(p[9], "a photo of a ankle boot");
        assert_eq!(p[10], p[0]);
        assert!(class_prompt(10).is_err());
    }
}
