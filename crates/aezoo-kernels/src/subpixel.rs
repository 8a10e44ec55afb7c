//! Nearest `f`× upsampling followed by a stride-1 convolution, computed as one
//! convolution on the small image with `f²` sub-pixel ("phase") kernels —
//! the decomposition behind sub-pixel convolution (Shi et al. 2016, "Real-Time
//! Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
//! Convolutional Neural Network") applied to the upsample-then-conv decoder
//! block (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").
//!
//! Every output pixel `y = 2i + q` of `conv(upsample₂(x), W)` reads, through
//! the upsampling, only original rows `i + ⌊(q − p + ky)/2⌋`: a 3 × 3 kernel
//! with padding 1 touches two original rows and two columns per output phase
//! `(qy, qx)`. Summing the taps that land on the same original pixel gives four
//! 2 × 2 kernels, and the block is
//!
//! ```text
//! Wₚ = combine(W)             (4·O, C, 2, 2)   a fixed linear map of W (a small matmul)
//! z  = act(conv(x, Wₚ, pad 1) + b)             (b, 4·O, h + 1, w + 1)
//! y  = interleave(z)          (b, O, 2h, 2w)   y[2i+qy, 2j+qx] = z[phase (qy,qx)][i+oy, j+ox]
//! ```
//!
//! the same function (up to rounding) with 16 multiply-adds per small pixel
//! and channel pair instead of 36 (the phase planes' extra row and column
//! make it 0.51 of the multiply-adds at 14 × 14, 0.58 at 7 × 7), and no upsampled copy of `x` written or
//! read. The interleave happens inside the conv's node
//! ([`crate::conv2d_shuffled`]): the implicit GEMM's products are stored
//! straight into the upsampled image and its backward gathers `dy ⊙ act'(y)`
//! back into phase planes, so `z` is never stored whole. The gradient flows
//! through that hand-written backward and candle's matmul (for `W`). The parameters
//! stay the layer's own `(O, C, k, k)` kernel: `Wₚ` is derived in every
//! call, so weights load and save as for the plain layer. For `f = 4`
//! (`vae-flex-sd`'s `UpS_4`) a 3 × 3 kernel gives sixteen 2 × 2 kernels, the
//! same ratio. Off: `AEZOO_NO_SUBPIXEL=1` or `AEZOO_NO_FUSED=1` (then, and in
//! any case this does not cover, upsample then conv).

use candle_core::{Result, Tensor};

use crate::conv::{self, Shuffle, SHUFFLE_MAX};
use crate::float::Act;

/// The sub-pixel plan of `conv(upsample_f(x), W)` along one axis of length
/// `n`, for a factor `f`, a kernel of `k` taps and padding `p`: per output
/// phase `q < f`, the first original offset it reads (`lo[q]`); the phase
/// kernels' width `kp`; the padding `pad` of the small conv (enough for
/// every phase's first and last read, a phase with fewer taps than `kp`
/// reading zero-weight taps past them); and the output length `out`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plan {
    f: usize,
    k: usize,
    p: usize,
    lo: Vec<isize>,
    kp: usize,
    pad: usize,
    out: usize,
}

impl Plan {
    /// `None` for a factor below 2 or above [`SHUFFLE_MAX`], a
    /// padding of the kernel's size or more, or no output (the fallback then
    /// upsamples).
    fn new(f: usize, k: usize, p: usize, n: usize) -> Option<Self> {
        if !(2..=SHUFFLE_MAX).contains(&f) || k == 0 || p >= k || n == 0 {
            return None;
        }
        let out = (f * n + 2 * p + 1).checked_sub(k).filter(|&o| o > 0)?;
        let lo: Vec<isize> = (0..f).map(|q| Self::tap(f, p, q, 0)).collect();
        let kp = (0..f).map(|q| (Self::tap(f, p, q, k - 1) - lo[q] + 1) as usize).max()?;
        // Left: the smallest first read; right: the largest last read past
        // the input's last pixel (phase q's last output is y = q + f·(c − 1)).
        let left = -lo.iter().min()?;
        let right = (0..f.min(out))
            .map(|q| ((out - 1 - q) / f + kp) as isize + lo[q] - n as isize)
            .max()?;
        let pad = left.max(right).max(0) as usize;
        Some(Self {
            f,
            k,
            p,
            lo,
            kp,
            pad,
            out,
        })
    }

    /// The original offset `⌊(q − p + t)/f⌋` that tap `t` reads for phase `q`.
    fn tap(f: usize, p: usize, q: usize, t: usize) -> isize {
        (q as isize - p as isize + t as isize).div_euclid(f as isize)
    }

    /// Where phase `q`'s outputs start in the small conv's output.
    fn offset(&self, q: usize) -> usize {
        (self.lo[q] + self.pad as isize) as usize
    }

    /// `taps()[a · k + t][q]`: 1 where tap `t` of the full kernel lands on
    /// tap `a` of phase `q`'s kernel.
    fn taps(&self) -> Vec<Vec<f64>> {
        let mut m = vec![vec![0.0; self.f]; self.kp * self.k];
        for (q, &lo) in self.lo.iter().enumerate() {
            for t in 0..self.k {
                m[(Self::tap(self.f, self.p, q, t) - lo) as usize * self.k + t][q] = 1.0;
            }
        }
        m
    }
}

