//! 3-D convolutions on the CPU as vol2col + one GEMM (the 3-D form of
//! Chellapilla et al. 2006, as [`crate::im2col`] does in 2-D); candle 0.11
//! has none. `aezoo_nn::ops::conv3d` takes this path on the CPU and a sum of
//! 2-D convolutions over the temporal taps elsewhere.
//!
//! ```text
//! conv3d:           cols = vol2col(x)   (C·kt·kh·kw [+1], B·OT·OH·OW);  y = [W | b] · cols
//! conv_transpose3d: cols = Wᵀ · x       (O·kt·kh·kw, B·T·H·W);          y = col2vol(cols) + b
//! ```
//! `vol2col` and `col2vol` are custom ops that are each other's backward; the
//! GEMMs are candle's matmul with its own backward. Gradient-checked and
//! pinned to PyTorch's `conv3d` / `conv_transpose3d` (`crates/aezoo-nn/tests`).
//! Layout is PyTorch's: `(b, c, t, h, w)`, kernels `(o, c, kt, kh, kw)` and,
//! transposed, `(c, o, kt, kh, kw)`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::im2col::{contiguous_slice, with_zero_row};

/// Stride, zero padding and (for transposed convs) output padding per axis
/// `(t, h, w)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dOpts {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub output_padding: [usize; 3],
}

impl Default for Conv3dOpts {
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [0; 3],
            output_padding: [0; 3],
        }
    }
}

/// A `c × t × h × w` volume read by a `kt × kh × kw` window, giving a grid of
/// `ot × oh × ow` window positions (dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry3 {
    pub c: usize,
    /// Volume size `(t, h, w)`.
    pub size: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    /// Grid size `(ot, oh, ow)`.
    pub out: [usize; 3],
}

