//! [`CalibSet`]: data-free calibration inputs recorded from the FP model's own sampling
//! trajectories (docs/algorithms.md §1.5).
//!
//! Every entry is `(x_t, t, conditioning, step)` **exactly as fed to the denoiser** at that
//! step:
//! the input of step i paired with the timestep of step i. (QuEST's collector stores the
//! state *after* step i with `ts[i]`, an off-by-one this type cannot make: it records inside
//! the sampler's per-step callback, before the step is taken.) For conditional models
//! sampled with CFG both halves of the batched `[uncond; cond]` call are recorded, so the
//! unconditional branch is calibrated too. Text-conditional sets keep the prompt embeddings
//! they were sampled with ([`CondRecord::Text`]: each distinct `[L, D]` state once, and the
//! row of every entry).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use dmq_models::noise::NoiseRng;
use dmq_models::sampler::{self, labels};
use dmq_models::scheduler::Scheduler;
use dmq_models::{Conditioning, Denoiser, HostTensor, StepContext};
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

/// The recorded conditioning of every entry of a [`CalibSet`].
#[derive(Clone, Debug, PartialEq)]
pub enum CondRecord {
    /// The label of each entry (the null label for the unconditional CFG branch).
    Class(Vec<i64>),
    /// Encoder hidden states: every distinct `[L, D]` state fed to the denoiser (the prompts'
    /// and the unconditional one), `table: [P, L, D]`, and the table row of each entry.
    Text {
        /// `[P, L, D]` distinct states.
        table: HostTensor,
        /// Row of `table` of each entry.
        index: Vec<usize>,
    },
}

impl CondRecord {
    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            Self::Class(v) => v.len(),
            Self::Text { index, .. } => index.len(),
        }
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one batch's conditioning (text: each distinct state added to the table once,
    /// by its exact bits).
    fn extend(&mut self, c: &Conditioning) -> Result<()> {
        match (self, c) {
            (Self::Class(v), Conditioning::Class(l)) => {
                let ys = l
                    .clone()
                    .into_data()
                    .convert::<i64>()
                    .try_into_vec::<i64>()
                    .map_err(|e| CalibError::CalibSet(format!("labels: {e:?}")))?;
                v.extend(ys);
            }
            (Self::Text { table, index }, Conditioning::Text { states, .. }) => {
                let hs = HostTensor::from_tensor(states);
                let row: usize = hs.shape[1..].iter().product();
                if table.shape[0] == 0 {
                    table.shape = hs.shape.clone();
                    table.shape[0] = 0;
                }
                if hs.shape[1..] != table.shape[1..] {
                    return Err(CalibError::CalibSet(format!(
                        "text states {:?} do not fit the set's {:?}",
                        hs.shape, table.shape
                    )));
                }
                let bits = |r: &[f32]| r.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
                let mut known: HashMap<Vec<u32>, usize> = table
                    .data
                    .chunks(row.max(1))
                    .enumerate()
                    .map(|(i, r)| (bits(r), i))
                    .collect();
                for r in hs.data.chunks(row.max(1)) {
                    let next = table.shape[0];
                    let i = *known.entry(bits(r)).or_insert(next);
                    if i == next {
                        table.data.extend_from_slice(r);
                        table.shape[0] += 1;
                    }
                    index.push(i);
                }
            }
            _ => {
                return Err(CalibError::CalibSet(
                    "labels and text states mixed in one calibration set".into(),
                ));
            }
        }
        Ok(())
    }

    /// An empty record of `c`'s kind.
    fn empty_like(c: &Conditioning) -> Self {
        match c {
            Conditioning::Class(_) => Self::Class(vec![]),
            Conditioning::Text { .. } => Self::Text {
                table: HostTensor {
                    data: vec![],
                    shape: vec![0],
                },
                index: vec![],
            },
        }
    }

    /// The conditioning of entries `idx` on `device` (text: the gathered `[B, L, D]`
    /// states, without an unconditional embedding).
    fn gather(&self, idx: &[usize], device: &Device) -> Conditioning {
        match self {
            Self::Class(cl) => {
                let ys: Vec<i64> = idx.iter().map(|&i| cl[i]).collect();
                Conditioning::Class(Tensor::from_data(TensorData::new(ys, [idx.len()]), device))
            }
            Self::Text { table, index } => {
                let (l, d) = (table.shape[1], table.shape[2]);
                let mut data = Vec::with_capacity(idx.len() * l * d);
                for &i in idx {
                    let r = index[i];
                    data.extend_from_slice(&table.data[r * l * d..(r + 1) * l * d]);
                }
                Conditioning::text(Tensor::from_data(
                    TensorData::new(data, [idx.len(), l, d]),
                    device,
                ))
            }
        }
    }
}

