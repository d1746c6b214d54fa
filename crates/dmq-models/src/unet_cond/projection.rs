//! [`Projection`]: a `Transformer2DModel`'s `proj_in`/`proj_out`, a 1×1 [`QConv2d`] or a
//! [`QLinear`] (`use_linear_projection`), stored under the one diffusers key either way.
//!
//! burn's derived `Module` for an enum adds the variant name to every parameter path
//! (`proj_in.Conv.weight`), which is not the diffusers key. This enum implements `Module`
//! by hand, delegating every method to the variant's layer without adding a path segment,
//! so checkpoints load and save as `proj_in.weight` / `proj_in.bias`.

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
};
use burn::tensor::{Device, Tensor};

use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{LayerMut, LayerRef, QConv2d, QConv2dConfig, QLinear, QLinearConfig};

/// A channel projection `C_in → C_out` applied to a feature map or to its tokens.
#[derive(Debug)]
pub enum Projection {
    /// 1×1 convolution on `[B, C, H, W]` (weight `[C_out, C_in, 1, 1]`).
    Conv(QConv2d),
    /// Linear on the tokens `[B, H·W, C]` (weight `[C_out, C_in]`).
    Linear(QLinear),
}

impl Projection {
    /// A projection named `name` (its diffusers path): a linear when `linear`, else a 1×1
    /// conv; PyTorch-style random init.
    pub fn new(name: &str, c_in: usize, c_out: usize, linear: bool, device: &Device) -> Self {
        if linear {
            Projection::Linear(QLinearConfig::new(c_in, c_out).init(name, device))
        } else {
            Projection::Conv(QConv2dConfig::new(c_in, c_out, 1).init(name, device))
        }
    }

    /// diffusers path of the layer.
    pub fn name(&self) -> &str {
        match self {
            Projection::Conv(l) => l.name(),
            Projection::Linear(l) => l.name(),
        }
    }

    /// The layer.
    pub fn layer(&self) -> LayerRef<'_> {
        match self {
            Projection::Conv(l) => LayerRef::Conv2d(l),
            Projection::Linear(l) => LayerRef::Linear(l),
        }
    }

    /// The layer, mutably.
    pub fn layer_mut(&mut self) -> LayerMut<'_> {
        match self {
            Projection::Conv(l) => LayerMut::Conv2d(l),
            Projection::Linear(l) => LayerMut::Linear(l),
        }
    }

    /// Feature map → tokens: `tokens(proj_in(x))` for a conv, `proj_in(tokens(x))` for a
    /// linear (diffusers' order), where `tokens` flattens `[B, C, H, W]` to `[B, H·W, C]`.
    pub fn map_to_tokens(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<3>> {
        match self {
            Projection::Conv(l) => Ok(to_tokens(l.forward(x, ctx)?)),
            Projection::Linear(l) => l.forward(to_tokens(x), ctx),
        }
    }

    /// Tokens → feature map of side `h × w`: `proj_out(map(t))` for a conv,
    /// `map(proj_out(t))` for a linear, where `map` is the inverse of the token flattening.
    pub fn map_to_image(
        &self,
        t: Tensor<3>,
        h: usize,
        w: usize,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor<4>> {
        match self {
            Projection::Conv(l) => l.forward(to_image(t, h, w), ctx),
            Projection::Linear(l) => Ok(to_image(l.forward(t, ctx)?, h, w)),
        }
    }
}

/// `[B, C, H, W]` → `[B, H·W, C]` (PyTorch `permute(0, 2, 3, 1).reshape(B, H·W, C)`).
fn to_tokens(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).swap_dims(1, 2)
}

/// `[B, H·W, C]` → `[B, C, H, W]`.
fn to_image(t: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, c] = t.dims();
    t.swap_dims(1, 2).reshape([b, c, h, w])
}

impl Clone for Projection {
    fn clone(&self) -> Self {
        match self {
            Projection::Conv(l) => Projection::Conv(l.clone()),
            Projection::Linear(l) => Projection::Linear(l.clone()),
        }
    }
}

/// Applies `$body` to the variant's layer bound as `$m`, rebuilding the same variant when
/// `$body` returns a layer.
macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Projection::Conv($m) => $body,
            Projection::Linear($m) => $body,
        }
    };
    (rebuild $self:expr, $m:ident => $body:expr) => {
        match $self {
            Projection::Conv($m) => Projection::Conv($body),
            Projection::Linear($m) => Projection::Linear($body),
        }
    };
}

impl Module for Projection {
    fn num_params(&self) -> usize {
        each!(self, m => Module::num_params(m))
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        each!(self, m => m.visit(visitor))
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        each!(rebuild self, m => m.map(mapper))
    }

    fn collect_devices(&self, devices: Devices) -> Devices {
        each!(self, m => m.collect_devices(devices))
    }

    fn to_device(self, device: &Device) -> Self {
        each!(rebuild self, m => m.to_device(device))
    }

    fn fork(self, device: &Device) -> Self {
        each!(rebuild self, m => m.fork(device))
    }

    fn valid(&self) -> Self {
        each!(rebuild self, m => m.valid())
    }

    fn train(self) -> Self {
        each!(rebuild self, m => m.train())
    }

    fn materialize(self) -> Self {
        each!(rebuild self, m => m.materialize())
    }
}

impl ModuleDisplayDefault for Projection {
    fn content(&self, content: Content) -> Option<Content> {
        each!(self, m => m.content(content))
    }

    fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl ModuleDisplay for Projection {}

impl std::fmt::Display for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", ModuleDisplay::format(self, Default::default()))
    }
}
