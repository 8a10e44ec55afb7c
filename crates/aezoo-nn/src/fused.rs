//! Fused CPU layers: `act(conv2d(x, W) + b)`, `act(conv_transpose2d(x, W) + b)`
//! and `act(x·Wᵀ + b)` as single autograd nodes with hand-written backward
//! passes, computed on raw slices: in f32 with AVX2 by [`crate::sgemm`]
//! (operands packed once per call, the epilogue fused) and, for the
//! convolutions it suits, without unfolding at all ([`crate::direct`]);
//! in f64 and without AVX2 by the `gemm` crate.
//!
//! Why: in candle 0.11 every autograd node costs a fresh gradient buffer
//! (zeros, then an add) besides its own work, and ReLU's and bias-add's
//! backward passes are several full-size element-wise ops each. A conv layer
//! written as im2col → matmul → reshape → transpose → bias → ReLU is six nodes;
//! here it is one, its backward one custom op, and no im2col matrix for the
//! whole batch is ever built: each image is unfolded into a small per-thread
//! buffer that stays in cache, and its GEMM writes straight into NCHW.
//!
//! Per image (K = C·kh·kw, L = OH·OW):
//! ```text
//! forward   cols = im2col(x_i)        (K, L)      y_i = act(W (O,K) · cols + b)
//! backward  dz = dy ⊙ act'(y)         dW += dz_i · colsᵀ     db += Σ_L dz_i
//!           dx_i = col2im(Wᵀ · dz_i)
//! ```
//! The transposed conv is the same with the roles of im2col and col2im
//! swapped. Every op here is gradient-checked against finite differences and
//! compared with the composite path in `tests/nn.rs`; `AEZOO_NO_FUSED=1`
//! turns the fused path off (the layers then use the composite ops).

use candle_core::backend::BackendStorage;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::conv::Geometry;
use crate::direct;
use crate::ops::{first_max, window2};
use crate::sgemm::{self, Epilogue, PackedB, Strided};

/// The activation fused into a layer's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Act {
    #[default]
    None,
    Relu,
    Sigmoid,
}

/// Whether the fused path is enabled (`AEZOO_NO_FUSED` unset or `0`).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("AEZOO_NO_FUSED").as_deref(), Ok(v) if v != "0" && !v.is_empty()))
}

/// Whether `xs` can take the fused path (CPU, f32 or f64).
pub fn applies(xs: &Tensor) -> bool {
    enabled() && xs.device().is_cpu() && matches!(xs.dtype(), DType::F32 | DType::F64)
}

/// Flushes subnormal floats to zero (x86 MXCSR FTZ + DAZ) on the calling
/// thread and on every thread of rayon's global pool; threads started later
/// inherit it from their parent (candle's element-wise pool among them).
/// Returns whether it was set.
///
/// Why: Adam's second moment `v` of a weight whose gradient is tiny (a
/// saturated sigmoid, a dead ReLU) falls below 1.2·10⁻³⁸, and every multiply
/// on a subnormal takes a microcode assist of ~100 cycles: on `ae-mlp` the
/// optimiser step went from 0.66 to 2.2 ms (`aezoo bench ae-mlp`). TensorFlow
/// flushes by default for the same reason; PyTorch offers it as
/// `torch.set_flush_denormal(True)`. The results differ only for magnitudes
/// below 1.2·10⁻³⁸ (f32). Off: `AEZOO_KEEP_DENORMALS=1`. A no-op off x86-64.
pub fn flush_denormals() -> bool {
    if matches!(std::env::var("AEZOO_KEEP_DENORMALS").as_deref(), Ok(v) if v != "0" && !v.is_empty()) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(deprecated)]
        fn set() {
            // SAFETY: MXCSR bits 15 (FTZ) and 6 (DAZ) change only how
            // subnormal SSE/AVX results and inputs are treated.
            unsafe { std::arch::x86_64::_mm_setcsr(std::arch::x86_64::_mm_getcsr() | 0x8040) }
        }
        set();
        rayon::broadcast(|_| set());
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

