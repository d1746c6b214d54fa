//! Scheduler parity with diffusers (fixtures from `scripts/fixtures/schedulers.py`),
//! closed-form checks, and error paths. The tensor tests run on every enabled backend
//! through `backend_tests!`.

// Without any backend feature the per-backend bodies are unused.
#![cfg_attr(
    not(any(feature = "flex", feature = "ndarray", feature = "wgpu")),
    allow(dead_code, unused_imports)
)]

use std::sync::OnceLock;

use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::scheduler::spacing::{
    diffusers_timesteps, quad_timesteps, quad_timesteps_raw, uniform_timesteps, validate_timesteps,
};
use dmq_models::scheduler::{
    BetaSchedule, DdimConfig, DdimScheduler, DdpmConfig, DdpmScheduler, DpmSolverConfig,
    DpmSolverScheduler, NoiseSchedule, PndmConfig, PndmScheduler, PredictionType, Scheduler,
    SchedulerError, SolverState, TimestepSpacing, VarianceType,
};
use serde::Deserialize;

// ---------------------------------------------------------------------------------
// Fixture format

#[derive(Deserialize)]
struct Fixtures {
    shape: Vec<usize>,
    inputs: Inputs,
    var_pos: Vec<f32>,
    schedules: Vec<ScheduleCase>,
    spacings: Vec<SpacingCase>,
    quad: Vec<QuadCase>,
    ddpm: Vec<DdpmCase>,
    ddim: Vec<DdimCase>,
    add_noise: Vec<AddNoiseCase>,
    trajectories: Vec<TrajectoryCase>,
    multistep: Vec<MultistepCase>,
}

#[derive(Deserialize)]
struct Inputs {
    x: Vec<f32>,
    eps: Vec<f32>,
    noise: Vec<f32>,
    x0: Vec<f32>,
    var: Vec<f32>,
}

/// The diffusers config kwargs a case was built with (absent keys: diffusers defaults).
#[derive(Deserialize, Default, Clone)]
struct DiffusersConfig {
    num_train_timesteps: Option<usize>,
    beta_start: Option<f64>,
    beta_end: Option<f64>,
    beta_schedule: Option<String>,
    clip_sample: Option<bool>,
    clip_sample_range: Option<f64>,
    set_alpha_to_one: Option<bool>,
    steps_offset: Option<usize>,
    timestep_spacing: Option<String>,
    variance_type: Option<String>,
    prediction_type: Option<String>,
    skip_prk_steps: Option<bool>,
    solver_order: Option<usize>,
    solver_type: Option<String>,
    lower_order_final: Option<bool>,
    use_karras_sigmas: Option<bool>,
    final_sigmas_type: Option<String>,
}

/// A PNDM or DPM-Solver++ trajectory: every step's sample.
#[derive(Deserialize)]
struct MultistepCase {
    name: String,
    kind: String,
    config: DiffusersConfig,
    num_inference_steps: usize,
    timesteps: Vec<usize>,
    steps: Vec<Vec<f32>>,
    sigmas: Option<Vec<f32>>,
}

#[derive(Deserialize)]
struct ScheduleCase {
    name: String,
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
    beta_schedule: String,
    idx: Vec<usize>,
    betas: Vec<f32>,
    alphas_cumprod: Vec<f32>,
}

#[derive(Deserialize)]
struct SpacingCase {
    spacing: String,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    steps_offset: usize,
    timesteps: Vec<usize>,
}

#[derive(Deserialize)]
struct QuadCase {
    num_train_timesteps: usize,
    num_inference_steps: usize,
    offset: usize,
    timesteps: Vec<usize>,
}

#[derive(Deserialize)]
struct StepCase {
    step_index: usize,
    t: usize,
    prev_sample: Vec<f32>,
    pred_original_sample: Vec<f32>,
}

#[derive(Deserialize)]
struct DdpmCase {
    name: String,
    config: DiffusersConfig,
    num_inference_steps: Option<usize>,
    custom_timesteps: Option<Vec<usize>>,
    timesteps: Vec<usize>,
    model_output_channels: usize,
    steps: Vec<StepCase>,
}

#[derive(Deserialize)]
struct DdimCase {
    name: String,
    mode: String,
    config: DiffusersConfig,
    num_inference_steps: Option<usize>,
    eta: f64,
    use_clipped_model_output: bool,
    timesteps_ascending: Option<Vec<usize>>,
    timesteps: Vec<usize>,
    steps: Vec<StepCase>,
}

#[derive(Deserialize)]
struct AddNoiseCase {
    schedule: String,
    config: DiffusersConfig,
    t: Vec<usize>,
    out: Vec<f32>,
}

