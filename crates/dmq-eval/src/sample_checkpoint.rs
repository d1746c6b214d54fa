//! Sampling that survives interruption: [`ResumableSampling`] keeps the finished batches of
//! [`generate`](crate::harness::generate) in a safetensors checkpoint, so an evaluation of
//! 1,000 DiT samples (tens of minutes on a CPU) that is killed resumes at its last batch.
//!
//! Batch k of [`generate`](crate::harness::generate) depends only on the model, the scheduler,
//! the spec and k, so the resumed images equal an uninterrupted run's. The checkpoint records
//! what it was drawn from (the spec, the step count, the image shape and a caller-supplied
//! model fingerprint); a checkpoint of anything else is refused, never mixed in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use dmq_models::scheduler::Scheduler;
use dmq_models::{Denoiser, HostTensor};
use dmq_quant::QuantizedFile;

use crate::error::DataError;
use crate::harness::{SampleSpec, generate_after};

const IMAGES: &str = "images";

/// A sampling run of `spec` that resumes from (and saves to) a checkpoint file.
///
/// ```no_run
/// # use dmq_eval::sample_checkpoint::ResumableSampling;
/// # fn demo<M: dmq_models::Denoiser, S: dmq_models::scheduler::Scheduler>(
/// #     model: &M, sched: &S, spec: &dmq_eval::harness::SampleSpec, device: &burn::tensor::Device,
/// # ) -> Result<(), dmq_eval::error::DataError> {
/// let run = ResumableSampling::open("runs/w4a8.samples.safetensors", "w4a8-3f2a…", model, sched, spec)?;
/// eprintln!("{} of {} samples already drawn", run.done(), spec.n);
/// let images = run.generate(model, sched, device, &mut |done, total| eprintln!("{done}/{total}"))?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ResumableSampling {
    path: PathBuf,
    identity: BTreeMap<String, String>,
    spec: SampleSpec,
    save_every: usize,
    images: HostTensor,
}

impl ResumableSampling {
    /// Opens the run: loads the finished batches from `path` if it exists, else starts empty.
    /// `fingerprint` identifies the model (for example the content hash of its quantized
    /// export); a checkpoint written for another fingerprint, spec, step count or image shape,
    /// or one that is not whole batches, is an error that names the difference.
    pub fn open<M: Denoiser + ?Sized, S: Scheduler>(
        path: impl Into<PathBuf>,
        fingerprint: &str,
        model: &M,
        scheduler: &S,
        spec: &SampleSpec,
    ) -> Result<Self, DataError> {
        let path = path.into();
        let info = model.info();
        let (c, s) = (info.in_channels, info.sample_size);
        let identity = BTreeMap::from([
            ("fingerprint".to_string(), fingerprint.to_string()),
            ("n".to_string(), spec.n.to_string()),
            ("batch".to_string(), spec.batch.to_string()),
            ("seed".to_string(), spec.seed.to_string()),
            // guidance is ignored for unconditional models: record what sampling uses
            (
                "guidance".to_string(),
                if info.num_classes.is_some() {
                    format!("{:?}", spec.guidance)
                } else {
                    "1.0".into()
                },
            ),
            ("steps".to_string(), scheduler.num_steps().to_string()),
            ("image".to_string(), format!("{c}x{s}x{s}")),
        ]);
        let mut images = HostTensor {
            data: Vec::with_capacity(spec.n * c * s * s),
            shape: vec![0, c, s, s],
        };
        if path.exists() {
            let bad = |reason: String| {
                DataError::Invalid(format!("sample checkpoint {}: {reason}", path.display()))
            };
            let file = QuantizedFile::load(&path).map_err(|e| bad(e.to_string()))?;
            for (key, want) in &identity {
                match file.metadata.get(key) {
                    Some(found) if found == want => {}
                    found => {
                        return Err(bad(format!(
                            "written for {key} = {}, this run has {want}: delete it to start over",
                            found.map_or("<missing>", String::as_str)
                        )));
                    }
                }
            }
            let (shape, data) = file
                .float
                .get(IMAGES)
                .ok_or_else(|| bad(format!("no `{IMAGES}` tensor")))?;
            let done = shape.first().copied().unwrap_or(0);
            if shape.len() != 4
                || shape[1..] != [c, s, s]
                || done > spec.n
                || (done % spec.batch != 0 && done != spec.n)
            {
                return Err(bad(format!(
                    "images of shape {shape:?} are not whole batches of {} of [{c}, {s}, {s}] \
                     (at most {})",
                    spec.batch, spec.n
                )));
            }
            images.data.extend_from_slice(data);
            images.shape = shape.clone();
        }
        Ok(Self {
            path,
            identity,
            spec: spec.clone(),
            save_every: 1,
            images,
        })
    }

    /// Saves the checkpoint after every `batches` batches (default 1; at least 1).
    pub fn save_every(mut self, batches: usize) -> Self {
        self.save_every = batches.max(1);
        self
    }

    /// Samples already drawn (loaded from the checkpoint).
    pub fn done(&self) -> usize {
        self.images.shape[0]
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Draws the remaining batches, saving the checkpoint (atomically) as it goes;
    /// `on_batch(done, total)` reports progress after each batch. Returns all `spec.n` images,
    /// equal to [`generate`](crate::harness::generate)'s, and removes the checkpoint: it exists
    /// only while a run is unfinished. `model` and `scheduler` must be the ones given to
    /// [`open`](Self::open) (their step count and image shape are checked again).
    pub fn generate<M: Denoiser + ?Sized, S: Scheduler>(
        self,
        model: &M,
        scheduler: &S,
        device: &Device,
        on_batch: &mut dyn FnMut(usize, usize),
    ) -> Result<HostTensor, DataError> {
        let info = model.info();
        let (c, s) = (info.in_channels, info.sample_size);
        let now = [
            ("steps", scheduler.num_steps().to_string()),
            ("image", format!("{c}x{s}x{s}")),
        ];
        for (key, found) in now {
            if self.identity[key] != found {
                return Err(DataError::Invalid(format!(
                    "sample run {} was opened for {key} = {}, generate was given {found}",
                    self.path.display(),
                    self.identity[key]
                )));
            }
        }
        let n = self.spec.n;
        let mut since_save = 0;
        let out = generate_after(
            model,
            scheduler,
            &self.spec,
            device,
            self.images.clone(),
            &mut |out| {
                since_save += 1;
                if since_save >= self.save_every && out.shape[0] < n {
                    self.save(out)?;
                    since_save = 0;
                }
                on_batch(out.shape[0], n);
                Ok(())
            },
        )?;
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::Output {
                path: self.path.clone(),
                reason: format!("sampling finished but the checkpoint cannot be removed: {e}"),
            }),
            _ => Ok(out),
        }
    }

    fn save(&self, images: &HostTensor) -> Result<(), DataError> {
        let mut f = QuantizedFile {
            metadata: self.identity.clone(),
            ..QuantizedFile::default()
        };
        f.float
            .insert(IMAGES.into(), (images.shape.clone(), images.data.clone()));
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        f.save(&self.path).map_err(|e| DataError::Output {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }
}
