//! [`Ema`]: exponential moving average of a module's parameters.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Shadow copy `θ̄ ← d·θ̄ + (1 − d)·θ` of a module, with the usual warm-up
/// `d_k = min(decay, (1 + k)/(10 + k))` so early shadows are not dominated by the random init.
/// The shadow lives on the non-autodiff device (it never needs gradients).
#[derive(Clone, Debug)]
pub struct Ema<M: Module> {
    shadow: M,
    decay: f64,
    updates: u64,
}

#[derive(Default)]
struct Flatten {
    values: Vec<Tensor<1>>,
}

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().detach();
        let n = t.shape().num_elements();
        self.values.push(t.reshape([n]).without_autodiff());
    }
}

struct Blend {
    values: std::vec::IntoIter<Tensor<1>>,
    keep: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(new) = self.values.next() else {
            return param;
        };
        let keep = self.keep;
        param.map(move |old| {
            let (dims, device) = (old.dims(), old.device());
            old * keep + new.to_device(&device).reshape(dims) * (1.0 - keep)
        })
    }
}

impl<M: Module> Ema<M> {
    /// Starts the shadow at `model` (detached).
    pub fn new(model: &M, decay: f64) -> Self {
        Self {
            shadow: model.clone().no_grad(),
            decay,
            updates: 0,
        }
    }

    /// Resumes a shadow saved earlier, with its update count.
    pub fn resume(shadow: M, decay: f64, updates: u64) -> Self {
        Self {
            shadow: shadow.no_grad(),
            decay,
            updates,
        }
    }

    /// Folds the current parameters of `model` (same structure) into the shadow.
    pub fn update(&mut self, model: &M) {
        let mut flat = Flatten::default();
        model.visit(&mut flat);
        let k = self.updates as f64;
        let d = self.decay.min((1.0 + k) / (10.0 + k));
        let shadow = self.shadow.clone();
        self.shadow = shadow.map(&mut Blend {
            values: flat.values.into_iter(),
            keep: d,
        });
        self.updates += 1;
    }

    /// Re-initialises the shadow from `model` (BinaryDM: once binarization starts).
    pub fn reset(&mut self, model: &M) {
        self.shadow = model.clone().no_grad();
        self.updates = 0;
    }

    /// The averaged module.
    pub fn shadow(&self) -> &M {
        &self.shadow
    }

    /// Number of updates so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }
}