impl Geometry3 {
    /// The geometry of a convolution over a `t × h × w` volume (grid derived).
    pub fn for_conv(
        c: usize,
        size: [usize; 3],
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Result<Self> {
        let mut out = [0; 3];
        for i in 0..3 {
            if kernel[i] == 0 || stride[i] == 0 {
                candle_core::bail!("conv3d: kernel {kernel:?} and stride {stride:?} must be >= 1");
            }
            if size[i] + 2 * padding[i] < kernel[i] {
                candle_core::bail!(
                    "conv3d: input {size:?} with padding {padding:?} is smaller than the {kernel:?} kernel"
                );
            }
            out[i] = (size[i] + 2 * padding[i] - kernel[i]) / stride[i] + 1;
        }
        Ok(Self {
            c,
            size,
            kernel,
            stride,
            padding,
            out,
        })
    }

    fn k(&self) -> usize {
        self.c * self.kernel.iter().product::<usize>()
    }

    fn l(&self) -> usize {
        self.out.iter().product()
    }

    fn vol(&self) -> usize {
        self.size.iter().product()
    }

    /// `(c, dt, dy, dx)` of a `cols` row.
    #[inline]
    fn row(&self, r: usize) -> (usize, usize, usize, usize) {
        let [kt, kh, kw] = self.kernel;
        (r / (kt * kh * kw), (r / (kh * kw)) % kt, (r / kw) % kh, r % kw)
    }
}

/// The grid positions `lo..hi` along one axis whose tap `k` reads inside the
/// volume: `0 <= o·s + k − p < n`.
#[inline]
fn valid(out: usize, s: usize, k: usize, p: usize, n: usize) -> (usize, usize) {
    let lo = if p > k { (p - k).div_ceil(s) } else { 0 };
    let hi = if n + p > k { out.min((n + p - k).div_ceil(s)) } else { 0 };
    (lo.min(hi), hi)
}

fn vol2col_kernel<T: Copy + Default + Send + Sync>(
    src: &[T],
    b: usize,
    g: &Geometry3,
    ones_row: bool,
    one: T,
) -> Vec<T> {
    let (k, l, vol) = (g.k(), g.l(), g.vol());
    let [t_n, h, w] = g.size;
    let [ot, oh, ow] = g.out;
    let [st, sh, sw] = g.stride;
    let [pt, ph, pw] = g.padding;
    let cols_n = b * l;
    let rows = k + usize::from(ones_row);
    let mut out = vec![T::default(); rows * cols_n];
    out.par_chunks_mut(cols_n).enumerate().for_each(|(r, row)| {
        if r == k {
            row.iter_mut().for_each(|v| *v = one);
            return;
        }
        let (c, dt, dy, dx) = g.row(r);
        let (t_lo, t_hi) = valid(ot, st, dt, pt, t_n);
        let (y_lo, y_hi) = valid(oh, sh, dy, ph, h);
        let (x_lo, x_hi) = valid(ow, sw, dx, pw, w);
        if x_lo >= x_hi {
            return;
        }
        let x0 = x_lo * sw + dx - pw;
        for bi in 0..b {
            let volume = &src[(bi * g.c + c) * vol..(bi * g.c + c + 1) * vol];
            for t in t_lo..t_hi {
                let ti = t * st + dt - pt;
                let frame = &volume[ti * h * w..(ti + 1) * h * w];
                let dst = &mut row[bi * l + t * oh * ow..bi * l + (t + 1) * oh * ow];
                for oy in y_lo..y_hi {
                    let y = oy * sh + dy - ph;
                    let srow = &frame[y * w..(y + 1) * w];
                    let drow = &mut dst[oy * ow + x_lo..oy * ow + x_hi];
                    if sw == 1 {
                        drow.copy_from_slice(&srow[x0..x0 + drow.len()]);
                    } else {
                        // The head of each stride-wide chunk (faster than `step_by`).
                        for (d, c) in drow.iter_mut().zip(srow[x0..].chunks(sw)) {
                            *d = c[0];
                        }
                    }
                }
            }
        }
    });
    out
}

fn col2vol_kernel<T>(cols: &[T], b: usize, g: &Geometry3) -> Vec<T>
where
    T: Copy + Default + Send + Sync + std::ops::AddAssign,
{
    let (l, vol) = (g.l(), g.vol());
    let [t_n, h, w] = g.size;
    let [ot, oh, ow] = g.out;
    let [kt, kh, kw] = g.kernel;
    let [st, sh, sw] = g.stride;
    let [pt, ph, pw] = g.padding;
    let cols_n = b * l;
    let mut out = vec![T::default(); b * g.c * vol];
    out.par_chunks_mut(vol).enumerate().for_each(|(bc, volume)| {
        let (bi, c) = (bc / g.c, bc % g.c);
        for dt in 0..kt {
            let (t_lo, t_hi) = valid(ot, st, dt, pt, t_n);
            for dy in 0..kh {
                let (y_lo, y_hi) = valid(oh, sh, dy, ph, h);
                for dx in 0..kw {
                    let (x_lo, x_hi) = valid(ow, sw, dx, pw, w);
                    if x_lo >= x_hi {
                        continue;
                    }
                    let x0 = x_lo * sw + dx - pw;
                    let r = ((c * kt + dt) * kh + dy) * kw + dx;
                    let src = &cols[r * cols_n + bi * l..r * cols_n + (bi + 1) * l];
                    for t in t_lo..t_hi {
                        let ti = t * st + dt - pt;
                        let frame = &mut volume[ti * h * w..(ti + 1) * h * w];
                        for oy in y_lo..y_hi {
                            let y = oy * sh + dy - ph;
                            let irow = &mut frame[y * w..(y + 1) * w];
                            let srow = &src[(t * oh + oy) * ow + x_lo..(t * oh + oy) * ow + x_hi];
                            if sw == 1 {
                                for (d, &v) in irow[x0..x0 + srow.len()].iter_mut().zip(srow) {
                                    *d += v;
                                }
                            } else {
                                for (c, &v) in irow[x0..].chunks_mut(sw).zip(srow) {
                                    c[0] += v;
                                }
                            }
                        }
                    }
                }
            }
        }
    });
    out
}

/// `(b, c, t, h, w)` → `(c·kt·kh·kw [+1], b·ot·oh·ow)`.
#[derive(Clone, Copy, Debug)]
struct Vol2Col {
    g: Geometry3,
    ones_row: bool,
}

/// `(c·kt·kh·kw [+1], b·ot·oh·ow)` → `(b, c, t, h, w)`, summing overlaps.
#[derive(Clone, Copy, Debug)]
struct Col2Vol {
    g: Geometry3,
    b: usize,
    has_ones_row: bool,
}

impl CustomOp1 for Vol2Col {
    fn name(&self) -> &'static str {
        "aezoo-vol2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, t, h, w) = l.shape().dims5()?;
        let g = &self.g;
        if (c, [t, h, w]) != (g.c, g.size) {
            candle_core::bail!("aezoo-vol2col: input {:?} does not match {g:?}", l.dims());
        }
        let shape = Shape::from((g.k() + usize::from(self.ones_row), b * g.l()));
        let o = self.ones_row;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(vol2col_kernel(contiguous_slice(v, l)?, b, g, o, 1f32)),
            CpuStorage::F64(v) => CpuStorage::F64(vol2col_kernel(contiguous_slice(v, l)?, b, g, o, 1f64)),
            other => candle_core::bail!("aezoo-vol2col: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = Col2Vol {
            g: self.g,
            b: arg.dim(0)?,
            has_ones_row: self.ones_row,
        };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

impl CustomOp1 for Col2Vol {
    fn name(&self) -> &'static str {
        "aezoo-col2vol"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = l.shape().dims2()?;
        let g = &self.g;
        if rows != g.k() + usize::from(self.has_ones_row) || n != self.b * g.l() {
            candle_core::bail!(
                "aezoo-col2vol: input {:?} does not match {g:?} with batch {}",
                l.dims(),
                self.b
            );
        }
        let [t, h, w] = g.size;
        let shape = Shape::from((self.b, g.c, t, h, w));
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(col2vol_kernel(contiguous_slice(v, l)?, self.b, g)),
            CpuStorage::F64(v) => CpuStorage::F64(col2vol_kernel(contiguous_slice(v, l)?, self.b, g)),
            other => candle_core::bail!("aezoo-col2vol: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?.apply_op1(Vol2Col {
            g: self.g,
            ones_row: false,
        })?;
        Ok(Some(if self.has_ones_row { with_zero_row(g)? } else { g }))
    }
}

