//! TensorFlow's `padding="SAME"` for 2-D and 3-D inputs.
//!
//! TF picks the output size `ceil(in / stride)` and pads just enough for it:
//! `total = max((out - 1)·stride + (k - 1)·dilation + 1 - in, 0)`, with
//! `total / 2` before and the rest (one more when odd) after — the asymmetric
//! split PyTorch's symmetric `padding=` cannot express. Kernel smaller than
//! stride gives zero padding.

use candle_core::{Result, Tensor};

/// `(before, after)` zero padding TensorFlow's SAME adds to one spatial axis.
pub fn same_pad_amounts(input: usize, kernel: usize, stride: usize, dilation: usize) -> (usize, usize) {
    assert!(
        stride >= 1 && kernel >= 1 && dilation >= 1,
        "same_pad: k, s, d must be >= 1"
    );
    let out = input.div_ceil(stride);
    let eff_k = (kernel - 1) * dilation + 1;
    let needed = (out.saturating_sub(1)) * stride + eff_k;
    let total = needed.saturating_sub(input);
    (total / 2, total - total / 2)
}

/// Output length of a SAME convolution along one axis: `ceil(in / stride)`.
pub fn same_out_len(input: usize, stride: usize) -> usize {
    input.div_ceil(stride)
}

/// Zero-pads the trailing `kernel.len()` axes of `xs` (2 for `(b, c, h, w)`,
/// 3 for `(b, c, t, h, w)`) so that a valid convolution with these kernel
/// sizes and strides gives TensorFlow's SAME output.
pub fn same_pad(xs: &Tensor, kernel: &[usize], stride: &[usize]) -> Result<Tensor> {
    same_pad_dilated(xs, kernel, stride, &vec![1; kernel.len()])
}

/// [`same_pad`] with a dilation per axis.
pub fn same_pad_dilated(xs: &Tensor, kernel: &[usize], stride: &[usize], dilation: &[usize]) -> Result<Tensor> {
    let nd = kernel.len();
    if stride.len() != nd || dilation.len() != nd {
        candle_core::bail!(
            "same_pad: kernel {kernel:?}, stride {stride:?} and dilation {dilation:?} must have one entry per spatial axis"
        );
    }
    if !(2..=3).contains(&nd) || xs.rank() != nd + 2 {
        candle_core::bail!(
            "same_pad: expects (b, c, h, w) with 2 kernel sizes or (b, c, t, h, w) with 3, got shape {:?} and kernel {kernel:?}",
            xs.dims()
        );
    }
    let mut xs = xs.clone();
    for i in 0..nd {
        let axis = 2 + i;
        let (before, after) = same_pad_amounts(xs.dim(axis)?, kernel[i], stride[i], dilation[i]);
        if before + after > 0 {
            xs = xs.pad_with_zeros(axis, before, after)?;
        }
    }
    Ok(xs)
}
