//! # dmq-search: TMPQ-DM, joint timestep reduction and mixed-precision search
//!
//! docs/algorithms.md §4. The pieces, each usable alone:
//! - [`groups`]: the non-uniform timestep groups (one timestep is chosen per group) and the
//!   uniform baseline;
//! - [`candidate`]: the search space (timesteps × per-layer weight/input bit indices, shared
//!   or per step) with random draws, mutation, crossover and legality checks;
//! - [`cost`]: BitOPs of a candidate over its selected steps (attention matmuls as `N²·C`)
//!   and the budget;
//! - [`supernet`]: K calibrated quantizer sets per layer, one per bit-width, applied by
//!   selection;
//! - [`evolution`]: the memoised, seedable, resumable evolutionary search; fitness comes
//!   from an [`Evaluator`] that scores whole batches (threads by [`ThreadEvaluator`], or any
//!   implementation that spreads them over devices or machines).
//!
//! `cargo run --release --example tmpq` runs it on the default models.

pub mod candidate;
pub mod cost;
pub mod error;
pub mod evolution;
pub mod groups;
pub mod rng;
pub mod supernet;

pub use candidate::{Candidate, LayerSlot, SearchSpace};
pub use cost::{Budget, CostModel};
pub use error::{Result, SearchError};
pub use evolution::{
    EpochRecord, Evaluator, Evolution, EvolutionConfig, Scored, SearchResult, SearchState,
    ThreadEvaluator, pareto_front,
};
pub use groups::{group_starts, timestep_groups, uniform_timesteps};
pub use rng::SearchRng;
pub use supernet::{SuperNet, layer_slots};
