//! Gradient-correct tensor ops: every op an aezoo model uses goes through this
//! module, so a candle op whose backward is wrong is replaced in one place.
//!
//! What is ours and why (each one is gradient-checked in `tests/nn.rs`):
//! - [`max_pool2d`]: candle 0.11's `max_pool2d` backward scales the gradient by
//!   1/k² and has no backward at all when kernel ≠ stride. Ours routes the
//!   gradient to the first maximum of each window, as PyTorch does.
//! - [`upsample_nearest2d`]: candle's backward *overwrites* the accumulated
//!   gradient of its input instead of adding to it (wrong as soon as the input
//!   feeds anything else) and cannot do non-square factors. Ours is one
//!   replicate/block-sum custom op on the CPU, a broadcast (whose backward is
//!   a sum) elsewhere.
//! - [`softmax`]: candle's `softmax_last_dim` returns no gradient; the
//!   composite `candle_nn::ops::softmax` is correct and is what we call.
//! - [`conv2d`], [`conv_transpose2d`]: on the CPU, im2col/col2im + GEMM
//!   ([`crate::conv`]), several times faster than candle 0.11's loops. On
//!   other devices candle's ops, with one fix: candle's conv2d backward fails
//!   (a shape error) whenever the strided window does not end exactly on the
//!   padded input's last row or column (`(in + 2p − eff_k) % s ≠ 0`, e.g. 6
//!   wide, k 3, s 2, p 1), so [`conv2d_candle`] pads explicitly and trims the
//!   rows no window reads.
//! - [`relu`], [`silu`], [`sigmoid`]: candle's, checked.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// 2-D convolution of `(b, c_in, h, w)` by `(c_out, c_in/groups, kh, kw)`
/// plus an optional per-channel bias, with a backward that is right for every
/// size. On the CPU (groups = 1) it runs as im2col + GEMM ([`crate::conv`]);
/// elsewhere through candle's conv with the remainder fix of the module docs.
pub fn conv2d(
    xs: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    if xs.device().is_cpu() && groups == 1 {
        return crate::conv::conv2d_gemm(xs, kernel, bias, padding, stride, dilation);
    }
    let ys = conv2d_candle(xs, kernel, padding, stride, dilation, groups)?;
    add_channel_bias(ys, bias)
}

/// `ys + bias` over the channel axis of `(b, c, h, w)`.
pub(crate) fn add_channel_bias(ys: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => {
            let c = b.dim(0)?;
            ys.broadcast_add(&b.reshape((1, c, 1, 1))?)
        }
        None => Ok(ys),
    }
}

/// candle's conv2d, made exact-coverage so that its backward is right.
pub fn conv2d_candle(
    xs: &Tensor,
    kernel: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    // xs: (b, c, h, w); kernel: (o, c/g, kh, kw) -> (b, o, oh, ow)
    let (_b, _c, h, w) = xs.dims4()?;
    let (_o, _cg, kh, kw) = kernel.dims4()?;
    let span = |n: usize, k: usize| -> Result<(usize, usize)> {
        let eff = (k - 1) * dilation + 1;
        let padded = n + 2 * padding;
        if padded < eff {
            candle_core::bail!("conv2d: input {h}x{w} (padding {padding}) is smaller than the {kh}x{kw} kernel");
        }
        let used = (padded - eff) / stride * stride + eff;
        Ok((padded, used))
    };
    let (ph, uh) = span(h, kh)?;
    let (pw, uw) = span(w, kw)?;
    if uh == ph && uw == pw {
        return xs.conv2d(kernel, padding, stride, dilation, groups);
    }
    // Pad explicitly, drop the trailing rows/columns no window reaches.
    let xs = if padding > 0 {
        xs.pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
    } else {
        xs.clone()
    };
    xs.narrow(2, 0, uh)?
        .narrow(3, 0, uw)?
        .conv2d(kernel, 0, stride, dilation, groups)
}

/// 2-D transposed convolution of `(b, c_in, h, w)` by `(c_in, c_out, kh, kw)`
/// plus an optional bias; GEMM + col2im on the CPU, candle's op elsewhere.
pub fn conv_transpose2d(
    xs: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    output_padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    if xs.device().is_cpu() {
        return crate::conv::conv_transpose2d_gemm(xs, kernel, bias, padding, output_padding, stride, dilation);
    }
    let ys = xs.conv_transpose2d(kernel, padding, output_padding, stride, dilation)?;
    add_channel_bias(ys, bias)
}

/// 3-D convolution of `(b, c, t, h, w)` by `(o, c, kt, kh, kw)` plus an
/// optional bias (candle has none): vol2col + GEMM on the CPU, the sum of 2-D
/// convolutions over temporal taps elsewhere or with `AEZOO_NO_FUSED=1`
/// ([`crate::conv3d`]).
pub fn conv3d(xs: &Tensor, kernel: &Tensor, bias: Option<&Tensor>, opts: crate::conv3d::Conv3dOpts) -> Result<Tensor> {
    if xs.device().is_cpu() && crate::fused::enabled() {
        return crate::conv3d::conv3d_gemm(xs, kernel, bias, opts);
    }
    crate::conv3d::conv3d_taps(xs, kernel, bias, opts)
}

