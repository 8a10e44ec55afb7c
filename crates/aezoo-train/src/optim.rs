//! Adam (Kingma & Ba 2015) with PyTorch's exact update and defaults
//! (`betas = (0.9, 0.999)`, `eps = 1e-8`, `weight_decay = 0`), and AdamW's
//! decoupled decay as an option (Loshchilov & Hutter 2019).
//!
//! candle-nn's `AdamW` defaults to weight decay 0.01 and keeps its moments
//! private; ours exposes them, so a checkpoint stores them and a resumed run
//! continues bit for bit.
//!
//! PyTorch's update, which this follows operation for operation:
//! `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
//! `p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)`.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_eps() -> f64 {
    1e-8
}

/// Adam's settings besides the learning rate; the defaults are PyTorch's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// L2 penalty added to the gradient (Adam), or decoupled decay (AdamW).
    #[serde(default)]
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW) instead of an L2 gradient term.
    #[serde(default)]
    pub decoupled: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: 0.0,
            decoupled: false,
        }
    }
}

impl AdamConfig {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (b1, b2) = self.betas;
        if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
            return Err(format!("betas: each must be in [0, 1), got ({b1}, {b2})"));
        }
        if !(self.eps > 0.0) {
            return Err(format!("eps: must be > 0, got {}", self.eps));
        }
        if !(self.weight_decay >= 0.0) {
            return Err(format!("weight_decay: must be >= 0, got {}", self.weight_decay));
        }
        Ok(())
    }
}

/// The optimiser over a fixed list of named variables.
pub struct Adam {
    cfg: AdamConfig,
    lr: f64,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl Adam {
    pub fn new(vars: Vec<(String, Var)>, lr: f64, cfg: AdamConfig) -> Result<Self> {
        let m = vars.iter().map(|(_, v)| v.zeros_like()).collect::<Result<Vec<_>>>()?;
        let v = vars.iter().map(|(_, v)| v.zeros_like()).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            lr,
            vars,
            m,
            v,
            t: 0,
        })
    }

    pub fn lr(&self) -> f64 {
        self.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// One update from the gradients of a backward pass. Variables without a
    /// gradient are left alone (PyTorch skips `p.grad is None`).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.t += 1;
        let (b1, b2) = self.cfg.betas;
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.t as i32)).sqrt();
        let step_size = self.lr / bc1;
        let wd = self.cfg.weight_decay;
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let p = var.as_tensor();
            let g = if wd != 0.0 && !self.cfg.decoupled {
                (g + (p * wd)?)?
            } else {
                g.clone()
            };
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = (v.sqrt()? / bc2_sqrt)?.affine(1.0, self.cfg.eps)?;
            let p = if wd != 0.0 && self.cfg.decoupled {
                (p * (1.0 - self.lr * wd))?
            } else {
                p.clone()
            };
            let new_p = (p - ((&m / denom)? * step_size)?)?;
            var.set(&new_p.detach())?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }

    /// The moments, named `m.<param>` and `v.<param>`, for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("m.{name}"), self.m[i].clone()));
            out.push((format!("v.{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restores moments saved by [`Adam::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, t: u64) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{kind}.{name}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("missing optimiser tensor `{key}`")))?;
                if t.dims() != var.dims() {
                    candle_core::bail!(
                        "optimiser tensor `{key}` has shape {:?}, the parameter has {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
                *slot = t.to_dtype(var.dtype())?.to_device(var.device())?;
            }
        }
        self.t = t;
        Ok(())
    }
}
