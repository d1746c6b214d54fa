//! The error type of the schedulers.

/// Everything that can go wrong when building or stepping a scheduler.
///
/// Schedulers never panic on bad input: empty, unsorted or out-of-range timestep lists,
/// step indices past the end, negative `eta` and tensors of the wrong shape all come
/// back as one of these variants.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// A timestep list with no entries.
    #[error("the timestep list is empty")]
    EmptyTimesteps,

    /// A timestep list that is not strictly ascending.
    #[error(
        "timesteps must be strictly ascending, but entry {index} ({value}) does not exceed \
         the entry before it ({previous})"
    )]
    NotAscending {
        /// Position of the offending entry in the ascending list.
        index: usize,
        /// The offending entry.
        value: usize,
        /// The entry before it.
        previous: usize,
    },

    /// A generated schedule (for example `quad` with many steps) repeats a timestep.
    #[error(
        "the {spacing} spacing with {num_steps} steps over {num_train_timesteps} training \
         timesteps repeats timestep {timestep}; use fewer steps or another spacing"
    )]
    DuplicateTimesteps {
        /// Name of the spacing that produced the list.
        spacing: &'static str,
        /// Requested number of steps.
        num_steps: usize,
        /// Length of the training schedule.
        num_train_timesteps: usize,
        /// The first repeated timestep.
        timestep: usize,
    },

    /// A timestep at or past the end of the training schedule.
    #[error(
        "timestep {timestep} is out of range for a schedule of {num_train_timesteps} \
         training timesteps (valid: 0..{num_train_timesteps})"
    )]
    TimestepOutOfRange {
        /// The offending timestep.
        timestep: usize,
        /// Length of the training schedule.
        num_train_timesteps: usize,
    },

    /// A step index at or past the number of sampling steps.
    #[error("step index {step_index} is out of range: the scheduler has {num_steps} steps")]
    StepIndexOutOfRange {
        /// The offending step index (sampling order, 0 = noisiest step).
        step_index: usize,
        /// Number of sampling steps.
        num_steps: usize,
    },

    /// A number of inference steps of 0 or above the training schedule length.
    #[error(
        "invalid number of inference steps {num_inference_steps}: it must be in \
         1..={num_train_timesteps}"
    )]
    InvalidNumSteps {
        /// The requested number of steps.
        num_inference_steps: usize,
        /// Length of the training schedule.
        num_train_timesteps: usize,
    },

    /// A negative or non-finite DDIM `eta`.
    #[error("eta must be finite and >= 0, got {0}")]
    InvalidEta(f64),

    /// Two tensors whose shapes do not fit together.
    #[error("shape mismatch for {what}: expected {expected:?}, got {actual:?}")]
    ShapeMismatch {
        /// Which tensor is wrong.
        what: &'static str,
        /// The shape it should have.
        expected: Vec<usize>,
        /// The shape it has.
        actual: Vec<usize>,
    },

    /// `add_noise` was given a timestep list whose length is neither 1 nor the batch size.
    #[error("got {num_timesteps} timesteps for a batch of {batch}: pass 1 or {batch}")]
    TimestepBatchMismatch {
        /// Number of timesteps passed.
        num_timesteps: usize,
        /// Batch size of the samples.
        batch: usize,
    },

    /// Betas outside (0, 1), an empty schedule, or non-finite beta parameters.
    #[error("invalid beta schedule: {0}")]
    InvalidBetas(String),

    /// Any other inconsistent configuration value.
    #[error("invalid scheduler config: {0}")]
    InvalidConfig(String),

    /// A diffusers config string that names no known variant.
    #[error("unknown {what} {name:?}; expected one of {expected}")]
    UnknownName {
        /// What kind of name it is (`beta_schedule`, `timestep_spacing`, ...).
        what: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        expected: &'static str,
    },

    /// A multistep scheduler was given a [`super::SolverState`] that does not belong to this
    /// step (steps skipped, repeated, or a state shared between trajectories).
    #[error(
        "{scheduler} step {step_index} got a solver state holding {history} past outputs \
         (expected {expected}): take steps in order with one state per trajectory"
    )]
    OutOfOrder {
        /// The scheduler.
        scheduler: &'static str,
        /// The step asked for.
        step_index: usize,
        /// Outputs in the state.
        history: usize,
        /// Outputs the step expects.
        expected: usize,
    },
}
