//! SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, "Image quality assessment:
//! from error visibility to structural similarity") of image pairs as one
//! autograd node on the CPU: the Gaussian-weighted moments of every plane
//! by two separable "valid" passes, the SSIM map and its mean per plane in
//! the forward; in the backward the derivatives of the map with respect to
//! the five moments, filtered back through the window's adjoint.
//!
//! ```text
//! m_x = G∗x, m_y = G∗y, m_xx = G∗x², m_yy = G∗y², m_xy = G∗xy      (valid, per plane)
//! σx² = m_xx − m_x², σy² = m_yy − m_y², σxy = m_xy − m_x·m_y
//! S = (2 m_x m_y + C1)/(m_x² + m_y² + C1) · (2σxy + C2)/(σx² + σy² + C2)
//! dL/dx = Gᵀ∗g_x + 2x·Gᵀ∗g_s + y·Gᵀ∗g_xy,   g_· = w·∂S/∂m_·   (g_s = ∂S/∂m_xx = ∂S/∂m_yy)
//! ```
//!
//! The composite of candle ops this replaces (`aezoo_metrics::ssim` off the
//! CPU, or with `AEZOO_NO_FUSED=1`) allocated some forty tensors per call:
//! 8.6 ms per `codec-mnist` step (batch 64, 28 × 28) of the ~19 ms.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::float::Float;
use crate::scaffold::{by_dtype, contiguous};

/// The window and constants of one SSIM.
#[derive(Clone, Debug)]
struct Ssim {
    /// The normalised 1-D Gaussian (odd length).
    win: Vec<f64>,
    c1: f64,
    c2: f64,
}

/// Per-plane mean SSIM `(b, c)` of `(b, c, h, w)` images `x` and `y`
/// (CPU, f32 or f64, same shapes, both differentiable), with the separable
/// window `win` and constants `c1 = (k1·L)²`, `c2 = (k2·L)²`.
pub fn ssim_planes(x: &Tensor, y: &Tensor, win: &[f64], c1: f64, c2: f64) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if x.dims() != y.dims() {
        candle_core::bail!("ssim: shapes {:?} and {:?} differ", x.dims(), y.dims());
    }
    if win.is_empty() || h < win.len() || w < win.len() {
        candle_core::bail!("ssim: images of {h}x{w} are smaller than the {0}x{0} window", win.len());
    }
    let op = Ssim {
        win: win.to_vec(),
        c1,
        c2,
    };
    x.contiguous()?.apply_op2(&y.contiguous()?, op)
}

