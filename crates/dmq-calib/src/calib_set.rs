//! [`CalibSet`]: data-free calibration inputs recorded from the FP model's own sampling
//! trajectories (docs/algorithms.md §1.5).
//!
//! Every entry is `(x_t, t, class, step)` **exactly as fed to the denoiser** at that step:
//! the input of step i paired with the timestep of step i. (QuEST's collector stores the
//! state *after* step i with `ts[i]`, an off-by-one this type cannot make: it records inside
//! the sampler's per-step callback, before the step is taken.) For class-conditional models
//! sampled with CFG both halves of the batched `[uncond; cond]` call are recorded, so the
//! unconditional branch is calibrated too.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use dmq_models::noise::NoiseRng;
use dmq_models::sampler::{self, labels};
use dmq_models::scheduler::Scheduler;
use dmq_models::{Denoiser, HostTensor, StepContext};
use dmq_quant::QuantizedFile;

use crate::error::{CalibError, Result};

const FORMAT: &str = "dmq.calibset.v1";

/// How to record a calibration set.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordOptions {
    /// Number of trajectories N (the reference `cali_n`).
    pub trajectories: usize,
    /// Number of steps kept per trajectory (`cali_st`): step indices `0, S/k, 2·S/k, ...`
    /// (`range(0, S, S // cali_st)`, step 0 the noisiest).
    pub steps_kept: usize,
    /// CFG scale for conditional models (1 = no guidance: only the conditional branch).
    pub guidance: f64,
    /// Trajectories sampled per batch.
    pub batch: usize,
    /// Seed of the initial noise, the labels and the stochastic steps.
    pub seed: u64,
}

impl Default for RecordOptions {
    fn default() -> Self {
        Self {
            trajectories: 256,
            steps_kept: 20,
            guidance: 1.0,
            batch: 64,
            seed: 0,
        }
    }
}

/// Recorded denoiser inputs.
///
/// # Shapes
/// - `x`: `[N, C, H, W]`; `t`, `step`: `[N]`; `class`: `[N]` when conditional
#[derive(Clone, Debug, PartialEq)]
pub struct CalibSet {
    /// x_t as fed to the denoiser, row-major `[N, C, H, W]`.
    pub x: HostTensor,
    /// Timestep of each entry.
    pub t: Vec<f32>,
    /// Label of each entry (the null label for the unconditional CFG branch).
    pub class: Option<Vec<i64>>,
    /// Step index of each entry (0 = noisiest step of the trajectory).
    pub step: Vec<usize>,
    /// Timestep of every step of the recording trajectory (`num_steps` entries).
    pub timesteps: Vec<f64>,
}

/// Step indices kept by a stride of `S / k` (at least 1) over `S` steps.
pub fn kept_steps(num_steps: usize, steps_kept: usize) -> Vec<usize> {
    let stride = (num_steps / steps_kept.max(1)).max(1);
    (0..num_steps).step_by(stride).collect()
}

impl CalibSet {
    /// Records `opts.trajectories` trajectories of `model` under `scheduler`.
    pub fn record<M: Denoiser + ?Sized, S: Scheduler>(
        model: &M,
        scheduler: &S,
        opts: &RecordOptions,
        device: &Device,
    ) -> Result<Self> {
        if opts.trajectories == 0 || opts.steps_kept == 0 || opts.batch == 0 {
            return Err(CalibError::Option(format!(
                "trajectories ({}), steps_kept ({}) and batch ({}) must be > 0",
                opts.trajectories, opts.steps_kept, opts.batch
            )));
        }
        let info = model.info();
        let keep = kept_steps(scheduler.num_steps(), opts.steps_kept);
        let timesteps = (0..scheduler.num_steps())
            .map(|i| scheduler.timestep(i).map(|t| t as f64))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(dmq_models::ModelError::from)?;
        let mut rng = NoiseRng::new(opts.seed);
        let (c, s) = (info.in_channels, info.sample_size);
        let mut set = CalibSet {
            x: HostTensor {
                data: vec![],
                shape: vec![0, c, s, s],
            },
            t: vec![],
            class: info.num_classes.map(|_| vec![]),
            step: vec![],
            timesteps,
        };
        let mut done = 0;
        while done < opts.trajectories {
            let b = opts.batch.min(opts.trajectories - done);
            let x_t = rng.tensor([b, c, s, s], device);
            let class = info.num_classes.map(|n| {
                let ys: Vec<usize> = (0..b).map(|_| rng.below(n)).collect();
                labels(&ys, device)
            });
            let seed = opts.seed ^ (0xCA11_B000 + done as u64);
            let mut err = None;
            sampler::sample(
                model,
                scheduler,
                x_t,
                class,
                opts.guidance,
                seed,
                &mut |input, _| {
                    if err.is_none() && keep.contains(&input.step.step) {
                        err = set
                            .push_batch(&input.x, &input.t, input.class.as_ref(), input.step.step)
                            .err();
                    }
                },
            )?;
            if let Some(e) = err {
                return Err(e);
            }
            done += b;
        }
        Ok(set)
    }

