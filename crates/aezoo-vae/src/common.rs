//! What every VAE family shares: the reparameterisation, the loss
//! `(Σ BCE-with-logits + β·KLD) / batch`, and sampling from N(0, I).

use aezoo_metrics::{bce_with_logits, kld, Reduction};
use aezoo_nn::{ops, Rng, StepCtx, StepOutput};
use candle_core::{Result, Tensor};

/// One training (or evaluation) step of a VAE given the posterior statistics
/// and a decoder to logits. Mixed precision: the statistics may come in
/// `ctx.compute`; sampling and the loss run in the target's dtype, the
/// decoder in `ctx.compute`.
pub(crate) fn vae_step(
    mu: &Tensor,
    logvar: &Tensor,
    decode_logits: impl Fn(&Tensor) -> Result<Tensor>,
    target: &Tensor,
    beta: f64,
    ctx: &mut StepCtx,
) -> Result<StepOutput> {
    let dt = target.dtype();
    let (mu, logvar) = (&mu.to_dtype(dt)?, &logvar.to_dtype(dt)?);
    let z = reparameterize(mu, logvar, ctx.rng)?;
    let logits = decode_logits(&ctx.to_compute(&z)?)?.to_dtype(dt)?;
    let rec = bce_with_logits(&logits, target, Reduction::BatchMean)?;
    let kl = kld(mu, logvar, Reduction::BatchMean)?;
    let loss = (&rec + (&kl * beta)?)?;
    Ok(StepOutput {
        loss,
        terms: vec![("bce", rec), ("kld", kl)],
        recon: ops::sigmoid(&logits)?,
    })
}

/// `z = μ + σ·ε`, `ε ~ N(0, I)` from the run's seeded generator, in `mu`'s dtype.
pub(crate) fn reparameterize(mu: &Tensor, logvar: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    let eps = rng.randn(mu.shape().clone(), mu.dtype(), mu.device())?;
    mu + (logvar.affine(0.5, 0.0)?.exp()? * eps)?
}

/// `n` prior draws `(n, latent)` like `like`'s dtype and device.
pub(crate) fn prior(n: usize, latent: usize, like: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    rng.randn((n, latent), like.dtype(), like.device())
}

/// Splits `(b, 2k)` statistics into mean and log-variance.
pub(crate) fn split_stats(stats: &Tensor, latent: usize) -> Result<(Tensor, Tensor)> {
    Ok((stats.narrow(1, 0, latent)?, stats.narrow(1, latent, latent)?))
}

/// serde default of every VAE config's `beta`: 1, the VAE of Kingma & Welling.
pub(crate) fn default_beta() -> f64 {
    1.0
}
