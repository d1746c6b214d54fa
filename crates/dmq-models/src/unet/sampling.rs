//! Resolution changes between UNet levels: [`Downsample2D`] (stride-2 3×3 conv) and
//! [`Upsample2D`] (nearest-neighbour ×2, then a 3×3 conv), as diffusers' `Downsample2D`
//! (`use_conv=True`, `name="op"`) and `Upsample2D` (`use_conv=True`). Both keep their conv
//! under the key `conv`.

use burn::module::Module;
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Tensor};

use crate::context::ForwardCtx;
use crate::error::Result;
use crate::layers::{LayerMut, LayerRef, QConv2d, QConv2dConfig};

/// Halves the resolution with a stride-2 3×3 conv. With `padding = 0` diffusers pads one
/// zero row and column at the bottom/right first (asymmetric), reproduced here.
///
/// # Shapes
/// - input: `[B, C, H, W]`; output: `[B, C_out, ⌈H/2⌉, ⌈W/2⌉]` (even H, W: `H/2`)
#[derive(Module, Debug)]
pub struct Downsample2D {
    /// The stride-2 conv (key `conv`).
    pub conv: QConv2d,
    /// Pad bottom/right by one before the conv (diffusers `padding = 0`).
    pub pad_bottom_right: bool,
    #[module(skip)]
    name: String,
}

impl Downsample2D {
    /// diffusers path (`*.downsamplers.0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Random init; `name` is the diffusers path (`down_blocks.0.downsamplers.0`).
    pub fn new(name: &str, c_in: usize, c_out: usize, padding: usize, device: &Device) -> Self {
        Self {
            conv: QConv2dConfig::new(c_in, c_out, 3)
                .with_stride(2)
                .with_padding(padding)
                .init(&format!("{name}.conv"), device),
            pad_bottom_right: padding == 0,
            name: name.to_string(),
        }
    }

    /// Forward pass; taps the output under the sampler's path.
    pub fn forward(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let x = if self.pad_bottom_right {
            x.pad([(0, 1), (0, 1)], PadMode::Constant(0.0))
        } else {
            x
        };
        let y = self.conv.forward(x, ctx)?;
        ctx.tap4(&self.name, &y)?;
        Ok(y)
    }

    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Conv2d(&self.conv));
    }

    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Conv2d(&mut self.conv));
    }
}

/// Nearest-neighbour ×2 upsampling (each pixel repeated 2×2, as `F.interpolate(
/// scale_factor=2, mode="nearest")`), then a 3×3 conv with padding 1.
///
/// # Shapes
/// - input: `[B, C, H, W]`; output: `[B, C_out, 2H, 2W]`
#[derive(Module, Debug)]
pub struct Upsample2D {
    /// The 3×3 conv (key `conv`).
    pub conv: QConv2d,
    #[module(skip)]
    name: String,
}

impl Upsample2D {
    /// diffusers path (`*.upsamplers.0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Random init; `name` is the diffusers path (`up_blocks.0.upsamplers.0`).
    pub fn new(name: &str, c_in: usize, c_out: usize, device: &Device) -> Self {
        Self {
            conv: QConv2dConfig::new(c_in, c_out, 3)
                .with_padding(1)
                .init(&format!("{name}.conv"), device),
            name: name.to_string(),
        }
    }

    /// Forward pass; taps the output under the sampler's path.
    pub fn forward(&self, x: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let y = self.conv.forward(upsample_nearest2x(x), ctx)?;
        ctx.tap4(&self.name, &y)?;
        Ok(y)
    }

    pub(crate) fn layers(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        f(LayerRef::Conv2d(&self.conv));
    }

    pub(crate) fn layers_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        f(LayerMut::Conv2d(&mut self.conv));
    }
}

/// Repeats every pixel 2×2 (exact; no interpolation arithmetic).
///
/// # Shapes
/// - input: `[B, C, H, W]`; output: `[B, C, 2H, 2W]`
pub fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}