    fn push_batch(
        &mut self,
        x: &Tensor<4>,
        t: &Tensor<1>,
        class: Option<&Tensor<1, Int>>,
        step: usize,
    ) -> Result<()> {
        let hx = HostTensor::from_tensor(x);
        let ht = HostTensor::from_tensor(t);
        let n = hx.shape[0];
        if hx.shape[1..] != self.x.shape[1..] || ht.data.len() != n {
            return Err(CalibError::CalibSet(format!(
                "denoiser input {:?} does not fit the set's {:?}",
                hx.shape, self.x.shape
            )));
        }
        self.x.data.extend_from_slice(&hx.data);
        self.x.shape[0] += n;
        self.t.extend_from_slice(&ht.data);
        self.step.extend(std::iter::repeat_n(step, n));
        match (&mut self.class, class) {
            (Some(v), Some(c)) => {
                let ys = c
                    .clone()
                    .into_data()
                    .convert::<i64>()
                    .try_into_vec::<i64>()
                    .map_err(|e| CalibError::CalibSet(format!("labels: {e:?}")))?;
                v.extend(ys);
            }
            (None, None) => {}
            _ => {
                return Err(CalibError::CalibSet(
                    "labels given to an unconditional set, or missing for a conditional one".into(),
                ));
            }
        }
        Ok(())
    }

    /// Number of entries N.
    pub fn len(&self) -> usize {
        self.t.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    /// Number of steps of the recording trajectory.
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The [`StepContext`] of a forward pass at recorded step `step` (its timestep and the
    /// trajectory's step count), for time-indexed quantizers.
    pub fn step_context(&self, step: usize) -> StepContext {
        StepContext {
            step,
            timestep: self.timesteps.get(step).copied().unwrap_or(0.0),
            num_steps: self.num_steps(),
        }
    }

    /// Indices of the entries recorded at `step`.
    pub fn indices_at_step(&self, step: usize) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.step[i] == step).collect()
    }

