//! [`ImageSet`]: real training images for the methods that train on data (BinaryDM), and the
//! deterministic batch stream they are drawn as.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use dmq_eval::data::fashion_mnist::{Split, load_split};
use dmq_models::noise::NoiseRng;
use dmq_models::{Conditioning, DenoiserInfo, ForwardCtx, StepContext};

use crate::error::{PipelineError, Result};
use crate::text_to_image::TextToImage;

/// `N` images of `C×H×W` 8-bit pixels (item-major, then channel, row, column), with optional
/// class labels. Pixels map to the model's range as `x = p / 127.5 − 1`.
#[derive(Clone, Debug)]
pub struct ImageSet {
    shape: [usize; 4],
    pixels: Arc<Vec<u8>>,
    labels: Option<Arc<Vec<u32>>>,
}

impl ImageSet {
    /// A set from raw pixels, `shape = [N, C, H, W]`.
    ///
    /// # Errors
    /// [`PipelineError::Option`] when the lengths disagree with the shape or a dimension is 0.
    pub fn new(shape: [usize; 4], pixels: Vec<u8>, labels: Option<Vec<u32>>) -> Result<Self> {
        let bad = |reason: String| PipelineError::Option {
            option: "training images".into(),
            reason,
        };
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        if shape.contains(&0) || n != pixels.len() {
            return Err(bad(format!("{} pixels for shape {shape:?}", pixels.len())));
        }
        if let Some(l) = &labels
            && l.len() != shape[0]
        {
            return Err(bad(format!("{} labels for {} images", l.len(), shape[0])));
        }
        Ok(Self {
            shape,
            pixels: Arc::new(pixels),
            labels: labels.map(Arc::new),
        })
    }