/// `vol2col` as a differentiable op (CPU).
pub fn vol2col(xs: &Tensor, g: Geometry3, ones_row: bool) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Vol2Col { g, ones_row })
}

/// `col2vol` as a differentiable op (CPU).
pub fn col2vol(cols: &Tensor, g: Geometry3, b: usize) -> Result<Tensor> {
    cols.contiguous()?.apply_op1(Col2Vol {
        g,
        b,
        has_ones_row: false,
    })
}

/// The five axes of `t`, or an error naming `what`.
pub fn dims5(t: &Tensor, what: &str) -> Result<(usize, usize, usize, usize, usize)> {
    t.dims5()
        .map_err(|_| candle_core::Error::Msg(format!("{what}: expected a 5-D tensor, got shape {:?}", t.dims())))
}

/// `ys + bias` over the channel axis of `(b, c, t, h, w)`.
pub fn add_bias5(ys: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => ys.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1, 1))?),
        None => Ok(ys),
    }
}

/// Output length of a transposed conv along one axis.
pub fn convt_len(n: usize, k: usize, s: usize, p: usize, op: usize) -> Result<usize> {
    if op >= s {
        candle_core::bail!("conv_transpose3d: output_padding {op} must be smaller than the stride {s}");
    }
    let full = (n - 1) * s + k + op;
    if full <= 2 * p {
        candle_core::bail!("conv_transpose3d: padding {p} leaves no output");
    }
    Ok(full - 2 * p)
}

