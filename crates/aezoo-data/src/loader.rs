//! Seeded shuffling and batching, and the Gaussian-noise transform.
//!
//! The order of epoch `e` is a permutation drawn from `Rng::derived(seed, e)`,
//! so it depends on nothing but the seed and the epoch: a run resumed in the
//! middle of an epoch replays exactly the batches it had not seen yet.
//! (candle-datasets' `Batcher` stacks one tensor per sample and has no seeded
//! shuffle; slicing the u8 buffer here is what a 60k-image epoch wants.)

use aezoo_nn::Rng;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// The batches of one epoch.
#[derive(Clone, Debug)]
pub struct EpochPlan {
    order: Vec<usize>,
    batch_size: usize,
}

impl EpochPlan {
    /// Batches of `batch_size` over `0..n`, shuffled by `(seed, epoch)` when
    /// `shuffle`; the last batch may be smaller (PyTorch's `drop_last=False`).
    pub fn new(n: usize, batch_size: usize, seed: u64, epoch: u64, shuffle: bool) -> Self {
        assert!(batch_size > 0, "batch size must be >= 1");
        let order = if shuffle {
            Rng::derived(seed, epoch).permutation(n)
        } else {
            (0..n).collect()
        };
        Self { order, batch_size }
    }

    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// The sample indices of batch `i`.
    pub fn batch(&self, i: usize) -> &[usize] {
        let lo = i * self.batch_size;
        let hi = (lo + self.batch_size).min(self.order.len());
        &self.order[lo..hi]
    }

    /// All sample indices in epoch order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

/// Additive Gaussian noise `x + std·N(0, 1)`, clipped to `[0, 1]` when `clip`
/// (the denoising autoencoder's corruption, Vincent et al. 2008).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianNoise {
    pub std: f64,
    #[serde(default = "yes")]
    pub clip: bool,
}

fn yes() -> bool {
    true
}

impl GaussianNoise {
    /// Noised copy of `xs`, drawing from `rng`.
    pub fn apply(&self, xs: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let noise = rng.randn(xs.shape().clone(), xs.dtype(), xs.device())?;
        let ys = (xs + (noise * self.std)?)?;
        Ok(if self.clip { ys.clamp(0f32, 1f32)? } else { ys })
    }
}
