//! Sparse matrices (CSR) and the sparse × dense product as an autograd op:
//! `Y = A · X` with `dX = Aᵀ · dY`. The GCN layer multiplies by the
//! normalised adjacency `Â = D^-1/2 (A + I) D^-1/2` (Kipf & Welling 2017) and
//! the first layer by the binary feature matrix; neither is ever dense on the
//! CPU. Off the CPU the product falls back to a dense matmul (same maths).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::data::Features;

/// A sparse matrix in compressed-row form, column indices sorted per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Csr {
    pub rows: usize,
    pub cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f64>,
}

impl Csr {
    /// From `(row, col, value)` triplets; repeated positions are summed.
    pub fn from_triplets(rows: usize, cols: usize, mut t: Vec<(u32, u32, f64)>) -> Self {
        t.sort_unstable_by_key(|&(r, c, _)| (r, c));
        let mut indptr = vec![0usize; rows + 1];
        let mut indices = Vec::with_capacity(t.len());
        let mut values: Vec<f64> = Vec::with_capacity(t.len());
        let mut last: Option<(u32, u32)> = None;
        for (r, c, v) in t {
            assert!(
                (r as usize) < rows && (c as usize) < cols,
                "triplet ({r}, {c}) outside {rows}×{cols}"
            );
            if last == Some((r, c)) {
                *values.last_mut().expect("a previous value") += v;
                continue;
            }
            last = Some((r, c));
            indptr[r as usize + 1] += 1;
            indices.push(c);
            values.push(v);
        }
        for i in 0..rows {
            indptr[i + 1] += indptr[i];
        }
        Self {
            rows,
            cols,
            indptr,
            indices,
            values,
        }
    }

    /// The identity (the "featureless" input of GAE* / VGAE*).
    pub fn identity(n: usize) -> Self {
        Self {
            rows: n,
            cols: n,
            indptr: (0..=n).collect(),
            indices: (0..n as u32).collect(),
            values: vec![1.0; n],
        }
    }

    /// Binary features as a 0/1 matrix.
    pub fn from_features(f: &Features) -> Self {
        Self {
            rows: f.rows(),
            cols: f.dim,
            indptr: f.indptr.clone(),
            indices: f.indices.clone(),
            values: vec![1.0; f.nnz()],
        }
    }

    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Column indices of row `i`.
    pub fn row(&self, i: usize) -> (&[u32], &[f64]) {
        let r = self.indptr[i]..self.indptr[i + 1];
        (&self.indices[r.clone()], &self.values[r])
    }

    /// Whether `(i, j)` is stored.
    pub fn contains(&self, i: usize, j: u32) -> bool {
        self.row(i).0.binary_search(&j).is_ok()
    }

    pub fn transpose(&self) -> Self {
        let mut t = Vec::with_capacity(self.nnz());
        for i in 0..self.rows {
            let (cols, vals) = self.row(i);
            for (&c, &v) in cols.iter().zip(vals) {
                t.push((c, i as u32, v));
            }
        }
        Self::from_triplets(self.cols, self.rows, t)
    }

    /// The dense `(rows, cols)` matrix.
    pub fn to_dense(&self, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut d = vec![0f64; self.rows * self.cols];
        for i in 0..self.rows {
            let (cols, vals) = self.row(i);
            for (&c, &v) in cols.iter().zip(vals) {
                d[i * self.cols + c as usize] = v;
            }
        }
        Tensor::from_vec(d, (self.rows, self.cols), dev)?.to_dtype(dtype)
    }

    /// `D^-1/2 (A + I) D^-1/2` of an undirected graph with `n` nodes, `D` the
    /// degrees of `A + I`.
    pub fn normalized_adjacency(n: usize, edges: &[(u32, u32)]) -> Self {
        let mut deg = vec![1.0f64; n];
        for &(u, v) in edges {
            deg[u as usize] += 1.0;
            deg[v as usize] += 1.0;
        }
        let s: Vec<f64> = deg.iter().map(|d| 1.0 / d.sqrt()).collect();
        let mut t = Vec::with_capacity(2 * edges.len() + n);
        for i in 0..n {
            t.push((i as u32, i as u32, s[i] * s[i]));
        }
        for &(u, v) in edges {
            let w = s[u as usize] * s[v as usize];
            t.push((u, v, w));
            t.push((v, u, w));
        }
        Self::from_triplets(n, n, t)
    }