// ---------------------------------------------------------------- scalar plumbing

/// The float types the fused kernels run on.
pub trait Float:
    Copy
    + Default
    + Send
    + Sync
    + PartialOrd
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
{
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    const ONE: Self;
    fn sigmoid(self) -> Self;
    /// `e^−|x|`: with it, `softplus(x) = max(x, 0) + ln(1 + e^−|x|)` and
    /// `σ(x)` are stable for every `x` (f32: [`exp_f32`]).
    fn exp_neg_abs(self) -> Self;
    /// `ln(1 + e)` for `e` in `[0, 1]` to full relative precision (f32:
    /// [`ln_1p_unit_f32`]).
    fn ln_1p_unit(self) -> Self;
    fn storage(v: Vec<Self>) -> CpuStorage;
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// The same slice as f32, if `Self` is f32 (the [`crate::sgemm`] paths).
    fn as_f32(xs: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(xs: &mut [Self]) -> Option<&mut [f32]>;
}

impl Float for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    const ONE: Self = 1.0;
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + exp_f32(-self))
    }
    fn exp_neg_abs(self) -> Self {
        exp_f32(-self.abs())
    }
    fn ln_1p_unit(self) -> Self {
        ln_1p_unit_f32(self)
    }
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn as_f32(xs: &[Self]) -> Option<&[f32]> {
        Some(xs)
    }
    fn as_f32_mut(xs: &mut [Self]) -> Option<&mut [f32]> {
        Some(xs)
    }
}

impl Float for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    const ONE: Self = 1.0;
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn exp_neg_abs(self) -> Self {
        (-self.abs()).exp()
    }
    fn ln_1p_unit(self) -> Self {
        self.ln_1p()
    }
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// `ln(1 + e)` for `e` in `[0, 1]` without a libm call (glibc's `log1pf`
/// was a tenth of `vae-mlp`'s training samples): `2·atanh(s)` with
/// `s = e / (2 + e) ≤ ⅓`, its odd series to `s¹⁵` (truncation below 5·10⁻¹⁰),
/// so it keeps full relative precision for tiny `e` (within 3 ulp of the
/// rounded f64 value, `ln_1p_unit_f32_is_within_3_ulp`) and vectorises.
#[inline]
pub fn ln_1p_unit_f32(e: f32) -> f32 {
    let s = e / (2.0 + e);
    let s2 = s * s;
    let mut p = 1.0 / 15.0;
    for c in [1.0 / 13.0, 1.0 / 11.0, 1.0 / 9.0, 1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0] {
        p = p * s2 + c;
    }
    2.0 * s * p
}

/// The constants of [`exp_f32`], shared with `sgemm`'s vector sigmoid
/// (which must compute the same bits).
pub(crate) mod exp_consts {
    pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO (Cephes), LN2_HI with 9 significant bits so
    // that n·LN2_HI is exact for |n| ≤ 127.
    pub(crate) const LN2_HI: f32 = 0.693_359_4;
    pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
    /// Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    pub(crate) const ROUND: f32 = 12_582_912.0;
}

/// `eᵡ` in f32 without a libm call, so that a loop of sigmoids vectorises
/// (the scalar `expf` was most of a sigmoid layer's time): `x = n·ln2 + r`
/// with `|r| ≤ ln2/2`, `eʳ` by its degree-7 Taylor polynomial (truncation
/// below 2·10⁻⁹), `2ⁿ` by the exponent bits; clamped to f32's range. Within
/// 2 ulp of `f64::exp` over `[-87, 88]` (test `exp_f32_is_within_2_ulp`).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    use exp_consts::{LN2_HI, LN2_LO, LOG2E, ROUND};
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // `t`'s bits are ROUND's plus n (its ulp is 1): 2ⁿ from integer ops
    // alone (`n as i32` is a saturating scalar conversion that stops the
    // loop from vectorising).
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    p * two_n
}

