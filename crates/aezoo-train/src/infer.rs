//! Inference helpers shared by the CLI: latent interpolation.

use aezoo_nn::Autoencoder;
use candle_core::Tensor;

use crate::error::Result;

/// Decodes `steps` evenly spaced points on the straight line between the
/// codes of `a` and `b` (`(1, c, h, w)` each), both ends included: for a VAE
/// the posterior means, for a deterministic autoencoder its codes.
pub fn interpolate(model: &dyn Autoencoder, a: &Tensor, b: &Tensor, steps: usize) -> Result<Tensor> {
    let (za, zb) = (model.encode(a)?, model.encode(b)?);
    let codes: Vec<Tensor> = (0..steps)
        .map(|i| {
            let t = i as f64 / (steps - 1).max(1) as f64;
            (za.affine(1.0 - t, 0.0)? + zb.affine(t, 0.0)?).map_err(Into::into)
        })
        .collect::<Result<_>>()?;
    Ok(model.decode(&Tensor::cat(&codes, 0)?)?)
}