    /// Distinct recorded step indices, ascending.
    pub fn steps(&self) -> Vec<usize> {
        let mut s = self.step.clone();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// The entries `idx` as denoiser inputs on `device`: `(x [B, C, H, W], t [B], class [B])`.
    pub fn batch(
        &self,
        idx: &[usize],
        device: &Device,
    ) -> Result<(Tensor<4>, Tensor<1>, Option<Tensor<1, Int>>)> {
        let per: usize = self.x.shape[1..].iter().product();
        let mut xs = Vec::with_capacity(idx.len() * per);
        let mut ts = Vec::with_capacity(idx.len());
        for &i in idx {
            if i >= self.len() {
                return Err(CalibError::CalibSet(format!(
                    "index {i} out of range for {} entries",
                    self.len()
                )));
            }
            xs.extend_from_slice(&self.x.data[i * per..(i + 1) * per]);
            ts.push(self.t[i]);
        }
        let [_, c, h, w] = [0, self.x.shape[1], self.x.shape[2], self.x.shape[3]];
        let x = Tensor::from_data(TensorData::new(xs, [idx.len(), c, h, w]), device);
        let t = Tensor::from_data(TensorData::new(ts, [idx.len()]), device);
        let class = self.class.as_ref().map(|cl| {
            let ys: Vec<i64> = idx.iter().map(|&i| cl[i]).collect();
            Tensor::from_data(TensorData::new(ys, [idx.len()]), device)
        });
        Ok((x, t, class))
    }

    /// Checks internal consistency: lengths, finite values, step indices in range.
    pub fn validate(&self) -> Result<()> {
        let n = self.len();
        let bad = |m: String| Err(CalibError::CalibSet(m));
        if self.x.shape.len() != 4 || self.x.shape[0] != n {
            return bad(format!("x has shape {:?} for {n} entries", self.x.shape));
        }
        if self.x.data.len() != self.x.shape.iter().product::<usize>() {
            return bad(format!(
                "x holds {} values, shape {:?} needs {}",
                self.x.data.len(),
                self.x.shape,
                self.x.shape.iter().product::<usize>()
            ));
        }
        if self.step.len() != n || self.class.as_ref().is_some_and(|c| c.len() != n) {
            return bad("t, step and class lengths differ".into());
        }
        if let Some(i) = self.x.data.iter().position(|v| !v.is_finite()) {
            return bad(format!("x holds {} at flat index {i}", self.x.data[i]));
        }
        if let Some(i) = self.t.iter().position(|v| !v.is_finite()) {
            return bad(format!("t holds {} at index {i}", self.t[i]));
        }
        if let Some(i) = self.step.iter().position(|&s| s >= self.num_steps()) {
            return bad(format!(
                "entry {i} has step {} but the trajectory has {} steps",
                self.step[i],
                self.num_steps()
            ));
        }
        Ok(())
    }

    /// Writes the set as safetensors (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut f = QuantizedFile::default();
        let n = self.len();
        f.float
            .insert("x".into(), (self.x.shape.clone(), self.x.data.clone()));
        f.float.insert("t".into(), (vec![n], self.t.clone()));
        f.float.insert(
            "step".into(),
            (vec![n], self.step.iter().map(|&s| s as f32).collect()),
        );
        if let Some(c) = &self.class {
            f.float.insert(
                "class".into(),
                (vec![n], c.iter().map(|&v| v as f32).collect()),
            );
        }
        f.metadata.insert("format".into(), FORMAT.into());
        f.metadata.insert(
            "timesteps".into(),
            serde_json::to_string(&self.timesteps).expect("f64 list serialises"),
        );
        Ok(f.save(path)?)
    }

    /// Reads a set written by [`CalibSet::save`]; a missing, truncated or inconsistent file
    /// is an error naming it.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = QuantizedFile::load(path)?;
        let bad = |reason: String| CalibError::File {
            path: path.to_path_buf(),
            reason,
        };
        if f.metadata.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "not a calibration set (expected format {FORMAT})"
            )));
        }
        let timesteps: Vec<f64> = serde_json::from_str(
            f.metadata
                .get("timesteps")
                .ok_or_else(|| bad("missing timesteps metadata".into()))?,
        )
        .map_err(|e| bad(format!("timesteps metadata: {e}")))?;
        let get = |k: &str| {
            f.float
                .get(k)
                .ok_or_else(|| bad(format!("missing tensor '{k}'")))
        };
        let (xs, xd) = get("x")?;
        let int_list = |k: &str| -> Result<Vec<i64>> {
            get(k)?
                .1
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    if v.fract() == 0.0 && v.is_finite() && v >= 0.0 {
                        Ok(v as i64)
                    } else {
                        Err(bad(format!(
                            "'{k}' holds {v} at index {i}, not a non-negative integer"
                        )))
                    }
                })
                .collect()
        };
        let set = CalibSet {
            x: HostTensor {
                data: xd.clone(),
                shape: xs.clone(),
            },
            t: get("t")?.1.clone(),
            class: if f.float.contains_key("class") {
                Some(int_list("class")?)
            } else {
                None
            },
            step: int_list("step")?.into_iter().map(|s| s as usize).collect(),
            timesteps,
        };
        set.validate().map_err(|e| bad(e.to_string()))?;
        Ok(set)
    }
}
