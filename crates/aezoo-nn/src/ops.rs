//! Gradient-correct tensor ops: every op an aezoo model uses goes through this
//! module, so a candle op whose backward is wrong is replaced in one place.
//!
//! What is ours and why (each one is gradient-checked in `tests/nn`):
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
//!   (`aezoo_kernels::conv2d_gemm`), several times faster than candle 0.11's loops. On
//!   other devices candle's ops, with one fix: candle's conv2d backward fails
//!   (a shape error) whenever the strided window does not end exactly on the
//!   padded input's last row or column (`(in + 2p − eff_k) % s ≠ 0`, e.g. 6
//!   wide, k 3, s 2, p 1), so [`conv2d_candle`] pads explicitly and trims the
//!   rows no window reads.
//! - [`relu`], [`silu`], [`sigmoid`]: candle's, checked.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, D};

use crate::conv3d::Conv3dOpts;
use crate::layers::apply_act;
use crate::Act;

pub use aezoo_kernels::Pattern as LinkPattern;

/// 2-D convolution of `(b, c_in, h, w)` by `(c_out, c_in/groups, kh, kw)`
/// plus an optional per-channel bias, with a backward that is right for every
/// size. On the CPU (groups = 1) it runs as im2col + GEMM (`aezoo_kernels`);
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
        return aezoo_kernels::conv2d_gemm(xs, kernel, bias, padding, stride, dilation);
    }
    let ys = conv2d_candle(xs, kernel, padding, stride, dilation, groups)?;
    add_channel_bias(ys, bias)
}

/// `ys + bias` over the channel axis of `(b, c, h, w)`.
pub fn add_channel_bias(ys: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    aezoo_kernels::add_channel_bias(ys, bias)
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
        return aezoo_kernels::conv_transpose2d_gemm(xs, kernel, bias, padding, output_padding, stride, dilation);
    }
    let ys = xs.conv_transpose2d(kernel, padding, output_padding, stride, dilation)?;
    add_channel_bias(ys, bias)
}

/// 3-D convolution of `(b, c, t, h, w)` by `(o, c, kt, kh, kw)` plus an
/// optional bias (candle has none): vol2col + GEMM on the CPU, the sum of 2-D
/// convolutions over temporal taps elsewhere or with `AEZOO_NO_FUSED=1`
/// ([`crate::conv3d`]).
pub fn conv3d(xs: &Tensor, kernel: &Tensor, bias: Option<&Tensor>, opts: Conv3dOpts) -> Result<Tensor> {
    conv3d_within(xs, kernel, bias, opts, crate::limits::MAX_TENSOR_ELEMS)
}

/// [`conv3d`] whose CPU path holds at most `max_columns` column values at
/// once: the batch goes through in chunks (the same values as one pass).
pub fn conv3d_within(
    xs: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    opts: Conv3dOpts,
    max_columns: usize,
) -> Result<Tensor> {
    if xs.device().is_cpu() && aezoo_kernels::enabled() {
        let per_sample = aezoo_kernels::conv3d_columns_per_sample(xs, kernel, opts)?;
        return in_batch_chunks("conv3d", xs, kernel, per_sample, max_columns, |x| {
            aezoo_kernels::conv3d_gemm(x, kernel, bias, opts)
        });
    }
    crate::conv3d::conv3d_taps(xs, kernel, bias, opts)
}

/// 3-D transposed convolution of `(b, ci, t, h, w)` by `(ci, o, kt, kh, kw)`
/// plus an optional bias; GEMM + col2vol on the CPU, temporal taps of 2-D
/// transposed convolutions elsewhere or with `AEZOO_NO_FUSED=1`.
pub fn conv_transpose3d(xs: &Tensor, kernel: &Tensor, bias: Option<&Tensor>, opts: Conv3dOpts) -> Result<Tensor> {
    conv_transpose3d_within(xs, kernel, bias, opts, crate::limits::MAX_TENSOR_ELEMS)
}