/// Element-wise passes at least this long run on all threads.
const PAR_ELEMS: usize = 1 << 15;

/// Threads for the parallel region that follows (which keeps the other
/// workers awake for it and the next: `pool::keep_warm`).
fn threads() -> usize {
    crate::pool::keep_warm();
    rayon::current_num_threads().max(1)
}

/// `c (m×n) [+]= a (m×k) · b (k×n)`, each with its own row and column strides.
///
/// With `Parallelism::Rayon(t)` the product is split here into `t` blocks of
/// rows of `c` (or of columns, when `n` is the longer side), each a
/// single-threaded call of the `gemm` crate, whose own threading is slower
/// on the linear layers' shapes (`cargo run --release -p aezoo-nn --example
/// gemm_split`; figures in ARCHITECTURE.md).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    (c_rs, c_cs): (usize, usize),
    accumulate: bool,
    a: &[T],
    (a_rs, a_cs): (usize, usize),
    b: &[T],
    (b_rs, b_cs): (usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.iter_mut().for_each(|v| *v = T::default());
        }
        return;
    }
    // Bounds: the furthest element each operand touches.
    assert!((m - 1) * c_rs + (n - 1) * c_cs < c.len(), "gemm: c too short");
    assert!((m - 1) * a_rs + (k - 1) * a_cs < a.len(), "gemm: a too short");
    assert!((k - 1) * b_rs + (n - 1) * b_cs < b.len(), "gemm: b too short");
    let t = match par {
        Parallelism::Rayon(t) => t.max(1),
        _ => 1,
    };
    // Blocks of at least 16 rows or columns (a microkernel's width), and
    // enough work per block to pay for the hand-off.
    let (long, by_rows) = if m >= n { (m, true) } else { (n, false) };
    let blocks = t.min(long / 16).min((m * n * k) / (1 << 17)).max(1);
    let c_ptr = SendPtr(c.as_mut_ptr());
    let run = |i0: usize, len: usize| {
        let (mm, nn) = if by_rows { (len, n) } else { (m, len) };
        let (c_off, a_off, b_off) = if by_rows {
            (i0 * c_rs, i0 * a_rs, 0)
        } else {
            (i0 * c_cs, 0, i0 * b_cs)
        };
        // SAFETY: the asserts above bound every index the strides reach;
        // blocks cover disjoint rows (or columns) of `c`, so no element is
        // written by two calls.
        unsafe {
            gemm::gemm(
                mm,
                nn,
                k,
                c_ptr.get().add(c_off),
                c_cs as isize,
                c_rs as isize,
                accumulate,
                a.as_ptr().add(a_off),
                a_cs as isize,
                a_rs as isize,
                b.as_ptr().add(b_off),
                b_cs as isize,
                b_rs as isize,
                T::ONE,
                T::ONE,
                false,
                false,
                false,
                Parallelism::None,
            )
        }
    };
    if blocks == 1 {
        run(0, long);
        return;
    }
    let step = long.div_ceil(blocks).next_multiple_of(16);
    (0..long.div_ceil(step)).into_par_iter().for_each(|j| {
        let i0 = j * step;
        run(i0, step.min(long - i0));
    });
}

/// A raw pointer that blocks of [`gemm`] share across threads (each writes
/// its own disjoint elements).
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);

// SAFETY: only used by `gemm`, whose blocks write disjoint elements.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

fn par_for(batch: usize) -> (bool, Parallelism) {
    // Many images: one image per task, single-threaded GEMMs. Few: images in
    // turn, multi-threaded GEMMs.
    let t = threads();
    if batch >= 2 * t {
        (true, Parallelism::None)
    } else if t > 1 {
        (false, Parallelism::Rayon(t))
    } else {
        (false, Parallelism::None)
    }
}

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
struct Unfold {
    rows: bool,
    k: usize,
    l: usize,
}

impl Unfold {
    fn new(g: &Geometry) -> Self {
        Self {
            rows: rows_layout(g),
            k: g.c * g.kh * g.kw,
            l: g.oh * g.ow,
        }
    }