#[derive(Deserialize)]
struct TrajectoryCase {
    name: String,
    kind: String,
    config: DiffusersConfig,
    num_inference_steps: Option<usize>,
    eta: Option<f64>,
    custom_timesteps: Option<Vec<usize>>,
    #[serde(rename = "final")]
    final_sample: Vec<f32>,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let text = include_str!("fixtures/schedulers.json");
        serde_json::from_str(text).expect("parse schedulers.json")
    })
}

impl DiffusersConfig {
    fn ddpm(&self) -> DdpmConfig {
        let mut c = DdpmConfig::new();
        if let Some(v) = self.num_train_timesteps {
            c.num_train_timesteps = v;
        }
        if let Some(v) = self.beta_start {
            c.beta_start = v;
        }
        if let Some(v) = self.beta_end {
            c.beta_end = v;
        }
        if let Some(v) = &self.beta_schedule {
            c.beta_schedule = v.parse().unwrap();
        }
        if let Some(v) = self.clip_sample {
            c.clip_sample = v;
        }
        if let Some(v) = self.clip_sample_range {
            c.clip_sample_range = v;
        }
        if let Some(v) = self.steps_offset {
            c.steps_offset = v;
        }
        if let Some(v) = &self.timestep_spacing {
            c.timestep_spacing = v.parse().unwrap();
        }
        if let Some(v) = &self.variance_type {
            c.variance_type = v.parse().unwrap();
        }
        c.prediction_type = self.prediction();
        c
    }

    fn prediction(&self) -> PredictionType {
        self.prediction_type
            .as_deref()
            .map_or(PredictionType::Epsilon, |p| p.parse().unwrap())
    }

    fn betas(&self) -> (usize, f64, f64, BetaSchedule) {
        (
            self.num_train_timesteps.unwrap_or(1000),
            self.beta_start.unwrap_or(0.0001),
            self.beta_end.unwrap_or(0.02),
            self.beta_schedule
                .as_deref()
                .map_or(BetaSchedule::Linear, |v| v.parse().unwrap()),
        )
    }

    fn pndm(&self) -> PndmConfig {
        let (n, b0, b1, bs) = self.betas();
        let mut c = PndmConfig::new()
            .with_num_train_timesteps(n)
            .with_beta_start(b0)
            .with_beta_end(b1)
            .with_beta_schedule(bs)
            .with_prediction_type(self.prediction());
        // diffusers' PNDM defaults: no PRK skip, final alpha abar_0, leading spacing
        c.skip_prk_steps = self.skip_prk_steps.unwrap_or(false);
        c.set_alpha_to_one = self.set_alpha_to_one.unwrap_or(false);
        c.steps_offset = self.steps_offset.unwrap_or(0);
        if let Some(v) = &self.timestep_spacing {
            c.timestep_spacing = v.parse().unwrap();
        }
        c
    }

    fn dpm(&self) -> DpmSolverConfig {
        let (n, b0, b1, bs) = self.betas();
        let mut c = DpmSolverConfig::new()
            .with_num_train_timesteps(n)
            .with_beta_start(b0)
            .with_beta_end(b1)
            .with_beta_schedule(bs)
            .with_prediction_type(self.prediction());
        if let Some(v) = self.solver_order {
            c.solver_order = v;
        }
        if let Some(v) = &self.solver_type {
            c.solver_type = v.parse().unwrap();
        }
        if let Some(v) = self.lower_order_final {
            c.lower_order_final = v;
        }
        if let Some(v) = self.use_karras_sigmas {
            c.use_karras_sigmas = v;
        }
        if let Some(v) = &self.final_sigmas_type {
            c.final_sigmas_type = v.parse().unwrap();
        }
        if let Some(v) = &self.timestep_spacing {
            c.timestep_spacing = v.parse().unwrap();
        }
        c.steps_offset = self.steps_offset.unwrap_or(0);
        c
    }

    fn ddim(&self, eta: f64, use_clipped: bool) -> DdimConfig {
        let mut c = DdimConfig::new()
            .with_eta(eta)
            .with_use_clipped_model_output(use_clipped);
        if let Some(v) = self.num_train_timesteps {
            c.num_train_timesteps = v;
        }
        if let Some(v) = self.beta_start {
            c.beta_start = v;
        }
        if let Some(v) = self.beta_end {
            c.beta_end = v;
        }
        if let Some(v) = &self.beta_schedule {
            c.beta_schedule = v.parse().unwrap();
        }
        if let Some(v) = self.clip_sample {
            c.clip_sample = v;
        }
        if let Some(v) = self.clip_sample_range {
            c.clip_sample_range = v;
        }
        if let Some(v) = self.set_alpha_to_one {
            c.set_alpha_to_one = v;
        }
        if let Some(v) = self.steps_offset {
            c.steps_offset = v;
        }
        if let Some(v) = &self.timestep_spacing {
            c.timestep_spacing = v.parse().unwrap();
        }
        c.prediction_type = self.prediction();
        c
    }
}

// ---------------------------------------------------------------------------------
// Helpers

