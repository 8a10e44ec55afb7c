//! Max pooling on the CPU with PyTorch's gradient: each window's gradient
//! goes to its first maximum (a NaN wins, the first NaN), where candle 0.11
//! scales it by 1/k² and has no backward at all for kernel ≠ stride. The
//! 2 × 2, stride-2 case runs branch-free per plane; the fused conv's pool
//! ([`crate::conv2d_pool2`]) records the window maxima with the same rule.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::float::{act_grad_at, Act, Float};

/// `max_pool2d(xs, k, stride)` of a `(b, c, h, w)` CPU tensor (any float
/// dtype; no padding, a trailing partial window dropped), with the
/// first-maximum backward.
pub fn max_pool2d(xs: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(MaxPool2d { k, stride })
}

#[derive(Clone, Copy, Debug)]
struct MaxPool2d {
    k: usize,
    stride: usize,
}

fn pool_dims(l: &Layout, k: usize, s: usize) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (b, c, h, w) = l.shape().dims4()?;
    let oh = (h - k) / s + 1;
    let ow = (w - k) / s + 1;
    Ok((b * c, h, w, oh, ow, l.start_offset()))
}

/// Index (within one (h, w) plane) of the first maximum of the window at
/// output position (oy, ox); NaN wins, as in PyTorch.
#[inline]
fn window_argmax<T: Copy + PartialOrd>(plane: &[T], w: usize, k: usize, s: usize, oy: usize, ox: usize) -> usize {
    let mut best = oy * s * w + ox * s;
    let mut best_v = plane[best];
    #[allow(clippy::eq_op)]
    let is_nan = |v: T| v != v;
    if is_nan(best_v) {
        return best;
    }
    for dy in 0..k {
        let row = (oy * s + dy) * w + ox * s;
        for dx in 0..k {
            let v = plane[row + dx];
            if v > best_v || is_nan(v) {
                best = row + dx;
                best_v = v;
                if is_nan(v) {
                    return best;
                }
            }
        }
    }
    best
}

/// Planes per parallel task: enough that a task is ~16k input elements.
fn pool_min_planes(plane: usize) -> usize {
    (1 << 14) / plane.max(1) + 1
}

/// One step of the first-maximum scan: `v` (at `j`) replaces the running
/// maximum `m` (at `i`) when it is larger, or NaN while `m` is not (so the
/// first NaN wins, as in PyTorch). Branch-free on plain values.
#[inline(always)]
pub(crate) fn first_max<T: Copy + PartialOrd>((m, i): (T, usize), v: T, j: usize) -> (T, usize) {
    #[allow(clippy::eq_op)]
    let take = m == m && (v > m || v != v);
    if take {
        (v, j)
    } else {
        (m, i)
    }
}

/// The first maximum of the 2×2 window at column `2·ox` of rows `r0`, `r1`
/// and its index in row-major `0..4`, scanning with `step`.
#[inline(always)]
pub(crate) fn window2<T, F>(r0: &[T], r1: &[T], ox: usize, step: &F) -> (T, usize)
where
    T: Copy,
    F: Fn((T, usize), T, usize) -> (T, usize),
{
    let (a, b) = (r0[2 * ox], r0[2 * ox + 1]);
    let (c, d) = (r1[2 * ox], r1[2 * ox + 1]);
    step(step(step((a, 0), b, 1), c, 2), d, 3)
}

