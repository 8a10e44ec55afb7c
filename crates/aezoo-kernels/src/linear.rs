//! The fused linear layer `act(x·Wᵀ + b)` as one node with a hand-written
//! backward ([`crate::scaffold`]), reading inputs of any rank flattened and
//! shaping its output in the same node, and [`linear_chain`]: an MLP's
//! inference as one parallel region, each task carrying its rows through
//! every layer with the same packed panels (the same bits as layer by
//! layer).

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::applies;
use crate::elementwise::{act_grad_into, bias_act_rows, dz_chunk, zip_chunks};
use crate::float::{Act, Float};
use crate::par::{gemm, lin_par, threads, SendPtr, PAR_ELEMS};
use crate::scaffold::{self, contiguous, packed_storage, FusedLayer};
use crate::sgemm::{self, Epilogue, PackedB, Strided};

/// `act(x·Wᵀ + b)`; `(n, i)` by `(o, i)` and `(o,)`. An input of higher
/// rank is read flattened to `(n, i)`, and the output may carry any shape
/// of `n·o` elements (`out`): a flatten before or a reshape after the
/// layer is no node of its own (whose gradient candle would accumulate into
/// a fresh zero tensor).
#[derive(Clone, Debug)]
struct LinearFused {
    act: Act,
    out: Option<Shape>,
}

fn lin_dims(lx: &Layout, lw: &Layout) -> Result<(usize, usize, usize)> {
    let dims = lx.shape().dims();
    if dims.len() < 2 {
        candle_core::bail!("linear: input of shape {:?} has no batch and feature axes", dims);
    }
    let (n, i) = (dims[0], dims[1..].iter().product());
    let (o, wi) = lw.shape().dims2()?;
    if wi != i {
        candle_core::bail!("linear: input has {i} features, the weight expects {wi}");
    }
    Ok((n, i, o))
}

fn lin_fwd<T: Float>(
    op: &LinearFused,
    (x, lx): (&CpuStorage, &Layout),
    (w, lw): (&CpuStorage, &Layout),
    (bias, lb): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (n, i, o) = lin_dims(lx, lw)?;
    let (x, w, bias) = (
        contiguous::<T>(x, lx, "linear")?,
        contiguous::<T>(w, lw, "linear")?,
        contiguous::<T>(bias, lb, "linear")?,
    );
    if let (Some(x), Some(w), Some(bias), true) = (T::as_f32(x), T::as_f32(w), T::as_f32(bias), sgemm::available()) {
        // y (n×o) = act(x (n×i) · Wᵀ (i×o) + bias), the bias and activation
        // applied to each tile in the GEMM's epilogue.
        let pb = PackedB::pack(i, o, Strided::new(w, 1, i));
        let epi = Epilogue {
            col_bias: Some(bias),
            act: op.act,
            ..Epilogue::default()
        };
        let mut y: Vec<f32> = Vec::with_capacity(n * o);
        // SAFETY: `y` holds `n·o` floats of capacity; the product writes
        // every one of them (no accumulation) before `set_len`.
        unsafe {
            sgemm::gemm_packed_raw(
                n,
                Strided::new(x, i, 1),
                &pb,
                y.as_mut_ptr(),
                n * o,
                (o, 1),
                &epi,
                threads() > 1,
            );
            y.set_len(n * o);
        }
        return Ok((CpuStorage::F32(y), op.out.clone().unwrap_or(Shape::from((n, o)))));
    }
    let mut y = vec![T::default(); n * o];
    // y (n×o) = x (n×i) · Wᵀ (i×o)
    gemm(n, o, i, &mut y, (o, 1), false, x, (i, 1), w, (1, i), lin_par());
    // Bias and activation over blocks of rows in parallel once there is
    // enough work (a sigmoid over 1000 × 784 outputs on one thread cost more
    // than the GEMM).
    if n * o >= PAR_ELEMS {
        let rows = n.div_ceil(4 * threads()).max(1);
        y.par_chunks_mut(rows * o)
            .for_each(|ys| bias_act_rows(ys, bias, op.act));
    } else {
        bias_act_rows(&mut y, bias, op.act);
    }
    Ok((T::storage(y), op.out.clone().unwrap_or(Shape::from((n, o)))))
}

