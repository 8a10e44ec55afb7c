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

/// The per-step constants of the update.
struct Coefs {
    b1: f64,
    b2: f64,
    bc2_sqrt: f64,
    step_size: f64,
    eps: f64,
    wd: f64,
    decoupled: bool,
    lr: f64,
}

/// The whole update of one parameter in a single pass over its elements, on
/// the CPU: the tensor-op version costs a dozen full passes and allocations,
/// which dominates small-batch training. Same arithmetic, same order.
fn fused_update(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, k: &Coefs) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    use candle_core::{CpuStorage, Storage};
    if !p.device().is_cpu() {
        return Ok(None);
    }
    let g = g.contiguous()?;
    let (ps, pl) = p.storage_and_layout();
    let (gs, gl) = g.storage_and_layout();
    let (ms, ml) = m.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let slices = |l: &candle_core::Layout| l.contiguous_offsets();
    let (Some(po), Some(go), Some(mo), Some(vo)) = (slices(pl), slices(gl), slices(ml), slices(vl)) else {
        return Ok(None);
    };
    macro_rules! run {
        ($t:ty, $p:expr, $g:expr, $m:expr, $v:expr) => {{
            let (p, g, m, v) = (&$p[po.0..po.1], &$g[go.0..go.1], &$m[mo.0..mo.1], &$v[vo.0..vo.1]);
            let n = p.len();
            let (mut np, mut nm, mut nv) = (vec![0 as $t; n], vec![0 as $t; n], vec![0 as $t; n]);
            let (b1, b2) = (k.b1 as $t, k.b2 as $t);
            let (c1, c2) = ((1.0 - k.b1) as $t, (1.0 - k.b2) as $t);
            let (inv_bc2, eps, step) = ((1.0 / k.bc2_sqrt) as $t, k.eps as $t, k.step_size as $t);
            let (l2, decay) = (
                if k.decoupled { 0.0 } else { k.wd } as $t,
                if k.decoupled { 1.0 - k.lr * k.wd } else { 1.0 } as $t,
            );
            // Branch-free so that it vectorises (sqrt and div included).
            for (((((np, nm), nv), &pj), &gj), (&mj, &vj)) in np
                .iter_mut()
                .zip(nm.iter_mut())
                .zip(nv.iter_mut())
                .zip(p)
                .zip(g)
                .zip(m.iter().zip(v))
            {
                let gj = gj + pj * l2;
                let mj = mj * b1 + gj * c1;
                let vj = vj * b2 + gj * gj * c2;
                let denom = vj.sqrt() * inv_bc2 + eps;
                *np = pj * decay - (mj / denom) * step;
                *nm = mj;
                *nv = vj;
            }
            let dev = &candle_core::Device::Cpu;
            let shape = pl.shape().clone();
            Ok(Some((
                Tensor::from_vec(np, shape.clone(), dev)?,
                Tensor::from_vec(nm, shape.clone(), dev)?,
                Tensor::from_vec(nv, shape, dev)?,
            )))
        }};
    }
    match (&*ps, &*gs, &*ms, &*vs) {
        (
            Storage::Cpu(CpuStorage::F32(p)),
            Storage::Cpu(CpuStorage::F32(g)),
            Storage::Cpu(CpuStorage::F32(m)),
            Storage::Cpu(CpuStorage::F32(v)),
        ) => {
            run!(f32, p, g, m, v)
        }
        (
            Storage::Cpu(CpuStorage::F64(p)),
            Storage::Cpu(CpuStorage::F64(g)),
            Storage::Cpu(CpuStorage::F64(m)),
            Storage::Cpu(CpuStorage::F64(v)),
        ) => {
            run!(f64, p, g, m, v)
        }
        _ => Ok(None),
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
        let k = Coefs {
            b1,
            b2,
            bc2_sqrt,
            step_size,
            eps: self.cfg.eps,
            wd,
            decoupled: self.cfg.decoupled,
            lr: self.lr,
        };
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            if let Some((p, m, v)) = fused_update(var.as_tensor(), g, &self.m[i], &self.v[i], &k)? {
                var.set(&p)?;
                self.m[i] = m;
                self.v[i] = v;
                continue;
            }
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
