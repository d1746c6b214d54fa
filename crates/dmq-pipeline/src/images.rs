//! [`ImageSet`]: real training images for the methods that train on data (BinaryDM), and the
//! deterministic batch stream they are drawn as.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use dmq_eval::data::fashion_mnist::{Split, load_split};
use dmq_models::DenoiserInfo;
use dmq_models::noise::NoiseRng;

use crate::error::{PipelineError, Result};

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
        let [n, c, h, w] = self.shape;
        let per = c * h * w;
        let mut rng = NoiseRng::new(0xB17D ^ (step as u64).wrapping_mul(0x9E37_79B9));
        let idx: Vec<usize> = (0..batch).map(|_| rng.below(n)).collect();
        let mut x = Vec::with_capacity(batch * per);
        for &i in &idx {
            x.extend(
                self.pixels[i * per..(i + 1) * per]
                    .iter()
                    .map(|&p| f32::from(p) / 127.5 - 1.0),
            );
        }
        let x = Tensor::from_data(TensorData::new(x, [batch, c, h, w]), device);
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
