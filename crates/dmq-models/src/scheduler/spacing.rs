//! Timestep lists: the diffusers `set_timesteps` spacings, the LDM / Q-Diffusion
//! `uniform` and `quad` lists, validation, and the rule that picks each step's
//! "previous" timestep.
//!
//! Every function here returns the list in **ascending** order (`tau_0 < ... < tau_{S-1}`,
//! the order of docs/algorithms.md §1.6); schedulers sample it in descending order.

use std::str::FromStr;

use burn::config::Config;

use super::SchedulerError;

/// The diffusers `timestep_spacing` options of `set_timesteps`.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `leading`: `tau_i = i * (N / S) + steps_offset` (integer division), `i = 0..S`.
    Leading,
    /// `trailing`: `round(N - k * N / S) - 1` for `k = 0..S` (numpy `arange` semantics,
    /// rounding half to even); ignores `steps_offset` as diffusers does.
    Trailing,
    /// `linspace`: `round(linspace(0, N - 1, S))` (half to even); ignores `steps_offset`
    /// as diffusers does.
    Linspace,
}

impl TimestepSpacing {
    /// The diffusers config string of this spacing.
    pub fn diffusers_name(&self) -> &'static str {
        match self {
            Self::Leading => "leading",
            Self::Trailing => "trailing",
            Self::Linspace => "linspace",
        }
    }
}

impl FromStr for TimestepSpacing {
    type Err = SchedulerError;

    /// Parses a diffusers `timestep_spacing` string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "leading" => Ok(Self::Leading),
            "trailing" => Ok(Self::Trailing),
            "linspace" => Ok(Self::Linspace),
            _ => Err(SchedulerError::UnknownName {
                what: "timestep_spacing",
                name: s.to_string(),
                expected: "leading, trailing, linspace",
            }),
        }
    }
}

fn check_num_steps(num_steps: usize, num_train_timesteps: usize) -> Result<(), SchedulerError> {
    if num_steps == 0 || num_steps > num_train_timesteps {
        return Err(SchedulerError::InvalidNumSteps {
            num_inference_steps: num_steps,
            num_train_timesteps,
        });
    }
    Ok(())
}

/// The timesteps diffusers' `DDIMScheduler.set_timesteps` / `DDPMScheduler.set_timesteps`
/// produce, in ascending order.
///
/// # Errors
/// [`SchedulerError::InvalidNumSteps`] for `num_inference_steps` outside
/// `1..=num_train_timesteps`; the result is validated with [`validate_timesteps`]
/// (so `leading` with a `steps_offset` that pushes the last step past `N - 1` errors).
pub fn diffusers_timesteps(
    spacing: TimestepSpacing,
    num_inference_steps: usize,
    num_train_timesteps: usize,
    steps_offset: usize,
) -> Result<Vec<usize>, SchedulerError> {
    let (n, s) = (num_train_timesteps, num_inference_steps);
    check_num_steps(s, n)?;
    let ts: Vec<usize> = match spacing {
        TimestepSpacing::Leading => {
            let ratio = n / s;
            (0..s).map(|i| i * ratio + steps_offset).collect()
        }
        TimestepSpacing::Linspace => numpy_linspace(0.0, (n - 1) as f64, s)
            .into_iter()
            .map(|v| v.round_ties_even() as usize)
            .collect(),
        TimestepSpacing::Trailing => {
            // np.round(np.arange(N, 0, -N / S)) - 1, with numpy's float arange:
            // len = ceil((stop - start) / step), x_0 = start, x_1 = start + step,
            // x_i = start + i * (x_1 - x_0).
            let start = n as f64;
            let step = -(n as f64 / s as f64);
            let len = ((0.0 - start) / step).ceil().max(0.0) as usize;
            let second = start + step;
            let delta = second - start;
            let mut desc: Vec<usize> = (0..len)
                .map(|i| {
                    let v = match i {
                        0 => start,
                        1 => second,
                        _ => start + i as f64 * delta,
                    };
                    // v > 0 always, so round(v) >= 0; diffusers subtracts 1 afterwards.
                    (v.round_ties_even() as i64 - 1).max(0) as usize
                })
                .collect();
            desc.reverse();
            desc
        }
    };
    validate_timesteps(&ts, n)?;
    Ok(ts)
}