    fn unfold<T: Float>(&self, img: &[T], g: &Geometry, buf: &mut [T], scratch: &mut Vec<T>) {
        if self.rows {
            im2row_one(img, g, buf, scratch)
        } else {
            im2col_one(img, g, buf, scratch)
        }
    }

    fn fold<T: Float>(&self, buf: &[T], g: &Geometry, img: &mut [T], scratch: &mut Vec<T>) {
        if self.rows {
            row2im_one(buf, g, img, scratch)
        } else {
            col2im_one(buf, g, img, scratch)
        }
    }

    /// `(row, column)` strides of the unfolded matrix read as `K × L`.
    fn kl(&self) -> (usize, usize) {
        if self.rows {
            (1, self.k)
        } else {
            (self.l, 1)
        }
    }

    /// … and read as its transpose, `L × K`.
    fn lk(&self) -> (usize, usize) {
        let (r, c) = self.kl();
        (c, r)
    }

    /// A kernel `(a, c, kh, kw)` with its `K` columns in this layout's order.
    fn kernel<'a, T: Float>(&self, w: &'a [T], a: usize, g: &Geometry) -> std::borrow::Cow<'a, [T]> {
        if self.rows {
            swap_inner(w, a, g.c, g.kh * g.kw).into()
        } else {
            w.into()
        }
    }

    /// A kernel gradient in this layout's order back to `(a, c, kh, kw)`;
    /// `transposed`: `dw` holds it as `K × a` (accumulated as dWᵀ).
    fn kernel_back<T: Float>(&self, dw: Vec<T>, a: usize, g: &Geometry, transposed: bool) -> Vec<T> {
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

/// The sum of `xs` in 16 lanes (a single running sum is one dependent add
/// per element; lanes let the compiler vectorise).
#[inline]
fn sum<T: Float>(xs: &[T]) -> T {
    let mut lanes = [T::default(); 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a += v;
        }
    }
    let mut s = T::default();
    for &v in chunks.remainder() {
        s += v;
    }
    for a in lanes {
        s += a;
    }
    s
}

multiversion! {
    /// `y = act(y + b[o])` over `(o, l)` rows.
    fn bias_act<T: Float>(y: &mut [T], bias: &[T], l: usize, act: Act) {
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
    fn bias_act_rows<T: Float>(y: &mut [T], bias: &[T], act: Act) {
        for row in y.chunks_mut(bias.len()) {
            match act {
                Act::None => row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b),
                Act::Relu => row.iter_mut().zip(bias).for_each(|(v, &b)| *v = relu_of(*v + b)),
                Act::Sigmoid => row.iter_mut().zip(bias).for_each(|(v, &b)| *v = (*v + b).sigmoid()),
            }
        }
    }
}

/// `max(z, 0)`, with NaN mapped to 0 as a select (vectorises).
#[inline(always)]
fn relu_of<T: Float>(z: T) -> T {
    if z > T::default() {
        z
    } else {
        T::default()
    }
}

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

// ---------------------------------------------------------------- dz = dy ⊙ act'(y)

/// `d · act'` at an output whose activated value is `y`.
#[inline(always)]
fn act_grad_at<T: Float>(y: T, d: T, act: Act) -> T {
    match act {
        Act::None => d,
        Act::Relu => {
            if y > T::default() {
                d
            } else {
                T::default()
            }
        }
        Act::Sigmoid => d * (y * (T::ONE - y)),
    }
}

