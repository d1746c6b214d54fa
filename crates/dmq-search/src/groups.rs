//! Non-uniform timestep groups (docs/algorithms.md §4.2): the search picks one timestep per group.
//!
//! Boundaries `s_k = ⌊(k/(N−1) · √(0.8·T))²⌋` for k = 1..N−1, groups `[0, s_1), [s_1, s_2),
//! …, [s_{N−1}, T)`, empty groups dropped. They are dense near t = 0, where detail forms; the
//! last group is wide because the quadratic DDIM schedule stops at 0.8·T.

use std::ops::Range;

use crate::error::{Result, SearchError};

/// The timestep groups for `n` sampling steps over `num_train_timesteps` (T, 1000 for the
/// default models).
///
/// # Errors
/// `n` of 0, or larger than T.
pub fn timestep_groups(n: usize, num_train_timesteps: usize) -> Result<Vec<Range<usize>>> {
    if n == 0 || n > num_train_timesteps {
        return Err(SearchError::Option(format!(
            "{n} sampling steps: need 1 ≤ N ≤ T = {num_train_timesteps}"
        )));
    }
    let top = (0.8 * num_train_timesteps as f64).sqrt();
    let mut bounds = vec![0usize];
    let step = if n > 1 { top / (n - 1) as f64 } else { 0.0 };
    for k in 1..n {
        // np.linspace(0, top, N)[k]: k·step, and exactly `top` at the end point.
        let v = if k == n - 1 { top } else { k as f64 * step };
        bounds.push((v * v) as usize);
    }
    bounds.push(num_train_timesteps);
    let groups: Vec<Range<usize>> = bounds
        .windows(2)
        .map(|w| w[0]..w[1])
        .filter(|r| !r.is_empty())
        .collect();
    Ok(groups)
}

/// The first timestep of every group (the search's starting point x0).
pub fn group_starts(groups: &[Range<usize>]) -> Vec<usize> {
    groups.iter().map(|g| g.start).collect()
}

/// Uniform timesteps over `[0, T)` for `n` steps, one per equal-width interval (the uniform
/// timestep-reduction baseline): `t_i = i·T/n`, ascending.
pub fn uniform_timesteps(n: usize, num_train_timesteps: usize) -> Result<Vec<usize>> {
    if n == 0 || n > num_train_timesteps {
        return Err(SearchError::Option(format!(
            "{n} sampling steps: need 1 ≤ N ≤ T = {num_train_timesteps}"
        )));
    }
    Ok((0..n).map(|i| i * num_train_timesteps / n).collect())
}
