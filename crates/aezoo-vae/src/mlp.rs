//! The fully connected VAE of Kingma & Welling (2014): `784 → 400 → 2×32`
//! (mean, log-variance), `z → 400 → 784` logits, Bernoulli likelihood,
//! β-weighted KL.

use aezoo_nn::layers::{linear, linear_chain, Linear, LinearConfig};
use aezoo_nn::{Act, Autoencoder, Batch, Family, Rng, StepCtx, StepOutput};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::common::{prior, split_stats, vae_step};

/// The `model` section of a `vae-mlp` config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpVaeConfig {
    /// `[channels, height, width]`.
    pub image: [usize; 3],
    /// Hidden layer sizes of the encoder (the decoder mirrors them).
    pub hidden: Vec<usize>,
    /// Size of z.
    pub latent: usize,
    /// Weight of the KL term.
    #[serde(default = "crate::common::default_beta")]
    pub beta: f64,
}

/// `encoder.fc{i}`, `encoder.stats`; `decoder.fc{i}`, `decoder.out`.
pub struct MlpVae {
    enc: Vec<Linear>,
    stats: Linear,
    dec: Vec<Linear>,
    out: Linear,
    cfg: MlpVaeConfig,
}

impl MlpVae {
    /// Posterior mean and log-variance, each `(b, latent)`.
    pub fn encode_stats(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut h = xs.flatten_from(1)?;
        for l in &self.enc {
            h = l.forward_act(&h, Act::Relu)?;
        }
        split_stats(&self.stats.forward(&h)?, self.cfg.latent)
    }

    /// Decoder logits `(b, c, h, w)`.
    pub fn decode_logits(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_act(z, Act::None)
    }

    /// The decoder with `out` after its last layer (fused into it).
    fn decode_act(&self, z: &Tensor, out: Act) -> Result<Tensor> {
        let mut h = z.clone();
        for l in &self.dec {
            h = l.forward_act(&h, Act::Relu)?;
        }
        let [c, hh, w] = self.cfg.image;
        self.out.forward_shaped(&h, out, Some((z.dim(0)?, c, hh, w).into()))
    }
}

impl Family for MlpVae {
    type Config = MlpVaeConfig;
    const NAME: &'static str = "vae-mlp";
    const ABOUT: &'static str = "fully connected VAE, Bernoulli likelihood (Kingma & Welling 2014)";

    fn new(cfg: &MlpVaeConfig, vb: VarBuilder) -> Result<Self> {
        let d: usize = cfg.image.iter().product();
        if d == 0 || cfg.latent == 0 || cfg.hidden.contains(&0) {
            candle_core::bail!(
                "vae-mlp: image {:?}, hidden {:?} and latent {} must be non-zero",
                cfg.image,
                cfg.hidden,
                cfg.latent
            );
        }
        let (venc, vdec) = (vb.pp("encoder"), vb.pp("decoder"));
        let lc = LinearConfig::default();
        let mut enc = Vec::new();
        let mut din = d;
        for (i, &h) in cfg.hidden.iter().enumerate() {
            enc.push(linear(din, h, lc, venc.pp(format!("fc{}", i + 1)))?);
            din = h;
        }
        let stats = linear(din, 2 * cfg.latent, lc, venc.pp("stats"))?;
        let mut dec = Vec::new();
        let mut din = cfg.latent;
        for (i, &h) in cfg.hidden.iter().rev().enumerate() {
            dec.push(linear(din, h, lc, vdec.pp(format!("fc{}", i + 1)))?);
            din = h;
        }
        let out = linear(din, d, lc, vdec.pp("out"))?;
        Ok(Self {
            enc,
            stats,
            dec,
            out,
            cfg: cfg.clone(),
        })
    }

    fn image_shape(cfg: &MlpVaeConfig) -> [usize; 3] {
        cfg.image
    }
}

impl Autoencoder for MlpVae {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.encode_stats(xs)?.0)
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_act(z, Act::Sigmoid)
    }

    /// The decoded posterior mean, encoder and decoder as one
    /// [`linear_chain`] (one parallel region, no gradient): the decoder's
    /// first layer reads the mean, the first `latent` columns of `stats`.
    fn reconstruct(&self, xs: &Tensor) -> Result<Tensor> {
        let links: Vec<(&Linear, Act)> = self
            .enc
            .iter()
            .map(|l| (l, Act::Relu))
            .chain([(&self.stats, Act::None)])
            .chain(self.dec.iter().map(|l| (l, Act::Relu)))
            .chain([(&self.out, Act::Sigmoid)])
            .collect();
        linear_chain(xs, &links)?.reshape(xs.shape())
    }

    fn step(&self, batch: &Batch, ctx: &mut StepCtx) -> Result<StepOutput> {
        let (mu, logvar) = self.encode_stats(&ctx.to_compute(&batch.input)?)?;
        vae_step(
            &mu,
            &logvar,
            |z| self.decode_logits(z),
            &batch.target,
            self.cfg.beta,
            ctx,
        )
    }

    fn latent_shape(&self) -> Vec<usize> {
        vec![self.cfg.latent]
    }

    fn is_generative(&self) -> bool {
        true
    }

    fn mixed_precision(&self) -> bool {
        true
    }

    fn sample(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        self.decode(&prior(n, self.cfg.latent, self.out.weight(), rng)?)
    }
}
