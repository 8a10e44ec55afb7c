//! Element-wise kernels: a layer's bias and activation over its output,
//! `dz = dy ⊙ act'(y)` from the saved output, and the logistic sigmoid and
//! binary cross-entropy on logits as single vectorised nodes with their
//! backward (candle's sigmoid calls a scalar `expf` per element; the
//! composite BCE is nine ops forward and more backward).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::float::{act_grad_at, relu_of, Act, Float};
use crate::par::{threads, PAR_ELEMS};
use crate::scaffold::{by_dtype, contiguous};

multiversion! {
    /// `y = act(y + b[o])` over `(o, l)` rows.
    pub(crate) fn bias_act<T: Float>(y: &mut [T], bias: &[T], l: usize, act: Act) {
        for (row, &b) in y.chunks_mut(l).zip(bias) {
            match act {
                Act::None => row.iter_mut().for_each(|v| *v += b),
                Act::Relu => row.iter_mut().for_each(|v| *v = relu_of(*v + b)),
                Act::Sigmoid => row.iter_mut().for_each(|v| *v = (*v + b).sigmoid()),
            }
        }
    }
}

multiversion! {
    /// `y = act(y + bias)` over rows of `bias.len()` (a linear layer's
    /// `(n, o)` output).
    pub(crate) fn bias_act_rows<T: Float>(y: &mut [T], bias: &[T], act: Act) {
        for row in y.chunks_mut(bias.len()) {
            match act {
                Act::None => row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b),
                Act::Relu => row.iter_mut().zip(bias).for_each(|(v, &b)| *v = relu_of(*v + b)),
                Act::Sigmoid => row.iter_mut().zip(bias).for_each(|(v, &b)| *v = (*v + b).sigmoid()),
            }
        }
    }
}

multiversion! {
    /// `dz = dy ⊙ act'(y)` into `dz`.
    pub(crate) fn act_grad_into<T: Float>(dy: &[T], y: &[T], act: Act, dz: &mut [T]) {
        match act {
            Act::None => dz.copy_from_slice(dy),
            Act::Relu => {
                for ((z, &d), &y) in dz.iter_mut().zip(dy).zip(y) {
                    *z = act_grad_at(y, d, Act::Relu);
                }
            }
            Act::Sigmoid => {
                for ((z, &d), &y) in dz.iter_mut().zip(dy).zip(y) {
                    *z = act_grad_at(y, d, Act::Sigmoid);
                }
            }
        }
    }
}

/// `dz = dy ⊙ act'(y)` for one chunk: `dy` itself for the identity, else
/// written into `scratch`.
pub(crate) fn dz_chunk<'a, T: Float>(dy: &'a [T], y: Option<&[T]>, act: Act, scratch: &'a mut Vec<T>) -> &'a [T] {
    match y {
        Some(y) if act != Act::None => {
            scratch.resize(dy.len(), T::default());
            act_grad_into(dy, y, act, scratch);
            scratch
        }
        _ => dy,
    }
}

/// `dz = dy ⊙ act'(y)` of one image into `dz` (`y` the saved output; none
/// for the identity).
pub(crate) fn dz_into<T: Float>(dy: &[T], y: Option<&[T]>, act: Act, dz: &mut [T]) {
    match y {
        Some(y) if act != Act::None => act_grad_into(dy, y, act, dz),
        _ => dz.copy_from_slice(dy),
    }
}

/// `σ(x)` per element in one vectorised pass (candle's sigmoid calls a
/// scalar `expf` per element); the backward reads the output,
/// `dy · y(1 − y)`.
#[derive(Clone, Copy, Debug)]
struct Sigmoid;

/// The backward of [`Sigmoid`]: `(y, dy)` → `dy · y(1 − y)`.
#[derive(Clone, Copy, Debug)]
struct SigmoidGrad;

multiversion! {
    /// `σ(x)` per element of `[x]`.
    fn sigmoid_kernel<T: Float>(x: [&[T]; 1], out: &mut [T]) {
        for (o, &x) in out.iter_mut().zip(x[0]) {
            *o = x.sigmoid();
        }
    }
}

fn sigmoid_fwd<T: Float>(x: &CpuStorage, lx: &Layout) -> Result<(CpuStorage, Shape)> {
    let x = contiguous::<T>(x, lx, "sigmoid")?;
    Ok((T::storage(zip_chunks([x], sigmoid_kernel::<T>)), lx.shape().clone()))
}

fn sigmoid_bwd<T: Float>(y: &CpuStorage, ly: &Layout, dy: &CpuStorage, ld: &Layout) -> Result<(CpuStorage, Shape)> {
    let (y, dy) = (
        contiguous::<T>(y, ly, "sigmoid-grad")?,
        contiguous::<T>(dy, ld, "sigmoid-grad")?,
    );
    if y.len() != dy.len() {
        candle_core::bail!("aezoo fused sigmoid-grad: {} outputs, {} gradients", y.len(), dy.len());
    }
    Ok((
        T::storage(zip_chunks([y, dy], |[y, dy], dz| {
            act_grad_into(dy, y, Act::Sigmoid, dz)
        })),
        ly.shape().clone(),
    ))
}

