//! The reconstruction loss of a graph autoencoder's inner-product decoder
//! (GAE / VGAE, Kipf & Welling 2016) as one CPU node:
//! `norm · mean_ij wce(z_i · z_j, Y_ij; pos_weight)` for a 0/1 pattern `Y`,
//! TensorFlow's `weighted_cross_entropy_with_logits` in its stable form.
//! The `n × n` logits are made a block of rows at a time with a GEMM, never
//! all at once, and the gradient `dZ = G Z + Gᵀ Z` is accumulated in the
//! same pass (one `exp` per entry for both) and kept for the backward.
//! `aezoo_graph::loss` checks it against the composite of candle ops.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::float::Float;
use crate::par::gemm;

/// A square 0/1 pattern in compressed rows: row `i`'s ones are at the
/// sorted columns `indices[indptr[i]..indptr[i + 1]]`.
#[derive(Clone, Debug)]
pub struct Pattern {
    indptr: Vec<usize>,
    indices: Vec<u32>,
}

impl Pattern {
    /// From compressed rows (each row's columns sorted ascending).
    pub fn new(indptr: Vec<usize>, indices: Vec<u32>) -> Result<Self> {
        let ok = !indptr.is_empty()
            && indptr.windows(2).all(|w| w[0] <= w[1])
            && indptr.last() == Some(&indices.len())
            && indptr
                .windows(2)
                .all(|w| indices[w[0]..w[1]].windows(2).all(|c| c[0] < c[1]));
        if !ok {
            candle_core::bail!("inner_product_wce: the label pattern is not sorted compressed rows");
        }
        Ok(Self { indptr, indices })
    }

    /// Rows (= columns).
    pub fn rows(&self) -> usize {
        self.indptr.len() - 1
    }

    fn row(&self, i: usize) -> &[u32] {
        &self.indices[self.indptr[i]..self.indptr[i + 1]]
    }
}

/// The weighted loss of codes `z` (`(n, d)`, f32 or f64, CPU) against the
/// pattern `labels` (`n × n`): a scalar with its backward.
pub fn inner_product_wce(z: &Tensor, labels: &Arc<Pattern>, pos_weight: f64, norm: f64) -> Result<Tensor> {
    let (n, _) = z.dims2()?;
    if n != labels.rows() {
        candle_core::bail!("inner_product_wce: {n} codes for a pattern of {} rows", labels.rows());
    }
    z.contiguous()?.apply_op1(ReconLoss {
        labels: labels.clone(),
        pos_weight,
        norm,
        grad: std::sync::Mutex::new(None),
    })
}

/// Rows of logits made at once (bounded memory: `BLOCK · n` values).
const BLOCK: usize = 256;

/// `logits[r, c] = z_{b0+r} · z_{b0+c}` for the `m` rows from `b0` and the
/// columns from `b0` on (the upper triangle of block rows).
fn logits_block<T: Float>(z: &[T], n: usize, d: usize, b0: usize, m: usize, out: &mut [T]) {
    let w = n - b0;
    gemm(
        m,
        w,
        d,
        out,
        (w, 1),
        false,
        &z[b0 * d..],
        (d, 1),
        &z[b0 * d..],
        (1, d),
        Parallelism::Rayon(rayon::current_num_threads().max(1)),
    );
}

/// Calls `f(j, label)` for every column `j` in `from..n` of row `i`,
/// label = whether `(i, j)` is in `labels`.
#[inline]
fn for_row(labels: &Pattern, i: usize, from: usize, n: usize, mut f: impl FnMut(usize, bool)) {
    let pos = labels.row(i);
    let mut k = pos.partition_point(|&p| (p as usize) < from);
    for j in from..n {
        let hit = k < pos.len() && pos[k] as usize == j;
        if hit {
            k += 1;
        }
        f(j, hit);
    }
}

/// The element-wise maths of the loss in the input's own precision
/// (`e^−|x|` and `ln(1 + e)` from [`Float`]: polynomial f32 forms that
/// vectorise, glibc's `log1pf` having been half of a training step; the sums
/// are f64).
trait LossFloat: Float + std::ops::Div<Output = Self> {
    fn neg_(self) -> Self;
    fn relu_(self) -> Self;
}

macro_rules! loss_float {
    ($t:ty) => {
        impl LossFloat for $t {
            #[inline]
            fn neg_(self) -> Self {
                -self
            }
            #[inline]
            fn relu_(self) -> Self {
                self.max(0.0)
            }
        }
    };
}
loss_float!(f32);
loss_float!(f64);

