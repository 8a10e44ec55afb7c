//! `vae-flex`: a Stable-Diffusion-style VAE (Rombach et al. 2022, the
//! `AutoencoderKL` layout) whose encoder and decoder are JSON lists of layer
//! strings ([`aezoo_nn::spec`]), after the FlexVAE repository.
//!
//! ```text
//! encoder list: (b, c, h, w) → (b, 2C, h', w'),  split into μ and log σ² (clamped to [−30, 20])
//! z = scale · (μ + σ·ε)                           the latent, scaled (SD: 0.18215)
//! decoder list: (b, C, h', w') ← z / scale  → (b, c, h, w)
//! loss = α·rec(x̂, x) + kld_weight·KLD + [ssim]·β·(1 − SSIM) + [sparse]·λ·mean|z|
//! ```
//! `rec` is MSE or L1, each term is logged on its own; the reconstruction the
//! user sees is the decoder's output clamped to [0, 1] (end the decoder with
//! `Sigm` to train through a sigmoid instead).

use aezoo_metrics::{kld, l1_sparsity, mae, mse, ssim, Reduction, SsimConfig};
use aezoo_nn::spec::{FeatShape, Sequential};
use aezoo_nn::{Autoencoder, Batch, Family, Rng, StepCtx, StepOutput};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// The reconstruction term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reconstruction {
    #[default]
    Mse,
    L1,
}

fn one() -> f64 {
    1.0
}
fn sd_scale() -> f64 {
    0.18215
}

/// The weighted loss: `α·rec + kld_weight·KLD + [ssim]·β·(1 − SSIM) + [sparse]·λ·L1(z)`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlexLoss {
    #[serde(default)]
    pub reconstruction: Reconstruction,
    #[serde(default = "one")]
    pub alpha: f64,
    /// Weight of the KL divergence (summed over latent elements, averaged over the batch).
    #[serde(default = "one")]
    pub kld_weight: f64,
    /// Switch on the `β·(1 − SSIM)` term.
    #[serde(default)]
    pub ssim: bool,
    #[serde(default = "one")]
    pub beta: f64,
    /// Switch on the `λ·mean|z|` term.
    #[serde(default)]
    pub sparse: bool,
    #[serde(default = "one")]
    pub lambda: f64,
}

impl Default for FlexLoss {
    fn default() -> Self {
        Self {
            reconstruction: Reconstruction::Mse,
            alpha: 1.0,
            kld_weight: 1.0,
            ssim: false,
            beta: 1.0,
            sparse: false,
            lambda: 1.0,
        }
    }
}

