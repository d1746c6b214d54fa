//! # dmq-eval
//!
//! Evaluation side of dmq (DESIGN.md §5): the Fashion-MNIST IDX loader ([`data`]), the
//! metric classifier whose features define the Fréchet distance ([`classifier`]), PNG sample
//! grids ([`image`]) and PNG charts ([`plot`]).

pub mod classifier;
pub mod data;
pub mod error;
pub mod image;
pub mod plot;

pub use error::DataError;
