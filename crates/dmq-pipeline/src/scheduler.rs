//! The sampling schedule a model ships with: diffusers `scheduler_config.json` read into a
//! DDIM configuration, so sampling matches the model's own diffusers pipeline.

use std::path::Path;

use dmq_models::scheduler::{BetaSchedule, DdimConfig, DdimScheduler, Scheduler, TimestepSpacing};
use serde_json::{Map, Value};

use crate::error::{Result, file_err};

/// File name of the schedule beside `config.json`.
pub const SCHEDULER_FILE: &str = "scheduler_config.json";

/// The schedule of a model: the DDIM configuration built from its `scheduler_config.json`
/// (or diffusers' defaults where it has none), and the JSON it came from.
#[derive(Clone, Debug)]
pub struct SchedulerSpec {
    /// DDIM with the model's betas, clipping, spacing and offset (η = 0).
    pub ddim: DdimConfig,
    /// The diffusers JSON (kept verbatim in `.dmq.safetensors` files).
    pub json: Value,
}

impl Default for SchedulerSpec {
    fn default() -> Self {
        Self::from_json(&Value::Object(Map::new()), Path::new("<default>"))
            .expect("the empty config is valid")
    }
}

impl SchedulerSpec {
    /// Reads `dir/scheduler_config.json`, or `dir/../scheduler/scheduler_config.json` (a
    /// pipeline directory); diffusers' `DDPMScheduler` defaults when neither exists.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let candidates = [
            dir.join(SCHEDULER_FILE),
            dir.join("..").join("scheduler").join(SCHEDULER_FILE),
        ];
        for path in candidates {
            if path.is_file() {
                let bytes = std::fs::read(&path)
                    .map_err(|e| file_err(&path, "scheduler config", e.to_string()))?;
                let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    file_err(&path, "scheduler config", format!("invalid JSON: {e}"))
                })?;
                return Self::from_json(&json, &path);
            }
        }
        Ok(Self::default())
    }

    /// Parses a diffusers `DDPMScheduler` / `DDIMScheduler` config. Keys dmq cannot honour
    /// (another prediction type, an unknown beta schedule or spacing) are errors naming the
    /// key; keys that do not change DDIM sampling (`variance_type`, `_class_name`, ...)
    /// are accepted.
    pub fn from_json(json: &Value, origin: &Path) -> Result<Self> {
        let obj = json
            .as_object()
            .ok_or_else(|| file_err(origin, "scheduler config", "not a JSON object"))?;
        let num = |key: &str| -> Result<Option<f64>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .map(Some)
                    .ok_or_else(|| file_err(origin, key, format!("not a finite number: {v}"))),
            }
        };
        let boolean = |key: &str| -> Result<Option<bool>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| file_err(origin, key, format!("not a boolean: {v}"))),
            }
        };
        let text = |key: &str| -> Result<Option<&str>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_str()
                    .map(Some)
                    .ok_or_else(|| file_err(origin, key, format!("not a string: {v}"))),
            }
        };
        if let Some(p) = text("prediction_type")?
            && p != "epsilon"
        {
            return Err(file_err(
                origin,
                "prediction_type",
                format!("'{p}' is not supported: dmq samples epsilon-prediction models"),
            ));
        }
        let mut ddim = DdimConfig::new();
        if let Some(n) = num("num_train_timesteps")? {
            if !(1.0..=100_000.0).contains(&n) || n.fract() != 0.0 {
                return Err(file_err(
                    origin,
                    "num_train_timesteps",
                    format!("{n} is not in 1..=100000"),
                ));
            }
            ddim.num_train_timesteps = n as usize;
        }
        if let Some(v) = num("beta_start")? {
            ddim.beta_start = v;
        }
        if let Some(v) = num("beta_end")? {
            ddim.beta_end = v;
        }
        if let Some(s) = text("beta_schedule")? {
            ddim.beta_schedule = match s {
                "linear" => BetaSchedule::Linear,
                "scaled_linear" => BetaSchedule::ScaledLinear,
                "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
                other => {
                    return Err(file_err(
                        origin,
                        "beta_schedule",
                        format!("'{other}' (supported: linear, scaled_linear, squaredcos_cap_v2)"),
                    ));
                }
            };
        }
        if let Some(b) = obj.get("trained_betas").filter(|v| !v.is_null()) {
            let list: Vec<f32> = serde_json::from_value(b.clone())
                .map_err(|e| file_err(origin, "trained_betas", e.to_string()))?;
            ddim.trained_betas = Some(list);
        }
        if let Some(v) = boolean("clip_sample")? {
            ddim.clip_sample = v;
        }
        if let Some(v) = num("clip_sample_range")? {
            ddim.clip_sample_range = v;
        }
        if let Some(v) = boolean("set_alpha_to_one")? {
            ddim.set_alpha_to_one = v;
        }
        if let Some(v) = num("steps_offset")? {
            if !(0.0..=1000.0).contains(&v) || v.fract() != 0.0 {
                return Err(file_err(
                    origin,
                    "steps_offset",
                    format!("{v} is not in 0..=1000"),
                ));
            }
            ddim.steps_offset = v as usize;
        }
        if let Some(s) = text("timestep_spacing")? {
            ddim.timestep_spacing = match s {
                "leading" => TimestepSpacing::Leading,
                "trailing" => TimestepSpacing::Trailing,
                "linspace" => TimestepSpacing::Linspace,
                other => {
                    return Err(file_err(
                        origin,
                        "timestep_spacing",
                        format!("'{other}' (supported: leading, trailing, linspace)"),
                    ));
                }
            };
        }
        // validate now (betas in range, ...) so a bad file fails at load, not at sampling
        ddim.noise_schedule()
            .map_err(|e| file_err(origin, "scheduler config", e.to_string()))?;
        Ok(Self {
            ddim,
            json: json.clone(),
        })
    }

    /// The deterministic DDIM sampler of this schedule over `steps` steps, as diffusers'
    /// `DDIMScheduler.set_timesteps(steps)` builds it.
    pub fn ddim(&self, steps: usize) -> Result<DdimScheduler> {
        Ok(DdimScheduler::diffusers(&self.ddim, steps)?)
    }
}

/// The timesteps of `sampler` in step order, as the file format and the integer path take
/// them.
pub fn timesteps(sampler: &DdimScheduler) -> Vec<f64> {
    sampler.timesteps().iter().map(|&t| t as f64).collect()
}
