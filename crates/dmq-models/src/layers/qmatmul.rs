//! [`QMatmul`]: an activation × activation product (attention) with optional quantizers on
//! both operands.

use burn::module::Module;
use burn::tensor::Tensor;
use dmq_quant::ActQuantizer;

use super::{LayerKind, executor_err, quant_act};
use crate::context::{ForwardCtx, HostTensor, LayerCall, Operand};
use crate::error::{Result, shape_err};

/// `y = Q_a(A)·Q_b(B)` for batched matrices. In attention, `attn1.qk` computes `q·kᵀ` and
/// `attn1.sv` computes `softmax·v` (whose first operand is unsigned, in [0, 1]).
///
/// # Shapes
/// - a: `[B, H, N, K]`; b: `[B, H, K, M]`; output: `[B, H, N, M]`
#[derive(Module, Debug)]
pub struct QMatmul {
    /// Quantizer of the left operand.
    pub a_quant: Option<ActQuantizer>,
    /// Quantizer of the right operand.
    pub b_quant: Option<ActQuantizer>,
    #[module(skip)]
    name: String,
}

impl QMatmul {
    /// A matmul named `name` (e.g. `mid_block.attentions.0.qk`).
    pub fn new(name: &str) -> Self {
        Self {
            a_quant: None,
            b_quant: None,
            name: name.to_string(),
        }
    }

    /// Name of the product.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Forward pass.
    pub fn forward(&self, a: Tensor<4>, b: Tensor<4>, ctx: &ForwardCtx<'_>) -> Result<Tensor<4>> {
        let [ba, ha, n, k] = a.dims();
        let [bb, hb, k2, m] = b.dims();
        if ba != bb || ha != hb || k != k2 {
            return Err(shape_err(
                &self.name,
                format!("[{ba}, {ha}, {k}, M] right operand"),
                [bb, hb, k2, m],
            ));
        }
        if let Some(rec) = ctx.recorder {
            rec.push(LayerCall {
                name: self.name.clone(),
                kind: LayerKind::Matmul,
                weight_shape: vec![],
                macs: (ba * ha * n * k * m) as u64,
            });
        }
        ctx.capture_input(&self.name, Operand::Left, &a);
        ctx.capture_input(&self.name, Operand::Right, &b);
        if let Some(ex) = ctx.executor_for(&self.name) {
            let y = ex
                .matmul(
                    &self.name,
                    &HostTensor::from_tensor(&a),
                    &HostTensor::from_tensor(&b),
                    &ctx.step,
                )
                .map_err(executor_err(&self.name))?
                .into_tensor([ba, ha, n, m], &a.device(), &self.name)?;
            ctx.tap_layer(&self.name, &y)?;
            return Ok(y);
        }
        let a = quant_act(&self.a_quant, a, ctx, &self.name)?;
        let b = quant_act(&self.b_quant, b, ctx, &self.name)?;
        let y = a.matmul(b);
        ctx.tap_layer(&self.name, &y)?;
        Ok(y)
    }
}
