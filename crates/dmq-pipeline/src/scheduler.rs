//! The sampling schedule a model ships with: diffusers `scheduler_config.json` read into the
//! configurations of every sampler dmq has (DDIM, PNDM, DPM-Solver++), so sampling matches
//! the model's own diffusers pipeline; [`AnySampler`] is the one a command picked.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use burn::tensor::Tensor;
use dmq_models::scheduler::{
    BetaSchedule, DdimConfig, DdimScheduler, DpmSolverConfig, DpmSolverScheduler, FinalSigmas,
    NoiseSchedule, PndmConfig, PndmScheduler, PredictionType, Scheduler, SchedulerError,
    SolverState, SolverType, StepOutput, TimestepSpacing,
};
use serde_json::{Map, Value};

use crate::error::{Result, file_err};

/// File name of the schedule beside `config.json`.
pub const SCHEDULER_FILE: &str = "scheduler_config.json";

/// A sampler family a command can run (`--sampler`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// DDIM, η = 0 (`ddim`): the papers' protocol and dmq's default.
    Ddim,
    /// PNDM with PLMS steps (`pndm`, `plms`): Stable Diffusion 1.x's default.
    Pndm,
    /// DPM-Solver++ 2M (`dpm++2m`, `dpmsolver++`).
    DpmSolver,
}

impl FromStr for SamplerKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ddim" => Ok(Self::Ddim),
            "pndm" | "plms" => Ok(Self::Pndm),
            "dpm++2m" | "dpmsolver++" | "dpm-solver++" => Ok(Self::DpmSolver),
            _ => Err(format!("unknown sampler '{s}' (ddim, pndm, dpm++2m)")),
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ddim => "ddim",
            Self::Pndm => "pndm",
            Self::DpmSolver => "dpm++2m",
        })
    }
}

/// The schedule of a model: the sampler configurations built from its
/// `scheduler_config.json` (or diffusers' defaults where it has none), and the JSON it came
/// from.
#[derive(Clone, Debug)]
pub struct SchedulerSpec {
    /// DDIM with the model's betas, clipping, spacing, offset and prediction type (η = 0).
    pub ddim: DdimConfig,
    /// PNDM (PLMS) with the model's betas and the file's PNDM keys.
    pub pndm: PndmConfig,
    /// DPM-Solver++ with the model's betas and the file's DPM-Solver keys.
    pub dpm: DpmSolverConfig,
    /// The sampler the file names (`_class_name`): DDIM for DDPM/DDIM configs.
    pub native: SamplerKind,
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

