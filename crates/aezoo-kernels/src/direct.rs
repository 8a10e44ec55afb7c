//! Convolution without im2col. First, direct kernels for the layers where
//! an unfolded matrix is mostly overhead: one output channel (a final
//! layer, whose GEMM is a single row: `ae-denoise`'s head, 32 → 1 on
//! 28 × 28, batch 128, 5.0 → 3.0 ms forward and 13 → 9.4 ms backward).
//! The image is zero-padded and split into its stride's `s × s`
//! phases, each a plane of `hq × wq`; output row `oy` then reads row
//! `oy + ky/s` of phase `(ky mod s, kx mod s)` from column `kx/s` on. Laid
//! out with the phases' row length `wq` (the columns past `ow` are junk,
//! dropped at the end), every kernel tap is one long multiply-add over the
//! whole output plane, four taps per pass, and nothing the size of `K × L`
//! is written.
//!
//! The three products of a convolution with geometry `g` (an image
//! `(c, h, w)`, a kernel `(oc, c, kh, kw)`, outputs `(oc, oh, ow)`,
//! dilation 1):
//!
//! ```text
//! forward   y[o][oy][ox]  += Σ w[o][c][ky][kx] · x[c][oy·s + ky − p][ox·s + kx − p]
//! adjoint   dx[c][iy][ix] += Σ w[o][c][ky][kx] · dy[o][oy][ox]      (iy = oy·s + ky − p, …)
//! weights   dw[o][c][ky][kx] += Σ dy[o][oy][ox] · x[c][oy·s + ky − p][ox·s + kx − p]
//! ```
//!
//! The adjoint is also the forward of a transposed convolution, whose
//! weight gradient is `weights` with the roles of `x` and `dy` exchanged.
//! No multiply-add is contracted and the sums run over fixed lanes: every
//! SIMD version computes the same bits.
//!
//! Second, [`Implicit`]: the same padded planes read in place by
//! [`crate::sgemm`] through a table of tap offsets, for stride-1
//! convolutions with many channels.

use crate::float::Float;
use crate::im2col::Geometry;

/// Whether the direct kernels serve geometry `g` with `oc` output channels:
/// dilation 1, stride at most 4, one output channel. (With one *input*
/// channel and 32 outputs the GEMM path was faster: `ae-denoise`'s first
/// conv 1.7 against 2.4 ms forward, batch 128.)
pub(crate) fn suits(g: &Geometry, oc: usize) -> bool {
    g.dilation == 1 && (1..=4).contains(&g.stride) && oc == 1
}

/// The padded, phase-split layout of one geometry.
#[derive(Clone, Copy)]
pub(crate) struct Planes {
    s: usize,
    /// Rows and columns of one phase plane (one spare row: the junk
    /// columns of the last output row read past the last phase row).
    hq: usize,
    wq: usize,
    /// Output rows times `wq`: the length of every multiply-add.
    len: usize,
}

impl Planes {
    pub(crate) fn new(g: &Geometry) -> Self {
        let s = g.stride;
        let (hp, wp) = (g.h + 2 * g.padding, g.w + 2 * g.padding);
        let wq = wp.div_ceil(s);
        Self {
            s,
            hq: hp.div_ceil(s) + 1,
            wq,
            len: g.oh * wq,
        }
    }

    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    /// Floats in all phase planes of `c` channels.
    fn size(&self, c: usize) -> usize {
        c * self.s * self.s * self.plane()
    }

    /// Where tap `(ky, kx)` of channel `c` starts reading.
    #[inline]
    fn tap(&self, c: usize, ky: usize, kx: usize) -> usize {
        let s = self.s;
        ((c * s + ky % s) * s + kx % s) * self.plane() + (ky / s) * self.wq + kx / s
    }

    /// Calls `f(first, x0)` for the phases of input row `iy` of channel
    /// `c`: the row's pixels `x0, x0 + s, …` land contiguously in one phase
    /// row, from index `first` of the planes on.
    #[inline]
    fn row_phases(&self, g: &Geometry, c: usize, iy: usize, mut f: impl FnMut(usize, usize)) {
        let (s, py) = (self.s, iy + g.padding);
        for b in 0..s {
            // The first pixel x0 with (x0 + p) mod s = b.
            let x0 = (b + s - g.padding % s) % s;
            if x0 >= g.w {
                continue;
            }
            let first = ((c * s + py % s) * s + b) * self.plane() + (py / s) * self.wq + (x0 + g.padding) / s;
            f(first, x0);
        }
    }
}

