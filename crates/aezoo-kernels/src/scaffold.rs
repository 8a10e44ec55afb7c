//! The scaffolding every fused layer shares: a layer `act(f(x, W) + b)` is
//! one candle `CustomOp3` node ([`Fused`]) whose backward is a second one
//! ([`FusedGrad`]) over `(x, W, dy)` that keeps the forward's output to read
//! `act'` from and returns `[dx | dW | db]` packed in one buffer. A layer
//! writes only its two kernels ([`FusedLayer::forward`],
//! [`FusedLayer::backward`]); the dtype dispatch, the saved output, the
//! packing and the `track_op` check live here once. Also the helpers the
//! kernels share: contiguous slices of storages, per-image output slots,
//! and [`sum_partials`], the schedule-independent reduction of per-task
//! weight gradients.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::float::{Act, Float};
use crate::par::threads;

/// A layer computed by one fused CPU node and its hand-written backward.
pub(crate) trait FusedLayer: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// candle's name of the forward node.
    const NAME: &'static str;
    /// candle's name of the backward node.
    const GRAD_NAME: &'static str;

    /// The activation applied to the layer's output (its derivative is read
    /// from the saved output in the backward).
    fn act(&self) -> Act;

    /// `act(f(x, W) + b)`: the output storage and its shape.
    fn forward<T: Float>(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)>;

    /// `[dx | dW | db]` packed into one rank-1 storage (`[dW | db]` when
    /// `need_dx` is false), from the forward's inputs, the output gradient
    /// `dy` and the saved output `y` (none for the identity activation).
    fn backward<T: Float>(
        &self,
        need_dx: bool,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        dy: (&CpuStorage, &Layout),
        y: Option<&[T]>,
    ) -> Result<(CpuStorage, Shape)>;
}

/// The forward node of a [`FusedLayer`].
#[derive(Clone, Debug)]
struct Fused<K>(K);

impl<K: FusedLayer> CustomOp3 for Fused<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match x.dtype() {
            DType::F32 => self.0.forward::<f32>((x, lx), (w, lw), (b, lb)),
            DType::F64 => self.0.forward::<f64>((x, lx), (w, lw), (b, lb)),
            d => candle_core::bail!("{}: unsupported dtype {d:?}", K::NAME),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need_dx = x.track_op();
        let grad = FusedGrad {
            layer: self.0.clone(),
            need_dx,
            y: saved_output(y, self.0.act()),
        };
        let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &grad)?;
        unpack(&packed, x, w, b, need_dx)
    }
}

/// The backward node of a [`FusedLayer`]: `(x, W, dy)` and the saved
/// output → packed `[dx | dW | db]`.
#[derive(Clone, Debug)]
struct FusedGrad<K> {
    layer: K,
    need_dx: bool,
    y: Option<Tensor>,
}

impl<K: FusedLayer> CustomOp3 for FusedGrad<K> {
    fn name(&self) -> &'static str {
        K::GRAD_NAME
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        dy: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = ((x, lx), (w, lw), (dy, ly));
        match x.0.dtype() {
            DType::F32 => with_saved::<f32, _>(&self.y, K::GRAD_NAME, |y| {
                self.layer.backward::<f32>(self.need_dx, x, w, dy, y)
            }),
            DType::F64 => with_saved::<f64, _>(&self.y, K::GRAD_NAME, |y| {
                self.layer.backward::<f64>(self.need_dx, x, w, dy, y)
            }),
            d => candle_core::bail!("{}: unsupported dtype {d:?}", K::GRAD_NAME),
        }
    }
}

/// `layer` of `(x, w, b)` as one node with its backward.
pub(crate) fn apply<K: FusedLayer>(layer: K, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Fused(layer))
}

/// The contiguous elements of a storage as `T`; the error names the op.
pub(crate) fn contiguous<'a, T: Float>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let v = T::slice(s).ok_or_else(|| candle_core::Error::Msg(format!("aezoo fused {what}: dtype mismatch")))?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("aezoo fused {what}: input must be contiguous"),
    }
}

/// Dispatches a kernel generic over [`Float`] on the storage's dtype.
macro_rules! by_dtype {
    ($s:expr, $f:ident ( $($arg:expr),* )) => {
        match $s.dtype() {
            candle_core::DType::F32 => $f::<f32>($($arg),*),
            candle_core::DType::F64 => $f::<f64>($($arg),*),
            d => candle_core::bail!("aezoo fused ops: unsupported dtype {d:?}"),
        }
    };
}
pub(crate) use by_dtype;