    /// Parses a diffusers `DDPMScheduler` / `DDIMScheduler` / `PNDMScheduler` /
    /// `DPMSolverMultistepScheduler` config. Values dmq cannot honour (an unknown prediction
    /// type, beta schedule, spacing, solver; a scheduler class it does not have) are errors
    /// naming the key; keys that do not change sampling (`variance_type`, ...) are accepted.
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
        let native = match text("_class_name")? {
            None | Some("DDIMScheduler" | "DDPMScheduler") => SamplerKind::Ddim,
            Some("PNDMScheduler") => SamplerKind::Pndm,
            Some("DPMSolverMultistepScheduler") => SamplerKind::DpmSolver,
            Some(other) => {
                return Err(file_err(
                    origin,
                    "_class_name",
                    format!(
                        "'{other}' is not supported (DDIMScheduler, DDPMScheduler, \
                         PNDMScheduler, DPMSolverMultistepScheduler)"
                    ),
                ));
            }
        };
        let prediction: PredictionType = match text("prediction_type")? {
            None => PredictionType::Epsilon,
            Some(p) => p
                .parse()
                .map_err(|e: dmq_models::scheduler::SchedulerError| {
                    file_err(origin, "prediction_type", e.to_string())
                })?,
        };
        let mut ddim = DdimConfig::new().with_prediction_type(prediction);
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
        let parsed = |key: &'static str| -> Result<Option<&str>> { text(key) };
        let mut pndm = PndmConfig::new()
            .with_num_train_timesteps(ddim.num_train_timesteps)
            .with_beta_start(ddim.beta_start)
            .with_beta_end(ddim.beta_end)
            .with_beta_schedule(ddim.beta_schedule)
            .with_prediction_type(prediction)
            .with_timestep_spacing(ddim.timestep_spacing)
            .with_steps_offset(ddim.steps_offset);
        pndm.trained_betas = ddim.trained_betas.clone();
        // diffusers' PNDM defaults apply to a PNDM file; other files keep dmq's PLMS default
        if native == SamplerKind::Pndm {
            pndm.skip_prk_steps = boolean("skip_prk_steps")?.unwrap_or(false);
            pndm.set_alpha_to_one = boolean("set_alpha_to_one")?.unwrap_or(false);
            if !pndm.skip_prk_steps {
                return Err(file_err(
                    origin,
                    "skip_prk_steps",
                    "false (PNDM's Runge-Kutta warm-up) is not implemented; dmq runs PLMS \
                     steps from the first step (skip_prk_steps = true, as Stable Diffusion)",
                ));
            }
        }
        let mut dpm = DpmSolverConfig::new()
            .with_num_train_timesteps(ddim.num_train_timesteps)
            .with_beta_start(ddim.beta_start)
            .with_beta_end(ddim.beta_end)
            .with_beta_schedule(ddim.beta_schedule)
            .with_prediction_type(prediction)
            .with_steps_offset(ddim.steps_offset);
        dpm.trained_betas = ddim.trained_betas.clone();
        // The DPM-Solver keys are read from any config, as diffusers' `from_config` carries a
        // config's shared keys (betas, spacing, offset, prediction type) into another scheduler.
        {
            if text("timestep_spacing")?.is_some() {
                dpm.timestep_spacing = ddim.timestep_spacing;
            }
            if let Some(a) = parsed("algorithm_type")?
                && a != "dpmsolver++"
            {
                return Err(file_err(
                    origin,
                    "algorithm_type",
                    format!("'{a}' is not supported (dpmsolver++)"),
                ));
            }
            if let Some(n) = num("solver_order")? {
                if !(n == 1.0 || n == 2.0) {
                    return Err(file_err(origin, "solver_order", format!("{n} (1 or 2)")));
                }
                dpm.solver_order = n as usize;
            }
            if let Some(v) = parsed("solver_type")? {
                dpm.solver_type = v
                    .parse::<SolverType>()
                    .map_err(|e| file_err(origin, "solver_type", e.to_string()))?;
            }
            if let Some(v) = parsed("final_sigmas_type")? {
                dpm.final_sigmas_type = v
                    .parse::<FinalSigmas>()
                    .map_err(|e| file_err(origin, "final_sigmas_type", e.to_string()))?;
            }
            if let Some(v) = boolean("lower_order_final")? {
                dpm.lower_order_final = v;
            }
            if let Some(v) = boolean("euler_at_final")? {
                dpm.euler_at_final = v;
            }
            if let Some(v) = boolean("use_karras_sigmas")? {
                dpm.use_karras_sigmas = v;
            }
            for key in [
                "thresholding",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_lu_lambdas",
                "use_flow_sigmas",
                "rescale_betas_zero_snr",
                "use_dynamic_shifting",
            ] {
                if boolean(key)? == Some(true) {
                    return Err(file_err(origin, key, "true is not supported"));
                }
            }
        }
        Ok(Self {
            ddim,
            pndm,
            dpm,
            native,
            json: json.clone(),
        })
    }

    /// What the model outputs (ε, v or x0).
    pub fn prediction_type(&self) -> PredictionType {
        self.ddim.prediction_type
    }

    /// The sampler `kind` over `steps` steps, as diffusers' `set_timesteps(steps)` builds it.
    pub fn sampler(&self, kind: SamplerKind, steps: usize) -> Result<AnySampler> {
        Ok(match kind {
            SamplerKind::Ddim => AnySampler::Ddim(self.ddim(steps)?),
            SamplerKind::Pndm => AnySampler::Pndm(PndmScheduler::new(&self.pndm, steps)?),
            SamplerKind::DpmSolver => {
                AnySampler::DpmSolver(DpmSolverScheduler::new(&self.dpm, steps)?)
            }
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

/// One of dmq's samplers, picked at run time ([`SchedulerSpec::sampler`]).
#[derive(Clone, Debug)]
pub enum AnySampler {
    /// DDIM.
    Ddim(DdimScheduler),
    /// PNDM with PLMS steps.
    Pndm(PndmScheduler),
    /// DPM-Solver++.
    DpmSolver(DpmSolverScheduler),
}

impl AnySampler {
    fn inner(&self) -> &dyn Scheduler {
        match self {
            Self::Ddim(s) => s,
            Self::Pndm(s) => s,
            Self::DpmSolver(s) => s,
        }
    }
}

impl Scheduler for AnySampler {
    fn timesteps(&self) -> &[usize] {
        self.inner().timesteps()
    }

    fn noise_schedule(&self) -> &NoiseSchedule {
        self.inner().noise_schedule()
    }

    fn takes_variance(&self) -> bool {
        self.inner().takes_variance()
    }

    fn prediction_type(&self) -> PredictionType {
        self.inner().prediction_type()
    }

    fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        x_t: Tensor<4>,
        noise: Option<Tensor<4>>,
        state: &mut SolverState,
    ) -> std::result::Result<StepOutput, SchedulerError> {
        self.inner()
            .step(model_output, step_index, x_t, noise, state)
    }
}
