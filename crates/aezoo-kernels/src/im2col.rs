//! Convolutions on the CPU as im2col + one GEMM (Chellapilla et al. 2006;
//! the Caffe layout), with `im2col` and `col2im` as custom ops that are each
//! other's backward, and candle's matmul (and its backward) for the rest.
//!
//! candle 0.11's CPU conv2d is a tiled direct loop and its weight gradient is
//! itself a conv2d with a batch-sized kernel; its `conv_transpose2d` is a plain
//! loop. Here every conv — forward, input gradient, weight gradient — is one
//! large GEMM:
//!
//! ```text
//! conv2d:           cols = im2col(x)            (C·kh·kw [+1], B·OH·OW)
//!                   out  = [W | b] · cols        (O, B·OH·OW) → (B, O, OH, OW)
//! conv_transpose2d: cols = Wᵀ · x                (O·kh·kw, B·H·W)
//!                   out  = col2im(cols) + b      (B, O, OH, OW)
//! ```
//! The bias of `conv2d` rides in the GEMM as an extra row of ones in `cols`,
//! so its gradient is a by-product of the weight gradient's GEMM instead of a
//! strided reduction.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The geometry shared by `im2col` and `col2im`: an image of `c × h × w`
/// read by a `kh × kw` window with stride, zero padding and dilation, giving a
/// grid of `oh × ow` window positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    /// The geometry of a convolution over an `h × w` image (grid size derived).
    pub fn for_conv(
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<Self> {
        let span = |n: usize, k: usize| -> Result<usize> {
            let eff = dilation * (k - 1) + 1;
            if n + 2 * padding < eff {
                candle_core::bail!("conv: input {h}x{w} with padding {padding} is smaller than the {kh}x{kw} kernel (dilation {dilation})");
            }
            Ok((n + 2 * padding - eff) / stride + 1)
        };
        if stride == 0 || dilation == 0 || kh == 0 || kw == 0 {
            candle_core::bail!("conv: kernel, stride and dilation must be >= 1");
        }
        Ok(Self {
            c,
            h,
            w,
            kh,
            kw,
            stride,
            padding,
            dilation,
            oh: span(h, kh)?,
            ow: span(w, kw)?,
        })
    }

    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn l(&self) -> usize {
        self.oh * self.ow
    }

    /// For output row `oy` and kernel row `ky`: the image row, if inside.
    #[inline]
    fn src_y(&self, oy: usize, ky: usize) -> Option<usize> {
        let y = (oy * self.stride + ky * self.dilation) as isize - self.padding as isize;
        (y >= 0 && (y as usize) < self.h).then_some(y as usize)
    }

    #[inline]
    fn src_x(&self, ox: usize, kx: usize) -> Option<usize> {
        let x = (ox * self.stride + kx * self.dilation) as isize - self.padding as isize;
        (x >= 0 && (x as usize) < self.w).then_some(x as usize)
    }
}

fn im2col_kernel<T: Copy + Default + Send + Sync>(src: &[T], b: usize, g: &Geometry, ones_row: bool, one: T) -> Vec<T> {
    let (k, l) = (g.k(), g.l());
    let cols_n = b * l;
    let rows = k + usize::from(ones_row);
    let mut out = vec![T::default(); rows * cols_n];
    let plane = g.h * g.w;
    out.par_chunks_mut(cols_n).enumerate().for_each(|(r, row)| {
        if r == k {
            row.iter_mut().for_each(|v| *v = one);
            return;
        }
        let c = r / (g.kh * g.kw);
        let ky = (r / g.kw) % g.kh;
        let kx = r % g.kw;
        for bi in 0..b {
            let img = &src[(bi * g.c + c) * plane..(bi * g.c + c + 1) * plane];
            let dst = &mut row[bi * l..(bi + 1) * l];
            for oy in 0..g.oh {
                let drow = &mut dst[oy * g.ow..(oy + 1) * g.ow];
                match g.src_y(oy, ky) {
                    None => drow.iter_mut().for_each(|v| *v = T::default()),
                    Some(y) => {
                        let srow = &img[y * g.w..(y + 1) * g.w];
                        if g.stride == 1 && g.dilation == 1 {
                            // Contiguous run: x = ox + kx - p.
                            for (ox, d) in drow.iter_mut().enumerate() {
                                *d = match g.src_x(ox, kx) {
                                    Some(x) => srow[x],
                                    None => T::default(),
                                };
                            }
                        } else {
                            for (ox, d) in drow.iter_mut().enumerate() {
                                *d = match g.src_x(ox, kx) {
                                    Some(x) => srow[x],
                                    None => T::default(),
                                };
                            }
                        }
                    }
                }
            }
        }
    });
    out
}

