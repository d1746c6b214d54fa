//! [`LrSchedule`]: linear warm-up then cosine or linear decay.

use serde::{Deserialize, Serialize};

/// Learning rate at optimiser step k:
///
/// ```text
/// k < w:        lr = peak·(k + 1)/w
/// k ≥ w:        p = (k − w)/(T − w),  lr = final + (peak − final)·f(p)
///               f(p) = (1 + cos πp)/2 (cosine)  or  1 − p (linear)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Final learning rate.
    pub final_lr: f64,
    /// Warm-up steps w.
    pub warmup: usize,
    /// Total steps T.
    pub total: usize,
    /// Cosine (true) or linear (false) decay.
    pub cosine: bool,
}

impl LrSchedule {
    /// The learning rate at step `k`.
    pub fn at(&self, k: usize) -> f64 {
        if k < self.warmup {
            return self.peak * (k + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let p = ((k - self.warmup) as f64 / span).min(1.0);
        let f = if self.cosine {
            0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        } else {
            1.0 - p
        };
        self.final_lr + (self.peak - self.final_lr) * f
    }
}