/// [`conv_transpose3d`] holding at most `max_columns` column values at once.
pub fn conv_transpose3d_within(
    xs: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    opts: Conv3dOpts,
    max_columns: usize,
) -> Result<Tensor> {
    if xs.device().is_cpu() && aezoo_kernels::enabled() {
        let per_sample = aezoo_kernels::conv_transpose3d_columns_per_sample(xs, kernel)?;
        return in_batch_chunks("conv_transpose3d", xs, kernel, per_sample, max_columns, |x| {
            aezoo_kernels::conv_transpose3d_gemm(x, kernel, bias, opts)
        });
    }
    crate::conv3d::conv_transpose3d_taps(xs, kernel, bias, opts)
}

/// The GEMM paths of the 3-D convolutions hold a column buffer of
/// `per_sample` values per sample (channels × taps by positions): the batch
/// goes through `f` in chunks whose buffer fits `max_columns`, and a sample
/// whose buffer alone does not (a kernel as large as the clip: terabytes) is
/// refused before anything is allocated, naming the kernel.
fn in_batch_chunks(
    op: &str,
    xs: &Tensor,
    kernel: &Tensor,
    per_sample: Option<usize>,
    max_columns: usize,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let per_sample = match per_sample {
        Some(n) if n <= max_columns => n.max(1),
        n => candle_core::bail!(
            "{op}: a kernel of shape {:?} over this input needs a column buffer of {} values per sample, above the limit of {max_columns} (aezoo_nn::limits); use a smaller kernel or clip",
            kernel.dims(),
            n.map_or("more".to_string(), |n| n.to_string())
        ),
    };
    let b = xs.dim(0)?;
    let chunk = (max_columns / per_sample).max(1);
    if b <= chunk {
        return f(xs);
    }
    let parts = (0..b)
        .step_by(chunk)
        .map(|i| f(&xs.narrow(0, i, chunk.min(b - i))?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// Single-head scaled dot-product attention of `(b, n, c)` queries, keys
/// and values: `softmax(q·kᵀ / √c)·v`, the softmax over the keys (the
/// composite whose gradient is right) computed in `softmax_dtype` (the
/// upcast of half-precision scores, as diffusers does), never narrower than
/// f64 scores: an f64 model (the gradient checks) stays f64 throughout.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, softmax_dtype: DType) -> Result<Tensor> {
    let c = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? / (c as f64).sqrt())?;
    let dtype = match scores.dtype() {
        DType::F64 => DType::F64,
        _ => softmax_dtype,
    };
    crate::layers::computed_in(&scores, dtype, |s| softmax(s, D::Minus1))?.matmul(v)
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

/// Logistic sigmoid: one vectorised pass on the CPU
/// (`aezoo_kernels::sigmoid`), candle's elsewhere.
pub fn sigmoid(xs: &Tensor) -> Result<Tensor> {
    if fused_applies(xs) {
        aezoo_kernels::sigmoid(xs)
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
    if fused_applies(xs) {
        return aezoo_kernels::upsample_nearest2d(xs, factor_h, factor_w);
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
        Device::Cpu => aezoo_kernels::max_pool2d(xs, k, stride),
        _ if k == stride => max_pool2d_composite(xs, k),
        dev => candle_core::bail!(
            "max_pool2d with kernel {k} != stride {stride} is only implemented on the CPU (device {dev:?})"
        ),
    }
}

/// Device-agnostic max pooling for `k == stride` made of reshapes, an
/// argmax and a gather, with the CPU kernel's (and PyTorch's) rule: the
/// first maximum of the window in row-major order is the output and takes
/// the whole gradient; a window holding NaN gives its first NaN. (A plain
/// `max` reduction hands the gradient to every tied maximum: a constant
/// background, where a conv gives its bias everywhere, then counts k² times.)
pub fn max_pool2d_composite(xs: &Tensor, k: usize) -> Result<Tensor> {
    // xs: (b, c, h, w) -> (b, c, oh, ow)
    let (b, c, h, w) = xs.dims4()?;
    let (oh, ow) = (h / k, w / k);
    let xs = if oh * k != h || ow * k != w {
        xs.narrow(2, 0, oh * k)?.narrow(3, 0, ow * k)?
    } else {
        xs.clone()
    };
    // (b, c, oh, ow, k·k): each window's values in row-major order.
    let win = xs
        .reshape((b, c, oh, k, ow, k))?
        .permute((0, 1, 2, 4, 3, 5))?
        .contiguous()?
        .reshape((b, c, oh, ow, k * k))?;
    let plain = win.detach();
    let is_nan = plain.ne(&plain)?;
    let is_max = plain.broadcast_eq(&plain.max_keepdim(4)?)?;
    let chosen = is_nan
        .max_keepdim(4)?
        .broadcast_as(is_nan.shape())?
        .where_cond(&is_nan, &is_max)?;
    // The first chosen position: the largest of chosen · (k² − position).
    let rank = Tensor::arange(0f32, (k * k) as f32, xs.device())?.affine(-1.0, (k * k) as f64)?;
    let first = chosen.to_dtype(DType::F32)?.broadcast_mul(&rank)?.argmax_keepdim(4)?;
    win.gather(&first, 4)?.squeeze(4)
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

/// `act(conv2d(upsample_nearest2d(xs, f, f), kernel) + bias)` with stride 1,
/// dilation 1, groups 1 and `padding` on both axes: on the CPU (f32/f64)
/// one conv on `xs` with the `f²` sub-pixel kernels
/// (`aezoo_kernels::upsample_conv2d`: no upsampled copy, about half the
/// multiply-adds for 3 × 3; off: `AEZOO_NO_SUBPIXEL=1`); otherwise upsample
/// then the fused conv, or elsewhere the composite.
pub fn upsample_conv2d(
    xs: &Tensor,
    factor: usize,
    kernel: &Tensor,
    bias: &Tensor,
    padding: usize,
    act: Act,
) -> Result<Tensor> {
    if aezoo_kernels::upsample_conv2d_applies(xs, factor, kernel, padding) {
        return aezoo_kernels::upsample_conv2d(xs, factor, kernel, bias, padding, act);
    }
    let up = upsample_nearest2d(xs, factor, factor)?;
    if fused_applies(&up) {
        return aezoo_kernels::conv2d(&up, kernel, bias, padding, 1, 1, act);
    }
    apply_act(conv2d(&up, kernel, Some(bias), padding, 1, 1, 1)?, act)
}

/// Whether `xs` takes the fused CPU kernels (CPU, f32/f64, `AEZOO_NO_FUSED`
/// off): what a caller with a composite of its own checks first.
pub fn fused_applies(xs: &Tensor) -> bool {
    aezoo_kernels::applies(xs)
}

/// Per-element binary cross-entropy on logits, `max(x, 0) − x·t +
/// ln(1 + e^−|x|)`, as one CPU node with its backward (where
/// [`fused_applies`]; `aezoo_metrics::bce_with_logits` keeps the composite
/// for the rest).
pub fn bce_with_logits_fused(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    aezoo_kernels::bce_with_logits(logits, target)
}

/// Per-plane mean SSIM `(b, c)` of `(b, c, h, w)` images as one CPU node
/// with its backward (where [`fused_applies`]; `aezoo_metrics::ssim` keeps
/// the composite for the rest), with the separable window `win` and
/// constants `c1`, `c2`.
pub fn ssim_planes_fused(x: &Tensor, y: &Tensor, win: &[f64], c1: f64, c2: f64) -> Result<Tensor> {
    aezoo_kernels::ssim_planes(x, y, win, c1, c2)
}

/// The weighted cross-entropy of an inner-product decoder's logits `z zᵀ`
/// against a 0/1 pattern (GAE / VGAE's loss) as one CPU node with its
/// backward, the `n × n` logits never stored whole (where [`fused_applies`];
/// `aezoo_graph::loss` keeps the composite for the rest).
pub fn inner_product_wce(z: &Tensor, labels: &Arc<LinkPattern>, pos_weight: f64, norm: f64) -> Result<Tensor> {
    aezoo_kernels::inner_product_wce(z, labels, pos_weight, norm)
}