fn dims(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

/// The five moment maps of one plane, each `oh × ow`: `m_x, m_y, m_xx,
/// m_yy, m_xy`. `rows` is scratch for the horizontal pass (`5·h·ow`) and
/// one row's five signals (`5·w`).
fn moments<T: Float>(x: &[T], y: &[T], h: usize, w: usize, win: &[T], rows: &mut Vec<T>, out: &mut [Vec<T>; 5]) {
    let k = win.len();
    let (oh, ow) = (h - k + 1, w - k + 1);
    rows.clear();
    rows.resize(5 * h * ow + 5 * w, T::default());
    let (rx, rest) = rows.split_at_mut(h * ow);
    let (ry, rest) = rest.split_at_mut(h * ow);
    let (rxx, rest) = rest.split_at_mut(h * ow);
    let (ryy, rest) = rest.split_at_mut(h * ow);
    let (rxy, sig) = rest.split_at_mut(h * ow);
    // The five signals of one row (`sig`), then each filtered tap by tap
    // (the loop over output columns innermost, so it vectorises).
    for r in 0..h {
        let (xr, yr) = (&x[r * w..(r + 1) * w], &y[r * w..(r + 1) * w]);
        for j in 0..w {
            let (a, b) = (xr[j], yr[j]);
            sig[j] = a;
            sig[w + j] = b;
            sig[2 * w + j] = a * a;
            sig[3 * w + j] = b * b;
            sig[4 * w + j] = a * b;
        }
        for (s, dst) in [&mut *rx, &mut *ry, &mut *rxx, &mut *ryy, &mut *rxy]
            .into_iter()
            .enumerate()
        {
            let (src, dst) = (&sig[s * w..(s + 1) * w], &mut dst[r * ow..(r + 1) * ow]);
            for (t, &g) in win.iter().enumerate() {
                for (d, &v) in dst.iter_mut().zip(&src[t..t + ow]) {
                    *d += g * v;
                }
            }
        }
    }
    for (m, src) in out.iter_mut().zip([&*rx, &*ry, &*rxx, &*ryy, &*rxy]) {
        m.clear();
        m.resize(oh * ow, T::default());
        for i in 0..oh {
            let dst = &mut m[i * ow..(i + 1) * ow];
            for (t, &g) in win.iter().enumerate() {
                let row = &src[(i + t) * ow..(i + t + 1) * ow];
                for (d, &v) in dst.iter_mut().zip(row) {
                    *d += g * v;
                }
            }
        }
    }
}

/// The SSIM map's parts at one position: `(lum, cs, B1, B2)`.
#[inline]
fn parts(m: [f64; 5], c1: f64, c2: f64) -> (f64, f64, f64, f64) {
    let [mx, my, mxx, myy, mxy] = m;
    let (sx, sy, sxy) = (mxx - mx * mx, myy - my * my, mxy - mx * my);
    let (b1, b2) = (mx * mx + my * my + c1, sx + sy + c2);
    ((2.0 * mx * my + c1) / b1, (2.0 * sxy + c2) / b2, b1, b2)
}

fn at<T: Float>(ms: &[Vec<T>; 5], i: usize) -> [f64; 5] {
    [
        ms[0][i].to_f64(),
        ms[1][i].to_f64(),
        ms[2][i].to_f64(),
        ms[3][i].to_f64(),
        ms[4][i].to_f64(),
    ]
}

fn window<T: Float>(win: &[f64]) -> Vec<T> {
    win.iter().map(|&v| T::from_f64(v)).collect()
}

fn fwd<T: Float>(op: &Ssim, x: &CpuStorage, lx: &Layout, y: &CpuStorage, ly: &Layout) -> Result<(CpuStorage, Shape)> {
    let (b, c, h, w) = dims(lx)?;
    let (x, y) = (contiguous::<T>(x, lx, "ssim")?, contiguous::<T>(y, ly, "ssim")?);
    let win = window::<T>(&op.win);
    let plane = h * w;
    let n = ((h - win.len() + 1) * (w - win.len() + 1)) as f64;
    let means: Vec<T> = (0..b * c)
        .into_par_iter()
        .map_init(
            || (Vec::new(), std::array::from_fn::<Vec<T>, 5, _>(|_| Vec::new())),
            |(rows, ms), p| {
                let r = p * plane..(p + 1) * plane;
                moments(&x[r.clone()], &y[r], h, w, &win, rows, ms);
                let s: f64 = (0..ms[0].len())
                    .map(|i| {
                        let (lum, cs, ..) = parts(at(ms, i), op.c1, op.c2);
                        lum * cs
                    })
                    .sum();
                T::from_f64(s / n)
            },
        )
        .collect();
    Ok((T::storage(means), Shape::from((b, c))))
}

/// The backward: `(x, y, dL/dmeans)` → packed `[dx | dy]`.
#[derive(Clone, Debug)]
struct SsimGrad(Ssim);

/// `out += Gᵀ ∗ g` for an `oh × ow` map `g` into an `h × w` plane: the
/// adjoint of the valid separable filter (`tmp`: `h × ow` scratch).
fn adjoint<T: Float>(g: &[T], h: usize, w: usize, win: &[T], tmp: &mut Vec<T>, out: &mut [T]) {
    let k = win.len();
    let (oh, ow) = (h - k + 1, w - k + 1);
    tmp.clear();
    tmp.resize(h * ow, T::default());
    for i in 0..oh {
        let src = &g[i * ow..(i + 1) * ow];
        for (t, &wt) in win.iter().enumerate() {
            let dst = &mut tmp[(i + t) * ow..(i + t + 1) * ow];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d += wt * v;
            }
        }
    }
    for r in 0..h {
        let (src, dst) = (&tmp[r * ow..(r + 1) * ow], &mut out[r * w..(r + 1) * w]);
        for (t, &wt) in win.iter().enumerate() {
            for (d, &v) in dst[t..t + ow].iter_mut().zip(src) {
                *d += wt * v;
            }
        }
    }
}

