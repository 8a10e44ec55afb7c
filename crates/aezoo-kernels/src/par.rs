//! Products on the `gemm` crate split over the pool (f64, and f32 where
//! [`crate::sgemm`] is off or unavailable), and the threading choices the
//! fused layers share: how many threads a region gets, and whether a batch
//! runs one image per task or images in turn with multi-threaded products.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::float::Float;

/// Element-wise passes at least this long run on all threads.
pub(crate) const PAR_ELEMS: usize = 1 << 15;

/// Threads for the parallel region that follows (which keeps the other
/// workers awake for it and the next: `pool::keep_warm`).
pub(crate) fn threads() -> usize {
    crate::pool::keep_warm();
    rayon::current_num_threads().max(1)
}

/// `c (m×n) [+]= a (m×k) · b (k×n)`, each with its own row and column strides.
///
/// With `Parallelism::Rayon(t)` the product is split here into `t` blocks of
/// rows of `c` (or of columns, when `n` is the longer side), each a
/// single-threaded call of the `gemm` crate, whose own threading is slower
/// on the linear layers' shapes (`cargo run --release -p aezoo-cli --example
/// gemm_split`; figures in docs/perf.md).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    (c_rs, c_cs): (usize, usize),
    accumulate: bool,
    a: &[T],
    (a_rs, a_cs): (usize, usize),
    b: &[T],
    (b_rs, b_cs): (usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.iter_mut().for_each(|v| *v = T::default());
        }
        return;
    }
    // Bounds: the furthest element each operand touches.
    assert!((m - 1) * c_rs + (n - 1) * c_cs < c.len(), "gemm: c too short");
    assert!((m - 1) * a_rs + (k - 1) * a_cs < a.len(), "gemm: a too short");
    assert!((k - 1) * b_rs + (n - 1) * b_cs < b.len(), "gemm: b too short");
    let t = match par {
        Parallelism::Rayon(t) => t.max(1),
        _ => 1,
    };
    // Blocks of at least 16 rows or columns (a microkernel's width), and
    // enough work per block to pay for the hand-off.
    let (long, by_rows) = if m >= n { (m, true) } else { (n, false) };
    let blocks = t.min(long / 16).min((m * n * k) / (1 << 17)).max(1);
    let c_ptr = SendPtr(c.as_mut_ptr());
    let run = |i0: usize, len: usize| {
        let (mm, nn) = if by_rows { (len, n) } else { (m, len) };
        let (c_off, a_off, b_off) = if by_rows {
            (i0 * c_rs, i0 * a_rs, 0)
        } else {
            (i0 * c_cs, 0, i0 * b_cs)
        };
        // SAFETY: the asserts above bound every index the strides reach;
        // blocks cover disjoint rows (or columns) of `c`, so no element is
        // written by two calls.
        unsafe {
            gemm::gemm(
                mm,
                nn,
                k,
                c_ptr.get().add(c_off),
                c_cs as isize,
                c_rs as isize,
                accumulate,
                a.as_ptr().add(a_off),
                a_cs as isize,
                a_rs as isize,
                b.as_ptr().add(b_off),
                b_cs as isize,
                b_rs as isize,
                T::ONE,
                T::ONE,
                false,
                false,
                false,
                Parallelism::None,
            )
        }
    };
    if blocks == 1 {
        run(0, long);
        return;
    }
    let step = long.div_ceil(blocks).next_multiple_of(16);
    (0..long.div_ceil(step)).into_par_iter().for_each(|j| {
        let i0 = j * step;
        run(i0, step.min(long - i0));
    });
}

/// A raw pointer that blocks of [`gemm`] share across threads (each writes
/// its own disjoint elements).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);

// SAFETY: only used by `gemm`, whose blocks write disjoint elements.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

pub(crate) fn par_for(batch: usize) -> (bool, Parallelism) {
    // Many images: one image per task, single-threaded GEMMs. Few: images in
    // turn, multi-threaded GEMMs.
    let t = threads();
    if batch >= 2 * t {
        (true, Parallelism::None)
    } else if t > 1 {
        (false, Parallelism::Rayon(t))
    } else {
        (false, Parallelism::None)
    }
}

/// The `gemm` crate's parallelism for a product on all threads.
pub(crate) fn lin_par() -> Parallelism {
    match threads() {
        1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    }
}
