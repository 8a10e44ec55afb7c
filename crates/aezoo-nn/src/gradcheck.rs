//! Gradient checking by central finite differences in f64.
//!
//! `check(f, inputs)` compares candle's backward of `f` with
//! `(L(x + ε) − L(x − ε)) / 2ε` for every input element (or a seeded sample of
//! them), where `L = Σ f(x) ⊙ r` for a fixed random `r`, so every output
//! element's gradient is exercised at once. An input that receives *no*
//! gradient at all is a failure, not a skip: that is how the silent
//! no-gradient ops of candle 0.11 are caught.

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::rng::Rng;

/// Tolerances and sampling of a gradient check.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Finite-difference step.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (to the larger of the two magnitudes).
    pub rtol: f64,
    /// At most this many elements per input are checked (seeded sample).
    pub max_elems: usize,
    /// Seed of the output projection and of the element sample.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        Self {
            eps: 1e-6,
            atol: 1e-6,
            rtol: 1e-5,
            max_elems: 400,
            seed: 0,
        }
    }
}

/// The worst mismatch found by a check.
#[derive(Clone, Debug, Default)]
pub struct GradReport {
    /// Elements compared, over all inputs.
    pub checked: usize,
    /// Largest |analytic − numeric|.
    pub max_abs_err: f64,
    /// Largest |analytic| seen (to tell a vanishing gradient from a real one).
    pub max_abs_grad: f64,
}

impl GradCheck {
    /// Checks the gradient of `f` with respect to each of `inputs` (converted
    /// to f64 on the CPU). Returns an error describing the first mismatch.
    pub fn check<F>(&self, f: F, inputs: &[Tensor]) -> Result<GradReport>
    where
        F: Fn(&[Tensor]) -> Result<Tensor>,
    {
        let inputs: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.to_dtype(DType::F64)?.to_device(&Device::Cpu))
            .collect::<Result<_>>()?;
        let mut rng = Rng::new(self.seed);

        // Analytic gradients.
        let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
        let var_ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&var_ts)?;
        let proj = rng.randn(out.shape().clone(), DType::F64, &Device::Cpu)?;
        let loss = (out.to_dtype(DType::F64)? * &proj)?.sum_all()?;
        let grads = loss.backward()?;

        let scalar = |xs: &[Tensor]| -> Result<f64> {
            let out = f(xs)?.to_dtype(DType::F64)?;
            (out * &proj)?.sum_all()?.to_scalar::<f64>()
        };

        let mut report = GradReport::default();
        for (i, var) in vars.iter().enumerate() {
            let g = grads.get(var.as_tensor()).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "gradcheck: input {i} (shape {:?}) received no gradient at all",
                    var.dims()
                ))
            })?;
            let g: Vec<f64> = g.flatten_all()?.to_vec1()?;
            let x0: Vec<f64> = inputs[i].flatten_all()?.to_vec1()?;
            let n = x0.len();
            let idx: Vec<usize> = if n <= self.max_elems {
                (0..n).collect()
            } else {
                let mut p = rng.permutation(n);
                p.truncate(self.max_elems);
                p.sort_unstable();
                p
            };
            for j in idx {
                let probe = |delta: f64| -> Result<f64> {
                    let mut x = x0.clone();
                    x[j] += delta;
                    let xt = Tensor::from_vec(x, inputs[i].shape().clone(), &Device::Cpu)?;
                    let mut args = inputs.clone();
                    args[i] = xt;
                    scalar(&args)
                };
                let num = (probe(self.eps)? - probe(-self.eps)?) / (2.0 * self.eps);
                let ana = g[j];
                let err = (ana - num).abs();
                report.checked += 1;
                report.max_abs_err = report.max_abs_err.max(err);
                report.max_abs_grad = report.max_abs_grad.max(ana.abs());
                let tol = self.atol + self.rtol * ana.abs().max(num.abs());
                if !(err <= tol) {
                    return Err(candle_core::Error::Msg(format!(
                        "gradcheck: input {i} element {j}: analytic {ana:.9e} vs numeric {num:.9e} (|err| {err:.3e} > tol {tol:.3e})"
                    )));
                }
            }
        }
        Ok(report)
    }
}

/// [`GradCheck::check`] with default tolerances.
pub fn check<F>(f: F, inputs: &[Tensor]) -> Result<GradReport>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    GradCheck::default().check(f, inputs)
}

/// Every element of `xs`, in any float dtype, as f64 in row-major order
/// (exact for f32 and f16: the tests compare these bit for bit).
pub fn values_f64(xs: &Tensor) -> Result<Vec<f64>> {
    xs.to_dtype(DType::F64)?.flatten_all()?.to_vec1()
}

/// A seeded f64 tensor uniform in `[lo, hi)`, for gradcheck inputs.
pub fn uniform_input(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Result<Tensor> {
    Rng::new(seed).rand_uniform(shape, lo, hi, DType::F64, &Device::Cpu)
}

/// A seeded f64 tensor whose elements are distinct and at least `gap` apart
/// from each other and from zero (safe for ReLU kinks and max-pool ties).
pub fn distinct_input(shape: &[usize], gap: f64, seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = Rng::new(seed);
    let perm = rng.permutation(n);
    // Values ±(k+1)·gap for a random assignment of k, centred on zero.
    let half = n as f64 / 2.0;
    let v: Vec<f64> = perm
        .iter()
        .map(|&k| {
            let c = k as f64 - half;
            if c >= 0.0 {
                (c + 0.5) * gap
            } else {
                (c - 0.5) * gap
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}