fn lin_bwd<T: Float>(
    op: &LinearFused,
    need_dx: bool,
    (x, lx): (&CpuStorage, &Layout),
    (w, lw): (&CpuStorage, &Layout),
    (dy, ly): (&CpuStorage, &Layout),
    y: Option<&[T]>,
) -> Result<(CpuStorage, Shape)> {
    let (n, i, o) = lin_dims(lx, lw)?;
    let (x, w, dy) = (
        contiguous::<T>(x, lx, "linear-grad")?,
        contiguous::<T>(w, lw, "linear-grad")?,
        contiguous::<T>(dy, ly, "linear-grad")?,
    );
    // dz = dy ⊙ act'(y), by rows in parallel once there is enough work.
    let mut dzbuf = Vec::new();
    let dz: &[T] = match y {
        Some(y) if n * o >= PAR_ELEMS => {
            dzbuf = zip_chunks([dy, y], |[dy, y], dz| act_grad_into(dy, y, op.act, dz));
            &dzbuf
        }
        _ => dz_chunk(dy, y, op.act, &mut dzbuf),
    };
    let (nx, nw) = (if need_dx { n * i } else { 0 }, o * i);
    let mut packed = vec![T::default(); nx + nw + o];
    let (dx, rest) = packed.split_at_mut(nx);
    let (dw, db) = rest.split_at_mut(nw);
    if need_dx {
        // dx (n×i) = dz (n×o) · W (o×i)
        gemm(n, i, o, dx, (i, 1), false, dz, (o, 1), w, (i, 1), lin_par());
    }
    // dW (o×i) = dzᵀ (o×n) · x (n×i)
    gemm(o, i, n, dw, (i, 1), false, dz, (1, o), x, (i, 1), lin_par());
    for row in dz.chunks(o) {
        for (a, &v) in db.iter_mut().zip(row) {
            *a += v;
        }
    }
    Ok(packed_storage(packed))
}

impl FusedLayer for LinearFused {
    const NAME: &'static str = "aezoo-linear-fused";
    const GRAD_NAME: &'static str = "aezoo-linear-fused-grad";

    fn act(&self) -> Act {
        self.act
    }

    fn forward<T: Float>(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        lin_fwd::<T>(self, x, w, b)
    }

    fn backward<T: Float>(
        &self,
        need_dx: bool,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        dy: (&CpuStorage, &Layout),
        y: Option<&[T]>,
    ) -> Result<(CpuStorage, Shape)> {
        lin_bwd::<T>(self, need_dx, x, w, dy, y)
    }
}

/// `act(xs · weightᵀ + bias)` for `(n, i)` inputs, as one node (CPU, f32/f64).
pub fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor, act: Act) -> Result<Tensor> {
    if xs.rank() != 2 {
        candle_core::bail!(
            "linear: input of shape {:?} is not (n, i) (linear_shaped reads it flattened)",
            xs.dims()
        );
    }
    linear_shaped(xs, weight, bias, act, None)
}

/// [`linear`] of `xs` read flattened to `(n, i)` (any rank ≥ 2), its `(n,
/// o)` output given shape `out` if any (`n·o` elements), still one node.
pub fn linear_shaped(xs: &Tensor, weight: &Tensor, bias: &Tensor, act: Act, out: Option<Shape>) -> Result<Tensor> {
    if let Some(out) = &out {
        let (n, o) = (xs.dim(0)?, weight.dim(0)?);
        if out.elem_count() != n * o {
            candle_core::bail!("linear: output shape {out:?} does not hold {n} × {o} elements");
        }
    }
    scaffold::apply(LinearFused { act, out }, xs, weight, bias)
}