impl CustomOp1 for Sigmoid {
    fn name(&self) -> &'static str {
        "aezoo-sigmoid"
    }
    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(x, sigmoid_fwd(x, lx))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SigmoidGrad)?))
    }
}

impl CustomOp2 for SigmoidGrad {
    fn name(&self) -> &'static str {
        "aezoo-sigmoid-grad"
    }
    fn cpu_fwd(&self, y: &CpuStorage, ly: &Layout, dy: &CpuStorage, ld: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(y, sigmoid_bwd(y, ly, dy, ld))
    }
}

/// `σ(xs)` per element as one vectorised node with its backward (CPU,
/// f32/f64).
pub fn sigmoid(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Sigmoid)
}

/// `max(x, 0) − x·t + ln(1 + e^−|x|)` per element, one pass (the composite
/// form is nine candle ops forward and more backward, each a pass over the
/// whole image batch and a wake-up of candle's thread pool).
#[derive(Clone, Copy, Debug)]
struct BceLogits;

/// `out = f(inputs)` by chunks (in parallel once there is enough work),
/// `f` a [`multiversion!`] kernel (or a call of one) over equal-length
/// slices.
pub(crate) fn zip_chunks<T: Float, const N: usize>(ins: [&[T]; N], f: impl Fn([&[T]; N], &mut [T]) + Sync) -> Vec<T> {
    let n = ins[0].len();
    let mut out = vec![T::default(); n];
    if n >= PAR_ELEMS {
        let chunk = n.div_ceil(4 * threads()).max(1);
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(k, o)| f(ins.map(|s| &s[k * chunk..k * chunk + o.len()]), o));
    } else {
        f(ins, &mut out);
    }
    out
}

multiversion! {
    /// `max(x, 0) − x·t + ln(1 + e^−|x|)` per element of `[x, t]`.
    fn bce_kernel<T: Float>(xt: [&[T]; 2], out: &mut [T]) {
        let [x, t] = xt;
        for ((o, &x), &t) in out.iter_mut().zip(x).zip(t) {
            *o = relu_of(x) - x * t + x.exp_neg_abs().ln_1p_unit();
        }
    }
}

multiversion! {
    /// `g · (σ(x) − t)` per element of `[x, t, g]`.
    fn bce_grad_kernel<T: Float>(xtg: [&[T]; 3], out: &mut [T]) {
        let [x, t, g] = xtg;
        for (((o, &x), &t), &g) in out.iter_mut().zip(x).zip(t).zip(g) {
            *o = g * (x.sigmoid() - t);
        }
    }
}

fn bce_fwd<T: Float>(x: &CpuStorage, lx: &Layout, t: &CpuStorage, lt: &Layout) -> Result<(CpuStorage, Shape)> {
    let (x, t) = (contiguous::<T>(x, lx, "bce")?, contiguous::<T>(t, lt, "bce")?);
    if x.len() != t.len() {
        candle_core::bail!("aezoo fused bce: {} logits, {} targets", x.len(), t.len());
    }
    let out = zip_chunks([x, t], bce_kernel::<T>);
    Ok((T::storage(out), lx.shape().clone()))
}

impl CustomOp2 for BceLogits {
    fn name(&self) -> &'static str {
        "aezoo-bce-logits"
    }
    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout, t: &CpuStorage, lt: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(x, bce_fwd(x, lx, t, lt))
    }
    fn bwd(&self, x: &Tensor, t: &Tensor, _l: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // ∂l/∂x = σ(x) − t, ∂l/∂t = −x.
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(t, &g, &BceLogitsGrad)?;
        let dt = if t.track_op() { Some((&g * x)?.neg()?) } else { None };
        Ok((Some(dx), dt))
    }
}

/// `g · (σ(x) − t)`.
#[derive(Clone, Copy, Debug)]
struct BceLogitsGrad;

fn bce_bwd<T: Float>(
    x: &CpuStorage,
    lx: &Layout,
    t: &CpuStorage,
    lt: &Layout,
    g: &CpuStorage,
    lg: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (x, t, g) = (
        contiguous::<T>(x, lx, "bce-grad")?,
        contiguous::<T>(t, lt, "bce-grad")?,
        contiguous::<T>(g, lg, "bce-grad")?,
    );
    if x.len() != t.len() || x.len() != g.len() {
        candle_core::bail!(
            "aezoo fused bce-grad: {} logits, {} targets, {} gradients",
            x.len(),
            t.len(),
            g.len()
        );
    }
    let out = zip_chunks([x, t, g], bce_grad_kernel::<T>);
    Ok((T::storage(out), lx.shape().clone()))
}

impl CustomOp3 for BceLogitsGrad {
    fn name(&self) -> &'static str {
        "aezoo-bce-logits-grad"
    }
    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        t: &CpuStorage,
        lt: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(x, bce_bwd(x, lx, t, lt, g, lg))
    }
}

/// Per-element binary cross-entropy on logits, `max(x, 0) − x·t +
/// ln(1 + e^−|x|)`, as one node with a hand-written backward (CPU, f32/f64;
/// same shapes).
pub fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&target.contiguous()?, BceLogits)
}
