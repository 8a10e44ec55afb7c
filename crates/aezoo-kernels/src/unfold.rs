//! Unfolding one image for a convolution's GEMM, per image into a buffer
//! that stays in cache: plane rows (im2col, `(c·kh·kw, oh·ow)`; strides up
//! to 8 split each row into its phases first, so every strip is a
//! contiguous copy) or channels-last patch rows (im2row, `(oh·ow,
//! kh·kw·c)`; small maps with many channels), and the adjoint folds that
//! sum the overlaps back (col2im, row2im). [`Unfold`] picks the layout and
//! reads either as the same `K × L` matrix.

use crate::float::Float;
use crate::im2col::Geometry;
use crate::scaffold::transpose_into;
use crate::sgemm;

/// The output columns `ox` whose input column `x0 + ox·stride` lies in
/// `0..w`, as a half-open range.
#[inline]
pub(crate) fn valid_cols(x0: isize, stride: usize, w: usize, ow: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if x0 >= 0 { 0 } else { ((-x0) + s - 1) / s };
    let hi = if x0 >= w as isize {
        0
    } else {
        (w as isize - x0 + s - 1) / s
    };
    let (lo, hi) = (lo.min(ow as isize) as usize, hi.min(ow as isize) as usize);
    (lo, hi.max(lo))
}

/// Where each input column lands when a row is split into its stride's
/// phases (`x ≡ p mod s`, each phase contiguous): `offsets[p] + x / s`, for
/// `x % s == p`. Stride 1 is one phase, the row itself.
#[derive(Clone, Copy)]
pub(crate) struct Phases {
    stride: usize,
    offsets: [usize; MAX_PHASES],
}

/// Strides up to this split rows into phases; larger ones gather with
/// strided loads.
const MAX_PHASES: usize = 8;

impl Phases {
    pub(crate) fn new(w: usize, stride: usize) -> Option<Self> {
        if stride == 0 || stride > MAX_PHASES {
            return None;
        }
        let mut offsets = [0; MAX_PHASES];
        for p in 1..stride {
            offsets[p] = offsets[p - 1] + (w + stride - p) / stride;
        }
        Some(Self { stride, offsets })
    }

    /// The phase-split index of column `x`.
    #[inline(always)]
    pub(crate) fn at(&self, x: usize) -> usize {
        self.offsets[x % self.stride] + x / self.stride
    }

    /// Splits every `w`-long row of `img` into its phases, into `out`.
    #[inline]
    pub(crate) fn split<T: Float>(&self, img: &[T], w: usize, out: &mut Vec<T>) {
        out.resize(img.len(), T::default());
        for (row, o) in img.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
            for (p, &off) in self.offsets[..self.stride].iter().enumerate() {
                for (d, &v) in o[off..].iter_mut().zip(row[p..].iter().step_by(self.stride)) {
                    *d = v;
                }
            }
        }
    }

    /// Adds the phase-split rows of `split` back into the rows of `img`.
    #[inline]
    pub(crate) fn merge_add<T: Float>(&self, split: &[T], w: usize, img: &mut [T]) {
        for (row, sp) in img.chunks_exact_mut(w).zip(split.chunks_exact(w)) {
            for (p, &off) in self.offsets[..self.stride].iter().enumerate() {
                for (d, &v) in row[p..].iter_mut().step_by(self.stride).zip(&sp[off..]) {
                    *d += v;
                }
            }
        }
    }
}