    /// The training split of a Fashion-MNIST directory (IDX files, gzipped or not; the
    /// Debian package `dataset-fashion-mnist` installs them in
    /// `/usr/share/datasets/fashion-mnist`).
    pub fn fashion_mnist_train(dir: &Path) -> Result<Self> {
        let split = load_split(dir, Split::Train)?;
        let n = split.len();
        Self::new(
            [n, 1, 28, 28],
            split.images().to_vec(),
            Some(split.labels().iter().map(|&l| u32::from(l)).collect()),
        )
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// Whether the set is empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// `[N, C, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Checks that the images fit a model: channels, square size, and labels for (only)
    /// class-conditional models, each below the number of classes.
    pub fn check_fits(&self, info: &DenoiserInfo) -> Result<()> {
        let [_, c, h, w] = self.shape;
        let bad = |reason: String| PipelineError::Option {
            option: "training images".into(),
            reason,
        };
        if c != info.in_channels || h != info.sample_size || w != info.sample_size {
            return Err(bad(format!(
                "images are {c}×{h}×{w}, the model takes {}×{}×{}",
                info.in_channels, info.sample_size, info.sample_size
            )));
        }
        match (&self.labels, info.num_classes) {
            (None, Some(_)) => Err(bad(
                "the model is class-conditional: labels are needed".into()
            )),
            (Some(l), Some(k)) => match l.iter().find(|&&y| y as usize >= k) {
                Some(y) => Err(bad(format!("label {y} ≥ the model's {k} classes"))),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// The images of iteration `step` (drawn as [`ImageSet::batch`] draws them) in [−1, 1],
    /// each padded by `pad` pixels of background (−1) on every side; their indices, and the
    /// generator after the draw.
    fn draw(
        &self,
        step: usize,
        batch: usize,
        pad: usize,
        device: &Device,
    ) -> (Tensor<4>, Vec<usize>, NoiseRng) {
        let [n, c, h, w] = self.shape;
        let per = c * h * w;
        let mut rng = NoiseRng::new(0xB17D ^ (step as u64).wrapping_mul(0x9E37_79B9));
        let idx: Vec<usize> = (0..batch).map(|_| rng.below(n)).collect();
        let (ph, pw) = (h + 2 * pad, w + 2 * pad);
        let mut x = vec![-1.0f32; batch * c * ph * pw];
        for (b, &i) in idx.iter().enumerate() {
            for ch in 0..c {
                for r in 0..h {
                    let src = &self.pixels[i * per + (ch * h + r) * w..][..w];
                    let dst = ((b * c + ch) * ph + r + pad) * pw + pad;
                    for (d, &p) in x[dst..dst + w].iter_mut().zip(src) {
                        *d = f32::from(p) / 127.5 - 1.0;
                    }
                }
            }
        }
        let x = Tensor::from_data(TensorData::new(x, [batch, c, ph, pw]), device);
        (x, idx, rng)
    }

    /// The training batch of iteration `step` for a latent text-to-image model (`pipe`'s
    /// UNet): the images of [`ImageSet::batch`]'s draw padded with background to the VAE's
    /// input size, encoded by the VAE (a posterior draw, scaled as the diffusion model
    /// sees latents), each prompted with `prompts[label]` and replaced by the empty prompt
    /// with probability `null_prob` (CFG dropout).
    ///
    /// # Shapes
    /// - output: latents `[B, C_lat, h, w]`, text states `[B, L, D]`
    pub fn latent_text_batch(
        &self,
        step: usize,
        batch: usize,
        pipe: &TextToImage,
        prompts: &[String],
        null_prob: f64,
        device: &Device,
    ) -> Result<(Tensor<4>, Conditioning)> {
        let bad = |reason: String| PipelineError::Option {
            option: "training images".into(),
            reason,
        };
        let labels = self.labels.as_ref().ok_or_else(|| {
            bad("a text-to-image model trains on prompted images: labels are needed".into())
        })?;
        let [_, c, h, w] = self.shape;
        let (vc, size) = crate::t2i_eval::image_shape(pipe, &pipe.unet);
        if c != vc || h != w || h > size || (size - h) % 2 != 0 {
            return Err(bad(format!(
                "images are {c}×{h}×{w}; the VAE takes {vc}×{size}×{size} (square images of \
                 its channels, padded evenly to its size)"
            )));
        }
        let (x, idx, mut rng) = self.draw(step, batch, (size - h) / 2, device);
        let text: Vec<&str> = idx
            .iter()
            .map(|&i| {
                let label = labels[i] as usize;
                if rng.uniform() < null_prob {
                    Ok("")
                } else {
                    prompts.get(label).map(String::as_str).ok_or_else(|| {
                        bad(format!(
                            "label {label} has no prompt ({} given)",
                            prompts.len()
                        ))
                    })
                }
            })
            .collect::<Result<_>>()?;
        let ctx = ForwardCtx::new(StepContext::single(0.0));
        let noise = rng.tensor(
            {
                let f = pipe.vae.config().downsample_factor();
                [batch, pipe.vae.config().latent_channels, size / f, size / f]
            },
            device,
        );
        let latents = pipe.vae.latents_from_image(x, Some(noise), &ctx)?.detach();
        let states = pipe.encode(&text, device)?.detach();
        Ok((latents, Conditioning::text(states)))
    }

    /// The training batch of iteration `step`: `batch` images drawn with replacement from a
    /// generator seeded by `step` alone (a resumed run sees exactly the batches it would
    /// have seen), in [−1, 1]; for class-conditional models their labels, each replaced by
    /// the null label `num_classes` with probability `null_prob` (CFG dropout).
    pub fn batch(
        &self,
        step: usize,
        batch: usize,
        info: &DenoiserInfo,
        null_prob: f64,
        device: &Device,
    ) -> (Tensor<4>, Option<Tensor<1, Int>>) {
        let (x, idx, mut rng) = self.draw(step, batch, 0, device);
        let class = match (info.num_classes, &self.labels) {
            (Some(k), Some(labels)) => {
                let ys: Vec<usize> = idx
                    .iter()
                    .map(|&i| {
                        if rng.uniform() < null_prob {
                            k
                        } else {
                            labels[i] as usize
                        }
                    })
                    .collect();
                Some(dmq_models::sampler::labels(&ys, device))
            }
            _ => None,
        };
        (x, class)
    }
}
