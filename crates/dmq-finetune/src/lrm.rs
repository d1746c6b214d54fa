//! BinaryDM's Low-rank Representation Mimicking (docs/algorithms.md §6.2): per block, the top
//! eigenvectors of the FP feature covariance, computed once from the first batch and frozen;
//! the loss is the MSE of the student's and teacher's features projected on them.
//!
//! ```text
//! F: rows × c (the projected axis last),  C = FᵀF / rows
//! E = top ⌈c/K⌉ eigenvectors of C (K = 4, at least 1)         [c × c/K]
//! L_LRM = mean_blocks MSE(F_bi·E, F_fp·E)
//! ```
//!
//! [`LrmAxis::Channels`] is the paper's (channels last: `(B·H·W) × C`, tokens `(B·N) × C`);
//! [`LrmAxis::LastAxis`] is the reference code's (`shape[-1]`, the width of NCHW maps).

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::{HostTensor, TapTensor};
use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result};

/// Which axis LRM projects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LrmAxis {
    /// Channels (paper).
    #[default]
    Channels,
    /// The last tensor axis (reference code: the width of `[B, C, H, W]` maps).
    LastAxis,
}

pub use dmq_models::linalg::symmetric_eigen;

/// Rows × `c` view of a feature with the projected axis last (host copy).
fn rows(f: &HostTensor, axis: LrmAxis) -> (Vec<f64>, usize) {
    let s = &f.shape;
    match (axis, s.len()) {
        (LrmAxis::Channels, 4) => {
            let (b, c, hw) = (s[0], s[1], s[2] * s[3]);
            let mut out = vec![0.0; b * c * hw];
            for bi in 0..b {
                for ci in 0..c {
                    for p in 0..hw {
                        out[(bi * hw + p) * c + ci] = f64::from(f.data[(bi * c + ci) * hw + p]);
                    }
                }
            }
            (out, c)
        }
        _ => {
            let c = *s.last().unwrap_or(&1);
            (f.data.iter().map(|&v| f64::from(v)).collect(), c.max(1))
        }
    }
}

/// The frozen projection of one block: `E` as `[c, k]`.
#[derive(Clone, Debug)]
pub struct LrmProjection {
    /// Projected axis length c.
    pub dim: usize,
    /// Kept components k = ⌈c/K⌉.
    pub rank: usize,
    /// `E`, row-major `[c, k]`.
    pub basis: Vec<f32>,
}

impl LrmProjection {
    /// The top ⌈c/`k_div`⌉ eigenvectors of `FᵀF/rows` of `feature` (module docs).
    pub fn fit(feature: &HostTensor, axis: LrmAxis, k_div: usize) -> Result<Self> {
        if k_div == 0 {
            return Err(FinetuneError::Option("LRM K must be ≥ 1".into()));
        }
        let (r, c) = rows(feature, axis);
        let n = r.len() / c;
        if n == 0 || r.iter().any(|v| !v.is_finite()) {
            return Err(FinetuneError::Option(format!(
                "LRM feature of shape {:?} is empty or not finite",
                feature.shape
            )));
        }
        let mut cov = vec![0.0; c * c];
        for row in r.chunks_exact(c) {
            for i in 0..c {
                let ri = row[i];
                for j in i..c {
                    cov[i * c + j] += ri * row[j];
                }
            }
        }
        for i in 0..c {
            for j in i..c {
                cov[i * c + j] /= n as f64;
                cov[j * c + i] = cov[i * c + j];
            }
        }
        let (_, vecs) = symmetric_eigen(&cov, c);
        let rank = c.div_ceil(k_div).max(1);
        let mut basis = vec![0.0f32; c * rank];
        for i in 0..c {
            for k in 0..rank {
                basis[i * rank + k] = vecs[i * c + k] as f32;
            }
        }
        Ok(Self {
            dim: c,
            rank,
            basis,
        })
    }

    /// `F·E` with the projected axis last: `[rows, k]`.
    pub fn project(&self, f: &TapTensor, axis: LrmAxis, device: &Device) -> Result<Tensor<2>> {
        let e = Tensor::<2>::from_data(
            TensorData::new(self.basis.clone(), [self.dim, self.rank]),
            device,
        );
        let flat: Tensor<2> = match (f, axis) {
            (TapTensor::R4(x), LrmAxis::Channels) => {
                let [b, c, h, w] = x.dims();
                x.clone().permute([0, 2, 3, 1]).reshape([b * h * w, c])
            }
            (TapTensor::R4(x), LrmAxis::LastAxis) => {
                let [b, c, h, w] = x.dims();
                x.clone().reshape([b * c * h, w])
            }
            (TapTensor::R3(x), _) => {
                let [b, n, c] = x.dims();
                x.clone().reshape([b * n, c])
            }
            (TapTensor::R2(x), _) => x.clone(),
        };
        let [_, c] = flat.dims();
        if c != self.dim {
            return Err(FinetuneError::Option(format!(
                "LRM feature axis has {c} entries, the projection {}",
                self.dim
            )));
        }
        Ok(flat.matmul(e))
    }
}

/// `mean_blocks MSE(F_bi·E, F_fp·E)` over the blocks of `projections` (teacher features are
/// detached).
pub fn lrm_loss(
    student: &BTreeMap<String, TapTensor>,
    teacher: &BTreeMap<String, TapTensor>,
    projections: &BTreeMap<String, LrmProjection>,
    axis: LrmAxis,
    device: &Device,
) -> Result<Option<Tensor<1>>> {
    let mut acc: Option<Tensor<1>> = None;
    for (name, p) in projections {
        let (Some(s), Some(t)) = (student.get(name), teacher.get(name)) else {
            return Err(FinetuneError::Layer {
                layer: name.clone(),
                reason: "block output was not tapped in the forward pass".into(),
            });
        };
        let e = (p.project(s, axis, device)? - p.project(t, axis, device)?.detach())
            .powi_scalar(2)
            .mean();
        acc = Some(match acc {
            Some(a) => a + e,
            None => e,
        });
    }
    Ok(acc.map(|a| a / projections.len() as f64))
}