impl FlexLoss {
    /// Checks the weights: each a number ≥ 0.
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("alpha", self.alpha),
            ("kld_weight", self.kld_weight),
            ("beta", self.beta),
            ("lambda", self.lambda),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(format!("loss.{name} must be a number >= 0, got {v}")));
            }
        }
        Ok(())
    }

    /// The loss and its terms for the reconstruction `out` of `target`
    /// (both in [0, 1]) from the posterior `(mu, logvar)` and its sample `z`.
    pub fn terms(
        &self,
        out: &Tensor,
        target: &Tensor,
        mu: &Tensor,
        logvar: &Tensor,
        z: &Tensor,
    ) -> Result<(Tensor, Vec<(&'static str, Tensor)>)> {
        self.compose(out, target, Some(kld(mu, logvar, Reduction::BatchMean)?), z)
    }

    /// [`FlexLoss::terms`] of a model without a posterior (a deterministic
    /// code `z`): no KL term.
    pub fn recon_terms(
        &self,
        out: &Tensor,
        target: &Tensor,
        z: &Tensor,
    ) -> Result<(Tensor, Vec<(&'static str, Tensor)>)> {
        self.compose(out, target, None, z)
    }

    /// One training step of a VAE with this loss: `z = scale · (μ + σ·ε)`
    /// from `ctx`'s generator, `decode` (run in `ctx.compute`) to images in
    /// [0, 1], the terms; sampling and the loss stay in `mu`'s dtype.
    pub fn sample_step(
        &self,
        (mu, logvar): (&Tensor, &Tensor),
        scale: f64,
        target: &Tensor,
        ctx: &mut StepCtx,
        decode: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<StepOutput> {
        let z = (crate::common::reparameterize(mu, logvar, ctx.rng)? * scale)?;
        let out = decode(&ctx.to_compute(&z)?)?;
        let (loss, terms) = self.terms(&out, target, mu, logvar, &z)?;
        Ok(StepOutput {
            loss,
            terms,
            recon: out.clamp(0.0, 1.0)?,
        })
    }

    fn compose(
        &self,
        out: &Tensor,
        target: &Tensor,
        kl: Option<Tensor>,
        z: &Tensor,
    ) -> Result<(Tensor, Vec<(&'static str, Tensor)>)> {
        let rec = match self.reconstruction {
            Reconstruction::Mse => mse(out, target, Reduction::Mean)?,
            Reconstruction::L1 => mae(out, target, Reduction::Mean)?,
        };
        let mut loss = (&rec * self.alpha)?;
        let mut terms = vec![(
            match self.reconstruction {
                Reconstruction::Mse => "mse",
                Reconstruction::L1 => "l1",
            },
            rec,
        )];
        if let Some(kl) = kl {
            loss = (loss + (&kl * self.kld_weight)?)?;
            terms.push(("kld", kl));
        }
        if self.ssim {
            let one_minus = ssim(out, target, SsimConfig::default())?
                .mean_all()?
                .affine(-1.0, 1.0)?;
            loss = (loss + (&one_minus * self.beta)?)?;
            terms.push(("1-ssim", one_minus));
        }
        if self.sparse {
            let sp = l1_sparsity(z)?;
            loss = (loss + (&sp * self.lambda)?)?;
            terms.push(("sparse", sp));
        }
        Ok((loss, terms))
    }
}

/// The `model` section of a `vae-flex` entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlexVaeConfig {
    /// `[channels, height, width]` of the images.
    pub image: [usize; 3],
    /// Layer strings; the last layer gives `2 · latent_channels` channels.
    pub encoder: Vec<String>,
    /// Layer strings from `latent_channels` channels back to the image.
    pub decoder: Vec<String>,
    /// `C`: channels of the latent map.
    pub latent_channels: usize,
    /// The latent is `scale · z` (Stable Diffusion's 0.18215 by default).
    #[serde(default = "sd_scale")]
    pub scale: f64,
    #[serde(default)]
    pub loss: FlexLoss,
}

/// A VAE built from layer lists.
pub struct FlexVae {
    encoder: Sequential,
    decoder: Sequential,
    latent: [usize; 3],
    scale: f64,
    loss: FlexLoss,
    dtype: DType,
    device: candle_core::Device,
}

fn bad(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

impl FlexVae {
    /// `(μ, log σ²)` of `xs`, each `(b, C, h', w')` in the parameters' dtype
    /// (the encoder runs in `xs`'s: half precision under mixed precision).
    fn stats(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.encoder.forward(xs)?.to_dtype(self.dtype)?;
        let c = self.latent[0];
        Ok((h.narrow(1, 0, c)?, h.narrow(1, c, c)?.clamp(-30.0, 20.0)?))
    }

    /// The decoder's raw output for a scaled latent, in the parameters'
    /// dtype (the decoder runs in `z`'s).
    fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&(z / self.scale)?)?.to_dtype(self.dtype)
    }
}

impl Family for FlexVae {
    type Config = FlexVaeConfig;
    const NAME: &'static str = "vae-flex";
    const ABOUT: &'static str =
        "Stable-Diffusion-style VAE from JSON layer lists, weighted MSE/L1 + KLD + SSIM + sparsity loss (Rombach et al. 2022; FlexVAE)";

    fn new(cfg: &FlexVaeConfig, vb: VarBuilder) -> Result<Self> {
        let [c, h, w] = cfg.image;
        let lc = cfg.latent_channels;
        if lc == 0 || !(cfg.scale.is_finite() && cfg.scale > 0.0) {
            return Err(bad(format!(
                "latent_channels must be >= 1 and scale > 0, got {lc} and {}",
                cfg.scale
            )));
        }
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let encoder = Sequential::new("encoder", &cfg.encoder, FeatShape::Map { c, h, w }, vb.pp("encoder"))?;
        let latent = match encoder.output_shape() {
            FeatShape::Map { c: ec, h, w } if ec == 2 * lc => [lc, h, w],
            other => {
                return Err(bad(format!(
                    "encoder: ends in {other} but must end in a map of 2 × latent_channels = {} channels (mean and log-variance)",
                    2 * lc
                )))
            }
        };
        let decoder = Sequential::new(
            "decoder",
            &cfg.decoder,
            FeatShape::Map {
                c: lc,
                h: latent[1],
                w: latent[2],
            },
            vb.pp("decoder"),
        )?;
        if decoder.output_shape() != (FeatShape::Map { c, h, w }) {
            return Err(bad(format!(
                "decoder: gives {} from the latent ({lc}, {}, {}) but the images are ({c}, {h}, {w})",
                decoder.output_shape(),
                latent[1],
                latent[2]
            )));
        }
        cfg.loss.check()?;
        if cfg.loss.ssim && (h < 11 || w < 11) {
            return Err(bad(format!(
                "loss.ssim needs images of at least 11×11 (its window), got {h}×{w}"
            )));
        }
        Ok(Self {
            encoder,
            decoder,
            latent,
            scale: cfg.scale,
            loss: cfg.loss.clone(),
            dtype,
            device,
        })
    }

    fn image_shape(cfg: &FlexVaeConfig) -> [usize; 3] {
        cfg.image
    }
}

impl Autoencoder for FlexVae {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        self.stats(xs)?.0 * self.scale
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_raw(z)?.clamp(0.0, 1.0)
    }

    fn step(&self, batch: &Batch, ctx: &mut StepCtx) -> Result<StepOutput> {
        // Mixed precision: only the two networks run in `ctx.compute`; the
        // sampling and every loss term stay in the parameters' dtype.
        let (mu, logvar) = self.stats(&ctx.to_compute(&batch.input)?)?;
        self.loss
            .sample_step((&mu, &logvar), self.scale, &batch.target, ctx, |z| self.decode_raw(z))
    }

    fn latent_shape(&self) -> Vec<usize> {
        self.latent.to_vec()
    }

    fn is_generative(&self) -> bool {
        true
    }

    fn mixed_precision(&self) -> bool {
        true
    }

    fn sample(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        let [c, h, w] = self.latent;
        let z = (rng.randn((n, c, h, w), self.dtype, &self.device)? * self.scale)?;
        self.decode(&z)
    }
}
