//! The fused transposed 2-D convolution `act(conv_transpose2d(x, W) + b)`
//! as one node with a hand-written backward ([`crate::scaffold`]): the
//! convolution's products with the roles of unfold and fold exchanged.
//!
//! ```text
//! forward   cols = Wᵀ · x_i        y_i = act(fold(cols) + b)
//! backward  dz = dy ⊙ act'(y)      dcols = unfold(dz_i)
//!           dx_i = W · dcols       dW += x_i · dcolsᵀ     db += Σ dz_i
//! ```
//!
//! In f32 with AVX2 the products run on [`crate::sgemm`]; where the
//! convolution it is the adjoint of suits the implicit GEMM, the backward
//! reads `dz` in place ([`crate::direct`]).

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::direct;
use crate::elementwise::{bias_act, dz_chunk, dz_into};
use crate::float::{sum, Act, Float};
use crate::im2col::Geometry;
use crate::par::{gemm, par_for, threads};
use crate::scaffold::{self, contiguous, packed_storage, per_image_slots, sum_partials, transpose_into, FusedLayer};
use crate::sgemm::{self, Epilogue, PackedB, Strided};
use crate::unfold::Unfold;

/// `act(conv_transpose2d(x, W) + b)`; `(b, ci, h, w)` by `(ci, o, kh, kw)`.
#[derive(Clone, Copy, Debug)]
struct ConvT2dFused {
    padding: usize,
    output_padding: usize,
    stride: usize,
    dilation: usize,
    act: Act,
}

impl ConvT2dFused {
    /// `(batch, ci, geometry of the output image read on the input grid)`.
    fn geometry(&self, lx: &Layout, lw: &Layout) -> Result<(usize, usize, Geometry)> {
        let (b, ci, h, w) = lx.shape().dims4()?;
        let (kci, o, kh, kw) = lw.shape().dims4()?;
        if kci != ci {
            candle_core::bail!("conv_transpose2d: input has {ci} channels, the kernel expects {kci}");
        }
        if self.output_padding >= self.stride.max(self.dilation) {
            candle_core::bail!("conv_transpose2d: output_padding must be smaller than stride or dilation");
        }
        let len = |n: usize, k: usize| -> Result<usize> {
            let full = (n - 1) * self.stride + self.dilation * (k - 1) + 1 + self.output_padding;
            if full <= 2 * self.padding {
                candle_core::bail!("conv_transpose2d: padding {} leaves no output", self.padding);
            }
            Ok(full - 2 * self.padding)
        };
        let g = Geometry {
            c: o,
            h: len(h, kh)?,
            w: len(w, kw)?,
            kh,
            kw,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            oh: h,
            ow: w,
        };
        Ok((b, ci, g))
    }
}

