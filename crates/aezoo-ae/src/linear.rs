//! The linear (single hidden layer) autoencoder: flatten, `Linear(d → k)`,
//! an optional activation, `Linear(k → d)`, sigmoid (Chollet 2016).

use aezoo_metrics::{bce, mse, Reduction};
use aezoo_nn::layers::{linear, Linear, LinearConfig};
use aezoo_nn::{ops, Autoencoder, Batch, Family, StepCtx, StepOutput};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// The code's activation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// A purely linear code.
    None,
    /// ReLU, as the Keras lesson model has it.
    #[default]
    Relu,
    Sigmoid,
}

/// The reconstruction loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconLoss {
    /// Mean squared error per pixel.
    #[default]
    Mse,
    /// Binary cross-entropy per pixel.
    Bce,
}

/// The `model` section of an `ae-linear` config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearAeConfig {
    /// `[channels, height, width]` of the images.
    pub image: [usize; 3],
    /// Code size.
    pub latent: usize,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub loss: ReconLoss,
}

/// `encoder` then `decoder`, two fully connected layers.
pub struct LinearAe {
    encoder: Linear,
    decoder: Linear,
    activation: Activation,
    loss: ReconLoss,
    image: [usize; 3],
    latent: usize,
}

impl LinearAe {
    fn decode_logits(&self, z: &Tensor) -> Result<Tensor> {
        // z: (b, k) -> logits (b, c, h, w)
        let b = z.dim(0)?;
        let [c, h, w] = self.image;
        self.decoder.forward(z)?.reshape((b, c, h, w))
    }
}

impl Family for LinearAe {
    type Config = LinearAeConfig;
    const NAME: &'static str = "ae-linear";
    const ABOUT: &'static str = "one hidden layer, sigmoid output: the classic lesson autoencoder (Chollet 2016)";

    fn new(cfg: &LinearAeConfig, vb: VarBuilder) -> Result<Self> {
        let d: usize = cfg.image.iter().product();
        if d == 0 || cfg.latent == 0 {
            candle_core::bail!(
                "ae-linear: image {:?} and latent {} must be non-zero",
                cfg.image,
                cfg.latent
            );
        }
        Ok(Self {
            encoder: linear(d, cfg.latent, LinearConfig::default(), vb.pp("encoder"))?,
            decoder: linear(cfg.latent, d, LinearConfig::default(), vb.pp("decoder"))?,
            activation: cfg.activation,
            loss: cfg.loss,
            image: cfg.image,
            latent: cfg.latent,
        })
    }

    fn image_shape(cfg: &LinearAeConfig) -> [usize; 3] {
        cfg.image
    }
}

impl Autoencoder for LinearAe {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, c, h, w) -> (b, k)
        let h = self.encoder.forward(&xs.flatten_from(1)?)?;
        match self.activation {
            Activation::None => Ok(h),
            Activation::Relu => ops::relu(&h),
            Activation::Sigmoid => ops::sigmoid(&h),
        }
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        ops::sigmoid(&self.decode_logits(z)?)
    }

    fn step(&self, batch: &Batch, _ctx: &mut StepCtx) -> Result<StepOutput> {
        let recon = self.decode(&self.encode(&batch.input)?)?;
        let (name, loss) = match self.loss {
            ReconLoss::Mse => ("mse", mse(&recon, &batch.target, Reduction::Mean)?),
            ReconLoss::Bce => ("bce", bce(&recon, &batch.target, Reduction::Mean)?),
        };
        Ok(StepOutput {
            loss: loss.clone(),
            terms: vec![(name, loss)],
            recon,
        })
    }

    fn latent_shape(&self) -> Vec<usize> {
        vec![self.latent]
    }
}