fn tensor(values: &[f32], shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

fn shape4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

/// `|got - want| <= tol * max(1, |want|)` element-wise.
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(
            err <= tol,
            "{what}: element {i}: got {g}, want {w} (scaled error {err:e} > {tol:e})"
        );
    }
}

const TOL: f32 = 1e-5;

/// `[eps; v]` along channels.
fn with_variance(eps: &[f32], var: &[f32], shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::cat(
        vec![tensor(eps, shape, device), tensor(var, shape, device)],
        1,
    )
}

// ---------------------------------------------------------------------------------
// Host-only checks (no tensors)

#[test]
fn betas_and_alphas_cumprod_match_diffusers() {
    for case in &fixtures().schedules {
        let schedule: BetaSchedule = case.beta_schedule.parse().unwrap();
        let s = NoiseSchedule::new(
            schedule,
            case.num_train_timesteps,
            case.beta_start,
            case.beta_end,
        )
        .unwrap();
        assert_eq!(s.num_train_timesteps(), case.num_train_timesteps);
        for (k, &i) in case.idx.iter().enumerate() {
            let (b, want_b) = (s.betas()[i], case.betas[k]);
            assert!(
                (b - want_b).abs() <= 1e-8 + 1e-6 * want_b.abs(),
                "{}: beta[{i}] = {b}, diffusers {want_b}",
                case.name
            );
            let (a, want_a) = (s.alphas_cumprod()[i], case.alphas_cumprod[k]);
            assert!(
                (a - want_a).abs() <= 1e-6 * want_a.abs(),
                "{}: alphas_cumprod[{i}] = {a}, diffusers {want_a}",
                case.name
            );
        }
    }
}

#[test]
fn diffusers_spacings_match() {
    let f = fixtures();
    assert!(f.spacings.len() >= 25);
    for case in &f.spacings {
        let spacing: TimestepSpacing = case.spacing.parse().unwrap();
        let asc = diffusers_timesteps(
            spacing,
            case.num_inference_steps,
            case.num_train_timesteps,
            case.steps_offset,
        )
        .unwrap();
        let desc: Vec<usize> = asc.into_iter().rev().collect();
        assert_eq!(
            desc, case.timesteps,
            "{} S={} N={} offset={}",
            case.spacing, case.num_inference_steps, case.num_train_timesteps, case.steps_offset
        );
    }
}

