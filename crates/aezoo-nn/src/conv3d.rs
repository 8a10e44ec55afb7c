//! 3-D convolutions (candle 0.11 has none) as a sum of 2-D convolutions,
//! one per temporal kernel tap, on any device; on the CPU `ops::conv3d`
//! takes vol2col + one GEMM instead (`aezoo_kernels::conv3d_gemm`). Both
//! are gradient-checked and pinned to PyTorch's `conv3d` /
//! `conv_transpose3d` (`tests/nn`).
//!
//! ```text
//! conv3d:           y[:, :, t] = Σ_dt conv2d(x[:, :, t·st + dt − pt], w[:, :, dt])
//! conv_transpose3d: y[:, :, t·st + dt − pt] += conv_transpose2d(x[:, :, t], w[:, :, dt])
//! ```

use aezoo_kernels::{add_bias5, convt_len, dims5};
use candle_core::{Result, Tensor};

pub use aezoo_kernels::Conv3dOpts;

/// Frames `x[:, :, dt + st·j]`, `j < n`, of a time-padded `(b, c, T, h, w)`.
fn time_taps(xs: &Tensor, dt: usize, st: usize, n: usize) -> Result<Tensor> {
    if st == 1 {
        return xs.narrow(2, dt, n);
    }
    let idx: Vec<u32> = (0..n).map(|j| (dt + st * j) as u32).collect();
    xs.index_select(&Tensor::new(idx, xs.device())?, 2)
}

/// Conv3d as a sum of 2-D convolutions, one per temporal kernel tap (any
/// device; the spatial stride and padding must be equal in h and w).
pub fn conv3d_taps(xs: &Tensor, kernel: &Tensor, bias: Option<&Tensor>, opts: Conv3dOpts) -> Result<Tensor> {
    let (b, c, t, _h, _w) = dims5(xs, "conv3d input")?;
    let (o, kc, kt, kh, kw) = dims5(kernel, "conv3d kernel")?;
    if kc != c {
        candle_core::bail!("conv3d: input has {c} channels, the kernel expects {kc}");
    }
    let ([st, sh, sw], [pt, ph, pw]) = (opts.stride, opts.padding);
    if sh != sw || ph != pw {
        candle_core::bail!(
            "conv3d (plain path): spatial stride and padding must be equal in h and w, got {:?} / {:?}",
            opts.stride,
            opts.padding
        );
    }
    if t + 2 * pt < kt {
        candle_core::bail!("conv3d: {t} frames with padding {pt} are fewer than the kernel's {kt}");
    }
    let ot = (t + 2 * pt - kt) / st + 1;
    let xs = if pt > 0 {
        xs.pad_with_zeros(2, pt, pt)?
    } else {
        xs.clone()
    };
    let mut acc: Option<Tensor> = None;
    for dt in 0..kt {
        // frames: (b, ot, c, h, w) -> (b·ot, c, h, w)
        let frames = time_taps(&xs, dt, st, ot)?.transpose(1, 2)?.contiguous()?;
        let (_, _, _, h, w) = frames.dims5()?;
        let frames = frames.reshape((b * ot, c, h, w))?;
        let w2 = kernel.narrow(2, dt, 1)?.reshape((o, c, kh, kw))?;
        let ys = crate::ops::conv2d(&frames, &w2, None, ph, sh, 1, 1)?;
        acc = Some(match acc {
            Some(a) => (a + ys)?,
            None => ys,
        });
    }
    let ys = acc.expect("kt >= 1");
    let (_, _, oh, ow) = ys.dims4()?;
    // (b·ot, o, oh, ow) -> (b, o, ot, oh, ow)
    let ys = ys.reshape((b, ot, o, oh, ow))?.transpose(1, 2)?.contiguous()?;
    add_bias5(ys, bias)
}

/// Transposed conv3d as a sum of 2-D transposed convolutions placed at their
/// output frames (any device; spatial stride, padding and output padding equal
/// in h and w).
pub fn conv_transpose3d_taps(xs: &Tensor, kernel: &Tensor, bias: Option<&Tensor>, opts: Conv3dOpts) -> Result<Tensor> {
    let (b, ci, t, h, w) = dims5(xs, "conv_transpose3d input")?;
    let (kci, o, kt, kh, kw) = dims5(kernel, "conv_transpose3d kernel")?;
    if kci != ci {
        candle_core::bail!("conv_transpose3d: input has {ci} channels, the kernel expects {kci}");
    }
    let ([st, sh, sw], [pt, ph, pw], [opt, oph, opw]) = (opts.stride, opts.padding, opts.output_padding);
    if sh != sw || ph != pw || oph != opw {
        candle_core::bail!(
            "conv_transpose3d (plain path): spatial stride, padding and output padding must be equal in h and w, got {opts:?}"
        );
    }
    let out_t = convt_len(t, kt, st, pt, opt)?;
    // Full (uncropped) time axis: frame j of tap dt lands at dt + st·j.
    let span = (t - 1) * st + 1;
    let full = ((t - 1) * st + kt).max(pt + out_t);
    let frames = xs.transpose(1, 2)?.contiguous()?.reshape((b * t, ci, h, w))?;
    let mut acc: Option<Tensor> = None;
    for dt in 0..kt {
        let w2 = kernel.narrow(2, dt, 1)?.reshape((ci, o, kh, kw))?;
        let ys = crate::ops::conv_transpose2d(&frames, &w2, None, ph, oph, sh, 1)?;
        let (_, _, oh, ow) = ys.dims4()?;
        let ys = ys.reshape((b, t, o, oh, ow))?;
        // Interleave st − 1 empty frames after each frame: (b, span, o, oh, ow).
        let ys = if st > 1 {
            let z = ys.zeros_like()?;
            let mut parts = vec![ys];
            parts.extend(std::iter::repeat_n(z, st - 1));
            Tensor::stack(&parts, 2)?
                .reshape((b, t * st, o, oh, ow))?
                .narrow(1, 0, span)?
        } else {
            ys
        };
        let ys = ys.pad_with_zeros(1, dt, full - dt - span)?;
        acc = Some(match acc {
            Some(a) => (a + ys)?,
            None => ys,
        });
    }
    let ys = acc.expect("kt >= 1").narrow(1, pt, out_t)?;
    add_bias5(ys.transpose(1, 2)?.contiguous()?, bias)
}