/// Values of the column buffer [`conv3d_gemm`] holds for each sample of
/// `xs` (channels × taps by grid positions), `None` past `usize`.
pub fn conv3d_columns_per_sample(xs: &Tensor, kernel: &Tensor, opts: Conv3dOpts) -> Result<Option<usize>> {
    let (_, c, t, h, w) = dims5(xs, "conv3d input")?;
    let (_, _, kt, kh, kw) = dims5(kernel, "conv3d kernel")?;
    let g = Geometry3::for_conv(c, [t, h, w], [kt, kh, kw], opts.stride, opts.padding)?;
    Ok(columns(&[c, kt, kh, kw], &g.out))
}

/// Values of the column buffer [`conv_transpose3d_gemm`] holds for each
/// sample of `xs` (output channels × taps by input positions).
pub fn conv_transpose3d_columns_per_sample(xs: &Tensor, kernel: &Tensor) -> Result<Option<usize>> {
    let (_, _, t, h, w) = dims5(xs, "conv_transpose3d input")?;
    let (_, o, kt, kh, kw) = dims5(kernel, "conv_transpose3d kernel")?;
    Ok(columns(&[o, kt, kh, kw], &[t, h, w]))
}

fn columns(rows: &[usize], positions: &[usize]) -> Option<usize> {
    rows.iter().chain(positions).try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Conv3d of `(b, c, t, h, w)` by `(o, c, kt, kh, kw)` as vol2col + one GEMM (CPU).
pub fn conv3d_gemm(xs: &Tensor, kernel: &Tensor, bias: Option<&Tensor>, opts: Conv3dOpts) -> Result<Tensor> {
    // xs: (b, c, t, h, w); kernel: (o, c, kt, kh, kw) -> (b, o, ot, oh, ow)
    let (b, c, t, h, w) = dims5(xs, "conv3d input")?;
    let (o, kc, kt, kh, kw) = dims5(kernel, "conv3d kernel")?;
    if kc != c {
        candle_core::bail!("conv3d: input has {c} channels, the kernel expects {kc}");
    }
    let g = Geometry3::for_conv(c, [t, h, w], [kt, kh, kw], opts.stride, opts.padding)?;
    let cols = vol2col(xs, g, bias.is_some())?;
    let w2 = kernel.reshape((o, g.k()))?;
    let w2 = match bias {
        Some(bias) => Tensor::cat(&[&w2, &bias.reshape((o, 1))?], 1)?,
        None => w2,
    };
    let [ot, oh, ow] = g.out;
    // (o, b·l) -> (b, o, ot, oh, ow)
    w2.matmul(&cols)?
        .reshape((o, b, ot, oh, ow))?
        .transpose(0, 1)?
        .contiguous()
}

/// Transposed conv3d of `(b, ci, t, h, w)` by `(ci, o, kt, kh, kw)` as one
/// GEMM + col2vol (CPU).
pub fn conv_transpose3d_gemm(xs: &Tensor, kernel: &Tensor, bias: Option<&Tensor>, opts: Conv3dOpts) -> Result<Tensor> {
    // xs: (b, ci, t, h, w); kernel: (ci, o, kt, kh, kw) -> (b, o, ot, oh, ow)
    let (b, ci, t, h, w) = dims5(xs, "conv_transpose3d input")?;
    let (kci, o, kt, kh, kw) = dims5(kernel, "conv_transpose3d kernel")?;
    if kci != ci {
        candle_core::bail!("conv_transpose3d: input has {ci} channels, the kernel expects {kci}");
    }
    let (k, s, p, op) = ([kt, kh, kw], opts.stride, opts.padding, opts.output_padding);
    let size = [
        convt_len(t, kt, s[0], p[0], op[0])?,
        convt_len(h, kh, s[1], p[1], op[1])?,
        convt_len(w, kw, s[2], p[2], op[2])?,
    ];
    let g = Geometry3 {
        c: o,
        size,
        kernel: k,
        stride: s,
        padding: p,
        out: [t, h, w],
    };
    // x2: (ci, b·t·h·w); w2ᵀ: (o·kt·kh·kw, ci)
    let x2 = xs.transpose(0, 1)?.contiguous()?.reshape((ci, b * t * h * w))?;
    let w2t = kernel.reshape((ci, o * kt * kh * kw))?.t()?;
    add_bias5(col2vol(&w2t.matmul(&x2)?, g, b)?, bias)
}
