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
use candle_core::{DType, Result, Tensor, Var};
use rayon::prelude::*;
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

/// Which part of the update an [`InPlace`] pass writes.
#[derive(Clone, Copy, Debug)]
enum Pass {
    /// `m ← β1·m + (1−β1)·g'` from `(g, p)`.
    M,
    /// `v ← β2·v + (1−β2)·g'²` from `(g, p)`.
    V,
    /// `p ← decay·p − step·m / (√v·inv + eps)` from `(m, v)`.
    P,
}

/// One pass of the update, written into the parameter's or a moment's own
/// storage (no allocation, no copy back): on the CPU three passes over the
/// elements replace a dozen tensor ops, their buffers and `Var::set`'s copy,
/// which dominated small models' steps. Same arithmetic, same order, as the
/// tensor-op form (`g' = g + l2·p`).
struct InPlace<'a> {
    pass: Pass,
    k: &'a Coefs,
}

/// Elements per parallel chunk of an update pass.
const ADAM_CHUNK: usize = 1 << 15;

/// f32 / f64, as the update needs them.
trait AdamFloat:
    Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn of(x: f64) -> Self;
    fn sqrt(self) -> Self;
}

impl AdamFloat for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl AdamFloat for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

fn inplace_pass<T: AdamFloat>(pass: Pass, k: &Coefs, dst: &mut [T], a: &[T], b: &[T]) {
    let c = T::of;
    let (b1, b2, c1, c2) = (c(k.b1), c(k.b2), c(1.0 - k.b1), c(1.0 - k.b2));
    let (inv_bc2, eps, step) = (c(1.0 / k.bc2_sqrt), c(k.eps), c(k.step_size));
    let l2 = c(if k.decoupled { 0.0 } else { k.wd });
    let decay = c(if k.decoupled { 1.0 - k.lr * k.wd } else { 1.0 });
    // Branch-free loops so that they vectorise (sqrt and div included).
    let run = |(d, (a, b)): (&mut [T], (&[T], &[T]))| match pass {
        Pass::M => {
            for ((mj, &gj), &pj) in d.iter_mut().zip(a).zip(b) {
                *mj = *mj * b1 + (gj + pj * l2) * c1;
            }
        }
        Pass::V => {
            for ((vj, &gj), &pj) in d.iter_mut().zip(a).zip(b) {
                let gj = gj + pj * l2;
                *vj = *vj * b2 + gj * gj * c2;
            }
        }
        Pass::P => {
            for ((pj, &mj), &vj) in d.iter_mut().zip(a).zip(b) {
                let denom = vj.sqrt() * inv_bc2 + eps;
                *pj = *pj * decay - (mj / denom) * step;
            }
        }
    };
    if dst.len() > ADAM_CHUNK {
        dst.par_chunks_mut(ADAM_CHUNK)
            .zip(a.par_chunks(ADAM_CHUNK).zip(b.par_chunks(ADAM_CHUNK)))
            .for_each(run);
    } else {
        run((dst, (a, b)));
    }
}

impl candle_core::InplaceOp3 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "aezoo-adam"
    }
    fn cpu_fwd(
        &self,
        dst: &mut candle_core::CpuStorage,
        ld: &candle_core::Layout,
        a: &candle_core::CpuStorage,
        la: &candle_core::Layout,
        b: &candle_core::CpuStorage,
        lb: &candle_core::Layout,
    ) -> Result<()> {
        use candle_core::CpuStorage as S;
        let span = |l: &candle_core::Layout| {
            l.contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("aezoo-adam: tensors must be contiguous".into()))
        };
        let (d0, a0, b0) = (span(ld)?, span(la)?, span(lb)?);
        match (dst, a, b) {
            (S::F32(d), S::F32(a), S::F32(b)) => {
                inplace_pass(self.pass, self.k, &mut d[d0.0..d0.1], &a[a0.0..a0.1], &b[b0.0..b0.1])
            }
            (S::F64(d), S::F64(a), S::F64(b)) => {
                inplace_pass(self.pass, self.k, &mut d[d0.0..d0.1], &a[a0.0..a0.1], &b[b0.0..b0.1])
            }
            _ => candle_core::bail!("aezoo-adam: tensors must all be f32 or all f64"),
        }
        Ok(())
    }
}

/// The CPU update in place: `Ok(false)` where it does not apply (another
/// device, a dtype other than f32/f64, a non-contiguous tensor, or a moment
/// whose storage another tensor shares), and the caller takes the
/// tensor-op form.
fn update_in_place(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, k: &Coefs) -> Result<bool> {
    let cpu_float = |t: &Tensor| t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64);
    if !(cpu_float(p) && p.is_contiguous() && m.is_contiguous() && v.is_contiguous()) {
        return Ok(false);
    }
    if p.dtype() != g.dtype() || p.dtype() != m.dtype() || p.dtype() != v.dtype() {
        return Ok(false);
    }
    let g = g.contiguous()?;
    m.inplace_op3(&g, p, &InPlace { pass: Pass::M, k })?;
    v.inplace_op3(&g, p, &InPlace { pass: Pass::V, k })?;
    p.inplace_op3(m, v, &InPlace { pass: Pass::P, k })?;
    Ok(true)
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
            if update_in_place(var.as_tensor(), g, &self.m[i], &self.v[i], &k)? {
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