/// `x` (`c` planes of `h × w`) into padded phase planes (`out`, zeroed first).
fn to_planes<T: Float>(x: &[T], g: &Geometry, p: &Planes, out: &mut Vec<T>) {
    out.resize(p.size(g.c), T::default());
    fill_planes(x, g, p, out);
}

/// [`to_planes`] into a slice of `p.size(c)` floats.
fn fill_planes<T: Float>(x: &[T], g: &Geometry, p: &Planes, out: &mut [T]) {
    out.fill(T::default());
    for c in 0..g.c {
        for iy in 0..g.h {
            let row = &x[(c * g.h + iy) * g.w..(c * g.h + iy + 1) * g.w];
            p.row_phases(g, c, iy, |first, x0| {
                if p.s == 1 {
                    out[first..first + g.w].copy_from_slice(row);
                } else {
                    // Every s-th pixel from x0 (a chunk's first: compiled
                    // to shuffles, where an indexed loop became a slow
                    // hardware gather on AMD).
                    for (d, c) in out[first..].iter_mut().zip(row[x0..].chunks(p.s)) {
                        *d = c[0];
                    }
                }
            });
        }
    }
}

/// `dx +=` the input pixels of padded phase planes.
fn add_from_planes<T: Float>(planes: &[T], g: &Geometry, p: &Planes, dx: &mut [T]) {
    for c in 0..g.c {
        for iy in 0..g.h {
            let row = &mut dx[(c * g.h + iy) * g.w..(c * g.h + iy + 1) * g.w];
            p.row_phases(g, c, iy, |first, x0| {
                if p.s == 1 {
                    for (d, &v) in row.iter_mut().zip(&planes[first..first + g.w]) {
                        *d += v;
                    }
                } else {
                    for (c, &v) in row[x0..].chunks_mut(p.s).zip(&planes[first..]) {
                        c[0] += v;
                    }
                }
            });
        }
    }
}

/// Output rows `(oc, oh, ow)` spread to row length `wq`, junk columns zero.
fn to_wide<T: Float>(dy: &[T], g: &Geometry, p: &Planes, oc: usize, out: &mut Vec<T>) {
    out.clear();
    out.resize(oc * p.len, T::default());
    for (o, wide) in out.chunks_exact_mut(p.len).enumerate() {
        for oy in 0..g.oh {
            wide[oy * p.wq..oy * p.wq + g.ow].copy_from_slice(&dy[(o * g.oh + oy) * g.ow..(o * g.oh + oy + 1) * g.ow]);
        }
    }
}

/// `acc[j] += Σ_t w_t · src_t[j]` over four (or fewer) taps at once: one
/// load and store of `acc` per four multiply-adds.
#[inline(always)]
fn madd4<T: Float>(acc: &mut [T], srcs: &[&[T]], ws: &[T]) {
    match srcs.len() {
        4 => {
            let (s0, s1, s2, s3) = (
                &srcs[0][..acc.len()],
                &srcs[1][..acc.len()],
                &srcs[2][..acc.len()],
                &srcs[3][..acc.len()],
            );
            let (w0, w1, w2, w3) = (ws[0], ws[1], ws[2], ws[3]);
            for ((((a, &v0), &v1), &v2), &v3) in acc.iter_mut().zip(s0).zip(s1).zip(s2).zip(s3) {
                *a += ((w0 * v0 + w1 * v1) + w2 * v2) + w3 * v3;
            }
        }
        n => {
            for t in 0..n {
                let (src, wv) = (&srcs[t][..acc.len()], ws[t]);
                for (a, &v) in acc.iter_mut().zip(src) {
                    *a += wv * v;
                }
            }
        }
    }
}

