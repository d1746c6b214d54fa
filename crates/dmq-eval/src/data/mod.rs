//! Datasets.
//!
//! - [`fashion_mnist`]: Fashion-MNIST from its IDX files (the Debian package
//!   `dataset-fashion-mnist` by default).

pub mod fashion_mnist;

pub use fashion_mnist::{FashionMnist, FashionMnistSplit, Padding, Split};