fn convt_fwd<T: Float>(
    op: &ConvT2dFused,
    (x, lx): (&CpuStorage, &Layout),
    (w, lw): (&CpuStorage, &Layout),
    (bias, lb): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (b, ci, g) = op.geometry(lx, lw)?;
    let (x, w, bias) = (
        contiguous::<T>(x, lx, "conv_transpose2d")?,
        contiguous::<T>(w, lw, "conv_transpose2d")?,
        contiguous::<T>(bias, lb, "conv_transpose2d")?,
    );
    let (okk, hw, out_img) = (g.c * g.kh * g.kw, g.oh * g.ow, g.c * g.h * g.w);
    let mut out = vec![T::default(); b * out_img];
    let (per_image, par) = par_for(b);
    let u = Unfold::new(&g);
    let wk = u.kernel(w, ci, &g);
    // One input or output channel: the adjoint of the direct convolution.
    let direct = direct::suits(&g, ci);
    let wk_packed = match T::as_f32(&wk) {
        Some(w32) if !direct && sgemm::available() && okk >= 16 => {
            Some(PackedB::pack(ci, okk, Strided::new(w32, okk, 1)))
        }
        _ => None,
    };
    let run = |(i, y): (usize, &mut [T]), (cols, split): &mut (Vec<T>, Vec<T>)| {
        let xi = &x[i * ci * hw..(i + 1) * ci * hw];
        if direct {
            direct::adjoint(xi, w, &g, ci, y, split);
        } else {
            if let (Some(pb), Some(x32), Some(cols32)) = (&wk_packed, T::as_f32(xi), T::as_f32_mut(cols)) {
                // colsᵀ (hw×okk) = x_iᵀ (hw×ci) · W (ci×okk), `W` packed once.
                let kl = u.kl();
                sgemm::gemm_packed(
                    hw,
                    Strided::new(x32, 1, hw),
                    pb,
                    cols32,
                    (kl.1, kl.0),
                    &Epilogue::default(),
                    !per_image,
                );
            } else {
                // cols (okk×hw) = Wᵀ (okk×ci) · x_i (ci×hw)
                gemm(okk, hw, ci, cols, u.kl(), false, &wk, (1, okk), xi, (hw, 1), par);
            }
            u.fold(cols, &g, y, split);
        }
        bias_act(y, bias, g.h * g.w, op.act);
    };
    let unfolded = if direct { 0 } else { okk * hw };
    if per_image {
        out.par_chunks_mut(out_img).enumerate().for_each_init(
            || (vec![T::default(); unfolded], Vec::new()),
            |scratch, job| run(job, scratch),
        );
    } else {
        let mut scratch = (vec![T::default(); unfolded], Vec::new());
        out.chunks_mut(out_img)
            .enumerate()
            .for_each(|job| run(job, &mut scratch));
    }
    Ok((T::storage(out), Shape::from((b, g.c, g.h, g.w))))
}

/// [`convt_bwd`] through the implicit GEMM (f32), in chunks of images: in
/// the conv view (dz → x), dx is the strided convolution of dz and dWᵀ
/// (okk×ci) its weight gradient against x.
#[allow(clippy::too_many_arguments)]
fn convt_bwd_implicit(
    (x, dy, y): (&[f32], &[f32], Option<&[f32]>),
    b: usize,
    g: &Geometry,
    ci: usize,
    act: Act,
    im: &direct::Implicit,
    pbw: &PackedB,
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let (o, okk, hw, out_img) = (g.c, g.c * g.kh * g.kw, g.oh * g.ow, g.c * g.h * g.w);
    let chunk = im.chunk(b, threads());
    let nchunks = b.div_ceil(chunk);
    let inner = nchunks < threads();
    let slots: Vec<Option<&mut [f32]>> = if dx.is_empty() {
        (0..nchunks).map(|_| None).collect()
    } else {
        dx.chunks_mut(chunk * ci * hw).map(Some).collect()
    };
    type Acc = (Vec<f32>, Vec<f32>, direct::ImplicitScratch, Vec<f32>);
    let init = || -> Acc { (vec![0.0; okk * ci], vec![0.0; o], Default::default(), Vec::new()) };
    let work = |mut acc: Acc, (c0, dxc): (usize, Option<&mut [f32]>)| -> Acc {
        let (pwt, pb, sc, dz) = &mut acc;
        let i0 = c0 * chunk;
        let n = chunk.min(b - i0);
        dz.resize(n * out_img, 0.0);
        for j in 0..n {
            let i = i0 + j;
            let r = i * out_img..(i + 1) * out_img;
            let dzi = &mut dz[j * out_img..(j + 1) * out_img];
            dz_into(&dy[r.clone()], y.map(|y| &y[r]), act, dzi);
            for (oo, plane) in dzi.chunks(g.h * g.w).enumerate() {
                pb[oo] += sum(plane);
            }
        }
        if let Some(dxc) = dxc {
            im.forward(dz, n, g, pbw, None, Act::None, inner, sc, dxc);
        }
        im.weights(dz, &x[i0 * ci * hw..(i0 + n) * ci * hw], n, g, ci, inner, sc, pwt);
        acc
    };
    sum_partials(slots, init, work, |(pwt, pb, ..)| (pwt, pb), (okk * ci, o))
}