multiversion! {
    /// `y (oc, oh, ow) += conv(x (c, h, w), w (oc, c, kh, kw))`.
    pub(crate) fn forward<T: Float>(x: &[T], wt: &[T], g: &Geometry, oc: usize, y: &mut [T], scratch: &mut Vec<T>) {
        let p = Planes::new(g);
        let mut planes = std::mem::take(scratch);
        to_planes(x, g, &p, &mut planes);
        let taps: Vec<(usize, usize, usize)> = (0..g.c)
            .flat_map(|c| (0..g.kh).flat_map(move |ky| (0..g.kw).map(move |kx| (c, ky, kx))))
            .collect();
        let mut acc = vec![T::default(); p.len];
        for o in 0..oc {
            acc.fill(T::default());
            for group in taps.chunks(4) {
                let (mut srcs, mut ws): ([&[T]; 4], [T; 4]) = ([&[]; 4], [T::default(); 4]);
                for (t, &(c, ky, kx)) in group.iter().enumerate() {
                    srcs[t] = &planes[p.tap(c, ky, kx)..];
                    ws[t] = wt[((o * g.c + c) * g.kh + ky) * g.kw + kx];
                }
                madd4(&mut acc, &srcs[..group.len()], &ws[..group.len()]);
            }
            for oy in 0..g.oh {
                let dst = &mut y[(o * g.oh + oy) * g.ow..(o * g.oh + oy + 1) * g.ow];
                for (d, &v) in dst.iter_mut().zip(&acc[oy * p.wq..]) {
                    *d += v;
                }
            }
        }
        *scratch = planes;
    }
}

multiversion! {
    /// `dx (c, h, w) += convᵀ(dy (oc, oh, ow), w)`.
    pub(crate) fn adjoint<T: Float>(dy: &[T], wt: &[T], g: &Geometry, oc: usize, dx: &mut [T], scratch: &mut Vec<T>) {
        let p = Planes::new(g);
        let mut wide = Vec::new();
        to_wide(dy, g, &p, oc, &mut wide);
        let mut planes = std::mem::take(scratch);
        planes.clear();
        planes.resize(p.size(g.c), T::default());
        let outs: Vec<&[T]> = wide.chunks_exact(p.len).collect();
        for c in 0..g.c {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let at = p.tap(c, ky, kx);
                    let dst = &mut planes[at..at + p.len];
                    for (og, srcs) in outs.chunks(4).enumerate() {
                        let mut ws = [T::default(); 4];
                        for (t, wv) in ws.iter_mut().enumerate().take(srcs.len()) {
                            *wv = wt[(((og * 4 + t) * g.c + c) * g.kh + ky) * g.kw + kx];
                        }
                        madd4(dst, srcs, &ws[..srcs.len()]);
                    }
                }
            }
        }
        add_from_planes(&planes, g, &p, dx);
        *scratch = planes;
    }
}

multiversion! {
    /// `dw (oc, c, kh, kw) += Σ dy (oc, oh, ow) · shifted x (c, h, w)`, each
    /// tap's sum in 8 lanes.
    pub(crate) fn weights<T: Float>(x: &[T], dy: &[T], g: &Geometry, oc: usize, dw: &mut [T], scratch: &mut Vec<T>) {
        let p = Planes::new(g);
        let mut planes = std::mem::take(scratch);
        to_planes(x, g, &p, &mut planes);
        let mut wide = Vec::new();
        to_wide(dy, g, &p, oc, &mut wide);
        for o in 0..oc {
            let d = &wide[o * p.len..(o + 1) * p.len];
            for c in 0..g.c {
                for ky in 0..g.kh {
                    let mut kx0 = 0;
                    while kx0 < g.kw {
                        let n = 4.min(g.kw - kx0);
                        let mut lanes = [[T::default(); 8]; 4];
                        let mut tails = [T::default(); 4];
                        for t in 0..n {
                            let src = &planes[p.tap(c, ky, kx0 + t)..][..p.len];
                            let (dc, sc) = (d.chunks_exact(8), src.chunks_exact(8));
                            for (&a, &b) in dc.remainder().iter().zip(sc.remainder()) {
                                tails[t] += a * b;
                            }
                            for (dc, sc) in dc.zip(sc) {
                                for ((l, &a), &b) in lanes[t].iter_mut().zip(dc).zip(sc) {
                                    *l += a * b;
                                }
                            }
                        }
                        for t in 0..n {
                            let mut sum = tails[t];
                            for l in lanes[t] {
                                sum += l;
                            }
                            dw[((o * g.c + c) * g.kh + ky) * g.kw + kx0 + t] += sum;
                        }
                        kx0 += n;
                    }
                }
            }
        }
        *scratch = planes;
    }
}

