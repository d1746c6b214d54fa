//! [`Limits`]: the largest sizes a loader of dmq accepts, in one place.
//!
//! Every parser of an untrusted input (quantized files, layer exports, model configs, search
//! and training checkpoints, IDX data files) checks the sizes it reads against these limits
//! **before** it allocates anything of that size, and refuses with
//! [`QuantError::LimitExceeded`] naming the file and the field.
//!
//! The defaults ([`Limits::DEFAULT`]) are far above every model dmq trains or loads and far
//! below what would exhaust a workstation:
//!
//! | limit              | default             | what it bounds                                   |
//! |--------------------|---------------------|--------------------------------------------------|
//! | `max_rank`         | 8                   | dimensions of one tensor                          |
//! | `max_dim`          | 2^24 = 16 777 216   | one dimension (a channel count, an image count)   |
//! | `max_tensor_elems` | 2^30 = 1 073 741 824| elements of one tensor (4 GiB as f32)             |
//! | `max_params`       | 2^31 = 2 147 483 648| parameters of a model built from a config         |
//! | `max_steps`        | 100 000             | sampling steps of an export or a schedule         |
//! | `max_layers`       | 10 000              | blocks/layers of a model built from a config      |
//!
//! They can be overridden per call (the `*_with_limits` loaders) or for the whole process
//! with [`Limits::set_current`]; loaders without a `Limits` argument use
//! [`Limits::current`].
//!
//! ```
//! use dmq_quant::{Limits, QuantError};
//! let limits = Limits { max_dim: 1024, ..Limits::DEFAULT };
//! assert_eq!(limits.check_shape(&[4, 256], "m.safetensors", "w.shape")?, 1024);
//! let e = limits.check_shape(&[2048], "m.safetensors", "w.shape").unwrap_err();
//! assert!(matches!(e, QuantError::LimitExceeded { ref field, .. } if field == "w.shape[0]"));
//! # Ok::<(), QuantError>(())
//! ```

use std::sync::RwLock;

use crate::error::{QuantError, Result};

/// The largest sizes a loader accepts (see the [module docs](self) for the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most dimensions of one tensor.
    pub max_rank: usize,
    /// Largest single dimension.
    pub max_dim: usize,
    /// Most elements of one tensor.
    pub max_tensor_elems: u64,
    /// Most parameters of a model built from a config.
    pub max_params: u64,
    /// Most sampling steps (of an export's step → set map, a schedule, a search row).
    pub max_steps: usize,
    /// Most blocks (resnets, attentions, transformer blocks) of a model built from a config.
    pub max_layers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

static CURRENT: RwLock<Limits> = RwLock::new(Limits::DEFAULT);

impl Limits {
    /// The documented defaults.
    pub const DEFAULT: Limits = Limits {
        max_rank: 8,
        max_dim: 1 << 24,
        max_tensor_elems: 1 << 30,
        max_params: 1 << 31,
        max_steps: 100_000,
        max_layers: 10_000,
    };

    /// The limits in force for this process ([`Limits::DEFAULT`] unless
    /// [`Limits::set_current`] changed them).
    pub fn current() -> Limits {
        *CURRENT.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the process-wide limits used by loaders that take no `Limits` argument.
    pub fn set_current(limits: Limits) {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// Checks a count against a limit.
    pub fn check(
        value: u64,
        limit: u64,
        what: &'static str,
        origin: &str,
        field: &str,
    ) -> Result<()> {
        if value > limit {
            return Err(QuantError::LimitExceeded {
                origin: origin.into(),
                field: field.into(),
                value,
                limit,
                what,
            });
        }
        Ok(())
    }

    /// Checks one dimension against `max_dim`.
    pub fn check_dim(&self, dim: u64, origin: &str, field: &str) -> Result<()> {
        Self::check(
            dim,
            self.max_dim as u64,
            "elements along one dimension",
            origin,
            field,
        )
    }

    /// Checks a step count against `max_steps`.
    pub fn check_steps(&self, steps: u64, origin: &str, field: &str) -> Result<()> {
        Self::check(steps, self.max_steps as u64, "steps", origin, field)
    }

    /// Checks a parameter count against `max_params`.
    pub fn check_params(&self, params: u64, origin: &str, field: &str) -> Result<()> {
        Self::check(params, self.max_params, "parameters", origin, field)
    }

    /// Checks a block count against `max_layers`.
    pub fn check_layers(&self, layers: u64, origin: &str, field: &str) -> Result<()> {
        Self::check(layers, self.max_layers as u64, "layers", origin, field)
    }

    /// Checks an element count against `max_tensor_elems`.
    pub fn check_elems(&self, elems: u64, origin: &str, field: &str) -> Result<()> {
        Self::check(
            elems,
            self.max_tensor_elems,
            "tensor elements",
            origin,
            field,
        )
    }

    /// Checks a tensor shape (rank, every dimension, the element count, without overflow)
    /// and returns its element count. `field` names the shape; a bad dimension is reported
    /// as `field[i]`.
    pub fn check_shape(&self, shape: &[usize], origin: &str, field: &str) -> Result<usize> {
        Self::check(
            shape.len() as u64,
            self.max_rank as u64,
            "dimensions",
            origin,
            field,
        )?;
        let mut numel: u64 = 1;
        for (i, &d) in shape.iter().enumerate() {
            self.check_dim(d as u64, origin, &format!("{field}[{i}]"))?;
            numel = numel.saturating_mul(d as u64);
        }
        self.check_elems(numel, origin, field)?;
        usize::try_from(numel).map_err(|_| QuantError::LimitExceeded {
            origin: origin.into(),
            field: field.into(),
            value: numel,
            limit: usize::MAX as u64,
            what: "tensor elements (address space)",
        })
    }
}

/// Element count of `shape`, `None` when the product overflows `usize`.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}