/// 3-D transposed convolution of `(b, ci, t, h, w)` by `(ci, o, kt, kh, kw)`
/// plus an optional bias; GEMM + col2vol on the CPU, temporal taps of 2-D
/// transposed convolutions elsewhere or with `AEZOO_NO_FUSED=1`.
pub fn conv_transpose3d(
    xs: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    opts: crate::conv3d::Conv3dOpts,
) -> Result<Tensor> {
    if xs.device().is_cpu() && crate::fused::enabled() {
        return crate::conv3d::conv_transpose3d_gemm(xs, kernel, bias, opts);
    }
    crate::conv3d::conv_transpose3d_taps(xs, kernel, bias, opts)
}

/// Scalar quantisation of every value of `xs` to its nearest entry of
/// `levels` (`(k,)`), with a straight-through gradient (van den Oord et al.
/// 2017, in one dimension).
///
/// Returns `(q, idx)`: `q` has the value of the chosen level itself (not a
/// distance), carries the incoming gradient unchanged to `xs` and, summed
/// over the positions that chose it, to each level; `idx` (u32, shape of
/// `xs`) is the level index of each value. Ties go to the lower index.
pub fn scalar_quantize(xs: &Tensor, levels: &Tensor) -> Result<(Tensor, Tensor)> {
    let k = levels.dims1()?;
    if k == 0 {
        candle_core::bail!("scalar_quantize: the codebook is empty");
    }
    let shape = xs.shape().clone();
    let flat = xs.flatten_all()?;
    // distances: (n, k); idx: (n,)
    let d = flat
        .detach()
        .unsqueeze(1)?
        .broadcast_sub(&levels.detach().unsqueeze(0)?)?
        .abs()?;
    let idx = d.argmin(1)?;
    let chosen = levels.index_select(&idx, 0)?;
    // value: the level; gradient: straight through to xs, and to the level.
    let q = (chosen + (&flat - flat.detach())?)?;
    Ok((q.reshape(shape.clone())?, idx.reshape(shape)?))
}

/// Rectified linear unit.
pub fn relu(xs: &Tensor) -> Result<Tensor> {
    xs.relu()
}

/// SiLU (swish): x · σ(x).
pub fn silu(xs: &Tensor) -> Result<Tensor> {
    xs.silu()
}

/// Logistic sigmoid: the fused op on the CPU ([`crate::fused::sigmoid`],
/// one vectorised pass), candle's elsewhere.
pub fn sigmoid(xs: &Tensor) -> Result<Tensor> {
    if crate::fused::applies(xs) {
        crate::fused::sigmoid(xs)
    } else {
        candle_nn::ops::sigmoid(xs)
    }
}

/// Softmax over `dim`, through the composite op whose gradient is correct.
pub fn softmax<Dm: candle_core::shape::Dim>(xs: &Tensor, dim: Dm) -> Result<Tensor> {
    candle_nn::ops::softmax(xs, dim)
}

/// Softmax over the last dimension (never candle's `softmax_last_dim`, which
/// silently has no backward).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    softmax(xs, D::Minus1)
}

/// Nearest-neighbour upsampling of a `(b, c, h, w)` tensor by integer factors.
pub fn upsample_nearest2d(xs: &Tensor, factor_h: usize, factor_w: usize) -> Result<Tensor> {
    // xs: (b, c, h, w) -> (b, c, h*fh, w*fw)
    let (b, c, h, w) = xs.dims4()?;
    if factor_h == 0 || factor_w == 0 {
        candle_core::bail!("upsample_nearest2d: factors must be >= 1, got {factor_h}x{factor_w}");
    }
    if crate::fused::applies(xs) {
        return xs.contiguous()?.apply_op1(Upsample {
            fh: factor_h,
            fw: factor_w,
        });
    }
    xs.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, factor_h, w, factor_w))?
        .reshape((b, c, h * factor_h, w * factor_w))
}

/// 2-D max pooling of a `(b, c, h, w)` tensor with a square window `k` and
/// stride `stride` (no padding; a trailing partial window is dropped, as in
/// PyTorch's default `ceil_mode=False`).
pub fn max_pool2d(xs: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    let (_b, _c, h, w) = xs.dims4()?;
    if k == 0 || stride == 0 {
        candle_core::bail!("max_pool2d: kernel and stride must be >= 1, got k={k} s={stride}");
    }
    if h < k || w < k {
        candle_core::bail!("max_pool2d: input {h}x{w} is smaller than the {k}x{k} window");
    }
    match xs.device() {
        Device::Cpu => xs.contiguous()?.apply_op1(MaxPool2d { k, stride }),
        _ if k == stride => max_pool2d_composite(xs, k),
        dev => candle_core::bail!(
            "max_pool2d with kernel {k} != stride {stride} is only implemented on the CPU (device {dev:?})"
        ),
    }
}