/// numpy `linspace(start, stop, num)`: `i * ((stop - start) / (num - 1)) + start`, last
/// entry exactly `stop`; `[start]` for `num == 1`.
pub(crate) fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    (0..num)
        .map(|i| {
            if i == num - 1 {
                stop
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

/// The LDM / DDIM-repo `uniform` list: `range(0, N, N / S) + offset`, ascending.
///
/// As in the reference code the list has `ceil(N / (N / S))` entries, which is more
/// than `S` when `S` does not divide `N`. LDM's `make_ddim_timesteps` uses
/// `offset = 1`; the DDIM repo and Q-Diffusion's CIFAR script use `offset = 0`.
///
/// # Errors
/// [`SchedulerError::InvalidNumSteps`]; out-of-range entries (from the offset) are
/// reported by [`validate_timesteps`].
pub fn uniform_timesteps(
    num_steps: usize,
    num_train_timesteps: usize,
    offset: usize,
) -> Result<Vec<usize>, SchedulerError> {
    check_num_steps(num_steps, num_train_timesteps)?;
    let c = num_train_timesteps / num_steps;
    let ts: Vec<usize> = (0..num_train_timesteps)
        .step_by(c)
        .map(|t| t + offset)
        .collect();
    validate_timesteps(&ts, num_train_timesteps)?;
    Ok(ts)
}

/// The raw Q-Diffusion / DDIM-repo / LDM `quad` list, ascending and possibly with
/// repeats: `int(linspace(0, sqrt(0.8 N), S)^2) + offset` (truncation toward zero).
///
/// With many steps the first entries repeat (for `S = 100`, `N = 1000` the list
/// starts `0, 0, 0, 0, 1, ...`); the reference samplers then take identity steps.
/// [`quad_timesteps`] is the checked version used to build schedulers.
pub fn quad_timesteps_raw(
    num_steps: usize,
    num_train_timesteps: usize,
    offset: usize,
) -> Vec<usize> {
    let stop = (num_train_timesteps as f64 * 0.8).sqrt();
    numpy_linspace(0.0, stop, num_steps)
        .into_iter()
        .map(|v| (v * v) as usize + offset)
        .collect()
}

/// The Q-Diffusion `quad` list (see [`quad_timesteps_raw`]), checked to be strictly
/// ascending and in range. Quadratic spacing puts more steps near `t = 0`.
///
/// # Errors
/// [`SchedulerError::InvalidNumSteps`]; [`SchedulerError::DuplicateTimesteps`] when
/// the formula repeats a timestep (too many steps for `N`);
/// [`SchedulerError::TimestepOutOfRange`] when the offset pushes the last entry past
/// `N - 1`.
pub fn quad_timesteps(
    num_steps: usize,
    num_train_timesteps: usize,
    offset: usize,
) -> Result<Vec<usize>, SchedulerError> {
    check_num_steps(num_steps, num_train_timesteps)?;
    let ts = quad_timesteps_raw(num_steps, num_train_timesteps, offset);
    if let Some(w) = ts.windows(2).find(|w| w[1] <= w[0]) {
        return Err(SchedulerError::DuplicateTimesteps {
            spacing: "quad",
            num_steps,
            num_train_timesteps,
            timestep: w[1],
        });
    }
    validate_timesteps(&ts, num_train_timesteps)?;
    Ok(ts)
}

/// Checks a timestep list: non-empty, strictly ascending, every entry `< N`.
///
/// # Errors
/// [`SchedulerError::EmptyTimesteps`], [`SchedulerError::NotAscending`],
/// [`SchedulerError::TimestepOutOfRange`].
pub fn validate_timesteps(
    ascending: &[usize],
    num_train_timesteps: usize,
) -> Result<(), SchedulerError> {
    if ascending.is_empty() {
        return Err(SchedulerError::EmptyTimesteps);
    }
    for (i, w) in ascending.windows(2).enumerate() {
        if w[1] <= w[0] {
            return Err(SchedulerError::NotAscending {
                index: i + 1,
                value: w[1],
                previous: w[0],
            });
        }
    }
    let last = ascending[ascending.len() - 1];
    if last >= num_train_timesteps {
        return Err(SchedulerError::TimestepOutOfRange {
            timestep: last,
            num_train_timesteps,
        });
    }
    Ok(())
}

/// How a step finds the timestep it moves to.
///
/// `None` means "past the start of the list": the scheduler then uses its final alpha
/// (`1` for DDPM; `1` or `abar_0` for DDIM, see `set_alpha_to_one`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrevRule {
    /// The previous entry of the ascending list (docs/algorithms.md §1.6, LDM, diffusers
    /// DDPM with custom or set timesteps).
    ListNeighbour,
    /// diffusers `DDIMScheduler.step`: `prev = t - N / S` (integer division), whatever
    /// the spacing; negative means "none".
    Stride(usize),
}

/// The previous timestep of every entry of an ascending list under `rule`.
pub(crate) fn prev_timesteps(ascending: &[usize], rule: PrevRule) -> Vec<Option<usize>> {
    match rule {
        PrevRule::ListNeighbour => (0..ascending.len())
            .map(|i| i.checked_sub(1).map(|j| ascending[j]))
            .collect(),
        PrevRule::Stride(stride) => ascending.iter().map(|&t| t.checked_sub(stride)).collect(),
    }
}