// ---------------------------------------------------------------- implicit GEMM (f32)

/// A convolution as a GEMM over the padded phase planes read in place
/// (f32, [`crate::sgemm`]): row `(i, l)` of `colsᵀ` is output pixel `l =
/// oy·ow + ox` of image `i`, read from offset `i·planes + oy·wq + ox` (a
/// table: no junk columns past `ow`, at any stride), column `kidx = (c,
/// ky, kx)` the tap offset `koff[kidx]` — the unfolded matrix is never
/// written. (Used at stride 1: see [`Implicit::suits`].)
pub(crate) struct Implicit {
    planes: Planes,
    /// Tap offsets in the kernel's `(c, ky, kx)` order.
    koff: Vec<usize>,
    /// Output pixels, `oh·ow`, and the row length `ow`.
    m: usize,
    ow: usize,
    /// Where output pixel `l` reads in one image's planes (`oy·wq + ox`).
    pix: Vec<usize>,
}

/// `(a, b, m)` → `(b, a, m)`: blocks of `m` floats with the two outer axes
/// exchanged (a chunk's `(oc, n, l)` products ↔ its `(n, oc, l)` images).
fn swap_outer(src: &[f32], a: usize, b: usize, m: usize, dst: &mut [f32]) {
    for (i, rows) in src.chunks_exact(b * m).take(a).enumerate() {
        for (j, block) in rows.chunks_exact(m).enumerate() {
            dst[(j * a + i) * m..(j * a + i + 1) * m].copy_from_slice(block);
        }
    }
}

/// Per-task buffers of [`Implicit`].
#[derive(Default)]
pub(crate) struct ImplicitScratch {
    planes: Vec<f32>,
    /// A product's `C` or `B` in `(oc, n, l)` order.
    by_oc: Vec<f32>,
    /// Offsets of the output pixels of a chunk of images (rows of `colsᵀ`,
    /// or the `k` steps of the weight gradient), for `key`.
    pixels: Vec<usize>,
    key: (usize, usize, usize, usize, usize),
}

impl ImplicitScratch {
    /// The planes of `n` images, each at `i·per_image`.
    fn planes_of(&mut self, xs: &[f32], n: usize, g: &Geometry, p: &Planes) {
        let per = p.size(g.c);
        self.planes.resize(n * per, 0.0);
        for (img, dst) in xs.chunks_exact(g.c * g.h * g.w).zip(self.planes.chunks_exact_mut(per)) {
            fill_planes(img, g, p, dst);
        }
    }

    /// `pixels[i·m + l] = i·per_image + pix[l]`: pixel `l` of image `i`.
    fn pixels_of(&mut self, n: usize, im: &Implicit, per: usize) {
        // (`pix` is fixed by `oh`, `ow` and `wq`.)
        let key = (n, im.m, im.ow, per, im.planes.wq);
        if self.key != key {
            self.pixels = (0..n).flat_map(|i| im.pix.iter().map(move |&l| i * per + l)).collect();
            self.key = key;
        }
    }
}

impl Implicit {
    /// Whether `g` takes the implicit GEMM with `oc` outputs: stride and
    /// dilation 1, at least 16 outputs (a full panel) and `K ≥ 64`. (At
    /// stride 2 the planes serve too, but on `vae-conv`'s 14 → 7 conv
    /// unfolding was faster: 3.1–3.5 against 3.6 ms forward, the backward
    /// even, `layer_speed vae`; a tap's pixels there sit in another phase
    /// plane from the next tap's, where an unfolded row is contiguous.)
    pub(crate) fn suits(g: &Geometry, oc: usize) -> bool {
        g.dilation == 1 && g.stride == 1 && oc >= 16 && g.c * g.kh * g.kw >= 64 && crate::sgemm::available()
    }