/// Recorded denoiser inputs.
///
/// # Shapes
/// - `x`: `[N, C, H, W]`; `t`, `step`: `[N]`; `cond`: `N` entries when conditional
#[derive(Clone, Debug, PartialEq)]
pub struct CalibSet {
    /// x_t as fed to the denoiser, row-major `[N, C, H, W]`.
    pub x: HostTensor,
    /// Timestep of each entry.
    pub t: Vec<f32>,
    /// Conditioning of each entry (labels or text states).
    pub cond: Option<CondRecord>,
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
    /// Records `opts.trajectories` trajectories of `model` under `scheduler`; a
    /// class-conditional model gets labels drawn uniformly from the seeded stream.
    /// Text-conditional models need their prompt embeddings: [`CalibSet::record_with`].
    pub fn record<M: Denoiser + ?Sized, S: Scheduler>(
        model: &M,
        scheduler: &S,
        opts: &RecordOptions,
        device: &Device,
    ) -> Result<Self> {
        let info = model.info();
        if info.cross_attention_dim.is_some() && info.num_classes.is_none() {
            return Err(CalibError::Option(
                "a text-conditional model is calibrated on prompt embeddings: use \
                 CalibSet::record_with"
                    .into(),
            ));
        }
        Self::record_with(model, scheduler, opts, device, &mut |rng, b| {
            Ok(info.num_classes.map(|n| {
                let ys: Vec<usize> = (0..b).map(|_| rng.below(n)).collect();
                Conditioning::Class(labels(&ys, device))
            }))
        })
    }

    /// [`CalibSet::record`] with the conditioning of each batch of `b` trajectories given by
    /// `cond_for(rng, b)` (text models: prompt embeddings, with the unconditional embedding
    /// when `opts.guidance` ≠ 1); `rng` is the set's seeded stream, for drawing prompts.
    pub fn record_with<M: Denoiser + ?Sized, S: Scheduler>(
        model: &M,
        scheduler: &S,
        opts: &RecordOptions,
        device: &Device,
        cond_for: &mut dyn FnMut(&mut NoiseRng, usize) -> Result<Option<Conditioning>>,
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
            cond: None,
            step: vec![],
            timesteps,
        };
        let mut done = 0;
        while done < opts.trajectories {
            let b = opts.batch.min(opts.trajectories - done);
            let x_t = rng.tensor([b, c, s, s], device);
            let class = cond_for(&mut rng, b)?;
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
                            .push_batch(&input.x, &input.t, input.cond.as_ref(), input.step.step)
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
        cond: Option<&Conditioning>,
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
        if let Some(c) = cond
            && c.batch() != n
        {
            return Err(CalibError::CalibSet(format!(
                "conditioning of batch {} for {n} inputs",
                c.batch()
            )));
        }
        let first = self.t.is_empty();
        match (&mut self.cond, cond) {
            (None, None) => {}
            (slot @ None, Some(c)) if first => {
                let mut rec = CondRecord::empty_like(c);
                rec.extend(c)?;
                *slot = Some(rec);
            }
            (Some(rec), Some(c)) => rec.extend(c)?,
            _ => {
                return Err(CalibError::CalibSet(
                    "conditioning given to an unconditional set, or missing for a conditional one"
                        .into(),
                ));
            }
        }
        self.x.data.extend_from_slice(&hx.data);
        self.x.shape[0] += n;
        self.t.extend_from_slice(&ht.data);
        self.step.extend(std::iter::repeat_n(step, n));
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

    /// The entries `idx` as denoiser inputs on `device`: `(x [B, C, H, W], t [B],
    /// conditioning)` (labels `[B]` or states `[B, L, D]`).
    pub fn batch(
        &self,
        idx: &[usize],
        device: &Device,
    ) -> Result<(Tensor<4>, Tensor<1>, Option<Conditioning>)> {
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
        let cond = self.cond.as_ref().map(|c| c.gather(idx, device));
        Ok((x, t, cond))
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
        if self.step.len() != n || self.cond.as_ref().is_some_and(|c| c.len() != n) {
            return bad("t, step and conditioning lengths differ".into());
        }
        if let Some(CondRecord::Text { table, index }) = &self.cond {
            if table.shape.len() != 3 || table.data.len() != table.shape.iter().product::<usize>() {
                return bad(format!(
                    "text table has shape {:?} and {} values",
                    table.shape,
                    table.data.len()
                ));
            }
            if let Some(i) = index.iter().position(|&r| r >= table.shape[0]) {
                return bad(format!(
                    "entry {i} points at text row {} of {}",
                    index[i], table.shape[0]
                ));
            }
            if let Some(i) = table.data.iter().position(|v| !v.is_finite()) {
                return bad(format!(
                    "text table holds {} at flat index {i}",
                    table.data[i]
                ));
            }
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
        match &self.cond {
            Some(CondRecord::Class(c)) => {
                f.float.insert(
                    "class".into(),
                    (vec![n], c.iter().map(|&v| v as f32).collect()),
                );
            }
            Some(CondRecord::Text { table, index }) => {
                f.float.insert(
                    "text_table".into(),
                    (table.shape.clone(), table.data.clone()),
                );
                f.float.insert(
                    "text_index".into(),
                    (vec![n], index.iter().map(|&v| v as f32).collect()),
                );
            }
            None => {}
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
            cond: if f.float.contains_key("class") {
                Some(CondRecord::Class(int_list("class")?))
            } else if f.float.contains_key("text_table") {
                let (shape, data) = get("text_table")?;
                Some(CondRecord::Text {
                    table: HostTensor {
                        data: data.clone(),
                        shape: shape.clone(),
                    },
                    index: int_list("text_index")?
                        .into_iter()
                        .map(|v| v as usize)
                        .collect(),
                })
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
