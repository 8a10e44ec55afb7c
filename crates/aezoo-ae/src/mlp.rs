//! The fully connected autoencoder: flatten, `Linear` layers down to the
//! code (activation between them), the mirror image up, sigmoid.
//! With `sparsity = λ > 0` the loss adds `λ · mean over the batch of Σ|z|`,
//! the L1 activity penalty of the sparse autoencoder (Ng 2011; Keras'
//! `activity_regularizer=l1(λ)`).

use aezoo_nn::layers::{linear, linear_chain, Linear, LinearConfig};
use aezoo_nn::{Autoencoder, Batch, Family, StepCtx, StepOutput};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::common::{Activation, ReconLoss};

fn relu() -> Activation {
    Activation::Relu
}

/// The `model` section of an `ae-mlp` config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpAeConfig {
    /// `[channels, height, width]` of the images.
    pub image: [usize; 3],
    /// Hidden layer sizes of the encoder, outermost first (the decoder mirrors
    /// them); empty for the single-layer autoencoder.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Code size.
    pub latent: usize,
    /// Activation of the hidden layers.
    #[serde(default = "relu")]
    pub activation: Activation,
    /// Activation of the code.
    #[serde(default = "relu")]
    pub code_activation: Activation,
    #[serde(default)]
    pub loss: ReconLoss,
    /// L1 coefficient on the code (0 = none).
    #[serde(default)]
    pub sparsity: f64,
}

/// `encoder.fc1..` down to the code, `decoder.fc1..` back up.
pub struct MlpAe {
    encoder: Vec<Linear>,
    decoder: Vec<Linear>,
    cfg: MlpAeConfig,
}

/// Each of `layers` with the activation after it: `hidden`, and `last`
/// after the last one.
fn with_acts(layers: &[Linear], hidden: Activation, last: Activation) -> impl Iterator<Item = (&Linear, Activation)> {
    let n = layers.len();
    layers
        .iter()
        .enumerate()
        .map(move |(i, l)| (l, if i + 1 < n { hidden } else { last }))
}

impl MlpAe {
    /// The encoder's layers and activations, down to the code.
    fn encoder_acts(&self) -> impl Iterator<Item = (&Linear, Activation)> {
        with_acts(&self.encoder, self.cfg.activation, self.cfg.code_activation)
    }

    /// The decoder's layers and activations, ending in `out`.
    fn decoder_acts(&self, out: Activation) -> impl Iterator<Item = (&Linear, Activation)> {
        with_acts(&self.decoder, self.cfg.activation, out)
    }

    /// The decoder, ending in `out` (sigmoid for images, identity for logits).
    fn decode_with(&self, z: &Tensor, out: Activation) -> Result<Tensor> {
        // z: (b, k) -> (b, c, h, w)
        let mut h = z.clone();
        for (layer, act) in self.decoder_acts(out) {
            h = act.after(layer, &h)?;
        }
        let [c, hh, w] = self.cfg.image;
        h.reshape((z.dim(0)?, c, hh, w))
    }
}

impl Family for MlpAe {
    type Config = MlpAeConfig;
    const NAME: &'static str = "ae-mlp";
    const ABOUT: &'static str =
        "fully connected autoencoder, optional L1 code penalty (Hinton & Salakhutdinov 2006; Ng 2011)";

    fn new(cfg: &MlpAeConfig, vb: VarBuilder) -> Result<Self> {
        let d: usize = cfg.image.iter().product();
        if d == 0 || cfg.latent == 0 || cfg.hidden.contains(&0) {
            candle_core::bail!(
                "ae-mlp: image {:?}, hidden {:?} and latent {} must be non-zero",
                cfg.image,
                cfg.hidden,
                cfg.latent
            );
        }
        if !(cfg.sparsity >= 0.0 && cfg.sparsity.is_finite()) {
            candle_core::bail!("ae-mlp: sparsity must be >= 0, got {}", cfg.sparsity);
        }
        let dims: Vec<usize> = std::iter::once(d)
            .chain(cfg.hidden.iter().copied())
            .chain([cfg.latent])
            .collect();
        let (venc, vdec) = (vb.pp("encoder"), vb.pp("decoder"));
        let encoder = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], LinearConfig::default(), venc.pp(format!("fc{}", i + 1))))
            .collect::<Result<Vec<_>>>()?;
        let rev: Vec<usize> = dims.iter().rev().copied().collect();
        let decoder = rev
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], LinearConfig::default(), vdec.pp(format!("fc{}", i + 1))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            encoder,
            decoder,
            cfg: cfg.clone(),
        })
    }

    fn image_shape(cfg: &MlpAeConfig) -> [usize; 3] {
        cfg.image
    }
}

impl Autoencoder for MlpAe {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, c, h, w) -> (b, k)
        let mut h = xs.flatten_from(1)?;
        for (layer, act) in self.encoder_acts() {
            h = act.after(layer, &h)?;
        }
        Ok(h)
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_with(z, Activation::Sigmoid)
    }

    /// Encoder and decoder as one [`linear_chain`] (one parallel region,
    /// no gradient), where every activation fuses into its layer.
    fn reconstruct(&self, xs: &Tensor) -> Result<Tensor> {
        let acts = self.encoder_acts().chain(self.decoder_acts(Activation::Sigmoid));
        let links: Option<Vec<_>> = acts.map(|(l, a)| a.fused().map(|a| (l, a))).collect();
        match links {
            Some(links) => linear_chain(xs, &links)?.reshape(xs.shape()),
            None => self.decode(&self.encode(xs)?),
        }
    }

    fn step(&self, batch: &Batch, ctx: &mut StepCtx) -> Result<StepOutput> {
        // Mixed precision: the networks in `ctx.compute`, the loss in the target's dtype.
        let dt = batch.target.dtype();
        let z = self.encode(&ctx.to_compute(&batch.input)?)?;
        let recon = self.decode(&z)?.to_dtype(dt)?;
        let z = z.to_dtype(dt)?;
        let (name, rec) = self.cfg.loss.compute(&recon, &batch.target)?;
        let mut terms = vec![(name, rec.clone())];
        let loss = if self.cfg.sparsity > 0.0 {
            let l1 = z.abs()?.sum_all()?.affine(1.0 / z.dim(0)? as f64, 0.0)?;
            let loss = (&rec + (&l1 * self.cfg.sparsity)?)?;
            terms.push(("l1", l1));
            loss
        } else {
            rec
        };
        Ok(StepOutput { loss, terms, recon })
    }

    fn latent_shape(&self) -> Vec<usize> {
        vec![self.cfg.latent]
    }

    fn mixed_precision(&self) -> bool {
        true
    }
}
