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
use std::sync::Mutex;

use aezoo_kernels::adam::{self, AdamFloat};
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
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

/// A variable's moments: on the CPU, host buffers that the one-pass update
/// writes beside the parameter; on other devices (or dtypes), tensors for
/// the tensor-op form.
enum Moments {
    Host(Mutex<HostMoments>),
    Tensors { m: Tensor, v: Tensor },
}

enum HostMoments {
    F32 { m: Vec<f32>, v: Vec<f32> },
    F64 { m: Vec<f64>, v: Vec<f64> },
}

impl Moments {
    /// Host buffers for a contiguous f32/f64 CPU parameter, else tensors;
    /// `(m, v)` are the initial values (shaped as `p`).
    fn new(p: &Tensor, m: &Tensor, v: &Tensor) -> Result<Self> {
        let host = p.device().is_cpu() && p.is_contiguous();
        let flat = |t: &Tensor| t.to_dtype(p.dtype())?.flatten_all();
        Ok(match p.dtype() {
            DType::F32 if host => Moments::Host(Mutex::new(HostMoments::F32 {
                m: flat(m)?.to_vec1()?,
                v: flat(v)?.to_vec1()?,
            })),
            DType::F64 if host => Moments::Host(Mutex::new(HostMoments::F64 {
                m: flat(m)?.to_vec1()?,
                v: flat(v)?.to_vec1()?,
            })),
            _ => Moments::Tensors {
                m: m.to_dtype(p.dtype())?.to_device(p.device())?,
                v: v.to_dtype(p.dtype())?.to_device(p.device())?,
            },
        })
    }

    /// `(m, v)` as tensors shaped as `p`.
    fn tensors(&self, p: &Tensor) -> Result<(Tensor, Tensor)> {
        let host = |m: &Mutex<HostMoments>| -> Result<(Tensor, Tensor)> {
            let dev = p.device();
            Ok(match &*lock(m) {
                HostMoments::F32 { m, v } => (
                    Tensor::from_slice(m, p.shape(), dev)?,
                    Tensor::from_slice(v, p.shape(), dev)?,
                ),
                HostMoments::F64 { m, v } => (
                    Tensor::from_slice(m, p.shape(), dev)?,
                    Tensor::from_slice(v, p.shape(), dev)?,
                ),
            })
        };
        match self {
            Moments::Host(m) => host(m),
            Moments::Tensors { m, v } => Ok((m.clone(), v.clone())),
        }
    }
}

fn lock(m: &Mutex<HostMoments>) -> std::sync::MutexGuard<'_, HostMoments> {
    // A panic inside an update leaves plain numbers behind: take them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The whole update in one pass over `(p, g, m, v)`, written into the
/// parameter's own storage and the host moments (no allocation, no copy
/// back): on the CPU it replaces a dozen tensor ops, their buffers and
/// `Var::set`'s copy, and reads each array once (7 streams of memory where
/// three passes took 12). Same arithmetic, same order, as the tensor-op
/// form (`g' = g + l2·p`).
struct OnePass<'a> {
    k: &'a Coefs,
    moments: &'a Mutex<HostMoments>,
}

/// The update's constants in the parameter's dtype:
/// `[β1, β2, 1−β1, 1−β2, 1/√(1−β2ᵗ), eps, step, l2, decay]`.
fn consts<T: AdamFloat>(k: &Coefs) -> [T; 9] {
    let l2 = if k.decoupled { 0.0 } else { k.wd };
    let decay = if k.decoupled { 1.0 - k.lr * k.wd } else { 1.0 };
    [
        k.b1,
        k.b2,
        1.0 - k.b1,
        1.0 - k.b2,
        1.0 / k.bc2_sqrt,
        k.eps,
        k.step_size,
        l2,
        decay,
    ]
    .map(T::of)
}

impl candle_core::InplaceOp2 for OnePass<'_> {
    fn name(&self) -> &'static str {
        "aezoo-adam"
    }
    fn cpu_fwd(
        &self,
        dst: &mut candle_core::CpuStorage,
        ld: &candle_core::Layout,
        g: &candle_core::CpuStorage,
        lg: &candle_core::Layout,
    ) -> Result<()> {
        use candle_core::CpuStorage as S;
        let span = |l: &candle_core::Layout| {
            l.contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("aezoo-adam: tensors must be contiguous".into()))
        };
        let ((d0, d1), (g0, g1)) = (span(ld)?, span(lg)?);
        match (dst, g, &mut *lock(self.moments)) {
            (S::F32(p), S::F32(g), HostMoments::F32 { m, v }) => {
                adam::update(consts(self.k), &mut p[d0..d1], &g[g0..g1], m, v)
            }
            (S::F64(p), S::F64(g), HostMoments::F64 { m, v }) => {
                adam::update(consts(self.k), &mut p[d0..d1], &g[g0..g1], m, v)
            }
            _ => candle_core::bail!("aezoo-adam: parameter, gradient and moments must all be f32 or all f64"),
        }
    }
}

/// The optimiser over a fixed list of named variables.
pub struct Adam {
    cfg: AdamConfig,
    lr: f64,
    vars: Vec<(String, Var)>,
    moments: Vec<Moments>,
    t: u64,
}

impl Adam {
    pub fn new(vars: Vec<(String, Var)>, lr: f64, cfg: AdamConfig) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|(_, p)| {
                let zeros = p.zeros_like()?;
                Moments::new(p.as_tensor(), &zeros, &zeros)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            lr,
            vars,
            moments,
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
        for ((_, var), moments) in self.vars.iter().zip(&mut self.moments) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let p = var.as_tensor();
            let (m, v) = match moments {
                Moments::Host(host) if g.dtype() == p.dtype() => {
                    p.inplace_op2(&g.contiguous()?, &OnePass { k: &k, moments: host })?;
                    continue;
                }
                Moments::Host(_) => candle_core::bail!(
                    "adam: gradient of dtype {:?} for a parameter of dtype {:?}",
                    g.dtype(),
                    p.dtype()
                ),
                Moments::Tensors { m, v } => (m, v),
            };
            let g = if wd != 0.0 && !self.cfg.decoupled {
                (g + (p * wd)?)?
            } else {
                g.clone()
            };
            let new_m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
            let new_v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = (new_v.sqrt()? / bc2_sqrt)?.affine(1.0, self.cfg.eps)?;
            let p = if wd != 0.0 && self.cfg.decoupled {
                (p * (1.0 - self.lr * wd))?
            } else {
                p.clone()
            };
            let new_p = (p - ((&new_m / denom)? * step_size)?)?;
            var.set(&new_p.detach())?;
            *m = new_m.detach();
            *v = new_v.detach();
        }
        Ok(())
    }

    /// The moments, named `m.<param>` and `v.<param>`, for a checkpoint.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for ((name, var), moments) in self.vars.iter().zip(&self.moments) {
            let (m, v) = moments.tensors(var.as_tensor())?;
            out.push((format!("m.{name}"), m));
            out.push((format!("v.{name}"), v));
        }
        Ok(out)
    }

    /// Restores moments saved by [`Adam::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, t: u64) -> Result<()> {
        let mut moments = Vec::with_capacity(self.vars.len());
        for (name, var) in &self.vars {
            let [m, v] = ["m", "v"].map(|kind| {
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
                Ok(t.clone())
            });
            moments.push(Moments::new(var.as_tensor(), &m?, &v?)?);
        }
        self.moments = moments;
        self.t = t;
        Ok(())
    }
}