#[test]
fn quad_spacing_matches_reference() {
    for case in &fixtures().quad {
        let raw = quad_timesteps_raw(
            case.num_inference_steps,
            case.num_train_timesteps,
            case.offset,
        );
        assert_eq!(raw, case.timesteps, "quad S={}", case.num_inference_steps);
        let checked = quad_timesteps(
            case.num_inference_steps,
            case.num_train_timesteps,
            case.offset,
        );
        let has_repeat = case.timesteps.windows(2).any(|w| w[1] <= w[0]);
        match checked {
            Ok(ts) => {
                assert!(!has_repeat);
                assert_eq!(ts, case.timesteps);
            }
            Err(SchedulerError::DuplicateTimesteps { spacing, .. }) => {
                assert!(has_repeat);
                assert_eq!(spacing, "quad");
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[test]
fn uniform_spacing_is_ldm() {
    assert_eq!(
        uniform_timesteps(4, 20, 1).unwrap(),
        vec![1, 6, 11, 16],
        "range(0, 20, 5) + 1"
    );
    // S not dividing N gives more entries, as range(0, N, N // S) does.
    assert_eq!(uniform_timesteps(3, 10, 0).unwrap(), vec![0, 3, 6, 9]);
    assert!(matches!(
        uniform_timesteps(10, 10, 1),
        Err(SchedulerError::TimestepOutOfRange { timestep: 10, .. })
    ));
}

#[test]
fn bad_timestep_lists_are_errors() {
    let cfg = DdimConfig::new();
    assert_eq!(
        DdimScheduler::with_timesteps(&cfg, &[]).unwrap_err(),
        SchedulerError::EmptyTimesteps
    );
    assert_eq!(
        DdimScheduler::with_timesteps(&cfg, &[1, 50, 20]).unwrap_err(),
        SchedulerError::NotAscending {
            index: 2,
            value: 20,
            previous: 50
        }
    );
    assert!(matches!(
        DdimScheduler::with_timesteps(&cfg, &[1, 20, 20]),
        Err(SchedulerError::NotAscending { index: 2, .. })
    ));
    assert_eq!(
        DdimScheduler::with_timesteps(&cfg, &[0, 500, 1000]).unwrap_err(),
        SchedulerError::TimestepOutOfRange {
            timestep: 1000,
            num_train_timesteps: 1000
        }
    );
    let ddpm = DdpmConfig::new();
    assert!(matches!(
        DdpmScheduler::with_timesteps(&ddpm, &[3, 2]),
        Err(SchedulerError::NotAscending { .. })
    ));
    assert!(matches!(
        DdpmScheduler::with_timesteps(&ddpm, &[]),
        Err(SchedulerError::EmptyTimesteps)
    ));
    for n in [0usize, 1001] {
        assert!(matches!(
            DdimScheduler::diffusers(&cfg, n),
            Err(SchedulerError::InvalidNumSteps { .. })
        ));
        assert!(matches!(
            DdpmScheduler::with_num_steps(&ddpm, n),
            Err(SchedulerError::InvalidNumSteps { .. })
        ));
    }
    // leading + offset past the end.
    assert!(matches!(
        DdimScheduler::diffusers(&cfg.clone().with_steps_offset(1), 1000),
        Err(SchedulerError::TimestepOutOfRange { timestep: 1000, .. })
    ));
    assert!(validate_timesteps(&[0, 1, 999], 1000).is_ok());
}

#[test]
fn bad_configs_are_errors() {
    for eta in [-0.1, f64::NAN, f64::INFINITY] {
        let err = DdimScheduler::diffusers(&DdimConfig::new().with_eta(eta), 10).unwrap_err();
        assert!(matches!(err, SchedulerError::InvalidEta(_)), "{err}");
    }
    assert!(matches!(
        DdimScheduler::diffusers(&DdimConfig::new().with_clip_sample_range(0.0), 10),
        Err(SchedulerError::InvalidConfig(_))
    ));
    assert!(matches!(
        NoiseSchedule::new(BetaSchedule::Linear, 10, 0.0, 0.02),
        Err(SchedulerError::InvalidBetas(_))
    ));
    assert!(matches!(
        NoiseSchedule::new(BetaSchedule::Linear, 0, 0.0001, 0.02),
        Err(SchedulerError::InvalidBetas(_))
    ));
    assert!(matches!(
        NoiseSchedule::from_betas(vec![0.1, 1.0]),
        Err(SchedulerError::InvalidBetas(_))
    ));
    assert!(matches!(
        "cosine".parse::<BetaSchedule>(),
        Err(SchedulerError::UnknownName { .. })
    ));
    assert!("fixed_large_log".parse::<VarianceType>().is_err());
    assert!("middle".parse::<TimestepSpacing>().is_err());
    // trained betas override the schedule.
    let cfg = DdpmConfig::new().with_trained_betas(Some(vec![0.1, 0.2, 0.3]));
    let s = DdpmScheduler::new(&cfg).unwrap();
    assert_eq!(s.timesteps(), &[2, 1, 0]);
    let ac = s.noise_schedule().alphas_cumprod();
    assert!((ac[2] - 0.9 * 0.8 * 0.7).abs() < 1e-7);
}

#[test]
fn prev_timestep_rules() {
    // diffusers DDIM with trailing spacing: prev = t - N / S, not the list neighbour.
    let cfg = DdimConfig::new().with_timestep_spacing(TimestepSpacing::Trailing);
    let s = DdimScheduler::diffusers(&cfg, 30).unwrap();
    assert_eq!(s.timesteps()[0], 999);
    assert_eq!(s.prev_timestep(0).unwrap(), Some(999 - 33));
    assert_eq!(s.timesteps()[1], 966);
    let last = s.num_steps() - 1;
    assert_eq!(s.prev_timestep(last).unwrap(), None);
    // Arbitrary list: previous list entry.
    let s = DdimScheduler::with_timesteps(&DdimConfig::new(), &[3, 40, 500]).unwrap();
    assert_eq!(s.timesteps(), &[500, 40, 3]);
    assert_eq!(s.prev_timestep(0).unwrap(), Some(40));
    assert_eq!(s.prev_timestep(2).unwrap(), None);
    assert!(matches!(
        s.prev_timestep(3),
        Err(SchedulerError::StepIndexOutOfRange {
            step_index: 3,
            num_steps: 3
        })
    ));
    assert_eq!(s.timestep(1).unwrap(), 40);
    assert!(s.timestep(3).is_err());
    // set_alpha_to_one = false: the last step goes to abar[0].
    let s =
        DdimScheduler::with_timesteps(&DdimConfig::new().with_set_alpha_to_one(false), &[3, 40])
            .unwrap();
    let ac0 = s.noise_schedule().alphas_cumprod()[0];
    assert_eq!(s.alphas(1).unwrap().1, ac0);
    assert!(s.sigma(1).unwrap() == 0.0);
}

// ---------------------------------------------------------------------------------
// Tensor checks, instantiated per backend

fn ddpm_parity(device: &Device) {
    let f = fixtures();
    let shape = shape4(&f.shape);
    let x = tensor(&f.inputs.x, shape, device);
    let noise = tensor(&f.inputs.noise, shape, device);
    assert!(f.ddpm.len() >= 8);
    for case in &f.ddpm {
        let cfg = case.config.ddpm();
        let sched = match (&case.custom_timesteps, case.num_inference_steps) {
            (Some(ts), _) => {
                let asc: Vec<usize> = ts.iter().rev().copied().collect();
                DdpmScheduler::with_timesteps(&cfg, &asc).unwrap()
            }
            (None, Some(n)) => DdpmScheduler::with_num_steps(&cfg, n).unwrap(),
            (None, None) => DdpmScheduler::new(&cfg).unwrap(),
        };
        assert_eq!(
            sched.timesteps(),
            case.timesteps.as_slice(),
            "{}",
            case.name
        );
        let eps = match sched.variance_type() {
            VarianceType::LearnedRange => {
                with_variance(&f.inputs.eps, &f.inputs.var, shape, device)
            }
            VarianceType::Learned => with_variance(&f.inputs.eps, &f.var_pos, shape, device),
            _ => tensor(&f.inputs.eps, shape, device),
        };
        assert_eq!(eps.dims()[1], case.model_output_channels, "{}", case.name);
        for st in &case.steps {
            assert_eq!(sched.timestep(st.step_index).unwrap(), st.t);
            let out = sched
                .step(
                    eps.clone(),
                    st.step_index,
                    x.clone(),
                    Some(noise.clone()),
                    &mut SolverState::default(),
                )
                .unwrap();
            let what = format!("ddpm {} step {} (t={})", case.name, st.step_index, st.t);
            assert_close(
                &values(out.pred_original_sample),
                &st.pred_original_sample,
                TOL,
                &format!("{what} x0"),
            );
            assert_close(&values(out.prev_sample), &st.prev_sample, TOL, &what);
            let x0 = sched
                .predict_x0(eps.clone(), st.step_index, x.clone())
                .unwrap();
            assert_close(&values(x0), &st.pred_original_sample, TOL, &what);
        }
    }
}

fn ddim_parity(device: &Device) {
    let f = fixtures();
    let shape = shape4(&f.shape);
    let x = tensor(&f.inputs.x, shape, device);
    let eps = tensor(&f.inputs.eps, shape, device);
    let noise = tensor(&f.inputs.noise, shape, device);
    assert!(f.ddim.len() >= 10);
    for case in &f.ddim {
        let cfg = case.config.ddim(case.eta, case.use_clipped_model_output);
        let sched = match case.mode.as_str() {
            "diffusers" => DdimScheduler::diffusers(&cfg, case.num_inference_steps.unwrap()),
            "list" => {
                DdimScheduler::with_timesteps(&cfg, case.timesteps_ascending.as_ref().unwrap())
            }
            m => panic!("unknown mode {m}"),
        }
        .unwrap();
        assert_eq!(
            sched.timesteps(),
            case.timesteps.as_slice(),
            "{}",
            case.name
        );
        for st in &case.steps {
            assert_eq!(sched.timestep(st.step_index).unwrap(), st.t);
            let out = sched
                .step(
                    eps.clone(),
                    st.step_index,
                    x.clone(),
                    Some(noise.clone()),
                    &mut SolverState::default(),
                )
                .unwrap();
            let what = format!("ddim {} step {} (t={})", case.name, st.step_index, st.t);
            assert_close(
                &values(out.pred_original_sample),
                &st.pred_original_sample,
                TOL,
                &format!("{what} x0"),
            );
            assert_close(&values(out.prev_sample), &st.prev_sample, TOL, &what);
        }
    }
}

fn add_noise_parity(device: &Device) {
    let f = fixtures();
    let shape = shape4(&f.shape);
    let x0 = tensor(&f.inputs.x0, shape, device);
    let noise = tensor(&f.inputs.noise, shape, device);
    for case in &f.add_noise {
        let sched = DdpmScheduler::new(&case.config.ddpm()).unwrap();
        let out = sched.add_noise(x0.clone(), noise.clone(), &case.t).unwrap();
        let what = format!("add_noise {} t={:?}", case.schedule, case.t);
        assert_close(&values(out), &case.out, TOL, &what);
        if case.t[0] == case.t[1] {
            // One timestep for the whole batch gives the same result.
            let one = sched
                .add_noise(x0.clone(), noise.clone(), &case.t[..1])
                .unwrap();
            assert_close(&values(one), &case.out, TOL, &what);
        }
    }
}

fn trajectory_parity(device: &Device) {
    let f = fixtures();
    let shape = shape4(&f.shape);
    let eps_fixed = tensor(&f.inputs.eps, shape, device);
    let noise = tensor(&f.inputs.noise, shape, device);
    for case in &f.trajectories {
        let sched: Box<dyn Scheduler> = match case.kind.as_str() {
            "ddim" => Box::new(
                DdimScheduler::diffusers(
                    &case.config.ddim(case.eta.unwrap(), false),
                    case.num_inference_steps.unwrap(),
                )
                .unwrap(),
            ),
            "ddpm" => {
                let asc: Vec<usize> = case
                    .custom_timesteps
                    .as_ref()
                    .unwrap()
                    .iter()
                    .rev()
                    .copied()
                    .collect();
                Box::new(DdpmScheduler::with_timesteps(&case.config.ddpm(), &asc).unwrap())
            }
            k => panic!("unknown kind {k}"),
        };
        let mut x = tensor(&f.inputs.x, shape, device);
        for i in 0..sched.num_steps() {
            let eps = x
                .clone()
                .mul_scalar(0.9)
                .add(eps_fixed.clone().mul_scalar(0.1));
            x = sched
                .step(eps, i, x, Some(noise.clone()), &mut SolverState::default())
                .unwrap()
                .prev_sample;
        }
        assert_close(&values(x), &case.final_sample, TOL, &case.name);
    }
}

/// DDIM with eta = 0 and the exact eps of a known x0 recovers x0 at every step's
/// prediction, moves along `sqrt(a_prev) x0 + sqrt(1 - a_prev) eps`, and returns x0
/// itself after the last step (final alpha 1). The tolerance is 1e-4 because f32
/// round-off in `x_t` is amplified by `1 / sqrt(abar_999)` (about 160) in `x0_hat`.
fn ddim_closed_form(device: &Device) {
    let f = fixtures();
    let shape = shape4(&f.shape);
    let x0 = tensor(&f.inputs.x0, shape, device);
    let e = tensor(&f.inputs.noise, shape, device);
    let want_x0 = values(x0.clone());
    let sched = DdimScheduler::with_timesteps(
        &DdimConfig::new().with_clip_sample(false),
        &[0, 9, 120, 480, 999],
    )
    .unwrap();
    let mut x = sched.add_noise(x0.clone(), e.clone(), &[999]).unwrap();
    for i in 0..sched.num_steps() {
        let out = sched
            .step(e.clone(), i, x, None, &mut SolverState::default())
            .unwrap();
        assert_close(&values(out.pred_original_sample), &want_x0, 1e-4, "x0_hat");
        x = out.prev_sample;
        match sched.prev_timestep(i).unwrap() {
            Some(p) => {
                let expect = sched.add_noise(x0.clone(), e.clone(), &[p]).unwrap();
                assert_close(&values(x.clone()), &values(expect), 1e-4, "trajectory");
            }
            None => assert_close(&values(x.clone()), &want_x0, 1e-4, "final sample"),
        }
    }

    // DDPM's posterior mean with the true eps at t = 0 returns x0 exactly (no noise at t = 0).
    let ddpm = DdpmScheduler::new(&DdpmConfig::new().with_clip_sample(false)).unwrap();
    let last = ddpm.num_steps() - 1;
    assert_eq!(ddpm.timestep(last).unwrap(), 0);
    let xt = ddpm.add_noise(x0.clone(), e.clone(), &[0]).unwrap();
    let out = ddpm
        .step(e.clone(), last, xt, None, &mut SolverState::default())
        .unwrap();
    assert_close(&values(out.prev_sample), &want_x0, 1e-5, "ddpm t=0");
}

/// Bad tensors and indices come back as errors, never panics.
fn step_errors(device: &Device) {
    let x = Tensor::<4>::zeros([2, 1, 4, 4], device);
    let ddim = DdimScheduler::diffusers(&DdimConfig::new().with_eta(1.0), 10).unwrap();
    let err = ddim
        .step(
            Tensor::zeros([2, 1, 4, 5], device),
            0,
            x.clone(),
            None,
            &mut SolverState::default(),
        )
        .unwrap_err();
    assert!(matches!(err, SchedulerError::ShapeMismatch { .. }), "{err}");
    let err = ddim
        .step(
            x.clone(),
            0,
            x.clone(),
            Some(Tensor::zeros([1, 1, 4, 4], device)),
            &mut SolverState::default(),
        )
        .unwrap_err();
    assert!(matches!(err, SchedulerError::ShapeMismatch { .. }), "{err}");
    let err = ddim
        .step(x.clone(), 10, x.clone(), None, &mut SolverState::default())
        .unwrap_err();
    assert_eq!(
        err,
        SchedulerError::StepIndexOutOfRange {
            step_index: 10,
            num_steps: 10
        }
    );
    // eta > 0 without noise draws it: the result is finite and the right shape.
    let out = ddim
        .step(x.clone(), 0, x.clone(), None, &mut SolverState::default())
        .unwrap();
    assert_eq!(out.prev_sample.dims(), [2, 1, 4, 4]);

    let ddpm =
        DdpmScheduler::new(&DdpmConfig::new().with_variance_type(VarianceType::LearnedRange))
            .unwrap();
    let err = ddpm
        .step(x.clone(), 0, x.clone(), None, &mut SolverState::default())
        .unwrap_err();
    assert!(matches!(err, SchedulerError::ShapeMismatch { .. }), "{err}");
    let fixed = DdpmScheduler::new(&DdpmConfig::new()).unwrap();
    let err = fixed
        .step(
            Tensor::zeros([2, 2, 4, 4], device),
            0,
            x.clone(),
            None,
            &mut SolverState::default(),
        )
        .unwrap_err();
    assert!(matches!(err, SchedulerError::ShapeMismatch { .. }), "{err}");
    assert!(matches!(
        fixed.step(
            x.clone(),
            1000,
            x.clone(),
            None,
            &mut SolverState::default()
        ),
        Err(SchedulerError::StepIndexOutOfRange { .. })
    ));

    let s = fixed.noise_schedule();
    assert!(matches!(
        s.add_noise(x.clone(), x.clone(), &[1, 2, 3]),
        Err(SchedulerError::TimestepBatchMismatch {
            num_timesteps: 3,
            batch: 2
        })
    ));
    assert!(matches!(
        s.add_noise(x.clone(), x.clone(), &[1000]),
        Err(SchedulerError::TimestepOutOfRange { timestep: 1000, .. })
    ));
    assert!(matches!(
        s.add_noise(x.clone(), Tensor::zeros([2, 1, 4, 3], device), &[1]),
        Err(SchedulerError::ShapeMismatch { .. })
    ));
    // Other ranks work for add_noise.
    let y = s
        .add_noise(
            Tensor::<2>::ones([2, 3], device),
            Tensor::<2>::zeros([2, 3], device),
            &[0, 999],
        )
        .unwrap();
    let v: Vec<f32> = y.try_into_vec_as::<f32>().unwrap();
    let ac = s.alphas_cumprod();
    assert!((v[0] - ac[0].sqrt()).abs() < 1e-7 && (v[5] - ac[999].sqrt()).abs() < 1e-7);
}

/// PNDM (PLMS) and DPM-Solver++ over whole trajectories whose model output depends on the
/// sample, so every multistep combination (warm-up, PLMS orders 1–4, DPM++ first and second
/// order, the final step) is compared step by step with diffusers.
fn multistep_parity(device: &Device) {
    let f = fixtures();
    let shape = shape4(&f.shape);
    let eps_fixed = tensor(&f.inputs.eps, shape, device);
    assert!(f.multistep.len() >= 10, "fixture has the multistep cases");
    for case in &f.multistep {
        let sched: Box<dyn Scheduler> = match case.kind.as_str() {
            "pndm" => {
                Box::new(PndmScheduler::new(&case.config.pndm(), case.num_inference_steps).unwrap())
            }
            "dpm" => {
                let s =
                    DpmSolverScheduler::new(&case.config.dpm(), case.num_inference_steps).unwrap();
                let want = case.sigmas.as_ref().unwrap();
                assert_close(s.sigmas(), want, 1e-6, &format!("{} sigmas", case.name));
                Box::new(s)
            }
            k => panic!("unknown kind {k}"),
        };
        assert_eq!(
            sched.timesteps(),
            &case.timesteps[..],
            "{} timesteps",
            case.name
        );
        assert_eq!(sched.num_steps(), case.steps.len(), "{}", case.name);
        let mut x = tensor(&f.inputs.x, shape, device);
        let mut state = SolverState::default();
        for (i, want) in case.steps.iter().enumerate() {
            // 0.9 x + 0.1 eps (1 + 0.05 i), as the fixture script's model_fn
            let out = x
                .clone()
                .mul_scalar(0.9)
                .add(eps_fixed.clone().mul_scalar(0.1 * (1.0 + 0.05 * i as f32)));
            x = sched.step(out, i, x, None, &mut state).unwrap().prev_sample;
            assert_close(
                &values(x.clone()),
                want,
                2e-5,
                &format!("{} step {i}", case.name),
            );
        }
    }
}

/// Multistep schedulers refuse a state from another step and configurations they do not
/// implement, with typed errors.
fn multistep_errors(device: &Device) {
    let x = Tensor::<4>::zeros([1, 1, 2, 2], device);
    let pndm = PndmScheduler::new(&PndmConfig::new(), 10).unwrap();
    assert_eq!(pndm.num_steps(), 11);
    let mut state = SolverState::default();
    pndm.step(x.clone(), 0, x.clone(), None, &mut state)
        .unwrap();
    // skipping step 1 with step 0's state
    let err = pndm
        .step(x.clone(), 3, x.clone(), None, &mut state)
        .unwrap_err();
    assert!(
        matches!(err, SchedulerError::OutOfOrder { step_index: 3, .. }),
        "{err}"
    );
    // a fresh state at step 1 (no saved x_T)
    let err = pndm
        .step(x.clone(), 1, x.clone(), None, &mut SolverState::default())
        .unwrap_err();
    assert!(matches!(err, SchedulerError::OutOfOrder { .. }), "{err}");
    let err = PndmScheduler::new(&PndmConfig::new().with_skip_prk_steps(false), 10).unwrap_err();
    assert!(
        matches!(err, SchedulerError::InvalidConfig(ref m) if m.contains("skip_prk_steps")),
        "{err}"
    );
    let err = PndmScheduler::new(
        &PndmConfig::new().with_prediction_type(PredictionType::Sample),
        10,
    )
    .unwrap_err();
    assert!(matches!(err, SchedulerError::InvalidConfig(_)), "{err}");

    let dpm = DpmSolverScheduler::new(&DpmSolverConfig::new(), 10).unwrap();
    let err = dpm
        .step(x.clone(), 2, x.clone(), None, &mut SolverState::default())
        .unwrap_err();
    assert!(
        matches!(err, SchedulerError::OutOfOrder { expected: 2, .. }),
        "{err}"
    );
    let err =
        DpmSolverScheduler::new(&DpmSolverConfig::new().with_solver_order(3), 10).unwrap_err();
    assert!(
        matches!(err, SchedulerError::InvalidConfig(ref m) if m.contains("solver_order")),
        "{err}"
    );
    for n in [0, 1001] {
        let err = DpmSolverScheduler::new(&DpmSolverConfig::new(), n).unwrap_err();
        assert!(
            matches!(err, SchedulerError::InvalidNumSteps { .. }),
            "{err}"
        );
    }
    let err = dpm
        .step(
            Tensor::zeros([1, 2, 2, 2], device),
            0,
            x.clone(),
            None,
            &mut SolverState::default(),
        )
        .unwrap_err();
    assert!(matches!(err, SchedulerError::ShapeMismatch { .. }), "{err}");
}

/// v-prediction closed form: the exact v of a known (x0, ε) makes DDIM recover x0, and
/// DDIM with ε-prediction on the matching ε takes the same step.
fn v_prediction_closed_form(device: &Device) {
    let f = fixtures();
    let shape = shape4(&f.shape);
    let x0 = tensor(&f.inputs.x0, shape, device);
    let eps = tensor(&f.inputs.eps, shape, device);
    let cfg = DdimConfig::new().with_clip_sample(false);
    let eps_sched = DdimScheduler::diffusers(&cfg, 10).unwrap();
    let v_sched = DdimScheduler::diffusers(
        &cfg.clone()
            .with_prediction_type(PredictionType::VPrediction),
        10,
    )
    .unwrap();
    for i in [0, 4, 9] {
        let (a, _) = eps_sched.alphas(i).unwrap();
        let xt = x0
            .clone()
            .mul_scalar(a.sqrt())
            .add(eps.clone().mul_scalar((1.0 - a).sqrt()));
        let v = eps
            .clone()
            .mul_scalar(a.sqrt())
            .sub(x0.clone().mul_scalar((1.0 - a).sqrt()));
        let mut st = SolverState::default();
        let by_v = v_sched.step(v, i, xt.clone(), None, &mut st).unwrap();
        let by_eps = eps_sched.step(eps.clone(), i, xt, None, &mut st).unwrap();
        assert_close(
            &values(by_v.pred_original_sample),
            &f.inputs.x0,
            1e-4,
            "x0 from v",
        );
        assert_close(
            &values(by_v.prev_sample),
            &values(by_eps.prev_sample),
            1e-4,
            "v vs eps step",
        );
    }
}

macro_rules! backend_tests {
    ($name:ident, $device:expr) => {
        mod $name {
            use burn::tensor::Device;

            fn device() -> Device {
                $device
            }

            #[test]
            fn ddpm_parity() {
                super::ddpm_parity(&device());
            }

            #[test]
            fn ddim_parity() {
                super::ddim_parity(&device());
            }

            #[test]
            fn add_noise_parity() {
                super::add_noise_parity(&device());
            }

            #[test]
            fn trajectory_parity() {
                super::trajectory_parity(&device());
            }

            #[test]
            fn ddim_closed_form() {
                super::ddim_closed_form(&device());
            }

            #[test]
            fn step_errors() {
                super::step_errors(&device());
            }

            #[test]
            fn multistep_parity() {
                super::multistep_parity(&device());
            }

            #[test]
            fn multistep_errors() {
                super::multistep_errors(&device());
            }

            #[test]
            fn v_prediction_closed_form() {
                super::v_prediction_closed_form(&device());
            }
        }
    };
}

#[cfg(feature = "flex")]
backend_tests!(flex, Device::flex());

/// The deprecated ndarray device (kept building and tested, docs/design.md §2).
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
fn ndarray_device() -> Device {
    Device::ndarray()
}

#[cfg(feature = "ndarray")]
backend_tests!(ndarray, super::ndarray_device());

#[cfg(feature = "wgpu")]
backend_tests!(wgpu, Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
