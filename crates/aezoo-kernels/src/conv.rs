//! The fused 2-D convolution `act(conv2d(x, W) + b)` as one node with a
//! hand-written backward ([`crate::scaffold`]), optionally followed inside
//! the node by a 2 × 2 max pool ([`conv2d_pool2`]) or by the sub-pixel
//! interleave of an upsampling conv ([`conv2d_shuffled`]). Per image
//! (K = C·kh·kw, L = OH·OW):
//!
//! ```text
//! forward   cols = unfold(x_i)        (K, L)      y_i = act(W (O,K) · cols + b)
//! backward  dz = dy ⊙ act'(y)         dW += dz_i · colsᵀ     db += Σ_L dz_i
//!           dx_i = fold(Wᵀ · dz_i)
//! ```
//!
//! In f32 with AVX2 the products run on [`crate::sgemm`] (the kernel packed
//! once per call, bias and activation in the epilogue); stride-1 convs with
//! many channels read the padded image in place (the implicit GEMM of
//! [`crate::direct`]) and convs with one input or output channel take
//! direct kernels; f64 and CPUs without AVX2 take the `gemm` crate. Each
//! image is unfolded into a per-task buffer that stays in cache
//! ([`crate::unfold`]), never the whole batch.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::direct;
use crate::elementwise::{bias_act, dz_chunk, dz_into};
use crate::float::{sum, Act, Float};
use crate::im2col::Geometry;
use crate::maxpool::{pool2_record, unpool2};
use crate::par::{gemm, lin_par, par_for, threads};
use crate::scaffold::{self, contiguous, packed_storage, per_image_slots, sum_partials, transpose_into, FusedLayer};
use crate::sgemm::{self, Epilogue, PackedB, Strided};
use crate::unfold::Unfold;

/// The fixed settings of a fused conv2d.
#[derive(Clone, Copy, Debug)]
struct ConvCfg {
    padding: usize,
    stride: usize,
    dilation: usize,
    act: Act,
    post: Post,
}

/// What becomes of a fused conv's activations before they are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Post {
    /// Stored as they are.
    Plain,
    /// A 2×2, stride-2 max pool.
    Pool2,
    /// Sub-pixel phases, interleaved into the image they stand for
    /// ([`crate::subpixel`]).
    Shuffle(Shuffle),
}

/// The largest upsampling factor a fused [`Shuffle`] takes.
pub const SHUFFLE_MAX: usize = 4;

/// How a conv's `f²·o` output channels, `f²` phases of `o` channels each
/// (phase `f·qy + qx` major), are interleaved into `(o, oh, ow)`:
/// `y[c][f·i + qy][f·j + qx] = z[(f·qy + qx)·o + c][i + oy[qy]][j + ox[qx]]`.
/// The conv's other outputs are never read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shuffle {
    pub f: usize,
    pub oh: usize,
    pub ow: usize,
    pub oy: [usize; SHUFFLE_MAX],
    pub ox: [usize; SHUFFLE_MAX],
}

impl Shuffle {
    /// Checks the phases against the conv's geometry and output channels.
    fn check(&self, g: &Geometry, o: usize) -> Result<()> {
        let f = self.f;
        if !(1..=SHUFFLE_MAX).contains(&f) || !o.is_multiple_of(f * f) {
            candle_core::bail!("conv2d + sub-pixel shuffle: {o} outputs are not {f}² phases");
        }
        // Phase q of an axis of `out` outputs holds ⌈(out − q)/f⌉ of them.
        let fits = |off: &[usize; SHUFFLE_MAX], out: usize, small: usize| {
            (0..f.min(out)).all(|q| off[q] + (out - q).div_ceil(f) <= small)
        };
        if !fits(&self.oy, self.oh, g.oh) || !fits(&self.ox, self.ow, g.ow) {
            candle_core::bail!(
                "conv2d + sub-pixel shuffle: the {}x{} phase planes do not hold a {}x{} output at {:?} / {:?}",
                g.oh,
                g.ow,
                self.oh,
                self.ow,
                &self.oy[..f],
                &self.ox[..f]
            );
        }
        Ok(())
    }
}

