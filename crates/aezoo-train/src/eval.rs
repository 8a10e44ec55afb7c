//! Evaluation on a test split: reconstruction MSE per pixel, PSNR and SSIM
//! (means over images of the per-image values, images in [0, 1]), and the
//! family's own loss and its terms.

use std::collections::BTreeMap;

use aezoo_data::{EpochPlan, GaussianNoise, ImageSet};
use aezoo_metrics::{mse_per_image, psnr, ssim, SsimConfig};
use aezoo_nn::{Autoencoder, Batch, Rng, StepCtx};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// The stream number of the evaluation generator: evaluation never draws from
/// the training stream, so evaluating does not change what training does.
pub const EVAL_STREAM: u64 = 0xE7A1;

/// Test metrics of a model.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EvalMetrics {
    pub images: usize,
    /// Mean squared error per pixel of the deterministic reconstruction.
    pub mse: f64,
    /// Mean per-image PSNR (dB, data range 1).
    pub psnr: f64,
    /// Mean per-image SSIM (Gaussian 11, σ 1.5).
    pub ssim: f64,
    /// The family's loss (mean over batches, weighted by batch size).
    pub loss: f64,
    /// The loss's named terms, likewise.
    pub terms: BTreeMap<String, f64>,
}

fn sum_f64(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

/// Evaluates `model` on `set` in batches of `batch_size`. With `noise`,
/// inputs are corrupted (seeded) and compared against the clean images.
pub fn evaluate(
    model: &dyn Autoencoder,
    set: &ImageSet,
    batch_size: usize,
    noise: Option<GaussianNoise>,
    seed: u64,
    dev: &Device,
) -> Result<EvalMetrics> {
    let plan = EpochPlan::new(set.len(), batch_size, seed, 0, false);
    let mut rng = Rng::derived(seed, EVAL_STREAM);
    let (mut se, mut ps, mut ss, mut loss) = (0f64, 0f64, 0f64, 0f64);
    let mut terms: BTreeMap<String, f64> = BTreeMap::new();
    let pixels = set.image_shape().iter().product::<usize>() as f64;
    for bi in 0..plan.num_batches() {
        let idx = plan.batch(bi);
        let clean = set.batch(idx, dev)?;
        let input = match &noise {
            Some(n) => n.apply(&clean, &mut rng)?,
            None => clean.clone(),
        };
        let recon = model.reconstruct(&input)?;
        se += sum_f64(&mse_per_image(&recon, &clean)?)? * pixels;
        ps += sum_f64(&psnr(&recon, &clean, 1.0)?)?;
        ss += sum_f64(&ssim(&recon, &clean, SsimConfig::default())?)?;
        let out = model.step(&Batch { input, target: clean }, &mut StepCtx::eval(&mut rng))?;
        let b = idx.len() as f64;
        loss += out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * b;
        for (name, t) in &out.terms {
            *terms.entry(name.to_string()).or_default() += t.to_dtype(DType::F64)?.to_scalar::<f64>()? * b;
        }
    }
    let n = set.len() as f64;
    Ok(EvalMetrics {
        images: set.len(),
        mse: se / (n * pixels),
        psnr: ps / n,
        ssim: ss / n,
        loss: loss / n,
        terms: terms.into_iter().map(|(k, v)| (k, v / n)).collect(),
    })
}

/// An entry's test metrics as it is meant to be used (its config's noise on
/// the inputs) and, for entries trained on noised inputs, on clean inputs too.
pub fn evaluate_entry(
    model: &dyn Autoencoder,
    set: &ImageSet,
    cfg: &crate::EntryConfig,
    dev: &Device,
) -> Result<(EvalMetrics, Option<EvalMetrics>)> {
    let t = &cfg.train;
    let test = evaluate(model, set, t.eval_batch_size, cfg.data.noise, t.seed, dev)?;
    let clean = match cfg.data.noise {
        Some(_) => Some(evaluate(model, set, t.eval_batch_size, None, t.seed, dev)?),
        None => None,
    };
    Ok((test, clean))
}