/// Device-agnostic max pooling for `k == stride` made of reshapes and max
/// reductions (autograd-correct; on exact ties every maximum receives the
/// gradient).
pub fn max_pool2d_composite(xs: &Tensor, k: usize) -> Result<Tensor> {
    // xs: (b, c, h, w) -> (b, c, oh, ow)
    let (b, c, h, w) = xs.dims4()?;
    let (oh, ow) = (h / k, w / k);
    let xs = if oh * k != h || ow * k != w {
        xs.narrow(2, 0, oh * k)?.narrow(3, 0, ow * k)?
    } else {
        xs.clone()
    };
    xs.reshape((b, c, oh, k, ow, k))?
        .max_keepdim(5)?
        .max_keepdim(3)?
        .reshape((b, c, oh, ow))
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

/// Nearest upsampling by integer factors on the CPU: one pass forward, a
/// block sum backward.
#[derive(Clone, Copy, Debug)]
struct Upsample {
    fh: usize,
    fw: usize,
}

fn upsample_fwd<T: Copy + Default>(src: &[T], l: &Layout, fh: usize, fw: usize) -> Result<Vec<T>> {
    let (b, c, h, w) = l.shape().dims4()?;
    let off = l.start_offset();
    let src = &src[off..off + b * c * h * w];
    let (oh, ow) = (h * fh, w * fw);
    let mut out = vec![T::default(); b * c * oh * ow];
    for (plane, dst) in src.chunks(h * w).zip(out.chunks_mut(oh * ow)) {
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            let first = &mut dst[y * fh * ow..(y * fh + 1) * ow];
            for (x, &v) in row.iter().enumerate() {
                first[x * fw..(x + 1) * fw].fill(v);
            }
            for r in 1..fh {
                let (done, rest) = dst[y * fh * ow..].split_at_mut(r * ow);
                rest[..ow].copy_from_slice(&done[..ow]);
            }
        }
    }
    Ok(out)
}

fn upsample_bwd<T: Copy + Default + std::ops::AddAssign>(g: &[T], l: &Layout, fh: usize, fw: usize) -> Result<Vec<T>> {
    let (b, c, oh, ow) = l.shape().dims4()?;
    let off = l.start_offset();
    let g = &g[off..off + b * c * oh * ow];
    let (h, w) = (oh / fh, ow / fw);
    let mut out = vec![T::default(); b * c * h * w];
    for (plane, dst) in g.chunks(oh * ow).zip(out.chunks_mut(h * w)) {
        for oy in 0..oh {
            let drow = &mut dst[(oy / fh) * w..(oy / fh + 1) * w];
            for (ox, &v) in plane[oy * ow..(oy + 1) * ow].iter().enumerate() {
                drow[ox / fw] += v;
            }
        }
    }
    Ok(out)
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "aezoo-upsample-nearest2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if !l.is_contiguous() {
            candle_core::bail!("aezoo-upsample-nearest2d: input must be contiguous");
        }
        let (b, c, h, w) = l.shape().dims4()?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(upsample_fwd(v, l, self.fh, self.fw)?),
            CpuStorage::F64(v) => CpuStorage::F64(upsample_fwd(v, l, self.fh, self.fw)?),
            other => candle_core::bail!("aezoo-upsample-nearest2d: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, Shape::from((b, c, h * self.fh, w * self.fw))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&UpsampleGrad(*self))?))
    }
}

#[derive(Clone, Copy, Debug)]
struct UpsampleGrad(Upsample);

impl CustomOp1 for UpsampleGrad {
    fn name(&self) -> &'static str {
        "aezoo-upsample-nearest2d-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, oh, ow) = l.shape().dims4()?;
        let Upsample { fh, fw } = self.0;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(upsample_bwd(v, l, fh, fw)?),
            CpuStorage::F64(v) => CpuStorage::F64(upsample_bwd(v, l, fh, fw)?),
            other => candle_core::bail!("aezoo-upsample-nearest2d-grad: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, Shape::from((b, c, oh / fh, ow / fw))))
    }
}

/// Generalized divisive normalisation with its effective parameters
/// (`beta` (c,) > 0, `gamma` (c, c) ≥ 0): `xᵢ / √(βᵢ + Σⱼ γᵢⱼ xⱼ²)`, or
/// `xᵢ · √(…)` when `inverse` (IGDN). Built from matmul, sqrt and division,
/// whose candle backward passes are checked in the tests.
pub fn gdn(xs: &Tensor, beta: &Tensor, gamma: &Tensor, inverse: bool) -> Result<Tensor> {
    // xs: (b, c, h, w)
    let (b, c, h, w) = xs.dims4()?;
    // Σⱼ γᵢⱼ xⱼ² as a 1×1 convolution: (c, c) · (b, c, h·w)
    let sq = xs.sqr()?.reshape((b, c, h * w))?;
    let norm = gamma
        .broadcast_matmul(&sq)?
        .broadcast_add(&beta.reshape((1, c, 1))?)?
        .sqrt()?
        .reshape((b, c, h, w))?;
    if inverse {
        xs * norm
    } else {
        xs / norm
    }
}
