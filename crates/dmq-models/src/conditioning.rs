//! [`Conditioning`]: what a denoiser is conditioned on, as one type through the denoiser, the
//! samplers, the calibration sets and every method: class labels (class-conditional models)
//! or encoder hidden states (text-conditional models), each with its unconditional
//! counterpart for classifier-free guidance.

use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{ModelError, Result, shape_err};

/// The conditioning of a batch of `B` samples.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // tensor handles, built once per batch
pub enum Conditioning {
    /// Class labels `[B]`; the unconditional label is the model's `num_classes`.
    Class(Tensor<1, Int>),
    /// Encoder hidden states (a text encoder's `last_hidden_state`).
    Text {
        /// `[B, L, D]` states the cross-attention layers read.
        states: Tensor<3>,
        /// `[1, L, D]` or `[B, L, D]`: the unconditional states (the empty prompt's) for
        /// classifier-free guidance. Not read by the forward pass.
        uncond: Option<Tensor<3>>,
    },
}

impl From<Tensor<1, Int>> for Conditioning {
    fn from(labels: Tensor<1, Int>) -> Self {
        Self::Class(labels)
    }
}

impl Conditioning {
    /// Text conditioning without an unconditional embedding.
    pub fn text(states: Tensor<3>) -> Self {
        Self::Text {
            states,
            uncond: None,
        }
    }

    /// Batch size `B`.
    pub fn batch(&self) -> usize {
        match self {
            Self::Class(c) => c.dims()[0],
            Self::Text { states, .. } => states.dims()[0],
        }
    }

    /// The labels, for class conditioning.
    pub fn labels(&self) -> Option<&Tensor<1, Int>> {
        match self {
            Self::Class(c) => Some(c),
            Self::Text { .. } => None,
        }
    }

    /// The encoder hidden states `[B, L, D]`, for text conditioning.
    pub fn states(&self) -> Option<&Tensor<3>> {
        match self {
            Self::Class(_) => None,
            Self::Text { states, .. } => Some(states),
        }
    }

    /// The classifier-free-guidance batch `[uncond; cond]` (`2B`): the null label
    /// `null_class` for labels, the unconditional states (broadcast from `[1, L, D]`) for text.
    ///
    /// # Errors
    /// [`ModelError::Config`] when the unconditional half is unknown (no null label, no
    /// unconditional states); a shape error when the unconditional states do not match.
    pub fn with_unconditional(&self, null_class: Option<usize>) -> Result<Self> {
        let b = self.batch();
        match self {
            Self::Class(c) => {
                let null = null_class.ok_or_else(|| {
                    ModelError::Config(
                        "classifier-free guidance on labels needs the model's null label".into(),
                    )
                })?;
                let nulls =
                    Tensor::from_data(TensorData::new(vec![null as i64; b], [b]), &c.device());
                Ok(Self::Class(Tensor::cat(vec![nulls, c.clone()], 0)))
            }
            Self::Text { states, uncond } => {
                let u = uncond.clone().ok_or_else(|| {
                    ModelError::Config(
                        "classifier-free guidance on text needs the unconditional (empty prompt) \
                         embedding"
                            .into(),
                    )
                })?;
                let [_, l, d] = states.dims();
                let [ub, ul, ud] = u.dims();
                if (ub != 1 && ub != b) || ul != l || ud != d {
                    return Err(shape_err(
                        "unconditional text states",
                        format!("[1 or {b}, {l}, {d}]"),
                        [ub, ul, ud],
                    ));
                }
                let u = if ub == 1 && b > 1 {
                    u.repeat_dim(0, b)
                } else {
                    u
                };
                Ok(Self::text(Tensor::cat(vec![u, states.clone()], 0)))
            }
        }
    }
}

/// The prompts a method draws the conditioning of its own trajectories from (EfficientDM's
/// distillation runs the FP model on fresh trajectories): the text states of `P` prompts
/// and the empty prompt's, detached from any graph.
#[derive(Clone, Debug)]
pub struct PromptStates {
    states: Tensor<3>,
    uncond: Tensor<3>,
}

impl PromptStates {
    /// `states` `[P, L, D]` (P ≥ 1) and `uncond` `[1, L, D]`.
    pub fn new(states: Tensor<3>, uncond: Tensor<3>) -> Result<Self> {
        let [p, l, d] = states.dims();
        if p == 0 || uncond.dims() != [1, l, d] {
            return Err(shape_err(
                "prompt states and the unconditional states",
                format!("[P ≥ 1, L, D] and [1, {l}, {d}]"),
                format!("{:?} and {:?}", states.dims(), uncond.dims()),
            ));
        }
        Ok(Self {
            states: states.detach(),
            uncond: uncond.detach(),
        })
    }

    /// Number of prompts `P`.
    pub fn len(&self) -> usize {
        self.states.dims()[0]
    }

    /// Tokens per prompt `L`.
    pub fn context_len(&self) -> usize {
        self.states.dims()[1]
    }

    /// Always false (a set holds at least one prompt).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The conditioning of `b` trajectories: a prompt per trajectory drawn uniformly with
    /// `rng`, with the unconditional states for classifier-free guidance.
    pub fn draw(&self, rng: &mut crate::noise::NoiseRng, b: usize) -> Conditioning {
        let rows: Vec<i64> = (0..b).map(|_| rng.below(self.len()) as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &self.states.device());
        Conditioning::Text {
            states: self.states.clone().select(0, index),
            uncond: Some(self.uncond.clone()),
        }
    }
}

/// The labels of an optional conditioning, for a class-conditional (or unconditional) model
/// named `model`.
///
/// # Errors
/// [`ModelError::Config`] for text conditioning.
pub fn class_labels(cond: Option<Conditioning>, model: &str) -> Result<Option<Tensor<1, Int>>> {
    match cond {
        None => Ok(None),
        Some(Conditioning::Class(c)) => Ok(Some(c)),
        Some(Conditioning::Text { .. }) => Err(ModelError::Config(format!(
            "{model} takes class labels, not encoder hidden states (it is not text-conditional)"
        ))),
    }
}
