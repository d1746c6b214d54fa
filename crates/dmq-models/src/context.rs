//! [`StepContext`] and [`ForwardCtx`]: what a forward pass knows besides its tensors.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::Tensor;

use crate::error::{ModelError, Result};
use crate::executor::LayerExecutor;
use crate::layers::LayerKind;

/// Where in the sampling trajectory a forward pass is: passed to every forward pass so that
/// time-indexed quantizers pick their parameter set by `step` (never by counting calls).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepContext {
    /// Index of the sampling step, 0 = the first (noisiest) step.
    pub step: usize,
    /// Diffusion timestep t of this step.
    pub timestep: f64,
    /// Number of sampling steps of the trajectory.
    pub num_steps: usize,
}

impl StepContext {
    /// A context for a single forward pass outside a trajectory (step 0 of 1).
    pub fn single(timestep: f64) -> Self {
        Self {
            step: 0,
            timestep,
            num_steps: 1,
        }
    }
}

/// A tensor captured by a tap, of the rank it had.
#[derive(Clone, Debug)]
pub enum TapTensor {
    /// `[B, C]`.
    R2(Tensor<2>),
    /// `[B, N, C]` token tensors.
    R3(Tensor<3>),
    /// `[B, C, H, W]` feature maps.
    R4(Tensor<4>),
}

/// Captures outputs of named layers or blocks during a forward pass (reconstruction
/// targets, QuEST local losses, BinaryDM's LRM features).
#[derive(Debug, Default)]
pub struct Taps {
    wanted: BTreeSet<String>,
    captured: RefCell<BTreeMap<String, TapTensor>>,
    stop_when_complete: bool,
}

impl Taps {
    /// Capture the outputs named in `names` (layer names or block names such as
    /// `down_blocks.1`).
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            wanted: names.into_iter().map(Into::into).collect(),
            captured: RefCell::new(BTreeMap::new()),
            stop_when_complete: false,
        }
    }

    /// Ends the forward pass as soon as every requested name has been captured (the tap
    /// returns [`ModelError::TapsComplete`]; run it with [`crate::forward_for_taps`]), so the
    /// layers after the last tapped one are never computed. Block reconstruction taps one
    /// unit per pass: this skips on average half of every pass. Each name holds its first
    /// call's output (in the default mode a name called twice holds the last). Empty it with
    /// [`Taps::take`] (or use a new one) before the next pass: a full capture ends a pass at
    /// its first tapped call.
    pub fn stop_when_complete(mut self) -> Self {
        self.stop_when_complete = true;
        self
    }

    /// Whether `name` is requested.
    pub fn wants(&self, name: &str) -> bool {
        self.wanted.contains(name)
    }

    /// Records `tensor` under `name` if requested; in [`Taps::stop_when_complete`] mode, once
    /// every requested name is captured, returns [`ModelError::TapsComplete`] to end the pass.
    pub fn record(&self, name: &str, tensor: impl FnOnce() -> TapTensor) -> Result<()> {
        if !self.wants(name) {
            return Ok(());
        }
        let mut captured = self.captured.borrow_mut();
        captured.insert(name.to_string(), tensor());
        if self.stop_when_complete && captured.len() == self.wanted.len() {
            return Err(ModelError::TapsComplete);
        }
        Ok(())
    }

    /// Takes the captured tensors, leaving the tap empty.
    pub fn take(&self) -> BTreeMap<String, TapTensor> {
        std::mem::take(&mut self.captured.borrow_mut())
    }
}

/// One call of a quantizable layer, as recorded by a [`LayerRecorder`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerCall {
    /// diffusers state-dict path (without `.weight`).
    pub name: String,
    /// Layer kind.
    pub kind: LayerKind,
    /// Weight shape (PyTorch layout), empty for matmuls.
    pub weight_shape: Vec<usize>,
    /// Multiply-accumulates of this call (whole batch).
    pub macs: u64,
}

/// Records every quantizable-layer call of a forward pass, in call order.
#[derive(Debug, Default)]
pub struct LayerRecorder {
    calls: RefCell<Vec<LayerCall>>,
}

impl LayerRecorder {
    /// Appends a call.
    pub fn push(&self, call: LayerCall) {
        self.calls.borrow_mut().push(call);
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<LayerCall> {
        self.calls.borrow().clone()
    }
}

/// Which input of a quantizable layer a captured activation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operand {
    /// The input of a linear or conv layer (what its `a_quant` sees).
    Input,
    /// The left operand of a [`crate::layers::QMatmul`] (`a_quant`).
    Left,
    /// The right operand of a [`crate::layers::QMatmul`] (`b_quant`).
    Right,
}

/// A tensor copied to the host: row-major f32 values and the shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Row-major values.
    pub data: Vec<f32>,
    /// Shape.
    pub shape: Vec<usize>,
}

impl HostTensor {
    /// Copies `x` to the host. A device read that fails leaves `data` empty, which every
    /// consumer rejects as a shape mismatch (f32 reads do not fail on burn's backends).
    pub fn from_tensor<const D: usize>(x: &Tensor<D>) -> Self {
        let shape = x.dims().to_vec();
        let data = x
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        Self { data, shape }
    }

    /// Back onto `device` as a tensor of shape `want`; a result of another shape (a faulty
    /// executor) is a shape error naming `context`.
    pub fn into_tensor<const D: usize>(
        self,
        want: [usize; D],
        device: &burn::tensor::Device,
        context: &str,
    ) -> crate::Result<Tensor<D>> {
        if self.shape != want || self.data.len() != want.iter().product::<usize>() {
            return Err(crate::error::shape_err(
                context,
                format!("{want:?}"),
                format!("{:?} with {} values", self.shape, self.data.len()),
            ));
        }
        Ok(Tensor::from_data(
            burn::tensor::TensorData::new(self.data, want),
            device,
        ))
    }
}