fn convt_bwd<T: Float>(
    op: &ConvT2dFused,
    need_dx: bool,
    (x, lx): (&CpuStorage, &Layout),
    (w, lw): (&CpuStorage, &Layout),
    (dy, ly): (&CpuStorage, &Layout),
    y: Option<&[T]>,
) -> Result<(CpuStorage, Shape)> {
    let (b, ci, g) = op.geometry(lx, lw)?;
    let (x, w, dy) = (
        contiguous::<T>(x, lx, "conv_transpose2d-grad")?,
        contiguous::<T>(w, lw, "conv_transpose2d-grad")?,
        contiguous::<T>(dy, ly, "conv_transpose2d-grad")?,
    );
    let (o, okk, hw, out_img) = (g.c, g.c * g.kh * g.kw, g.oh * g.ow, g.c * g.h * g.w);
    let (nx, nw) = (if need_dx { b * ci * hw } else { 0 }, ci * okk);
    let mut packed = vec![T::default(); nx + nw + o];
    let (dx, rest) = packed.split_at_mut(nx);
    let (dw, db) = rest.split_at_mut(nw);
    let (per_image, par) = par_for(b);
    let u = Unfold::new(&g);
    let wk = u.kernel(w, ci, &g);
    let direct = direct::suits(&g, ci);
    // The implicit GEMM (f32): in the conv view (dz → x) dx is the strided
    // convolution of dz and dW its weight gradient against x, neither
    // unfolded; dWᵀ (okk×ci) is kept in `pw` and transposed at the end.
    let implicit = match (T::as_f32(w), !direct && direct::Implicit::suits(&g, ci)) {
        (Some(w32), true) => Some((
            direct::Implicit::new(&g),
            PackedB::pack(okk, ci, Strided::new(w32, 1, okk)),
        )),
        _ => None,
    };
    if let (Some((im, pbw)), Some(x32), Some(dy32), Some(dx32)) =
        (&implicit, T::as_f32(x), T::as_f32(dy), T::as_f32_mut(dx))
    {
        let y32 = y.map(|y| T::as_f32(y).expect("f32 output"));
        let (pwt, pb) = convt_bwd_implicit((x32, dy32, y32), b, &g, ci, op.act, im, pbw, dx32);
        // dWᵀ (okk×ci) → dW (ci×okk).
        transpose_into(&pwt, ci, T::as_f32_mut(dw).expect("f32"));
        T::as_f32_mut(db).expect("f32").copy_from_slice(&pb);
        return Ok(packed_storage(packed));
    }
    // f32 with AVX2: dWᵀ (okk×ci) accumulated by sgemm (`pw` holds it
    // transposed), and Wᵀ packed once as the B of every image's dx.
    let dw_t = T::as_f32(w).is_some() && !direct && ci >= 16 && sgemm::available();
    let wk_cols = match T::as_f32(&wk) {
        Some(w32) if need_dx && sgemm::available() && ci >= 16 => {
            Some(PackedB::pack(okk, ci, Strided::new(w32, 1, okk)))
        }
        _ => None,
    };
    type Acc<T> = (Vec<T>, Vec<T>, Vec<T>, Vec<T>, Vec<T>);
    let work = |(i, dxi): (usize, Option<&mut [T]>), acc: &mut Acc<T>| {
        let (pw, pb, dcols, dzbuf, split) = acc;
        let yi = y.map(|y| &y[i * out_img..(i + 1) * out_img]);
        let dzi = dz_chunk(&dy[i * out_img..(i + 1) * out_img], yi, op.act, dzbuf);
        let xi = &x[i * ci * hw..(i + 1) * ci * hw];
        for (oo, plane) in dzi.chunks(g.h * g.w).enumerate() {
            pb[oo] += sum(plane);
        }
        if direct {
            if let Some(dxi) = dxi {
                direct::forward(dzi, w, &g, ci, dxi, split);
            }
            direct::weights(dzi, xi, &g, ci, pw, split);
            return;
        }
        u.unfold(dzi, &g, dcols, split);
        let (lk, inner) = (u.lk(), !per_image);
        if let Some(dxi) = dxi {
            if let (Some(pb), Some(dc32), Some(dx32)) = (&wk_cols, T::as_f32(dcols), T::as_f32_mut(dxi)) {
                // dx_iᵀ (hw×ci) = dcolsᵀ (hw×okk) · Wᵀ (okk×ci), stored transposed.
                sgemm::gemm_packed(
                    hw,
                    Strided::new(dc32, lk.0, lk.1),
                    pb,
                    dx32,
                    (1, hw),
                    &Epilogue::default(),
                    inner,
                );
            } else {
                // dx_i (ci×hw) = W (ci×okk) · dcols (okk×hw)
                gemm(ci, hw, okk, dxi, (hw, 1), false, &wk, (okk, 1), dcols, u.kl(), par);
            }
        }
        if let (Some(dc32), Some(x32), Some(pw32), true) = (T::as_f32(dcols), T::as_f32(xi), T::as_f32_mut(pw), dw_t) {
            // dWᵀ (okk×ci) += dcols (okk×hw) · x_iᵀ (hw×ci), accumulated
            // as dWᵀ (a transposed C would be loaded and stored through
            // register transposes for every image) and transposed at the end.
            let pb = PackedB::pack(hw, ci, Strided::new(x32, 1, hw));
            sgemm::gemm_packed(
                okk,
                Strided::new(dc32, lk.1, lk.0),
                &pb,
                pw32,
                (ci, 1),
                &Epilogue::ACCUMULATE,
                inner,
            );
        } else {
            // dW (ci×okk) += x_i (ci×hw) · dcolsᵀ (hw×okk)
            gemm(ci, okk, hw, pw, (okk, 1), true, xi, (hw, 1), dcols, u.lk(), par);
        }
    };
    let unfolded = if direct { 0 } else { okk * hw };
    let init = || {
        (
            vec![T::default(); nw],
            vec![T::default(); o],
            vec![T::default(); unfolded],
            Vec::new(),
            Vec::new(),
        )
    };
    let slots = per_image_slots(dx, ci * hw, b);
    let (pw, pb) = if per_image {
        let work = |mut acc, job| {
            work(job, &mut acc);
            acc
        };
        sum_partials(slots, init, work, |(pw, pb, ..)| (pw, pb), (nw, o))
    } else {
        let mut acc = init();
        slots.into_iter().enumerate().for_each(|job| work(job, &mut acc));
        (acc.0, acc.1)
    };
    if direct {
        dw.copy_from_slice(&pw);
    } else {
        dw.copy_from_slice(&u.kernel_back(pw, ci, &g, dw_t));
    }
    db.copy_from_slice(&pb);
    Ok(packed_storage(packed))
}

impl FusedLayer for ConvT2dFused {
    const NAME: &'static str = "aezoo-conv-transpose2d-fused";
    const GRAD_NAME: &'static str = "aezoo-conv-transpose2d-fused-grad";

    fn act(&self) -> Act {
        self.act
    }

    fn forward<T: Float>(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        convt_fwd::<T>(self, x, w, b)
    }

    fn backward<T: Float>(
        &self,
        need_dx: bool,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        dy: (&CpuStorage, &Layout),
        y: Option<&[T]>,
    ) -> Result<(CpuStorage, Shape)> {
        convt_bwd::<T>(self, need_dx, x, w, dy, y)
    }
}

/// `act(conv_transpose2d(xs, kernel) + bias)` as one node (CPU, f32/f64).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d(
    xs: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    padding: usize,
    output_padding: usize,
    stride: usize,
    dilation: usize,
    act: Act,
) -> Result<Tensor> {
    let op = ConvT2dFused {
        padding,
        output_padding,
        stride,
        dilation,
        act,
    };
    scaffold::apply(op, xs, kernel, bias)
}
