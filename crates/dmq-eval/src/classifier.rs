//! [`FmnistClassifier`]: the small CNN whose penultimate features define dmq's Fréchet
//! distance (FD) and whose predictions give the class accuracy of conditional samples.
//!
//! No Inception weights exist offline, so quality is measured with this network, trained on
//! Fashion-MNIST by `examples/train_classifier.rs` and shipped in
//! `assets/models/fmnist-classifier`.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};

use crate::error::DataError;

/// Width of the penultimate feature vector.
pub const FEATURE_DIM: usize = 128;
/// Weights file inside the classifier directory.
pub const WEIGHTS: &str = "model.safetensors";

/// `conv3×3(1→32) → conv3×3(32→32) → maxpool → conv3×3(32→64) → conv3×3(64→64) → maxpool →
/// linear(3136→128) → linear(128→10)`, ReLU after every layer but the last.
///
/// # Shapes
/// - input: `[B, 1, 28, 28]` in [-1, 1] (the diffusion models' range)
/// - features: `[B, 128]`; logits: `[B, 10]`
#[derive(Module, Debug)]
pub struct FmnistClassifier {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    conv4: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
}

impl FmnistClassifier {
    /// A randomly initialised classifier.
    pub fn new(device: &Device) -> Self {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device)
        };
        Self {
            conv1: conv(1, 32),
            conv2: conv(32, 32),
            conv3: conv(32, 64),
            conv4: conv(64, 64),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: LinearConfig::new(64 * 7 * 7, FEATURE_DIM).init(device),
            fc2: LinearConfig::new(FEATURE_DIM, 10).init(device),
        }
    }

    fn check(x: &Tensor<4>) -> Result<(), DataError> {
        let [_, c, h, w] = x.dims();
        if (c, h, w) != (1, 28, 28) {
            return Err(DataError::Invalid(format!(
                "the Fashion-MNIST classifier takes [B, 1, 28, 28] images, got [_, {c}, {h}, {w}]"
            )));
        }
        Ok(())
    }

    /// Penultimate features (after ReLU), the space FD is computed in.
    pub fn features(&self, x: Tensor<4>) -> Result<Tensor<2>, DataError> {
        Self::check(&x)?;
        let x = relu(self.conv2.forward(relu(self.conv1.forward(x))));
        let x = self.pool.forward(x);
        let x = relu(self.conv4.forward(relu(self.conv3.forward(x))));
        let x = self.pool.forward(x);
        let [b, ..] = x.dims();
        Ok(relu(self.fc1.forward(x.reshape([b, 64 * 7 * 7]))))
    }

    /// Class logits.
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<2>, DataError> {
        Ok(self.head(self.features(x)?))
    }

    /// Class logits from penultimate features `[B, 128]` (so features and predictions come
    /// from one pass).
    pub fn head(&self, features: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(features)
    }

    /// Predicted classes.
    pub fn predict(&self, x: Tensor<4>) -> Result<Tensor<1, Int>, DataError> {
        let logits = self.forward(x)?;
        let [b, _] = logits.dims();
        Ok(logits.argmax(1).reshape([b]))
    }

    /// Loads `dir/model.safetensors` (strict: every tensor present, no extra ones).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, DataError> {
        dmq_models::io::load_weights(Self::new(device), &dir.join(WEIGHTS), device).map_err(|e| {
            DataError::Invalid(format!(
                "could not load the metric classifier from {} ({e}); train it with \
                 `cargo run --release --example train_classifier`",
                dir.display()
            ))
        })
    }

    /// Saves `dir/model.safetensors` atomically.
    pub fn save(&self, dir: &Path, metadata: HashMap<String, String>) -> Result<(), DataError> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::Output {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        dmq_models::io::save_weights(self, &dir.join(WEIGHTS), metadata).map_err(|e| {
            DataError::Output {
                path: dir.join(WEIGHTS),
                reason: e.to_string(),
            }
        })
    }
}