/// Captures the **unquantized** inputs of quantizable layers, as their activation
/// quantizers would see them (activation range calibration, sensitivity sweeps).
///
/// Each call appends the input as host data, so a capture over several forward passes holds
/// one entry per call, in call order.
#[derive(Debug, Default)]
pub struct InputCapture {
    only: Option<BTreeSet<String>>,
    captured: RefCell<BTreeMap<(String, Operand), Vec<HostTensor>>>,
}

impl InputCapture {
    /// Captures the inputs of every quantizable layer.
    pub fn all() -> Self {
        Self::default()
    }

    /// Captures only the layers named in `names`.
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            only: Some(names.into_iter().map(Into::into).collect()),
            captured: RefCell::new(BTreeMap::new()),
        }
    }

    /// Whether inputs of `layer` are captured.
    pub fn wants(&self, layer: &str) -> bool {
        self.only.as_ref().is_none_or(|s| s.contains(layer))
    }

    /// Records `x` as operand `op` of `layer` if wanted.
    pub fn record<const D: usize>(&self, layer: &str, op: Operand, x: &Tensor<D>) {
        if self.wants(layer) {
            self.captured
                .borrow_mut()
                .entry((layer.to_string(), op))
                .or_default()
                .push(HostTensor::from_tensor(x));
        }
    }

    /// Takes the captured inputs, leaving the capture empty.
    pub fn take(&self) -> BTreeMap<(String, Operand), Vec<HostTensor>> {
        std::mem::take(&mut self.captured.borrow_mut())
    }
}

/// Everything a forward pass carries besides its inputs.
#[derive(Clone, Copy, Debug)]
pub struct ForwardCtx<'a> {
    /// The sampling step.
    pub step: StepContext,
    /// Optional output capture.
    pub taps: Option<&'a Taps>,
    /// Optional layer-call recording (MACs, call order).
    pub recorder: Option<&'a LayerRecorder>,
    /// Optional capture of layer inputs.
    pub inputs: Option<&'a InputCapture>,
    /// Optional executor that computes quantizable layers outside burn (integer kernels).
    pub executor: Option<&'a dyn LayerExecutor>,
}

impl<'a> ForwardCtx<'a> {
    /// A plain forward pass at `step`.
    pub fn new(step: StepContext) -> Self {
        Self {
            step,
            taps: None,
            recorder: None,
            inputs: None,
            executor: None,
        }
    }

    /// Adds output capture.
    pub fn with_taps(mut self, taps: &'a Taps) -> Self {
        self.taps = Some(taps);
        self
    }

    /// Adds layer-call recording.
    pub fn with_recorder(mut self, recorder: &'a LayerRecorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Adds capture of layer inputs.
    pub fn with_inputs(mut self, inputs: &'a InputCapture) -> Self {
        self.inputs = Some(inputs);
        self
    }

    /// Adds an executor for the layers it handles.
    pub fn with_executor(mut self, executor: &'a dyn LayerExecutor) -> Self {
        self.executor = Some(executor);
        self
    }

    /// The executor, if it handles `layer`.
    pub fn executor_for(&self, layer: &str) -> Option<&'a dyn LayerExecutor> {
        self.executor.filter(|e| e.handles(layer))
    }

    /// Records a layer input if inputs are captured.
    pub fn capture_input<const D: usize>(&self, layer: &str, op: Operand, x: &Tensor<D>) {
        if let Some(c) = self.inputs {
            c.record(layer, op, x);
        }
    }

    /// Captures a layer output of rank 2, 3 or 4 if it is tapped (the ranks the quantizable
    /// layers produce; others are ignored). Errors only to end a
    /// [`Taps::stop_when_complete`] pass.
    pub fn tap_layer<const D: usize>(&self, name: &str, t: &Tensor<D>) -> Result<()> {
        let Some(taps) = self.taps else {
            return Ok(());
        };
        let d = t.dims();
        match D {
            2 => taps.record(name, || TapTensor::R2(t.clone().reshape([d[0], d[1]]))),
            3 => taps.record(name, || {
                TapTensor::R3(t.clone().reshape([d[0], d[1], d[2]]))
            }),
            4 => taps.record(name, || {
                TapTensor::R4(t.clone().reshape([d[0], d[1], d[2], d[3]]))
            }),
            _ => Ok(()),
        }
    }

    /// Captures a block output if it is tapped (errors as [`Self::tap_layer`]).
    pub fn tap4(&self, name: &str, t: &Tensor<4>) -> Result<()> {
        self.taps.map_or(Ok(()), |taps| {
            taps.record(name, || TapTensor::R4(t.clone()))
        })
    }

    /// Captures a token tensor if it is tapped (errors as [`Self::tap_layer`]).
    pub fn tap3(&self, name: &str, t: &Tensor<3>) -> Result<()> {
        self.taps.map_or(Ok(()), |taps| {
            taps.record(name, || TapTensor::R3(t.clone()))
        })
    }

    /// Captures a 2-D tensor if it is tapped (errors as [`Self::tap_layer`]).
    pub fn tap2(&self, name: &str, t: &Tensor<2>) -> Result<()> {
        self.taps.map_or(Ok(()), |taps| {
            taps.record(name, || TapTensor::R2(t.clone()))
        })
    }
}

/// The outcome of a forward pass run for its taps: `Some(output)` when it ran to the end,
/// `None` when a [`Taps::stop_when_complete`] capture ended it early, other errors unchanged.
pub fn forward_for_taps<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(ModelError::TapsComplete) => Ok(None),
        Err(e) => Err(e),
    }
}