multiversion! {
    /// `dz = dy ⊙ act'(y)` into `dz`.
    fn act_grad_into<T: Float>(dy: &[T], y: &[T], act: Act, dz: &mut [T]) {
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
fn dz_chunk<'a, T: Float>(dy: &'a [T], y: Option<&[T]>, act: Act, scratch: &'a mut Vec<T>) -> &'a [T] {
    match y {
        Some(y) if act != Act::None => {
            scratch.resize(dy.len(), T::default());
            act_grad_into(dy, y, act, scratch);
            scratch
        }
        _ => dy,
    }
}

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

/// Per-image slots of a buffer: `dx` (all `None` when the input needs no
/// gradient), the pool's window maxima (all `None` without the pool).
/// An empty buffer gives `b` empty slots.
fn per_image_slots<T>(buf: &mut [T], per: usize, b: usize) -> Vec<Option<&mut [T]>> {
    if buf.is_empty() {
        (0..b).map(|_| None).collect()
    } else {
        buf.chunks_mut(per).map(Some).collect()
    }
}

// ---------------------------------------------------------------- conv2d

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

multiversion! {
    /// The 2×2, stride-2 max pool of one image's `(o, oh, ow)` activations into
    /// `(o, oh/2, ow/2)` (floor), recording each window's first maximum as
    /// `ops::max_pool2d` picks it (a NaN wins). Planes without NaN take plain
    /// `>` selects, which compile without branches (a branch per comparison
    /// mispredicted on real activations: 8 ns a window).
    fn pool2_record<T: Float>(y: &[T], oh: usize, ow: usize, out: &mut [T], arg: &mut [u8]) {
        let (ph, pw) = (oh / 2, ow / 2);
        let planes = y
            .chunks(oh * ow)
            .zip(out.chunks_mut(ph * pw).zip(arg.chunks_mut(ph * pw)));
        for (plane, (po, pa)) in planes {
            #[allow(clippy::eq_op)]
            let finite = plane.iter().fold(true, |ok, &v| ok & (v == v));
            for py in 0..ph {
                let r0 = &plane[2 * py * ow..2 * py * ow + 2 * pw];
                let r1 = &plane[(2 * py + 1) * ow..(2 * py + 1) * ow + 2 * pw];
                let (po, pa) = (&mut po[py * pw..(py + 1) * pw], &mut pa[py * pw..(py + 1) * pw]);
                if finite {
                    for (((m, i), a), c) in po
                        .iter_mut()
                        .zip(pa.iter_mut())
                        .zip(r0.chunks_exact(2))
                        .zip(r1.chunks_exact(2))
                    {
                        let (mut best, mut at) = (a[0], 0u8);
                        for (v, j) in [(a[1], 1u8), (c[0], 2), (c[1], 3)] {
                            let take = v > best;
                            best = if take { v } else { best };
                            at = if take { j } else { at };
                        }
                        *m = best;
                        *i = at;
                    }
                } else {
                    for px in 0..pw {
                        let (m, i) = window2(r0, r1, px, &first_max);
                        po[px] = m;
                        pa[px] = i as u8;
                    }
                }
            }
        }
    }
}

multiversion! {
    /// One image's `dz` (`(o, oh, ow)`) under the pool: each window's
    /// `dp · act'(p)` at its recorded maximum, zero at the other three and in a
    /// floored odd row or column (the activation's value at the maximum is the
    /// pooled value `p`).
    fn unpool2<T: Float>(dp: &[T], p: Option<&[T]>, arg: &[u8], act: Act, oh: usize, ow: usize, dz: &mut [T]) {
        let (ph, pw) = (oh / 2, ow / 2);
        let zero = T::default();
        if oh % 2 == 1 || ow % 2 == 1 {
            dz.fill(zero);
        }
        for (c, plane) in dz.chunks_mut(oh * ow).enumerate() {
            for py in 0..ph {
                let j0 = (c * ph + py) * pw;
                let (dp, arg) = (&dp[j0..j0 + pw], &arg[j0..j0 + pw]);
                let (r0, r1) = plane[2 * py * ow..(2 * py + 2) * ow].split_at_mut(ow);
                let rows = r0.chunks_exact_mut(2).zip(r1.chunks_exact_mut(2));
                for (px, (a, b)) in rows.enumerate() {
                    let g = match p {
                        Some(p) => act_grad_at(p[j0 + px], dp[px], act),
                        None => dp[px],
                    };
                    let at = arg[px];
                    a[0] = if at == 0 { g } else { zero };
                    a[1] = if at == 1 { g } else { zero };
                    b[0] = if at == 2 { g } else { zero };
                    b[1] = if at == 3 { g } else { zero };
                }
            }
        }
    }
}

fn conv_fwd<T: Float>(
    op: &Conv2dFused,
    x: &CpuStorage,
    lx: &Layout,
    w: &CpuStorage,
    lw: &Layout,
    bias: &CpuStorage,
    lb: &Layout,
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

/// `dz = dy ⊙ act'(y)` of one image into `dz` (`y` the saved output; none
/// for the identity).
fn dz_into<T: Float>(dy: &[T], y: Option<&[T]>, act: Act, dz: &mut [T]) {
    match y {
        Some(y) if act != Act::None => act_grad_into(dy, y, act, dz),
        _ => dz.copy_from_slice(dy),
    }
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

/// `dst (c × r) = srcᵀ` for `src` of `r` rows of `c` (a kernel gradient
/// accumulated as dWᵀ back to dW's layout).
fn transpose_into<T: Copy>(src: &[T], c: usize, dst: &mut [T]) {
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
fn sum_partials<J: Send, A: Send, T: Float>(
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

#[allow(clippy::too_many_arguments)]
fn conv_bwd<T: Float>(
    grad: &Conv2dGrad,
    x: &CpuStorage,
    lx: &Layout,
    w: &CpuStorage,
    lw: &Layout,
    dy: &CpuStorage,
    ly: &Layout,
    y: Option<&[T]>,
) -> Result<(CpuStorage, Shape)> {
    let cfg = grad.op.cfg;
    let (b, o, g) = cfg.geometry(lx, lw)?;
    let (x, w, dy) = (
        contiguous::<T>(x, lx, "conv2d-grad")?,
        contiguous::<T>(w, lw, "conv2d-grad")?,
        contiguous::<T>(dy, ly, "conv2d-grad")?,
    );
    let (k, l, img, per) = (g.c * g.kh * g.kw, g.oh * g.ow, g.c * g.h * g.w, cfg.out_image(o, &g));
    let argmax = lock(&grad.op.argmax);
    if cfg.post == Post::Pool2 && argmax.len() != b * per {
        candle_core::bail!("conv2d + max_pool2d: the backward ran without its forward's window maxima");
    }
    let (nx, nw) = (if grad.need_dx { b * img } else { 0 }, o * k);
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
        Some(w32)
            if grad.need_dx && !direct && g.stride == 1 && g.dilation == 1 && g.kh == g.kw && g.padding < g.kh =>
        {
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
        Some(w32) if grad.need_dx && !(imp_w.is_some() && imp_x.is_some()) && sgemm::available() && k >= 16 => {
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
        let n = packed.len();
        return Ok((T::storage(packed), Shape::from(n)));
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
    let n = packed.len();
    Ok((T::storage(packed), Shape::from(n)))
}

impl CustomOp3 for Conv2dFused {
    fn name(&self) -> &'static str {
        "aezoo-conv2d-fused"
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
        by_dtype!(x, conv_fwd(self, x, lx, w, lw, b, lb))
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
        let grad = Conv2dGrad {
            op: self.clone(),
            need_dx,
            y: saved_output(y, self.cfg.act),
        };
        let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &grad)?;
        unpack(&packed, x, w, b, need_dx)
    }
}

/// The backward of [`Conv2dFused`]: `(x, W, dy)` → packed `[dx | dW | db]`,
/// reading `act'` from the saved output `y`.
#[derive(Clone, Debug)]
struct Conv2dGrad {
    op: Conv2dFused,
    need_dx: bool,
    y: Option<Tensor>,
}

fn conv_bwd_saved<T: Float>(
    grad: &Conv2dGrad,
    x: &CpuStorage,
    lx: &Layout,
    w: &CpuStorage,
    lw: &Layout,
    dy: &CpuStorage,
    ly: &Layout,
) -> Result<(CpuStorage, Shape)> {
    with_saved::<T, _>(&grad.y, "conv2d-grad", |y| conv_bwd(grad, x, lx, w, lw, dy, ly, y))
}

impl CustomOp3 for Conv2dGrad {
    fn name(&self) -> &'static str {
        "aezoo-conv2d-fused-grad"
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
        by_dtype!(x, conv_bwd_saved(self, x, lx, w, lw, dy, ly))
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
    xs.contiguous()?
        .apply_op3(&kernel.contiguous()?, &bias.contiguous()?, op)
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
/// maximum as [`crate::ops::max_pool2d`] does.
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

// ---------------------------------------------------------------- conv_transpose2d

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
    x: &CpuStorage,
    lx: &Layout,
    w: &CpuStorage,
    lw: &Layout,
    bias: &CpuStorage,
    lb: &Layout,
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

#[allow(clippy::too_many_arguments)]
fn convt_bwd<T: Float>(
    op: &ConvT2dFused,
    need_dx: bool,
    x: &CpuStorage,
    lx: &Layout,
    w: &CpuStorage,
    lw: &Layout,
    dy: &CpuStorage,
    ly: &Layout,
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
        let n = packed.len();
        return Ok((T::storage(packed), Shape::from(n)));
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
    let n = packed.len();
    Ok((T::storage(packed), Shape::from(n)))
}

impl CustomOp3 for ConvT2dFused {
    fn name(&self) -> &'static str {
        "aezoo-conv-transpose2d-fused"
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
        by_dtype!(x, convt_fwd(self, x, lx, w, lw, b, lb))
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
        let grad = ConvT2dGrad(*self, need_dx, saved_output(y, self.act));
        let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &grad)?;
        unpack(&packed, x, w, b, need_dx)
    }
}

/// The backward of [`ConvT2dFused`]: `(x, W, dy)` and the saved output →
/// packed `[dx | dW | db]`.
#[derive(Clone, Debug)]
struct ConvT2dGrad(ConvT2dFused, bool, Option<Tensor>);

fn convt_bwd_saved<T: Float>(
    grad: &ConvT2dGrad,
    x: &CpuStorage,
    lx: &Layout,
    w: &CpuStorage,
    lw: &Layout,
    dy: &CpuStorage,
    ly: &Layout,
) -> Result<(CpuStorage, Shape)> {
    with_saved::<T, _>(&grad.2, "conv_transpose2d-grad", |y| {
        convt_bwd(&grad.0, grad.1, x, lx, w, lw, dy, ly, y)
    })
}

impl CustomOp3 for ConvT2dGrad {
    fn name(&self) -> &'static str {
        "aezoo-conv-transpose2d-fused-grad"
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
        by_dtype!(x, convt_bwd_saved(self, x, lx, w, lw, dy, ly))
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
    xs.contiguous()?
        .apply_op3(&kernel.contiguous()?, &bias.contiguous()?, op)
}

// ---------------------------------------------------------------- linear

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

fn lin_par() -> Parallelism {
    match threads() {
        1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    }
}

fn lin_fwd<T: Float>(
    op: &LinearFused,
    x: &CpuStorage,
    lx: &Layout,
    w: &CpuStorage,
    lw: &Layout,
    bias: &CpuStorage,
    lb: &Layout,
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

#[allow(clippy::too_many_arguments)]
fn lin_bwd<T: Float>(
    grad: &LinearGrad,
    x: &CpuStorage,
    lx: &Layout,
    w: &CpuStorage,
    lw: &Layout,
    dy: &CpuStorage,
    ly: &Layout,
    y: Option<&[T]>,
) -> Result<(CpuStorage, Shape)> {
    let (n, i, o) = lin_dims(lx, lw)?;
    let (x, w, dy) = (
        contiguous::<T>(x, lx, "linear-grad")?,
        contiguous::<T>(w, lw, "linear-grad")?,
        contiguous::<T>(dy, ly, "linear-grad")?,
    );
    let need_dx = grad.need_dx;
    // dz = dy ⊙ act'(y), by rows in parallel once there is enough work.
    let mut dzbuf = Vec::new();
    let dz: &[T] = match y {
        Some(y) if n * o >= PAR_ELEMS => {
            dzbuf = zip_chunks([dy, y], |[dy, y], dz| act_grad_into(dy, y, grad.act, dz));
            &dzbuf
        }
        _ => dz_chunk(dy, y, grad.act, &mut dzbuf),
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
    let len = packed.len();
    Ok((T::storage(packed), Shape::from(len)))
}

impl CustomOp3 for LinearFused {
    fn name(&self) -> &'static str {
        "aezoo-linear-fused"
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
        by_dtype!(x, lin_fwd(self, x, lx, w, lw, b, lb))
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
        let grad = LinearGrad {
            need_dx,
            act: self.act,
            y: saved_output(y, self.act),
        };
        let packed = x.apply_op3_no_bwd(w, &dy.contiguous()?, &grad)?;
        unpack(&packed, x, w, b, need_dx)
    }
}

/// The backward of [`LinearFused`]: `(x, W, dy)` and the saved output →
/// packed `[dx | dW | db]`.
#[derive(Clone, Debug)]
struct LinearGrad {
    need_dx: bool,
    act: Act,
    y: Option<Tensor>,
}

fn lin_bwd_saved<T: Float>(
    grad: &LinearGrad,
    x: &CpuStorage,
    lx: &Layout,
    w: &CpuStorage,
    lw: &Layout,
    dy: &CpuStorage,
    ly: &Layout,
) -> Result<(CpuStorage, Shape)> {
    with_saved::<T, _>(&grad.y, "linear-grad", |y| lin_bwd(grad, x, lx, w, lw, dy, ly, y))
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "aezoo-linear-fused-grad"
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
        by_dtype!(x, lin_bwd_saved(self, x, lx, w, lw, dy, ly))
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
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, LinearFused { act, out })
}

// ---------------------------------------------------------- linear chain

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
/// Elsewhere (f64, no AVX2, `AEZOO_NO_FUSED`, other devices) it runs the
/// layers one by one: [`linear`] where it applies, else the composite.
pub fn linear_chain(xs: &Tensor, layers: &[(&Tensor, Option<&Tensor>, Act)]) -> Result<Tensor> {
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
        let mut h = xs.flatten_from(1)?.detach();
        for (w, b, act) in layers {
            let i = w.dim(1)?;
            let input = if h.dim(1)? == i { h.clone() } else { h.narrow(1, 0, i)? };
            h = match b {
                Some(b) if applies(&input) => linear(&input, w, b, *act)?,
                _ => {
                    let y = input.matmul(&w.t()?)?;
                    let y = match b {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    };
                    crate::layers::apply_act(y, *act)?
                }
            };
        }
        return Ok(h.detach());
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
    Tensor::from_vec(y, (n, o_last), xs.device())
}

/// The f32 elements of a contiguous CPU storage.
fn cpu_f32<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => contiguous::<f32>(c, l, "linear_chain"),
        _ => candle_core::bail!("linear_chain: not a CPU tensor"),
    }
}

// ---------------------------------------------------------------- sigmoid

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

// ---------------------------------------------------------------- BCE on logits

/// `max(x, 0) − x·t + ln(1 + e^−|x|)` per element, one pass (the composite
/// form is nine candle ops forward and more backward, each a pass over the
/// whole image batch and a wake-up of candle's thread pool).
#[derive(Clone, Copy, Debug)]
struct BceLogits;

/// `out = f(inputs)` by chunks (in parallel once there is enough work),
/// `f` a [`multiversion!`] kernel (or a call of one) over equal-length
/// slices.
fn zip_chunks<T: Float, const N: usize>(ins: [&[T]; N], f: impl Fn([&[T]; N], &mut [T]) + Sync) -> Vec<T> {
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