    /// `A + I` as a 0/1 pattern (the reconstruction target of GAE).
    pub fn adjacency_with_self_loops(n: usize, edges: &[(u32, u32)]) -> Self {
        let mut t: Vec<(u32, u32, f64)> = (0..n as u32).map(|i| (i, i, 1.0)).collect();
        for &(u, v) in edges {
            t.push((u, v, 1.0));
            t.push((v, u, 1.0));
        }
        Self::from_triplets(n, n, t)
    }
}

/// A sparse matrix ready to multiply dense tensors, with its transpose for
/// the backward pass (and a dense copy off the CPU).
#[derive(Clone, Debug)]
pub struct SparseMat {
    a: Arc<Csr>,
    at: Arc<Csr>,
}

impl SparseMat {
    pub fn new(a: Csr) -> Self {
        let at = a.transpose();
        Self {
            a: Arc::new(a),
            at: Arc::new(at),
        }
    }

    pub fn csr(&self) -> &Csr {
        &self.a
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.a.rows, self.a.cols)
    }

    /// `A · xs` for `xs` of shape `(cols, d)`; differentiable in `xs`.
    pub fn matmul(&self, xs: &Tensor) -> Result<Tensor> {
        let (k, _d) = xs.dims2()?;
        if k != self.a.cols {
            candle_core::bail!(
                "sparse matmul: A is {}×{} but xs has {k} rows",
                self.a.rows,
                self.a.cols
            )
        }
        if xs.device().is_cpu() && matches!(xs.dtype(), DType::F32 | DType::F64) {
            xs.contiguous()?.apply_op1(SpMM {
                a: self.a.clone(),
                at: self.at.clone(),
            })
        } else {
            self.a.to_dense(xs.dtype(), xs.device())?.matmul(xs)
        }
    }
}

struct SpMM {
    a: Arc<Csr>,
    at: Arc<Csr>,
}

fn spmm<T>(a: &Csr, x: &[T], d: usize, to: impl Fn(f64) -> T + Sync, from: impl Fn(T) -> f64 + Sync) -> Vec<T>
where
    T: Copy + Default + Send + Sync,
{
    let mut out = vec![T::default(); a.rows * d];
    out.par_chunks_mut(d.max(1)).enumerate().for_each(|(i, dst)| {
        let mut acc = vec![0f64; d];
        let (cols, vals) = a.row(i);
        for (&c, &v) in cols.iter().zip(vals) {
            let src = &x[c as usize * d..(c as usize + 1) * d];
            for (s, x) in acc.iter_mut().zip(src) {
                *s += v * from(*x);
            }
        }
        for (o, s) in dst.iter_mut().zip(acc) {
            *o = to(s);
        }
    });
    out
}

impl CustomOp1 for SpMM {
    fn name(&self) -> &'static str {
        "aezoo-spmm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (k, d) = l.shape().dims2()?;
        let Some((o0, o1)) = l.contiguous_offsets() else {
            candle_core::bail!("aezoo-spmm: xs must be contiguous")
        };
        debug_assert_eq!(o1 - o0, k * d);
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(spmm(&self.a, &v[o0..o1], d, |x| x as f32, |x| x as f64)),
            CpuStorage::F64(v) => CpuStorage::F64(spmm(&self.a, &v[o0..o1], d, |x| x, |x| x)),
            other => candle_core::bail!("aezoo-spmm: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, Shape::from((self.a.rows, d))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let back = SparseMat {
            a: self.at.clone(),
            at: self.a.clone(),
        };
        Ok(Some(back.matmul(grad_res)?))
    }
}
