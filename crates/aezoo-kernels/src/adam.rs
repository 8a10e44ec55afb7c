//! Adam's update of one tensor in one pass over parameter, gradient and
//! both moments (`aezoo_nn::optim::Adam` calls it on the CPU): branch-free
//! and multiversioned, so it vectorises with its sqrt and division, in
//! chunks over the pool for large tensors. PyTorch's arithmetic, operation
//! for operation.

use candle_core::Result;
use rayon::prelude::*;

/// Elements per parallel chunk of the update.
const ADAM_CHUNK: usize = 1 << 14;

/// f32 / f64, as the update needs them.
pub trait AdamFloat:
    Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn of(x: f64) -> Self;
    fn sqrt(self) -> Self;
}

impl AdamFloat for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl AdamFloat for f64 {
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

multiversion! {
    /// One chunk of the update; branch-free, so it vectorises (sqrt and div
    /// included).
    fn adam_kernel<T: AdamFloat>(c: [T; 9], p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
        let [b1, b2, c1, c2, inv_bc2, eps, step, l2, decay] = c;
        for (((pj, &gj), mj), vj) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let gj = gj + *pj * l2;
            *mj = *mj * b1 + gj * c1;
            *vj = *vj * b2 + gj * gj * c2;
            let denom = vj.sqrt() * inv_bc2 + eps;
            *pj = *pj * decay - (*mj / denom) * step;
        }
    }
}

/// One update of `p` (and its moments `m`, `v`) from the gradient `g`,
/// with the step's constants `c = [β1, β2, 1−β1, 1−β2, 1/√(1−β2ᵗ), eps,
/// step, l2, decay]` in the parameter's dtype.
pub fn update<T: AdamFloat>(c: [T; 9], p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) -> Result<()> {
    if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
        candle_core::bail!(
            "aezoo-adam: parameter of {} elements, gradient {}, moments {} and {}",
            p.len(),
            g.len(),
            m.len(),
            v.len()
        );
    }
    if p.len() > ADAM_CHUNK {
        crate::pool::keep_warm();
        p.par_chunks_mut(ADAM_CHUNK)
            .zip(g.par_chunks(ADAM_CHUNK))
            .zip(m.par_chunks_mut(ADAM_CHUNK).zip(v.par_chunks_mut(ADAM_CHUNK)))
            .for_each(|((p, g), (m, v))| adam_kernel(c, p, g, m, v));
    } else {
        adam_kernel(c, p, g, m, v);
    }
    Ok(())
}
