//! Mixed-precision training (Micikevicius et al. 2018, *Mixed Precision
//! Training*): the `train.precision` setting, the dtype it resolves to on a
//! device, and dynamic loss scaling for f16 (PyTorch's `torch.amp.GradScaler`).
//!
//! The parameters, their gradients, Adam's moments and every loss term stay
//! f32 ("master weights"); only the model's networks compute in half precision
//! ([`aezoo_nn::StepCtx::compute`]; the layers cast their weights to their
//! input's dtype, normalisations and softmax run in f32). bf16 keeps f32's
//! exponent range and needs no loss scaling; f16 does: small gradients of
//! half-precision activations underflow to zero, so the loss is multiplied by
//! a scale `S` before the backward pass and the gradients divided by `S`
//! after it. A step whose gradients are not finite is skipped and `S` halved;
//! after 2,000 finite steps in a row `S` doubles (PyTorch's defaults).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// `train.precision`: the dtype a model's networks compute in while training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on a CUDA device (for families that support mixed precision),
    /// f32 everywhere else.
    #[default]
    Auto,
    /// Full precision.
    F32,
    /// bfloat16 networks, f32 master weights; no loss scaling.
    Bf16,
    /// float16 networks, f32 master weights, dynamic loss scaling.
    F16,
}

impl Precision {
    /// The setting's spelling in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// Parses `auto`, `f32`, `bf16` or `f16` (the CLI's `--precision`).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        [Precision::Auto, Precision::F32, Precision::Bf16, Precision::F16]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown precision `{s}`: expected auto, f32, bf16 or f16"))
    }

    /// The compute dtype on `dev` for a model that does (`supported`) or does
    /// not support mixed precision. An explicit half precision for a model
    /// that cannot use it is an error (the message names the setting).
    pub fn resolve(self, dev: &Device, supported: bool) -> std::result::Result<DType, String> {
        match self {
            Precision::F32 => Ok(DType::F32),
            Precision::Auto if supported && dev.is_cuda() => Ok(DType::BF16),
            Precision::Auto => Ok(DType::F32),
            Precision::Bf16 | Precision::F16 if !supported => Err(format!(
                "`{}` asks for mixed precision, which this model family does not support (it computes in f32); use \"f32\" or \"auto\"",
                self.as_str()
            )),
            Precision::Bf16 => Ok(DType::BF16),
            Precision::F16 => Ok(DType::F16),
        }
    }
}

/// The loss scale's state, as saved in a checkpoint (`trainer_state.json`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScaleState {
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub good_steps: u32,
    /// Steps skipped so far for non-finite gradients.
    pub skipped: u64,
}

/// Dynamic loss scaling (PyTorch's `GradScaler` with its defaults).
#[derive(Clone, Debug)]
pub struct LossScaler {
    state: LossScaleState,
}

/// PyTorch's `init_scale`, `growth_factor`, `backoff_factor`, `growth_interval`.
const INIT_SCALE: f64 = 65536.0;
const GROWTH: f64 = 2.0;
const BACKOFF: f64 = 0.5;
const GROWTH_INTERVAL: u32 = 2000;

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

impl LossScaler {
    pub fn new() -> Self {
        Self {
            state: LossScaleState {
                scale: INIT_SCALE,
                good_steps: 0,
                skipped: 0,
            },
        }
    }

    /// A scaler continuing from a checkpoint's state.
    pub fn from_state(state: LossScaleState) -> Self {
        Self { state }
    }

    pub fn state(&self) -> LossScaleState {
        self.state
    }

    pub fn scale(&self) -> f64 {
        self.state.scale
    }

    /// `loss · S`, the tensor to call `backward` on.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        Ok((loss * self.state.scale)?)
    }

    /// Divides the gradient of each of `vars` in `grads` by `S`. Returns
    /// whether all were finite; when not, the caller skips the optimiser step
    /// and the scale is halved. Either way the scale is updated.
    pub fn unscale(&mut self, grads: &mut GradStore, vars: &[(String, Var)]) -> Result<bool> {
        let inv = 1.0 / self.state.scale;
        let mut finite = true;
        for (_, var) in vars {
            let Some(g) = grads.remove(var.as_tensor()) else {
                continue;
            };
            // A NaN or ±inf anywhere makes the sum non-finite.
            let total = g.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !total.is_finite() {
                finite = false;
                break;
            }
            grads.insert(var.as_tensor(), (g * inv)?);
        }
        self.update(finite);
        Ok(finite)
    }

    /// The scale after a step with finite (or not) gradients.
    fn update(&mut self, finite: bool) {
        let s = &mut self.state;
        if finite {
            s.good_steps += 1;
            if s.good_steps >= GROWTH_INTERVAL {
                s.scale *= GROWTH;
                s.good_steps = 0;
            }
        } else {
            s.scale *= BACKOFF;
            s.good_steps = 0;
            s.skipped += 1;
        }
    }
}
