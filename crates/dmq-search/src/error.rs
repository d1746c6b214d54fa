//! [`SearchError`]: typed errors of the TMPQ-DM search.

use std::path::PathBuf;

/// Everything that can go wrong in `dmq-search` on user input.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// An invalid option (names it and the accepted range).
    #[error("invalid search option: {0}")]
    Option(String),
    /// A candidate that does not fit the search space (wrong length, timestep outside its
    /// group, bit index out of range).
    #[error("illegal candidate: {0}")]
    Candidate(String),
    /// A checkpoint that cannot be read or belongs to another search.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The fitness function failed on a candidate.
    #[error("evaluating a candidate: {0}")]
    Fitness(String),
    /// Calibration of the super-network failed.
    #[error(transparent)]
    Calib(#[from] dmq_calib::CalibError),
    /// A model error.
    #[error(transparent)]
    Model(#[from] dmq_models::ModelError),
    /// A quantizer error.
    #[error(transparent)]
    Quant(#[from] dmq_quant::QuantError),
}

/// Result alias for this crate.
pub type Result<T, E = SearchError> = std::result::Result<T, E>;