multiversion! {
    /// One image's `(o/f², oh, ow)` output from its phase planes, phase
    /// channel `c`'s `(g.oh, g.ow)` plane at `src[c·stride..]`.
    fn shuffle_into<T: Float>(s: &Shuffle, g: &Geometry, src: &[T], stride: usize, out: &mut [T]) {
        let (f, oh, ow) = (s.f, s.oh, s.ow);
        let o = out.len() / (oh * ow);
        for (r, dst) in out.chunks_exact_mut(ow).enumerate() {
            // Output row `y` of channel `c`.
            let (c, y) = (r / oh, r % oh);
            let (qy, i) = (y % f, y / f);
            let row = |qx: usize| &src[((qy * f + qx) * o + c) * stride + (i + s.oy[qy]) * g.ow + s.ox[qx]..];
            if f == 2 && ow % 2 == 0 {
                for ((d, &u), &v) in dst.chunks_exact_mut(2).zip(row(0)).zip(row(1)) {
                    d[0] = u;
                    d[1] = v;
                }
            } else {
                for qx in 0..f.min(ow) {
                    for (d, &v) in dst[qx..].iter_mut().step_by(f).zip(row(qx)) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// One image's `dz` (`(o, g.oh, g.ow)`, the phase planes) from the
/// interleaved `dy` and output `y` (`(o/f², oh, ow)`): `dy · act'(y)` over
/// the image in one pass, then gathered back into the phases, zero where no
/// output reads.
fn unshuffle_dz<T: Float>(s: &Shuffle, g: &Geometry, dy: &[T], y: Option<&[T]>, act: Act, dz: &mut [T]) {
    let (f, oh, ow, l) = (s.f, s.oh, s.ow, g.oh * g.ow);
    let o = dy.len() / (oh * ow);
    let mut scratch = Vec::new();
    let dzy = dz_chunk(dy, y, act, &mut scratch);
    dz.fill(T::default());
    for (r, row) in dzy.chunks_exact(ow).enumerate() {
        // Output row `yy` of channel `c`.
        let (c, yy) = (r / oh, r % oh);
        let (qy, i) = (yy % f, yy / f);
        for qx in 0..f.min(ow) {
            let start = ((qy * f + qx) * o + c) * l + (i + s.oy[qy]) * g.ow + s.ox[qx];
            for (d, &v) in dz[start..].iter_mut().zip(row[qx..].iter().step_by(f)) {
                *d = v;
            }
        }
    }
}

/// `act(conv2d(x, W, padding, stride, dilation) + b)`, then the optional
/// 2×2 max pool; `(b, c, h, w)` by `(o, c, kh, kw)` and `(o,)`.
#[derive(Clone, Debug)]
struct Conv2dFused {
    cfg: ConvCfg,
    /// With the pool: each window's first maximum (`0..4`, row-major), one
    /// byte per pooled output, written by the forward for the backward.
    argmax: Arc<Mutex<Vec<u8>>>,
}

impl ConvCfg {
    fn geometry(&self, lx: &Layout, lw: &Layout) -> Result<(usize, usize, Geometry)> {
        let (b, c, h, w) = lx.shape().dims4()?;
        let (o, kc, kh, kw) = lw.shape().dims4()?;
        if kc != c {
            candle_core::bail!("conv2d: input has {c} channels, the kernel expects {kc}");
        }
        let g = Geometry::for_conv(c, h, w, kh, kw, self.stride, self.padding, self.dilation)?;
        if let Post::Shuffle(s) = &self.post {
            s.check(&g, o)?;
        }
        if self.post == Post::Pool2 && (g.oh < 2 || g.ow < 2) {
            candle_core::bail!(
                "conv2d + max_pool2d: the {}x{} output is smaller than the 2x2 window",
                g.oh,
                g.ow
            );
        }
        Ok((b, o, g))
    }

    /// One image's stored output `(channels, rows, columns)` for `o` conv
    /// output channels.
    fn out_dims(&self, o: usize, g: &Geometry) -> (usize, usize, usize) {
        match self.post {
            Post::Plain => (o, g.oh, g.ow),
            Post::Pool2 => (o, g.oh / 2, g.ow / 2),
            Post::Shuffle(s) => (o / (s.f * s.f), s.oh, s.ow),
        }
    }

    /// Stored outputs per image.
    fn out_image(&self, o: usize, g: &Geometry) -> usize {
        let (c, h, w) = self.out_dims(o, g);
        c * h * w
    }

    /// The output's shape for a batch of `b` and `o` conv output channels.
    fn out_shape(&self, b: usize, o: usize, g: &Geometry) -> Shape {
        let (c, h, w) = self.out_dims(o, g);
        Shape::from((b, c, h, w))
    }

    /// One image's `dz` (`(o, g.oh, g.ow)`) into `dz`, from its stored
    /// output's `dy` and `y` (and, pooled, its window maxima `arg`).
    fn dz_into_image<T: Float>(&self, g: &Geometry, (dy, y, arg): (&[T], Option<&[T]>, &[u8]), dz: &mut [T]) {
        match &self.post {
            Post::Plain => dz_into(dy, y, self.act, dz),
            Post::Pool2 => unpool2(dy, y, arg, self.act, g.oh, g.ow, dz),
            Post::Shuffle(s) => unshuffle_dz(s, g, dy, y, self.act, dz),
        }
    }

    /// [`ConvCfg::dz_into_image`] for `o` conv outputs into `scratch`, or
    /// `dy` itself where there is nothing to do (no activation, stored as is).
    fn dz_image<'a, T: Float>(
        &self,
        g: &Geometry,
        o: usize,
        (dy, y, arg): (&'a [T], Option<&[T]>, &[u8]),
        scratch: &'a mut Vec<T>,
    ) -> &'a [T] {
        if self.post == Post::Plain {
            return dz_chunk(dy, y, self.act, scratch);
        }
        scratch.resize(o * g.oh * g.ow, T::default());
        self.dz_into_image(g, (dy, y, arg), scratch);
        scratch
    }
}

fn lock(m: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn conv_fwd<T: Float>(
    op: &Conv2dFused,
    (x, lx): (&CpuStorage, &Layout),
    (w, lw): (&CpuStorage, &Layout),
    (bias, lb): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let cfg = op.cfg;
    let (b, o, g) = cfg.geometry(lx, lw)?;
    let (x, w, bias) = (
        contiguous::<T>(x, lx, "conv2d")?,
        contiguous::<T>(w, lw, "conv2d")?,
        contiguous::<T>(bias, lb, "conv2d")?,
    );
    let (k, l, img, per) = (g.c * g.kh * g.kw, g.oh * g.ow, g.c * g.h * g.w, cfg.out_image(o, &g));
    let mut out = vec![T::default(); b * per];
    let mut argmax = lock(&op.argmax);
    argmax.clear();
    if cfg.post == Post::Pool2 {
        argmax.resize(b * per, 0);
    }
    let (per_image, par) = par_for(b);
    let u = Unfold::new(&g);
    let wk = u.kernel(w, o, &g);
    // One input or output channel: no unfolding at all (`direct`).
    let direct = direct::suits(&g, o);
    // f32 with AVX2: yᵀ (l×o) = colsᵀ (l×k) · Wᵀ (k×o), `Wᵀ` packed once for
    // every image, the unfolded image read in place, bias and activation in
    // the epilogue, the tiles stored transposed into `y` (o×l).
    // At stride 1 not even the unfolded image is written: the GEMM reads
    // the padded image through a table of tap offsets
    // (`direct::Implicit`), `Wᵀ` in the kernel's own order.
    let implicit = match (T::as_f32(w), !direct && direct::Implicit::suits(&g, o)) {
        (Some(w32), true) => Some((direct::Implicit::new(&g), PackedB::pack(k, o, Strided::new(w32, 1, k)))),
        _ => None,
    };
    let wt = match (
        T::as_f32(&wk),
        implicit.is_none() && !direct && sgemm::available() && o >= 16 && k >= 64,
    ) {
        (Some(w32), true) => Some(PackedB::pack(k, o, Strided::new(w32, 1, k))),
        _ => None,
    };
    let bias32 = T::as_f32(bias);
    if let (Some((im, pb)), Some(x32), Some(b32), Some(out32)) =
        (&implicit, T::as_f32(x), bias32, T::as_f32_mut(&mut out))
    {
        conv_fwd_implicit(x32, b, &g, cfg, im, pb, b32, out32, &mut argmax);
        drop(argmax);
        return Ok((T::storage(out), cfg.out_shape(b, o, &g)));
    }
    // Scratch per task: the unfolded image, the pre-pool activations, the
    // phase-split or channels-last image.
    let run = |(i, (y, arg)): (usize, (&mut [T], Option<&mut [u8]>)),
               (cols, pre, split): &mut (Vec<T>, Vec<T>, Vec<T>)| {
        let full: &mut [T] = if cfg.post == Post::Plain { &mut *y } else { &mut pre[..] };
        let xi = &x[i * img..(i + 1) * img];
        if direct {
            full.fill(T::default());
            direct::forward(xi, w, &g, o, full, split);
            bias_act(full, bias, l, cfg.act);
        } else {
            u.unfold(xi, &g, cols, split);
            if let (Some(pb), Some(cols), Some(full)) = (&wt, T::as_f32(cols), T::as_f32_mut(full)) {
                let (rs, cs) = u.lk();
                let epi = Epilogue {
                    col_bias: bias32,
                    act: cfg.act,
                    ..Epilogue::default()
                };
                sgemm::gemm_packed(l, Strided::new(cols, rs, cs), pb, full, (1, l), &epi, !per_image);
            } else {
                gemm(o, l, k, full, (l, 1), false, &wk, (k, 1), cols, u.kl(), par);
                bias_act(full, bias, l, cfg.act);
            }
        }
        match (&cfg.post, arg) {
            (Post::Pool2, Some(arg)) => pool2_record(pre, g.oh, g.ow, y, arg),
            (Post::Shuffle(s), _) => shuffle_into(s, &g, pre, l, y),
            _ => {}
        }
    };
    let jobs = out.chunks_mut(per).zip(per_image_slots(&mut argmax, per, b));
    let init = || {
        (
            vec![T::default(); if direct { 0 } else { k * l }],
            vec![T::default(); if cfg.post == Post::Plain { 0 } else { o * l }],
            Vec::new(),
        )
    };
    if per_image {
        jobs.enumerate()
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each_init(init, |scratch, job| run(job, scratch));
    } else {
        let mut scratch = init();
        jobs.enumerate().for_each(|job| run(job, &mut scratch));
    }
    Ok((T::storage(out), cfg.out_shape(b, o, &g)))
}

/// [`conv_fwd`] through the implicit GEMM (f32): chunks of images per
/// product ([`direct::Implicit::chunk`]), chunks in parallel.
#[allow(clippy::too_many_arguments)]
fn conv_fwd_implicit(
    x: &[f32],
    b: usize,
    g: &Geometry,
    cfg: ConvCfg,
    im: &direct::Implicit,
    pb: &PackedB,
    bias: &[f32],
    out: &mut [f32],
    argmax: &mut [u8],
) {
    let (o, l, img) = (pb.n(), g.oh * g.ow, g.c * g.h * g.w);
    let chunk = im.chunk(b, threads());
    let inner = b.div_ceil(chunk) < threads();
    let per = cfg.out_image(o, g);
    let args: Vec<Option<&mut [u8]>> = if cfg.post == Post::Pool2 {
        argmax.chunks_mut(chunk * per).map(Some).collect()
    } else {
        (0..b.div_ceil(chunk)).map(|_| None).collect()
    };
    let jobs: Vec<_> = out.chunks_mut(chunk * per).zip(args).enumerate().collect();
    jobs.into_par_iter().for_each_init(
        || (direct::ImplicitScratch::default(), Vec::new()),
        |(sc, pre), (ci, (ys, arg))| {
            let n = ys.len() / per;
            let xs = &x[ci * chunk * img..(ci * chunk + n) * img];
            match (&cfg.post, arg) {
                (_, Some(arg)) => {
                    pre.resize(n * o * l, 0.0);
                    im.forward(xs, n, g, pb, Some(bias), cfg.act, inner, sc, pre);
                    for j in 0..n {
                        let r = j * per..(j + 1) * per;
                        pool2_record(
                            &pre[j * o * l..(j + 1) * o * l],
                            g.oh,
                            g.ow,
                            &mut ys[r.clone()],
                            &mut arg[r],
                        );
                    }
                }
                // The products' (o, n, l) planes interleaved straight into
                // the images: no phase-plane output is stored.
                (Post::Shuffle(s), None) => im.forward_with(xs, n, g, pb, Some(bias), cfg.act, inner, sc, |by_oc| {
                    for (j, y) in ys.chunks_exact_mut(per).enumerate() {
                        shuffle_into(s, g, &by_oc[j * l..], n * l, y);
                    }
                }),
                (_, None) => im.forward(xs, n, g, pb, Some(bias), cfg.act, inner, sc, ys),
            }
        },
    );
}

/// The stride-1 `dx` of [`conv_bwd_implicit`]: the geometry of the flipped
/// convolution (dz padded by `kh − 1 − p` → dx), its implicit form and the
/// packed flipped kernel.
type FlippedConv = (Geometry, direct::Implicit, PackedB);

/// [`conv_bwd`] with the implicit weight gradient (f32), in chunks of
/// images: dz per chunk, dWᵀ (k×o) accumulated per task, and dx as the
/// flipped convolution (`imp_x`) or, without it, unfolded per image.
#[allow(clippy::too_many_arguments)]
fn conv_bwd_implicit(
    (x, dy, y): (&[f32], &[f32], Option<&[f32]>),
    b: usize,
    g: &Geometry,
    o: usize,
    cfg: ConvCfg,
    argmax: &[u8],
    im: &direct::Implicit,
    imp_x: Option<&FlippedConv>,
    (u, wk, wk_rows): (&Unfold, &[f32], Option<&PackedB>),
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let (k, l, img, per) = (g.c * g.kh * g.kw, g.oh * g.ow, g.c * g.h * g.w, cfg.out_image(o, g));
    let chunk = im.chunk(b, threads());
    let nchunks = b.div_ceil(chunk);
    let inner = nchunks < threads();
    let slots: Vec<Option<&mut [f32]>> = if dx.is_empty() {
        (0..nchunks).map(|_| None).collect()
    } else {
        dx.chunks_mut(chunk * img).map(Some).collect()
    };
    type Acc = (
        Vec<f32>,
        Vec<f32>,
        direct::ImplicitScratch,
        Vec<f32>,
        Vec<f32>,
        Vec<f32>,
    );
    let init = || -> Acc {
        (
            vec![0.0; k * o],
            vec![0.0; o],
            Default::default(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        )
    };
    let work = |mut acc: Acc, (ci, dxc): (usize, Option<&mut [f32]>)| -> Acc {
        let (pwt, pb, sc, dz, dcols, split) = &mut acc;
        let i0 = ci * chunk;
        let n = chunk.min(b - i0);
        dz.resize(n * o * l, 0.0);
        for j in 0..n {
            let i = i0 + j;
            let r = i * per..(i + 1) * per;
            let dzi = &mut dz[j * o * l..(j + 1) * o * l];
            let arg = argmax.get(r.clone()).unwrap_or_default();
            cfg.dz_into_image(g, (&dy[r.clone()], y.map(|y| &y[r]), arg), dzi);
            for (oo, row) in dzi.chunks(l).enumerate() {
                pb[oo] += sum(row);
            }
        }
        let xs = &x[i0 * img..(i0 + n) * img];
        im.weights(xs, dz, n, g, o, inner, sc, pwt);
        if let Some(dxc) = dxc {
            match imp_x {
                Some((f, imx, pbx)) => imx.forward(dz, n, f, pbx, None, Act::None, inner, sc, dxc),
                None => {
                    dcols.resize(k * l, 0.0);
                    let par = if inner { lin_par() } else { Parallelism::None };
                    let kl = u.kl();
                    for j in 0..n {
                        let dzj = &dz[j * o * l..(j + 1) * o * l];
                        match wk_rows {
                            // dcolsᵀ (l×k) = dz_jᵀ (l×o) · W (o×k), `W` packed once.
                            Some(pbw) => sgemm::gemm_packed(
                                l,
                                Strided::new(dzj, 1, l),
                                pbw,
                                dcols,
                                (kl.1, kl.0),
                                &Epilogue::default(),
                                inner,
                            ),
                            // dcols (k×l) = Wᵀ (k×o) · dz_j (o×l)
                            None => gemm(k, l, o, dcols, kl, false, wk, (1, k), dzj, (l, 1), par),
                        }
                        u.fold(dcols, g, &mut dxc[j * img..(j + 1) * img], split);
                    }
                }
            }
        }
        acc
    };
    sum_partials(slots, init, work, |(pwt, pb, ..)| (pwt, pb), (k * o, o))
}

fn conv_bwd<T: Float>(
    op: &Conv2dFused,
    need_dx: bool,
    (x, lx): (&CpuStorage, &Layout),
    (w, lw): (&CpuStorage, &Layout),
    (dy, ly): (&CpuStorage, &Layout),
    y: Option<&[T]>,
) -> Result<(CpuStorage, Shape)> {
    let cfg = op.cfg;
    let (b, o, g) = cfg.geometry(lx, lw)?;
    let (x, w, dy) = (
        contiguous::<T>(x, lx, "conv2d-grad")?,
        contiguous::<T>(w, lw, "conv2d-grad")?,
        contiguous::<T>(dy, ly, "conv2d-grad")?,
    );
    let (k, l, img, per) = (g.c * g.kh * g.kw, g.oh * g.ow, g.c * g.h * g.w, cfg.out_image(o, &g));
    let argmax = lock(&op.argmax);
    if cfg.post == Post::Pool2 && argmax.len() != b * per {
        candle_core::bail!("conv2d + max_pool2d: the backward ran without its forward's window maxima");
    }
    let (nx, nw) = (if need_dx { b * img } else { 0 }, o * k);
    let mut packed = vec![T::default(); nx + nw + o];
    let (dx, rest) = packed.split_at_mut(nx);
    let (dw, db) = rest.split_at_mut(nw);
    let (per_image, par) = par_for(b);
    let u = Unfold::new(&g);
    let wk = u.kernel(w, o, &g);
    // The direct kernels keep dW in the kernel's own layout.
    let direct = direct::suits(&g, o);
    // The implicit GEMM (f32): dWᵀ (k×o) = Σ colsᵀ-in-place · dzᵀ, kept in
    // `pw` and transposed at the end; and, at stride 1, dx as the
    // convolution of dz (padded by kh − 1 − p) with the flipped kernel.
    let imp_w =
        (T::as_f32(w).is_some() && !direct && direct::Implicit::suits(&g, o)).then(|| direct::Implicit::new(&g));
    let imp_x = match T::as_f32(w) {
        Some(w32) if need_dx && !direct && g.stride == 1 && g.dilation == 1 && g.kh == g.kw && g.padding < g.kh => {
            let flipped = Geometry::for_conv(o, g.oh, g.ow, g.kh, g.kw, 1, g.kh - 1 - g.padding, 1)
                .ok()
                .filter(|f| f.oh == g.h && f.ow == g.w && direct::Implicit::suits(f, g.c));
            flipped.map(|f| {
                // The flipped kernel as (o·kh·kw) × c: B of dxᵀ = dz-planes · B.
                let (kh, kw, c) = (g.kh, g.kw, g.c);
                let mut wf = vec![0f32; o * kh * kw * c];
                for oo in 0..o {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            for ci in 0..c {
                                wf[((oo * kh + ky) * kw + kx) * c + ci] =
                                    w32[((oo * c + ci) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx)];
                            }
                        }
                    }
                }
                (
                    f,
                    direct::Implicit::new(&f),
                    PackedB::pack(o * kh * kw, c, Strided::new(&wf, c, 1)),
                )
            })
        }
        _ => None,
    };
    // f32 with AVX2: the kernel packed once as the B of every image's dx
    // (`dcolsᵀ = dzᵀ · W`), where dx is unfolded (not where it is the
    // flipped implicit convolution).
    let wk_rows = match T::as_f32(&wk) {
        Some(w32) if need_dx && !(imp_w.is_some() && imp_x.is_some()) && sgemm::available() && k >= 16 => {
            Some(PackedB::pack(o, k, Strided::new(w32, k, 1)))
        }
        _ => None,
    };
    if let (Some(im), Some(x32), Some(dy32), Some(wk32), Some(dx32)) =
        (&imp_w, T::as_f32(x), T::as_f32(dy), T::as_f32(&wk), T::as_f32_mut(dx))
    {
        let y32 = y.map(|y| T::as_f32(y).expect("f32 output"));
        let (pwt, pb) = conv_bwd_implicit(
            (x32, dy32, y32),
            b,
            &g,
            o,
            cfg,
            &argmax,
            im,
            imp_x.as_ref(),
            (&u, wk32, wk_rows.as_ref()),
            dx32,
        );
        // dWᵀ (k×o) → dW (o×k).
        transpose_into(&pwt, o, T::as_f32_mut(dw).expect("f32"));
        T::as_f32_mut(db).expect("f32").copy_from_slice(&pb);
        drop(argmax);
        return Ok(packed_storage(packed));
    }
    // f32 with AVX2: dWᵀ (k×o) accumulated by sgemm (`pw` holds it
    // transposed); dx through `wk_rows`.
    let dw_t = T::as_f32(w).is_some() && !direct && o >= 16 && sgemm::available();
    // Per task: (dW, db) partial sums and the scratch matrices.
    type Acc<T> = (Vec<T>, Vec<T>, Vec<T>, Vec<T>, Vec<T>, Vec<T>);
    let work = |(i, dxi): (usize, Option<&mut [T]>), acc: &mut Acc<T>| {
        let (pw, pb, cols, dcols, dzbuf, split) = acc;
        let r = i * per..(i + 1) * per;
        let arg = argmax.get(r.clone()).unwrap_or_default();
        let dzi = cfg.dz_image(&g, o, (&dy[r.clone()], y.map(|y| &y[r]), arg), dzbuf);
        for (oo, row) in dzi.chunks(l).enumerate() {
            pb[oo] += sum(row);
        }
        let xi = &x[i * img..(i + 1) * img];
        if direct {
            direct::weights(xi, dzi, &g, o, pw, split);
            if let Some(dxi) = dxi {
                direct::adjoint(dzi, w, &g, o, dxi, split);
            }
            return;
        }
        u.unfold(xi, &g, cols, split);
        let (kl, inner) = (u.kl(), !per_image);
        if let (Some(cols32), Some(dz32), Some(pw32), true) = (T::as_f32(cols), T::as_f32(dzi), T::as_f32_mut(pw), dw_t)
        {
            // dWᵀ (k×o) += cols (k×l) · dz_iᵀ (l×o), transposed at the end.
            let pb = PackedB::pack(l, o, Strided::new(dz32, 1, l));
            sgemm::gemm_packed(
                k,
                Strided::new(cols32, kl.0, kl.1),
                &pb,
                pw32,
                (o, 1),
                &Epilogue::ACCUMULATE,
                inner,
            );
        } else {
            // dW (o×k) += dz_i (o×l) · colsᵀ (l×k)
            gemm(o, k, l, pw, (k, 1), true, dzi, (l, 1), cols, u.lk(), par);
        }
        if let Some(dxi) = dxi {
            if let (Some(pbw), Some(dz32), Some(dcols32)) = (&wk_rows, T::as_f32(dzi), T::as_f32_mut(dcols)) {
                // dcolsᵀ (l×k) = dz_iᵀ (l×o) · W (o×k), `W` packed once.
                sgemm::gemm_packed(
                    l,
                    Strided::new(dz32, 1, l),
                    pbw,
                    dcols32,
                    (kl.1, kl.0),
                    &Epilogue::default(),
                    inner,
                );
            } else {
                // dcols (k×l) = Wᵀ (k×o) · dz_i (o×l)
                gemm(k, l, o, dcols, u.kl(), false, &wk, (1, k), dzi, (l, 1), par);
            }
            u.fold(dcols, &g, dxi, split);
        }
    };
    let unfolded = if direct { 0 } else { k * l };
    let init = || {
        (
            vec![T::default(); nw],
            vec![T::default(); o],
            vec![T::default(); unfolded],
            vec![T::default(); unfolded],
            Vec::new(),
            Vec::new(),
        )
    };
    let slots = per_image_slots(dx, img, b);
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
        dw.copy_from_slice(&u.kernel_back(pw, o, &g, dw_t));
    }
    db.copy_from_slice(&pb);
    Ok(packed_storage(packed))
}

impl FusedLayer for Conv2dFused {
    const NAME: &'static str = "aezoo-conv2d-fused";
    const GRAD_NAME: &'static str = "aezoo-conv2d-fused-grad";

    fn act(&self) -> Act {
        self.cfg.act
    }

    fn forward<T: Float>(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        conv_fwd::<T>(self, x, w, b)
    }

    fn backward<T: Float>(
        &self,
        need_dx: bool,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        dy: (&CpuStorage, &Layout),
        y: Option<&[T]>,
    ) -> Result<(CpuStorage, Shape)> {
        conv_bwd::<T>(self, need_dx, x, w, dy, y)
    }
}

#[allow(clippy::too_many_arguments)]
fn conv2d_fused(
    xs: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    act: Act,
    post: Post,
) -> Result<Tensor> {
    let cfg = ConvCfg {
        padding,
        stride,
        dilation,
        act,
        post,
    };
    let op = Conv2dFused {
        cfg,
        argmax: Arc::default(),
    };
    scaffold::apply(op, xs, kernel, bias)
}

/// `act(conv2d(xs, kernel) + bias)` as one node (CPU, f32/f64, groups = 1).
pub fn conv2d(
    xs: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    act: Act,
) -> Result<Tensor> {
    conv2d_fused(xs, kernel, bias, padding, stride, dilation, act, Post::Plain)
}

/// `act(conv2d(xs, kernel) + bias)` (stride 1) with its `f²·o` outputs
/// interleaved as `shuffle` says into `(b, o, oh, ow)`, as one node (CPU,
/// f32/f64): the sub-pixel form of an upsampling conv
/// ([`crate::subpixel`]), its phase planes never stored whole.
pub fn conv2d_shuffled(
    xs: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    padding: usize,
    act: Act,
    shuffle: Shuffle,
) -> Result<Tensor> {
    conv2d_fused(xs, kernel, bias, padding, 1, 1, act, Post::Shuffle(shuffle))
}

/// `max_pool2d(act(conv2d(xs, kernel) + bias), 2, 2)` as one node (CPU,
/// f32/f64, groups = 1): the full-size activations live only in a per-image
/// buffer, and the backward routes each window's gradient to its first
/// maximum as [`crate::max_pool2d`] does.
pub fn conv2d_pool2(
    xs: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    act: Act,
) -> Result<Tensor> {
    conv2d_fused(xs, kernel, bias, padding, stride, dilation, act, Post::Pool2)
}