fn bwd<T: Float>(
    op: &Ssim,
    x: &CpuStorage,
    lx: &Layout,
    y: &CpuStorage,
    ly: &Layout,
    g: &CpuStorage,
    lg: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (b, c, h, w) = dims(lx)?;
    let (x, y, g) = (
        contiguous::<T>(x, lx, "ssim-grad")?,
        contiguous::<T>(y, ly, "ssim-grad")?,
        contiguous::<T>(g, lg, "ssim-grad")?,
    );
    if g.len() != b * c {
        candle_core::bail!("aezoo ssim: the gradient has {} values for {} planes", g.len(), b * c);
    }
    let win = window::<T>(&op.win);
    let plane = h * w;
    let n = ((h - win.len() + 1) * (w - win.len() + 1)) as f64;
    let mut packed = vec![T::default(); 2 * b * c * plane];
    let (dx, dy) = packed.split_at_mut(b * c * plane);
    type Scratch<T> = (Vec<T>, [Vec<T>; 5], [Vec<T>; 4], Vec<T>, [Vec<T>; 4]);
    dx.par_chunks_mut(plane)
        .zip(dy.par_chunks_mut(plane))
        .enumerate()
        .for_each_init(
            || -> Scratch<T> {
                (
                    Vec::new(),
                    std::array::from_fn(|_| Vec::new()),
                    std::array::from_fn(|_| Vec::new()),
                    Vec::new(),
                    std::array::from_fn(|_| Vec::new()),
                )
            },
            |(rows, ms, gs, tmp, back), (p, (dxp, dyp))| {
                let r = p * plane..(p + 1) * plane;
                let (xp, yp) = (&x[r.clone()], &y[r]);
                moments(xp, yp, h, w, &win, rows, ms);
                let wgt = g[p].to_f64() / n;
                let len = ms[0].len();
                for m in gs.iter_mut() {
                    m.clear();
                    m.resize(len, T::default());
                }
                // g_x, g_y, g_s (= ∂S/∂m_xx = ∂S/∂m_yy), g_xy, each times wgt.
                for i in 0..len {
                    let m = at(ms, i);
                    let (mx, my) = (m[0], m[1]);
                    let (lum, cs, b1, b2) = parts(m, op.c1, op.c2);
                    let s_mx = cs * 2.0 * (my - mx * lum) / b1;
                    let s_my = cs * 2.0 * (mx - my * lum) / b1;
                    let s_s = -lum * cs / b2;
                    let s_c = lum * 2.0 / b2;
                    gs[0][i] = T::from_f64(wgt * (s_mx - 2.0 * mx * s_s - my * s_c));
                    gs[1][i] = T::from_f64(wgt * (s_my - 2.0 * my * s_s - mx * s_c));
                    gs[2][i] = T::from_f64(wgt * s_s);
                    gs[3][i] = T::from_f64(wgt * s_c);
                }
                for (m, out) in gs.iter().zip(back.iter_mut()) {
                    out.clear();
                    out.resize(plane, T::default());
                    adjoint(m, h, w, &win, tmp, out);
                }
                let two = T::ONE + T::ONE;
                for q in 0..plane {
                    let (a, bq) = (xp[q], yp[q]);
                    dxp[q] = back[0][q] + two * a * back[2][q] + bq * back[3][q];
                    dyp[q] = back[1][q] + two * bq * back[2][q] + a * back[3][q];
                }
            },
        );
    let len = packed.len();
    Ok((T::storage(packed), Shape::from(len)))
}

impl CustomOp2 for Ssim {
    fn name(&self) -> &'static str {
        "aezoo-ssim"
    }
    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout, y: &CpuStorage, ly: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(x, fwd(self, x, lx, y, ly))
    }
    fn bwd(&self, x: &Tensor, y: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(y, &grad.contiguous()?, &SsimGrad(self.clone()))?;
        let n = x.elem_count();
        Ok((
            Some(packed.narrow(0, 0, n)?.reshape(x.shape())?),
            Some(packed.narrow(0, n, n)?.reshape(y.shape())?),
        ))
    }
}

impl CustomOp3 for SsimGrad {
    fn name(&self) -> &'static str {
        "aezoo-ssim-grad"
    }
    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        y: &CpuStorage,
        ly: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(x, bwd(&self.0, x, lx, y, ly, g, lg))
    }
}