/// A stack of linear layers for inference: `h ← act_l(h[:, ..i_l] ·
/// W_lᵀ + b_l)` for each `(W_l (o_l × i_l), b_l, act_l)` in turn (`b_l`
/// optional), `xs` read flattened to `(n, d)` with `i_0 = d`, a later layer
/// reading the first `i_l ≤ o_{l−1}` columns (a VAE's decoder reads the
/// posterior mean, the first half of its statistics layer). Returns
/// `(n, o_last)`.
///
/// The result is outside the autograd graph: no gradient flows back to
/// `xs` or the layers (evaluation, reconstruction, encoding). In f32 with
/// [`sgemm`] the rows are split once into tasks that each carry their rows
/// through every layer, the activations between layers in the task's own
/// buffers: one parallel region for the stack, not one per layer with its
/// barrier and its tail of idle threads, and the intermediate rows still
/// in cache for the next product. Each element is summed as the layer by
/// layer [`linear`] sums it (the same packed panels, `k` blocks and
/// epilogue): the same bits (test `linear_chain_matches_the_layers_one_by_one`).
/// Elsewhere (f64, no AVX2, `AEZOO_NO_FUSED`, other devices) it returns
/// `None` once the shapes are checked, and the caller runs the layers one by
/// one (`aezoo_nn::layers::linear_chain`).
pub fn linear_chain(xs: &Tensor, layers: &[(&Tensor, Option<&Tensor>, Act)]) -> Result<Option<Tensor>> {
    if layers.is_empty() {
        candle_core::bail!("linear_chain: no layers");
    }
    let n = xs.dim(0)?;
    let d = xs.dims()[1..].iter().product::<usize>();
    let mut width = d;
    for (l, (w, b, _)) in layers.iter().enumerate() {
        let (o, i) = w.dims2()?;
        let fits = if l == 0 { i == width } else { i <= width };
        if !fits || b.is_some_and(|b| b.dims() != [o]) {
            candle_core::bail!(
                "linear_chain: layer {l} has weight {:?} and bias {:?} after {width} features",
                w.dims(),
                b.map(Tensor::dims)
            );
        }
        width = o;
    }
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let fast = applies(xs)
        && sgemm::available()
        && f32_cpu(xs)
        && layers.iter().all(|(w, b, _)| f32_cpu(w) && b.is_none_or(f32_cpu));
    if !fast {
        return Ok(None);
    }
    let xs = xs.contiguous()?;
    let owned: Vec<(Tensor, Option<Tensor>)> = layers
        .iter()
        .map(|(w, b, _)| Ok((w.contiguous()?, b.map(Tensor::contiguous).transpose()?)))
        .collect::<Result<_>>()?;
    let (xg, xl) = xs.storage_and_layout();
    let x = cpu_f32(&xg, xl)?;
    let guards: Vec<_> = owned
        .iter()
        .map(|(w, b)| (w.storage_and_layout(), b.as_ref().map(Tensor::storage_and_layout)))
        .collect();
    let mut packed = Vec::with_capacity(layers.len());
    let mut biases = Vec::with_capacity(layers.len());
    for ((((wg, wl), b), (w, _)), (_, _, act)) in guards.iter().zip(&owned).zip(layers) {
        let (o, i) = w.dims2()?;
        // B = Wᵀ (i × o), as `lin_fwd` packs it.
        packed.push(PackedB::pack(i, o, Strided::new(cpu_f32(wg, wl)?, 1, i)));
        let bias = match b {
            Some((bg, bl)) => Some(cpu_f32(bg, bl)?),
            None => None,
        };
        biases.push((bias, *act));
    }
    let o_last = width;
    let t = threads();
    // About four tasks per thread, whole register tiles each.
    let per = n.div_ceil(4 * t).next_multiple_of(sgemm::MR).max(sgemm::MR);
    let tasks = n.div_ceil(per);
    let mut y: Vec<f32> = Vec::with_capacity(n * o_last);
    let out = SendPtr(y.as_mut_ptr());
    let task = |bufs: &mut (Vec<f32>, Vec<f32>), k: usize| {
        let (r0, r1) = (k * per, ((k + 1) * per).min(n));
        let m = r1 - r0;
        let (cur, next) = bufs;
        let mut a_rs = d;
        for (l, (pb, (bias, act))) in packed.iter().zip(&biases).enumerate() {
            let o = pb.n();
            let epi = Epilogue {
                col_bias: *bias,
                act: *act,
                ..Epilogue::default()
            };
            let a = if l == 0 { &x[r0 * d..r1 * d] } else { &cur[..m * a_rs] };
            if l + 1 == layers.len() {
                // SAFETY: rows r0..r1 of `y` (capacity n·o_last) belong to this
                // task alone; the product writes every element of them.
                unsafe {
                    sgemm::gemm_packed_raw(
                        m,
                        Strided::new(a, a_rs, 1),
                        pb,
                        out.get().add(r0 * o),
                        m * o,
                        (o, 1),
                        &epi,
                        false,
                    )
                };
            } else {
                next.resize(m * o, 0.0);
                sgemm::gemm_packed(m, Strided::new(a, a_rs, 1), pb, &mut next[..m * o], (o, 1), &epi, false);
                std::mem::swap(cur, next);
                a_rs = o;
            }
        }
    };
    if tasks > 1 && t > 1 {
        (0..tasks)
            .into_par_iter()
            .for_each_init(|| (Vec::new(), Vec::new()), |bufs, k| task(bufs, k));
    } else {
        let mut bufs = (Vec::new(), Vec::new());
        (0..tasks).for_each(|k| task(&mut bufs, k));
    }
    // SAFETY: the tasks wrote all n·o_last elements.
    unsafe { y.set_len(n * o_last) };
    Tensor::from_vec(y, (n, o_last), xs.device()).map(Some)
}

/// The f32 elements of a contiguous CPU storage.
fn cpu_f32<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => contiguous::<f32>(c, l, "linear_chain"),
        _ => candle_core::bail!("linear_chain: not a CPU tensor"),
    }
}