/// The loss and, when asked, `dZ`, in one pass over the logits: one
/// `exp(−|x|)` per entry serves both softplus and sigmoid. The logits and
/// the labels are symmetric, so only the upper triangle is visited, each
/// entry off the diagonal blocks counting twice:
/// `dZ_i += 2 G_ij z_j` and `dZ_j += 2 G_ij z_i` for `i < j`.
fn loss_and_grad<T: LossFloat>(z: &[T], n: usize, d: usize, op: &ReconLoss, want_grad: bool) -> (f64, Option<Vec<T>>) {
    let q = op.pos_weight;
    let c = op.norm / (n * n) as f64;
    let par = Parallelism::Rayon(rayon::current_num_threads().max(1));
    let mut block = vec![T::default(); BLOCK.min(n) * n];
    let mut dz = if want_grad {
        vec![T::default(); n * d]
    } else {
        Vec::new()
    };
    let mut total = 0f64;
    for b0 in (0..n).step_by(BLOCK) {
        let m = BLOCK.min(n - b0);
        let w = n - b0;
        let g = &mut block[..m * w];
        logits_block(z, n, d, b0, m, g);
        let sums: Vec<f64> = g
            .par_chunks_mut(w)
            .enumerate()
            .map(|(r, row)| {
                let mut s = 0f64;
                let (qt, ct) = (T::from_f64(q), T::from_f64(c));
                let (one, two) = (T::ONE, T::from_f64(2.0));
                for_row(&op.labels, b0 + r, b0, n, |j, y| {
                    let x = row[j - b0];
                    let e = x.exp_neg_abs();
                    let softplus_pos = x.relu_() + e.ln_1p_unit(); // softplus(x)
                    let sig = if x >= T::default() {
                        one / (one + e)
                    } else {
                        e / (one + e)
                    }; // σ(x)
                    let (l, dl) = if y {
                        // q·softplus(−x) = q·(softplus(x) − x);  d/dx = −q·σ(−x) = −q·(1 − σ(x))
                        (qt * (softplus_pos - x), (qt * (one - sig)).neg_())
                    } else {
                        (softplus_pos, sig)
                    };
                    let k = if j < b0 + m { one } else { two };
                    s += (k * l).to_f64();
                    row[j - b0] = k * ct * dl;
                });
                s
            })
            .collect();
        total += sums.iter().sum::<f64>();
        if want_grad {
            // dZ[B] += G_B · Z[b0..] ;  dZ[b0..] += G_Bᵀ · Z[B]
            gemm(
                m,
                d,
                w,
                &mut dz[b0 * d..],
                (d, 1),
                true,
                g,
                (w, 1),
                &z[b0 * d..],
                (d, 1),
                par,
            );
            gemm(
                w,
                d,
                m,
                &mut dz[b0 * d..],
                (d, 1),
                true,
                g,
                (1, w),
                &z[b0 * d..],
                (d, 1),
                par,
            );
        }
    }
    (op.norm * total / (n * n) as f64, want_grad.then_some(dz))
}

/// The fused loss node. Its forward also computes `dZ` (one pass over the
/// logits for both) and keeps it for the backward.
struct ReconLoss {
    labels: Arc<Pattern>,
    pos_weight: f64,
    norm: f64,
    grad: std::sync::Mutex<Option<Tensor>>,
}

fn slice<'a, T: Float>(s: &'a CpuStorage, l: &Layout, name: &str) -> Result<&'a [T]> {
    let Some((o0, o1)) = l.contiguous_offsets() else {
        candle_core::bail!("{name}: z must be contiguous")
    };
    match T::slice(s) {
        Some(v) => Ok(&v[o0..o1]),
        None => candle_core::bail!("{name}: unsupported dtype {:?}", s.dtype()),
    }
}

impl ReconLoss {
    fn run<T: LossFloat>(&self, s: &CpuStorage, l: &Layout) -> Result<f64> {
        let (n, d) = l.shape().dims2()?;
        let (loss, dz) = loss_and_grad(slice::<T>(s, l, "aezoo-gae-recon-loss")?, n, d, self, true);
        let dz = match T::storage(dz.expect("asked for")) {
            CpuStorage::F32(v) => Tensor::from_vec(v, (n, d), &candle_core::Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_vec(v, (n, d), &candle_core::Device::Cpu)?,
            _ => unreachable!("Float is f32 or f64"),
        };
        *self.grad.lock().expect("not poisoned") = Some(dz);
        Ok(loss)
    }
}

impl CustomOp1 for ReconLoss {
    fn name(&self) -> &'static str {
        "aezoo-gae-recon-loss"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(vec![self.run::<f32>(s, l)? as f32]),
            DType::F64 => CpuStorage::F64(vec![self.run::<f64>(s, l)?]),
            other => candle_core::bail!("{}: unsupported dtype {other:?}", self.name()),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let Some(dz) = self.grad.lock().expect("not poisoned").clone() else {
            candle_core::bail!("aezoo-gae-recon-loss: no forward pass to differentiate")
        };
        Ok(Some(dz.broadcast_mul(grad_res)?))
    }
}
