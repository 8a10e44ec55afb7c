//! The convolutional VAE: `Conv(4, s2, p1)` + ReLU per stage down to
//! `(C, H/2ⁿ, W/2ⁿ)`, a linear map to `2·latent` (mean, log-variance), the
//! reparameterisation `z = μ + σ·ε`, and the mirror image up with
//! `ConvTranspose(4, s2, p1)`. Loss: `(Σ BCE-with-logits + β·KLD) / batch`.

use aezoo_nn::layers::{
    conv2d, conv_transpose2d, linear, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Linear,
    LinearConfig,
};
use aezoo_nn::{Act, Autoencoder, Batch, Family, Rng, StepCtx, StepOutput};

use crate::common::{prior, split_stats, vae_step};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// The `model` section of a `vae-conv` config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvVaeConfig {
    /// `[channels, height, width]`; height and width divisible by `2^stages`.
    pub image: [usize; 3],
    /// Output channels of each stride-2 stage, e.g. `[32, 64]`.
    pub channels: Vec<usize>,
    /// Size of z.
    pub latent: usize,
    /// Weight of the KL term (1 = the VAE of Kingma & Welling).
    #[serde(default = "crate::common::default_beta")]
    pub beta: f64,
}

/// Encoder `encoder.conv{i}`, `encoder.fc`; decoder `decoder.fc`,
/// `decoder.deconv{i}`.
pub struct ConvVae {
    convs: Vec<Conv2d>,
    enc_fc: Linear,
    dec_fc: Linear,
    deconvs: Vec<ConvTranspose2d>,
    latent: usize,
    beta: f64,
    /// `(C, h, w)` at the bottleneck.
    bottleneck: (usize, usize, usize),
}

impl ConvVae {
    /// Posterior mean and log-variance, each `(b, latent)`.
    pub fn encode_stats(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut h = xs.clone();
        for conv in &self.convs {
            h = conv.forward_act(&h, Act::Relu)?;
        }
        split_stats(&self.enc_fc.forward_shaped(&h, Act::None, None)?, self.latent)
    }

    /// Decoder logits `(b, c, h, w)`.
    pub fn decode_logits(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_act(z, Act::None)
    }

    /// The decoder with `out` after its last layer (fused into it).
    fn decode_act(&self, z: &Tensor, out: Act) -> Result<Tensor> {
        let b = z.dim(0)?;
        let (c, h, w) = self.bottleneck;
        let mut x = self.dec_fc.forward_shaped(z, Act::Relu, Some((b, c, h, w).into()))?;
        let last = self.deconvs.len() - 1;
        for (i, deconv) in self.deconvs.iter().enumerate() {
            x = deconv.forward_act(&x, if i < last { Act::Relu } else { out })?;
        }
        Ok(x)
    }
}

impl Family for ConvVae {
    type Config = ConvVaeConfig;
    const NAME: &'static str = "vae-conv";
    const ABOUT: &'static str =
        "convolutional VAE, Bernoulli likelihood, beta-weighted KL (Kingma & Welling 2014; Higgins et al. 2017)";

    fn new(cfg: &ConvVaeConfig, vb: VarBuilder) -> Result<Self> {
        let [c, h, w] = cfg.image;
        let n = cfg.channels.len();
        if n == 0 || cfg.latent == 0 {
            candle_core::bail!("vae-conv: `channels` must be non-empty and `latent` non-zero");
        }
        let f = 1usize << n;
        if h % f != 0 || w % f != 0 {
            candle_core::bail!("vae-conv: image {h}x{w} must be divisible by 2^{n} = {f} for {n} stride-2 stages");
        }
        let down = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let up = ConvTranspose2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let venc = vb.pp("encoder");
        let vdec = vb.pp("decoder");
        let mut convs = Vec::with_capacity(n);
        let mut cin = c;
        for (i, &cout) in cfg.channels.iter().enumerate() {
            convs.push(conv2d(cin, cout, 4, down, venc.pp(format!("conv{}", i + 1)))?);
            cin = cout;
        }
        let bottleneck = (cin, h / f, w / f);
        let flat = cin * (h / f) * (w / f);
        let enc_fc = linear(flat, 2 * cfg.latent, LinearConfig::default(), venc.pp("fc"))?;
        let dec_fc = linear(cfg.latent, flat, LinearConfig::default(), vdec.pp("fc"))?;
        let mut deconvs = Vec::with_capacity(n);
        let outs: Vec<usize> = cfg.channels.iter().rev().skip(1).copied().chain([c]).collect();
        let mut cin = bottleneck.0;
        for (i, &cout) in outs.iter().enumerate() {
            deconvs.push(conv_transpose2d(cin, cout, 4, up, vdec.pp(format!("deconv{}", i + 1)))?);
            cin = cout;
        }
        Ok(Self {
            convs,
            enc_fc,
            dec_fc,
            deconvs,
            latent: cfg.latent,
            beta: cfg.beta,
            bottleneck,
        })
    }

    fn image_shape(cfg: &ConvVaeConfig) -> [usize; 3] {
        cfg.image
    }
}

impl Autoencoder for ConvVae {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.encode_stats(xs)?.0)
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_act(z, Act::Sigmoid)
    }

    fn step(&self, batch: &Batch, ctx: &mut StepCtx) -> Result<StepOutput> {
        let (mu, logvar) = self.encode_stats(&ctx.to_compute(&batch.input)?)?;
        vae_step(&mu, &logvar, |z| self.decode_logits(z), &batch.target, self.beta, ctx)
    }

    fn latent_shape(&self) -> Vec<usize> {
        vec![self.latent]
    }

    fn is_generative(&self) -> bool {
        true
    }

    fn mixed_precision(&self) -> bool {
        true
    }

    fn sample(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        self.decode(&prior(n, self.latent, self.enc_fc.weight(), rng)?)
    }
}