/// One plane of the 2×2, stride-2 pool.
#[inline(never)]
fn pool2_plane_fwd<T: Copy + PartialOrd>(plane: &[T], w: usize, ow: usize, out: &mut [T]) {
    for (oy, orow) in out.chunks_mut(ow).enumerate() {
        let r0 = &plane[2 * oy * w..2 * oy * w + 2 * ow];
        let r1 = &plane[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
        for (ox, y) in orow.iter_mut().enumerate() {
            *y = window2(r0, r1, ox, &first_max).0;
        }
    }
}

/// One plane of the 2×2, stride-2 pool's backward (windows do not overlap):
/// plain `>` comparisons where the plane holds no NaN, the NaN-aware scan
/// otherwise.
#[inline(never)]
fn pool2_plane_bwd<T: Copy + PartialOrd + Default>(plane: &[T], w: usize, ow: usize, grad: &[T], out: &mut [T]) {
    #[allow(clippy::eq_op)]
    if plane.iter().fold(true, |ok, &v| ok & (v == v)) {
        let greater = |(m, i): (T, usize), v: T, j: usize| if v > m { (v, j) } else { (m, i) };
        pool2_scatter(plane, w, ow, grad, out, greater);
    } else {
        pool2_scatter(plane, w, ow, grad, out, first_max);
    }
}

/// Writes each window's gradient to the input `step` picks as its first
/// maximum, and zero to the other three: no data-dependent branch or store.
#[inline(always)]
fn pool2_scatter<T, F>(plane: &[T], w: usize, ow: usize, grad: &[T], out: &mut [T], step: F)
where
    T: Copy + PartialOrd + Default,
    F: Fn((T, usize), T, usize) -> (T, usize),
{
    for (oy, grow) in grad.chunks(ow).enumerate() {
        let r0 = &plane[2 * oy * w..2 * oy * w + 2 * ow];
        let r1 = &plane[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
        let (o0, o1) = out[2 * oy * w..].split_at_mut(w);
        let (o0, o1) = (&mut o0[..2 * ow], &mut o1[..2 * ow]);
        for (ox, &g) in grow.iter().enumerate() {
            let i = window2(r0, r1, ox, &step).1;
            let pick = |j: usize| if i == j { g } else { T::default() };
            o0[2 * ox] = pick(0);
            o0[2 * ox + 1] = pick(1);
            o1[2 * ox] = pick(2);
            o1[2 * ox + 1] = pick(3);
        }
    }
}

fn pool_fwd<T: Copy + PartialOrd + Send + Sync + Default>(src: &[T], l: &Layout, k: usize, s: usize) -> Result<Vec<T>> {
    let (planes, h, w, oh, ow, off) = pool_dims(l, k, s)?;
    let src = &src[off..off + planes * h * w];
    let mut out = vec![T::default(); planes * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(src.par_chunks(h * w))
        .with_min_len(pool_min_planes(h * w))
        .for_each(|(o, plane)| {
            if k == 2 && s == 2 {
                pool2_plane_fwd(plane, w, ow, o);
            } else {
                for oy in 0..oh {
                    for ox in 0..ow {
                        o[oy * ow + ox] = plane[window_argmax(plane, w, k, s, oy, ox)];
                    }
                }
            }
        });
    Ok(out)
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "aezoo-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        if !layout.is_contiguous() {
            candle_core::bail!("aezoo-max-pool2d: input must be contiguous");
        }
        let (b, c, _h, _w) = layout.shape().dims4()?;
        let (_, _, _, oh, ow, _) = pool_dims(layout, self.k, self.stride)?;
        let shape = Shape::from((b, c, oh, ow));
        let (k, s) = (self.k, self.stride);
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(pool_fwd(v, layout, k, s)?),
            CpuStorage::F64(v) => CpuStorage::F64(pool_fwd(v, layout, k, s)?),
            CpuStorage::BF16(v) => CpuStorage::BF16(pool_fwd(v, layout, k, s)?),
            CpuStorage::F16(v) => CpuStorage::F16(pool_fwd(v, layout, k, s)?),
            other => candle_core::bail!("aezoo-max-pool2d: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &MaxPool2dGrad {
                k: self.k,
                stride: self.stride,
            },
        )?;
        Ok(Some(grad))
    }
}

/// The backward of [`MaxPool2d`]: scatters each output gradient to the first
/// maximum of its window (accumulating where windows overlap).
#[derive(Clone, Copy, Debug)]
struct MaxPool2dGrad {
    k: usize,
    stride: usize,
}

fn pool_bwd<T>(src: &[T], l: &Layout, grad: &[T], lg: &Layout, k: usize, s: usize) -> Result<Vec<T>>
where
    T: Copy + PartialOrd + std::ops::AddAssign + Default + Send + Sync,
{
    let (planes, h, w, oh, ow, off) = pool_dims(l, k, s)?;
    let src = &src[off..off + planes * h * w];
    let goff = lg.start_offset();
    let grad = &grad[goff..goff + planes * oh * ow];
    let mut out = vec![T::default(); planes * h * w];
    out.par_chunks_mut(h * w)
        .zip(src.par_chunks(h * w))
        .zip(grad.par_chunks(oh * ow))
        .with_min_len(pool_min_planes(h * w))
        .for_each(|((oplane, plane), gplane)| {
            if k == 2 && s == 2 {
                pool2_plane_bwd(plane, w, ow, gplane, oplane);
            } else {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let i = window_argmax(plane, w, k, s, oy, ox);
                        oplane[i] += gplane[oy * ow + ox];
                    }
                }
            }
        });
    Ok(out)
}

impl CustomOp2 for MaxPool2dGrad {
    fn name(&self) -> &'static str {
        "aezoo-max-pool2d-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if !l1.is_contiguous() || !l2.is_contiguous() {
            candle_core::bail!("aezoo-max-pool2d-grad: inputs must be contiguous");
        }
        let (k, s) = (self.k, self.stride);
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(g)) => CpuStorage::F32(pool_bwd(a, l1, g, l2, k, s)?),
            (CpuStorage::F64(a), CpuStorage::F64(g)) => CpuStorage::F64(pool_bwd(a, l1, g, l2, k, s)?),
            (CpuStorage::BF16(a), CpuStorage::BF16(g)) => CpuStorage::BF16(pool_bwd(a, l1, g, l2, k, s)?),
            (CpuStorage::F16(a), CpuStorage::F16(g)) => CpuStorage::F16(pool_bwd(a, l1, g, l2, k, s)?),
            (a, g) => candle_core::bail!(
                "aezoo-max-pool2d-grad: unsupported dtypes {:?}/{:?}",
                a.dtype(),
                g.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }
}

multiversion! {
    /// The 2×2, stride-2 max pool of one image's `(o, oh, ow)` activations into
    /// `(o, oh/2, ow/2)` (floor), recording each window's first maximum as
    /// `ops::max_pool2d` picks it (a NaN wins). Planes without NaN take plain
    /// `>` selects, which compile without branches (a branch per comparison
    /// mispredicted on real activations: 8 ns a window).
    pub(crate) fn pool2_record<T: Float>(y: &[T], oh: usize, ow: usize, out: &mut [T], arg: &mut [u8]) {
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
    pub(crate) fn unpool2<T: Float>(dp: &[T], p: Option<&[T]>, arg: &[u8], act: Act, oh: usize, ow: usize, dz: &mut [T]) {
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
