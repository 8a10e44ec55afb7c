//! The reconstruction loss of GAE / VGAE (Kipf & Welling 2016) as the
//! reference code (github.com/tkipf/gae, `optimizer.py`) computes it:
//!
//! ```text
//! logits X = Z Zᵀ                       (n × n, the inner-product decoder)
//! loss     = norm · mean_ij wce(X_ij, Y_ij; pos_weight)      Y = A_train + I
//! wce(x, 1) = q · softplus(−x)    wce(x, 0) = softplus(x)    (TensorFlow's
//!            weighted_cross_entropy_with_logits, stable form)
//! pos_weight q = (n² − ΣA) / ΣA      norm = n² / (2 (n² − ΣA))   (A without I)
//! ```
//!
//! On the CPU the whole thing is one autograd node
//! ([`aezoo_nn::ops::inner_product_wce`]: the `n × n` logits made a block of
//! rows at a time, never all at once, the gradient in the same pass).
//! Elsewhere (or with `AEZOO_NO_FUSED=1`) it is the composite of candle ops,
//! which the tests check it against.

use std::sync::Arc;

use aezoo_nn::ops::{self, LinkPattern};
use candle_core::{Result, Tensor};

use crate::sparse::Csr;

/// What the decoder must reproduce: `A_train + I`, with the reference's
/// class re-weighting.
#[derive(Clone, Debug)]
pub struct ReconTarget {
    labels: Arc<Csr>,
    /// The same pattern for the fused loss.
    pattern: Arc<LinkPattern>,
    /// Weight of a positive (edge) entry against a non-edge.
    pub pos_weight: f64,
    /// The loss scale `n² / (2 (n² − ΣA))`.
    pub norm: f64,
}

impl ReconTarget {
    /// The target for a graph with `n` nodes and these (training) edges.
    pub fn new(n: usize, edges: &[(u32, u32)]) -> Self {
        let labels = Csr::adjacency_with_self_loops(n, edges);
        let pattern = LinkPattern::new(labels.indptr.clone(), labels.indices.clone())
            .expect("Csr rows are sorted and unique (from_triplets)");
        let nn = (n * n) as f64;
        let sum_a = 2.0 * edges.len() as f64;
        Self {
            labels: Arc::new(labels),
            pattern: Arc::new(pattern),
            pos_weight: (nn - sum_a) / sum_a,
            norm: nn / ((nn - sum_a) * 2.0),
        }
    }

    pub fn num_nodes(&self) -> usize {
        self.labels.rows
    }

    /// `A_train + I` as a 0/1 pattern.
    pub fn labels(&self) -> &Csr {
        &self.labels
    }
}

/// The reconstruction loss of codes `z` (`(n, d)`): fused on the CPU,
/// composite elsewhere.
pub fn recon_loss(z: &Tensor, t: &ReconTarget) -> Result<Tensor> {
    let (n, _) = z.dims2()?;
    if n != t.num_nodes() {
        candle_core::bail!("recon_loss: {n} codes for a graph of {} nodes", t.num_nodes())
    }
    if ops::fused_applies(z) {
        ops::inner_product_wce(z, &t.pattern, t.pos_weight, t.norm)
    } else {
        recon_loss_composite(z, t)
    }
}

/// The same loss from candle ops on the dense `n × n` logits (the reference
/// the fused op is checked against; also the non-CPU path).
pub fn recon_loss_composite(z: &Tensor, t: &ReconTarget) -> Result<Tensor> {
    let x = z.matmul(&z.t()?)?;
    let y = t.labels.to_dense(z.dtype(), z.device())?;
    // (1 − y)·x + (1 + (q − 1)·y)·softplus(−x),  softplus(−x) = log1p(e^−|x|) + relu(−x)
    let softplus_neg = (((x.abs()?.neg()?.exp()? + 1.0)?.log()?) + x.neg()?.relu()?)?;
    let l = ((y.affine(-1.0, 1.0)? * &x)? + (y.affine(t.pos_weight - 1.0, 1.0)? * softplus_neg)?)?;
    l.mean_all()? * t.norm
}
