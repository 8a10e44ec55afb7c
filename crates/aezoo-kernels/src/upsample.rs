//! Nearest-neighbour upsampling by integer factors on the CPU: one pass
//! forward, a block sum backward that *adds* into the input's gradient
//! (candle 0.11's backward overwrites it, wrong as soon as the input feeds
//! anything else, and takes square factors only).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `upsample_nearest2d(xs, fh, fw)` of a `(b, c, h, w)` CPU tensor.
pub fn upsample_nearest2d(xs: &Tensor, fh: usize, fw: usize) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Upsample { fh, fw })
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