/// Whether the sub-pixel form is on: the fused path on and
/// `AEZOO_NO_SUBPIXEL` off.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::enabled() && *ON.get_or_init(|| !aezoo_env::flag("AEZOO_NO_SUBPIXEL"))
}

/// The plans of both axes where [`upsample_conv2d`] takes the sub-pixel
/// path for this input, factor, kernel `(o, c, kh, kw)` and padding.
fn plans(xs: &Tensor, factor: usize, kernel: &Tensor, padding: usize) -> Option<(Plan, Plan)> {
    let (_, _, kh, kw) = kernel.dims4().ok()?;
    let (_, _, h, w) = xs.dims4().ok()?;
    let (py, px) = (Plan::new(factor, kh, padding, h)?, Plan::new(factor, kw, padding, w)?);
    (enabled() && crate::applies(xs)).then_some((py, px))
}

/// Whether [`upsample_conv2d`] takes the sub-pixel path for this input,
/// factor, kernel `(o, c, kh, kw)` and padding (CPU, f32/f64, fused path on).
pub fn applies(xs: &Tensor, factor: usize, kernel: &Tensor, padding: usize) -> bool {
    plans(xs, factor, kernel, padding).is_some()
}

/// `act(conv2d(upsample_nearest2d(xs, f, f), kernel) + bias)` with stride 1,
/// dilation 1, groups 1 and `padding` on both axes, in the sub-pixel form
/// above, where [`applies`] (the caller upsamples then convolves
/// elsewhere: `aezoo_nn::ops::upsample_conv2d`).
pub fn upsample_conv2d(
    xs: &Tensor,
    factor: usize,
    kernel: &Tensor,
    bias: &Tensor,
    padding: usize,
    act: Act,
) -> Result<Tensor> {
    // xs: (b, c, h, w), kernel: (o, c, kh, kw) -> (b, o, f·h + 2p + 1 - kh, f·w + 2p + 1 - kw)
    let Some((py, px)) = plans(xs, factor, kernel, padding) else {
        candle_core::bail!(
            "upsample_conv2d: factor {factor}, kernel {:?}, padding {padding} on input {:?} has no sub-pixel form here",
            kernel.dims(),
            xs.dims()
        );
    };
    let (pk, pb) = (phase_kernels(kernel, &py, &px)?, phase_bias(bias, factor)?);
    // The fused conv pads both axes alike: the larger of the two plans'
    // paddings, each axis's phase offsets shifted by the difference.
    let pad = py.pad.max(px.pad);
    let starts = |p: &Plan| {
        let mut at = [0; SHUFFLE_MAX];
        (0..factor).for_each(|q| at[q] = p.offset(q) + pad - p.pad);
        at
    };
    let shuffle = Shuffle {
        f: factor,
        oh: py.out,
        ow: px.out,
        oy: starts(&py),
        ox: starts(&px),
    };
    conv::conv2d_shuffled(xs, &pk, &pb, pad, act, shuffle)
}

/// The `f²` phase kernels `(f²·o, c, kph, kpw)`, phase `f·qy + qx` major, as
/// `W (o·c, kh·kw) · T (kh·kw, f²·kph·kpw)` (candle's matmul carries the
/// gradient back to `W`).
fn phase_kernels(kernel: &Tensor, py: &Plan, px: &Plan) -> Result<Tensor> {
    let (o, c, kh, kw) = kernel.dims4()?;
    let (my, mx) = (py.taps(), px.taps());
    let (f, kph, kpw) = (py.f, py.kp, px.kp);
    let cols = f * f * kph * kpw;
    // T[(ty, tx), (qy, qx, a, b)] = My[a·kh + ty][qy] · Mx[b·kw + tx][qx]
    let mut t = vec![0f64; kh * kw * cols];
    for ty in 0..kh {
        for tx in 0..kw {
            let row = &mut t[(ty * kw + tx) * cols..][..cols];
            for (j, v) in row.iter_mut().enumerate() {
                let (qy, qx, a, b) = (j / (f * kph * kpw), j / (kph * kpw) % f, j / kpw % kph, j % kpw);
                *v = my[a * kh + ty][qy] * mx[b * kw + tx][qx];
            }
        }
    }
    let t = Tensor::from_vec(t, (kh * kw, cols), kernel.device())?.to_dtype(kernel.dtype())?;
    kernel
        .reshape((o * c, kh * kw))?
        .matmul(&t)?
        .reshape((o, c, f * f, kph, kpw))?
        .permute((2, 0, 1, 3, 4))?
        .contiguous()?
        .reshape((f * f * o, c, kph, kpw))
}

/// The bias once per phase: `(f²·o,)`.
fn phase_bias(bias: &Tensor, f: usize) -> Result<Tensor> {
    let o = bias.dim(0)?;
    bias.unsqueeze(0)?
        .broadcast_as((f * f, o))?
        .contiguous()?
        .reshape(f * f * o)
}