    pub(crate) fn new(g: &Geometry) -> Self {
        let planes = Planes::new(g);
        let koff = (0..g.c)
            .flat_map(|c| (0..g.kh).flat_map(move |ky| (0..g.kw).map(move |kx| (c, ky, kx))))
            .map(|(c, ky, kx)| planes.tap(c, ky, kx))
            .collect();
        let pix = (0..g.oh)
            .flat_map(|oy| (0..g.ow).map(move |ox| oy * planes.wq + ox))
            .collect();
        Self {
            planes,
            koff,
            m: g.oh * g.ow,
            ow: g.ow,
            pix,
        }
    }

    /// Images per product for a batch of `b` on `threads`: about 512
    /// output pixels (small maps fill whole tiles and share each packed
    /// panel), and at least one chunk per thread.
    pub(crate) fn chunk(&self, b: usize, threads: usize) -> usize {
        (512 / self.m).clamp(1, b.div_ceil(threads.max(1)).max(1))
    }

    /// `out (n, oc, oh, ow) = act(conv(xs) + bias)` for `n` images at once,
    /// `wt` the packed `Wᵀ` (`K × oc`, kernel order).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        xs: &[f32],
        n: usize,
        g: &Geometry,
        wt: &crate::sgemm::PackedB,
        bias: Option<&[f32]>,
        act: crate::Act,
        parallel: bool,
        sc: &mut ImplicitScratch,
        out: &mut [f32],
    ) {
        let (oc, m) = (wt.n(), self.m);
        self.forward_with(xs, n, g, wt, bias, act, parallel, sc, |by_oc| {
            swap_outer(by_oc, oc, n, m, out)
        });
    }

    /// [`Implicit::forward`] handing the finished product to `store` (once)
    /// as `(oc, n, oh·ow)`: channel `c` of image `j` at `(c·n + j)·oh·ow`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_with(
        &self,
        xs: &[f32],
        n: usize,
        g: &Geometry,
        wt: &crate::sgemm::PackedB,
        bias: Option<&[f32]>,
        act: crate::Act,
        parallel: bool,
        sc: &mut ImplicitScratch,
        store: impl FnOnce(&[f32]),
    ) {
        use crate::sgemm::{self, Epilogue, Index, Lhs};
        let (oc, m) = (wt.n(), self.m);
        sc.planes_of(xs, n, g, &self.planes);
        let mut by_oc = std::mem::take(&mut sc.by_oc);
        by_oc.resize(oc * n * m, 0.0);
        sc.pixels_of(n, self, self.planes.size(g.c));
        let a = Lhs {
            data: &sc.planes,
            rows: Index::Table(&sc.pixels),
            cols: Index::Table(&self.koff),
        };
        let epi = Epilogue {
            col_bias: bias,
            act,
            ..Epilogue::default()
        };
        // yᵀ (n·m × oc), stored transposed: (oc, n, m), then (n, oc, m).
        sgemm::gemm_packed(n * m, a, wt, &mut by_oc, (1, n * m), &epi, parallel);
        store(&by_oc);
        sc.by_oc = by_oc;
    }

    /// `dwᵀ (K × oc) += Σ colsᵀ · dy` over `n` images: `xs` their inputs,
    /// `dys` `(n, oc, oh, ow)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn weights(
        &self,
        xs: &[f32],
        dys: &[f32],
        n: usize,
        g: &Geometry,
        oc: usize,
        parallel: bool,
        sc: &mut ImplicitScratch,
        dwt: &mut [f32],
    ) {
        use crate::sgemm::{self, Epilogue, Index, Lhs, PackedB, Strided};
        let m = self.m;
        sc.planes_of(xs, n, g, &self.planes);
        // dy as (oc, n, m).
        sc.by_oc.resize(oc * n * m, 0.0);
        swap_outer(dys, n, oc, m, &mut sc.by_oc);
        // B = dyᵀ (n·m × oc).
        let pb = PackedB::pack(n * m, oc, Strided::new(&sc.by_oc, 1, n * m));
        sc.pixels_of(n, self, self.planes.size(g.c));
        let a = Lhs {
            data: &sc.planes,
            rows: Index::Table(&self.koff),
            cols: Index::Table(&sc.pixels),
        };
        sgemm::gemm_packed(self.koff.len(), a, &pb, dwt, (oc, 1), &Epilogue::ACCUMULATE, parallel);
    }
}