/// The forward output a backward pass reads `act'` from (none for the
/// identity). The gradient op keeps it itself — candle's custom ops take
/// three inputs and `(x, W, dy)` fill them — so `dz` is made image by image
/// inside the backward, in cache, instead of as a full-size pass and tensor
/// of its own.
fn saved_output(y: &Tensor, act: Act) -> Option<Tensor> {
    (act != Act::None).then(|| y.clone())
}

/// Runs `f` on the contiguous CPU slice of a saved output (`None` when none
/// is saved).
fn with_saved<T: Float, R>(y: &Option<Tensor>, what: &str, f: impl FnOnce(Option<&[T]>) -> Result<R>) -> Result<R> {
    let Some(y) = y else { return f(None) };
    let (storage, layout) = y.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(Some(contiguous::<T>(s, layout, what)?)),
        _ => candle_core::bail!("aezoo fused {what}: the saved output is not on the CPU"),
    }
}

/// Splits a packed `[dx | dw | db]` gradient (`[dw | db]` when the input
/// needs none: `need_dx` false).
fn unpack(
    packed: &Tensor,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    need_dx: bool,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (nw, nb) = (w.elem_count(), b.elem_count());
    let nx = if need_dx { x.elem_count() } else { 0 };
    let dx = if need_dx {
        Some(packed.narrow(0, 0, nx)?.reshape(x.shape())?)
    } else {
        None
    };
    let dw = packed.narrow(0, nx, nw)?.reshape(w.shape())?;
    let db = packed.narrow(0, nx + nw, nb)?.reshape(b.shape())?;
    Ok((dx, Some(dw), Some(db)))
}

/// The packed gradient buffer of [`FusedLayer::backward`] as storage.
pub(crate) fn packed_storage<T: Float>(packed: Vec<T>) -> (CpuStorage, Shape) {
    let n = packed.len();
    (T::storage(packed), Shape::from(n))
}

/// Per-image slots of a buffer: `dx` (all `None` when the input needs no
/// gradient), the pool's window maxima (all `None` without the pool).
/// An empty buffer gives `b` empty slots.
pub(crate) fn per_image_slots<T>(buf: &mut [T], per: usize, b: usize) -> Vec<Option<&mut [T]>> {
    if buf.is_empty() {
        (0..b).map(|_| None).collect()
    } else {
        buf.chunks_mut(per).map(Some).collect()
    }
}

/// `dst (c × r) = srcᵀ` for `src` of `r` rows of `c` (a kernel gradient
/// accumulated as dWᵀ back to dW's layout).
pub(crate) fn transpose_into<T: Copy>(src: &[T], c: usize, dst: &mut [T]) {
    let r = src.len() / c;
    for (i, row) in src.chunks_exact(c).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            dst[j * r + i] = v;
        }
    }
}

/// The sum over `jobs` of the `(dWᵀ, db)` partials `work` accumulates,
/// the same bits in every run: the jobs are cut into at most
/// `2 · threads` contiguous runs (a function of their count and the thread
/// count only), each run folded in order by one task, and the runs'
/// partials added in run order. rayon's `fold` + `reduce` grouped jobs by
/// the schedule — which worker stole what — so a seeded training run's
/// f32 weight gradients, and its test MSE, changed from run to run.
pub(crate) fn sum_partials<J: Send, A: Send, T: Float>(
    jobs: Vec<J>,
    init: impl Fn() -> A + Sync + Send,
    work: impl Fn(A, (usize, J)) -> A + Sync + Send,
    take: impl Fn(A) -> (Vec<T>, Vec<T>) + Sync + Send,
    (nw, nb): (usize, usize),
) -> (Vec<T>, Vec<T>) {
    let per = jobs.len().div_ceil(2 * threads()).max(1);
    let mut runs: Vec<Vec<(usize, J)>> = Vec::new();
    for (i, job) in jobs.into_iter().enumerate() {
        if i % per == 0 {
            runs.push(Vec::with_capacity(per));
        }
        runs.last_mut().expect("pushed above").push((i, job));
    }
    let parts: Vec<(Vec<T>, Vec<T>)> = runs
        .into_par_iter()
        .map(|run| take(run.into_iter().fold(init(), &work)))
        .collect();
    let mut parts = parts.into_iter();
    let Some((mut aw, mut ab)) = parts.next() else {
        return (vec![T::default(); nw], vec![T::default(); nb]);
    };
    for (bw, bb) in parts {
        aw.iter_mut().zip(bw).for_each(|(a, v)| *a += v);
        ab.iter_mut().zip(bb).for_each(|(a, v)| *a += v);
    }
    (aw, ab)
}