fn col2im_kernel<T>(cols: &[T], b: usize, g: &Geometry, has_ones_row: bool) -> Vec<T>
where
    T: Copy + Default + Send + Sync + std::ops::AddAssign,
{
    let (k, l) = (g.k(), g.l());
    let cols_n = b * l;
    let _ = has_ones_row; // the ones row (index k), if present, is ignored
    let plane = g.h * g.w;
    let mut out = vec![T::default(); b * g.c * plane];
    out.par_chunks_mut(plane).enumerate().for_each(|(bc, img)| {
        let (bi, c) = (bc / g.c, bc % g.c);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (c * g.kh + ky) * g.kw + kx;
                debug_assert!(r < k);
                let src = &cols[r * cols_n + bi * l..r * cols_n + (bi + 1) * l];
                for oy in 0..g.oh {
                    let Some(y) = g.src_y(oy, ky) else { continue };
                    let irow = &mut img[y * g.w..(y + 1) * g.w];
                    let srow = &src[oy * g.ow..(oy + 1) * g.ow];
                    for (ox, &v) in srow.iter().enumerate() {
                        if let Some(x) = g.src_x(ox, kx) {
                            irow[x] += v;
                        }
                    }
                }
            }
        }
    });
    out
}

/// `(b, c, h, w)` → `(c·kh·kw [+1], b·oh·ow)`.
#[derive(Clone, Copy, Debug)]
struct Im2Col {
    g: Geometry,
    ones_row: bool,
}

/// `(c·kh·kw [+1], b·oh·ow)` → `(b, c, h, w)`, summing overlaps.
#[derive(Clone, Copy, Debug)]
struct Col2Im {
    g: Geometry,
    b: usize,
    has_ones_row: bool,
}

pub(crate) fn contiguous_slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("aezoo conv: input must be contiguous"),
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "aezoo-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let g = &self.g;
        if (c, h, w) != (g.c, g.h, g.w) {
            candle_core::bail!("aezoo-im2col: input {:?} does not match {g:?}", l.dims());
        }
        let shape = Shape::from((g.k() + usize::from(self.ones_row), b * g.l()));
        let o = self.ones_row;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(im2col_kernel(contiguous_slice(v, l)?, b, g, o, 1f32)),
            CpuStorage::F64(v) => CpuStorage::F64(im2col_kernel(contiguous_slice(v, l)?, b, g, o, 1f64)),
            CpuStorage::BF16(v) => CpuStorage::BF16(im2col_kernel(contiguous_slice(v, l)?, b, g, o, half::bf16::ONE)),
            CpuStorage::F16(v) => CpuStorage::F16(im2col_kernel(contiguous_slice(v, l)?, b, g, o, half::f16::ONE)),
            other => candle_core::bail!("aezoo-im2col: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let b = arg.dim(0)?;
        let op = Col2Im {
            g: self.g,
            b,
            has_ones_row: self.ones_row,
        };
        Ok(Some(grad.contiguous()?.apply_op1(op)?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "aezoo-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = l.shape().dims2()?;
        let g = &self.g;
        if rows != g.k() + usize::from(self.has_ones_row) || n != self.b * g.l() {
            candle_core::bail!(
                "aezoo-col2im: input {:?} does not match {g:?} with batch {}",
                l.dims(),
                self.b
            );
        }
        let shape = Shape::from((self.b, g.c, g.h, g.w));
        let (b, o) = (self.b, self.has_ones_row);
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(col2im_kernel(contiguous_slice(v, l)?, b, g, o)),
            CpuStorage::F64(v) => CpuStorage::F64(col2im_kernel(contiguous_slice(v, l)?, b, g, o)),
            CpuStorage::BF16(v) => CpuStorage::BF16(col2im_kernel(contiguous_slice(v, l)?, b, g, o)),
            CpuStorage::F16(v) => CpuStorage::F16(col2im_kernel(contiguous_slice(v, l)?, b, g, o)),
            other => candle_core::bail!("aezoo-col2im: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?.apply_op1(Im2Col {
            g: self.g,
            ones_row: false,
        })?;
        // The ones row (if any) has no gradient of its own.
        Ok(Some(if self.has_ones_row { with_zero_row(g)? } else { g }))
    }
}

