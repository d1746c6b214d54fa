//! # dmq-eval
//!
//! Evaluation side of dmq (docs/design.md §5): the Fashion-MNIST IDX loader ([`data`]), the
//! metric classifier whose features define the Fréchet distance ([`classifier`]), PNG sample
//! grids ([`image`]) and PNG charts ([`plot`]), plus the flag parsing ([`cli`]) and progress
//! reporting ([`progress`]) the examples share.

pub mod classifier;
pub mod cli;
pub mod data;
pub mod error;
pub mod harness;
pub mod image;
pub mod metrics;
pub mod plot;
pub mod progress;
pub mod report;
pub mod sample_checkpoint;

pub use error::DataError;