multiversion! {
    /// One image's im2col: `(c, h, w)` → `(c·kh·kw, oh·ow)` row-major.
    ///
    /// With stride `s` in `2..=MAX_PHASES` the image is first split into its
    /// column phases (into `scratch`), so that every output strip — the inputs
    /// `x0, x0 + s, …` of one row — is a contiguous copy from one phase instead
    /// of a strided gather (vae-conv's 4×4 stride-2 convs: a scalar load and
    /// store per element, 18 % of the CPU samples). Larger strides gather.
    fn im2col_one<T: Float>(img: &[T], g: &Geometry, cols: &mut [T], scratch: &mut Vec<T>) {
        let ph = Phases::new(g.w, g.stride);
        let src_img: &[T] = match ph {
            Some(ph) if g.stride > 1 => {
                ph.split(img, g.w, scratch);
                scratch
            }
            _ => img,
        };
        let l = g.oh * g.ow;
        let zero = T::default();
        for c in 0..g.c {
            let plane = &src_img[c * g.h * g.w..(c + 1) * g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let r = (c * g.kh + ky) * g.kw + kx;
                    let row = &mut cols[r * l..(r + 1) * l];
                    let x0 = (kx * g.dilation) as isize - g.padding as isize;
                    let (lo, hi) = valid_cols(x0, g.stride, g.w, g.ow);
                    let start = (x0 + (lo * g.stride) as isize).max(0) as usize;
                    let from = ph.map(|ph| ph.at(start));
                    for oy in 0..g.oh {
                        let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
                        let y = (oy * g.stride + ky * g.dilation) as isize - g.padding as isize;
                        if y < 0 || y as usize >= g.h || lo == hi {
                            dst.fill(zero);
                            continue;
                        }
                        let src = &plane[y as usize * g.w..(y as usize + 1) * g.w];
                        dst[..lo].fill(zero);
                        dst[hi..].fill(zero);
                        let strip = &mut dst[lo..hi];
                        match from {
                            Some(from) => {
                                for (d, &v) in strip.iter_mut().zip(&src[from..from + (hi - lo)]) {
                                    *d = v;
                                }
                            }
                            None => {
                                for (d, c) in strip.iter_mut().zip(src[start..].chunks(g.stride)) {
                                    *d = c[0];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// One image's col2im: `(c·kh·kw, oh·ow)` → `(c, h, w)`, summing overlaps
    /// *into* `img`, which both callers pass freshly zeroed (a slice of a new
    /// output buffer), so it is not cleared a second time. With a phase-split
    /// stride the sums gather in a phase-split image (`scratch`) by contiguous
    /// adds, added into `img` at the end (the mirror of [`im2col_one`]).
    fn col2im_one<T: Float>(cols: &[T], g: &Geometry, img: &mut [T], scratch: &mut Vec<T>) {
        let ph = Phases::new(g.w, g.stride);
        // The phases the sums gather in (none for stride 1 or a gathering stride).
        let split = ph.filter(|_| g.stride > 1);
        if split.is_some() {
            scratch.clear();
            scratch.resize(img.len(), T::default());
        }
        let dst_img: &mut [T] = if split.is_some() { scratch } else { img };
        let l = g.oh * g.ow;
        for c in 0..g.c {
            let plane = &mut dst_img[c * g.h * g.w..(c + 1) * g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let r = (c * g.kh + ky) * g.kw + kx;
                    let row = &cols[r * l..(r + 1) * l];
                    let x0 = (kx * g.dilation) as isize - g.padding as isize;
                    let (lo, hi) = valid_cols(x0, g.stride, g.w, g.ow);
                    if lo == hi {
                        continue;
                    }
                    let start = (x0 + (lo * g.stride) as isize) as usize;
                    let from = ph.map(|ph| ph.at(start));
                    for oy in 0..g.oh {
                        let y = (oy * g.stride + ky * g.dilation) as isize - g.padding as isize;
                        if y < 0 || y as usize >= g.h {
                            continue;
                        }
                        let dst = &mut plane[y as usize * g.w..(y as usize + 1) * g.w];
                        let src = &row[oy * g.ow + lo..oy * g.ow + hi];
                        match from {
                            Some(from) => {
                                for (d, &v) in dst[from..from + src.len()].iter_mut().zip(src) {
                                    *d += v;
                                }
                            }
                            None => {
                                for (c, &v) in dst[start..].chunks_mut(g.stride).zip(src) {
                                    c[0] += v;
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(ph) = split {
            ph.merge_add(scratch, g.w, img);
        }
    }
}

// ---------------------------------------------------------------- channels-last patches

/// Whether geometry `g` unfolds into channels-last patch rows rather than
/// plane rows: a patch row's strips are `kw·c` long, a plane row's `ow`.
/// On small feature maps with many channels (vae-conv's second conv: 7
/// against 128) the plane layout spends its time on strip overhead.
fn rows_layout(g: &Geometry) -> bool {
    g.dilation == 1 && g.c * g.kw >= g.ow
}

/// `(c, h·w)` → channels-last `(h·w, c)` into `out`.
fn to_hwc<T: Float>(img: &[T], c: usize, hw: usize, out: &mut Vec<T>) {
    out.resize(c * hw, T::default());
    if let (Some(img), Some(out)) = (T::as_f32(img), T::as_f32_mut(out)) {
        sgemm::transpose(img, c, hw, out, false);
        return;
    }
    for (ci, plane) in img.chunks_exact(hw).enumerate() {
        for (v, o) in plane.iter().zip(out[ci..].iter_mut().step_by(c)) {
            *o = *v;
        }
    }
}

/// Adds channels-last `(h·w, c)` into `(c, h·w)`.
fn add_from_hwc<T: Float>(hwc: &[T], c: usize, hw: usize, img: &mut [T]) {
    if let (Some(hwc), Some(img)) = (T::as_f32(hwc), T::as_f32_mut(img)) {
        sgemm::transpose(hwc, hw, c, img, true);
        return;
    }
    for (ci, plane) in img.chunks_exact_mut(hw).enumerate() {
        for (v, &s) in plane.iter_mut().zip(hwc[ci..].iter().step_by(c)) {
            *v += s;
        }
    }
}

/// The kernel columns `kx` whose input column `x0 + kx` lies in `0..w`.
#[inline]
fn valid_taps(x0: isize, kw: usize, w: usize) -> (usize, usize) {
    let lo = (-x0).clamp(0, kw as isize) as usize;
    let hi = (w as isize - x0).clamp(0, kw as isize) as usize;
    (lo, hi.max(lo))
}

multiversion! {
    /// One image's patch rows (dilation 1): `(c, h, w)` → `(oh·ow, kh·kw·c)`
    /// row-major, each row one output position's receptive field in
    /// `(ky, kx, c)` order, so each kernel row's taps are one contiguous copy
    /// from the channels-last image (`scratch`).
    fn im2row_one<T: Float>(img: &[T], g: &Geometry, rows: &mut [T], scratch: &mut Vec<T>) {
        let (c, kw) = (g.c, g.kw);
        let k = g.kh * kw * c;
        to_hwc(img, c, g.h * g.w, scratch);
        let zero = T::default();
        for (pos, row) in rows.chunks_exact_mut(k).enumerate().take(g.oh * g.ow) {
            let (oy, ox) = (pos / g.ow, pos % g.ow);
            let x0 = (ox * g.stride) as isize - g.padding as isize;
            let (lo, hi) = valid_taps(x0, kw, g.w);
            for (ky, dst) in row.chunks_exact_mut(kw * c).enumerate() {
                let y = (oy * g.stride + ky) as isize - g.padding as isize;
                if y < 0 || y as usize >= g.h || lo == hi {
                    dst.fill(zero);
                    continue;
                }
                dst[..lo * c].fill(zero);
                dst[hi * c..].fill(zero);
                let from = (y as usize * g.w + (x0 + lo as isize) as usize) * c;
                dst[lo * c..hi * c].copy_from_slice(&scratch[from..from + (hi - lo) * c]);
            }
        }
    }
}

multiversion! {
    /// The adjoint of [`im2row_one`]: `(oh·ow, kh·kw·c)` → `(c, h, w)`, summing
    /// overlaps in a channels-last image (`scratch`) and adding it into `img`.
    fn row2im_one<T: Float>(rows: &[T], g: &Geometry, img: &mut [T], scratch: &mut Vec<T>) {
        let (c, kw) = (g.c, g.kw);
        let k = g.kh * kw * c;
        scratch.clear();
        scratch.resize(img.len(), T::default());
        for (pos, row) in rows.chunks_exact(k).enumerate().take(g.oh * g.ow) {
            let (oy, ox) = (pos / g.ow, pos % g.ow);
            let x0 = (ox * g.stride) as isize - g.padding as isize;
            let (lo, hi) = valid_taps(x0, kw, g.w);
            if lo == hi {
                continue;
            }
            for (ky, src) in row.chunks_exact(kw * c).enumerate() {
                let y = (oy * g.stride + ky) as isize - g.padding as isize;
                if y < 0 || y as usize >= g.h {
                    continue;
                }
                let from = (y as usize * g.w + (x0 + lo as isize) as usize) * c;
                for (d, &v) in scratch[from..from + (hi - lo) * c].iter_mut().zip(&src[lo * c..hi * c]) {
                    *d += v;
                }
            }
        }
        add_from_hwc(scratch, c, g.h * g.w, img);
    }
}

/// How one image is unfolded: plane rows (`(c·kh·kw, oh·ow)`, [`im2col_one`])
/// or channels-last patch rows (`(oh·ow, kh·kw·c)`, [`im2row_one`]). Either
/// is the same `K × L` matrix to the GEMMs, read through different strides,
/// with the kernel's columns in the matching order.
#[derive(Clone, Copy)]
pub(crate) struct Unfold {
    rows: bool,
    k: usize,
    l: usize,
}

impl Unfold {
    pub(crate) fn new(g: &Geometry) -> Self {
        Self {
            rows: rows_layout(g),
            k: g.c * g.kh * g.kw,
            l: g.oh * g.ow,
        }
    }

    pub(crate) fn unfold<T: Float>(&self, img: &[T], g: &Geometry, buf: &mut [T], scratch: &mut Vec<T>) {
        if self.rows {
            im2row_one(img, g, buf, scratch)
        } else {
            im2col_one(img, g, buf, scratch)
        }
    }

    pub(crate) fn fold<T: Float>(&self, buf: &[T], g: &Geometry, img: &mut [T], scratch: &mut Vec<T>) {
        if self.rows {
            row2im_one(buf, g, img, scratch)
        } else {
            col2im_one(buf, g, img, scratch)
        }
    }

    /// `(row, column)` strides of the unfolded matrix read as `K × L`.
    pub(crate) fn kl(&self) -> (usize, usize) {
        if self.rows {
            (1, self.k)
        } else {
            (self.l, 1)
        }
    }

    /// … and read as its transpose, `L × K`.
    pub(crate) fn lk(&self) -> (usize, usize) {
        let (r, c) = self.kl();
        (c, r)
    }

    /// A kernel `(a, c, kh, kw)` with its `K` columns in this layout's order.
    pub(crate) fn kernel<'a, T: Float>(&self, w: &'a [T], a: usize, g: &Geometry) -> std::borrow::Cow<'a, [T]> {
        if self.rows {
            swap_inner(w, a, g.c, g.kh * g.kw).into()
        } else {
            w.into()
        }
    }

    /// A kernel gradient in this layout's order back to `(a, c, kh, kw)`;
    /// `transposed`: `dw` holds it as `K × a` (accumulated as dWᵀ).
    pub(crate) fn kernel_back<T: Float>(&self, dw: Vec<T>, a: usize, g: &Geometry, transposed: bool) -> Vec<T> {
        let dw = if transposed {
            let mut t = vec![T::default(); dw.len()];
            transpose_into(&dw, a, &mut t);
            t
        } else {
            dw
        };
        if self.rows {
            swap_inner(&dw, a, g.kh * g.kw, g.c)
        } else {
            dw
        }
    }
}

/// `(a, c, kk)` → `(a, kk, c)`: a kernel's `(c, ky, kx)` columns in the
/// patch rows' `(ky, kx, c)` order; `swap_inner(·, a, kk, c)` undoes it.
fn swap_inner<T: Float>(src: &[T], a: usize, c: usize, kk: usize) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    for (i, block) in src.chunks_exact(c * kk).enumerate() {
        let dst = &mut out[i * c * kk..(i + 1) * c * kk];
        for (ci, taps) in block.chunks_exact(kk).enumerate() {
            for (q, &v) in taps.iter().enumerate() {
                dst[q * c + ci] = v;
            }
        }
    }
    debug_assert_eq!(src.len(), a * c * kk);
    out
}