/// `cols` with a row of zeros appended: the gradient of a bias's row of ones.
pub(crate) fn with_zero_row(cols: Tensor) -> Result<Tensor> {
    let n = cols.dim(1)?;
    Tensor::cat(&[&cols, &Tensor::zeros((1, n), cols.dtype(), cols.device())?], 0)
}

/// `im2col` as a differentiable op: `(b, c, h, w)` → `(c·kh·kw [+1], b·oh·ow)`.
pub fn im2col(xs: &Tensor, g: Geometry, ones_row: bool) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Im2Col { g, ones_row })
}

/// `col2im` as a differentiable op: `(c·kh·kw, b·oh·ow)` → `(b, c, h, w)`.
pub fn col2im(cols: &Tensor, g: Geometry, b: usize) -> Result<Tensor> {
    cols.contiguous()?.apply_op1(Col2Im {
        g,
        b,
        has_ones_row: false,
    })
}

/// `(o, b·l)` GEMM output → `(b, o, oh, ow)`.
fn to_nchw(ys: &Tensor, b: usize, oh: usize, ow: usize) -> Result<Tensor> {
    let o = ys.dim(0)?;
    ys.reshape((o, b, oh, ow))?.transpose(0, 1)?.contiguous()
}

/// Conv2d (with optional bias) of `(b, c, h, w)` by `(o, c, kh, kw)` via
/// im2col + GEMM (groups = 1).
pub fn conv2d_gemm(
    xs: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    // xs: (b, c, h, w); kernel: (o, c, kh, kw) -> (b, o, oh, ow)
    let (b, c, h, w) = xs.dims4()?;
    let (o, kc, kh, kw) = kernel.dims4()?;
    if kc != c {
        candle_core::bail!("conv2d: input has {c} channels, the kernel expects {kc}");
    }
    let g = Geometry::for_conv(c, h, w, kh, kw, stride, padding, dilation)?;
    let cols = im2col(xs, g, bias.is_some())?;
    let w2 = kernel.reshape((o, c * kh * kw))?;
    let w2 = match bias {
        Some(bias) => Tensor::cat(&[&w2, &bias.reshape((o, 1))?], 1)?,
        None => w2,
    };
    to_nchw(&w2.matmul(&cols)?, b, g.oh, g.ow)
}

/// Transposed conv2d of `(b, c_in, h, w)` by `(c_in, o, kh, kw)` via GEMM +
/// col2im, with optional bias.
pub fn conv_transpose2d_gemm(
    xs: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    output_padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    // xs: (b, ci, h, w); kernel: (ci, o, kh, kw) -> (b, o, oh, ow)
    let (b, ci, h, w) = xs.dims4()?;
    let (kci, o, kh, kw) = kernel.dims4()?;
    if kci != ci {
        candle_core::bail!("conv_transpose2d: input has {ci} channels, the kernel expects {kci}");
    }
    if output_padding >= stride.max(dilation) {
        candle_core::bail!("conv_transpose2d: output_padding {output_padding} must be smaller than stride or dilation");
    }
    let out_len = |n: usize, k: usize| -> Result<usize> {
        let full = (n - 1) * stride + dilation * (k - 1) + 1 + output_padding;
        if full <= 2 * padding {
            candle_core::bail!("conv_transpose2d: padding {padding} leaves no output");
        }
        Ok(full - 2 * padding)
    };
    let (oh, ow) = (out_len(h, kh)?, out_len(w, kw)?);
    let g = Geometry {
        c: o,
        h: oh,
        w: ow,
        kh,
        kw,
        stride,
        padding,
        dilation,
        oh: h,
        ow: w,
    };
    // x2: (ci, b·h·w); w2ᵀ: (o·kh·kw, ci)
    let x2 = xs.transpose(0, 1)?.contiguous()?.reshape((ci, b * h * w))?;
    let w2t = kernel.reshape((ci, o * kh * kw))?.t()?;
    let cols = w2t.matmul(&x2)?;
    add_channel_bias(col2im(&cols, g, b)?, bias)
}

/// `ys + bias` over the channel axis of `(b, c, h, w)`.
pub fn add_channel_bias(ys: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => {
            let c = b.dim(0)?;
            ys.broadcast_add(&b.reshape((1, c, 1, 1))?)
        }
        None => Ok(ys),
    }
}
