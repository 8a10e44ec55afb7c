//! aezoo-compress: the learned image codec (family `codec`) — an encoder and
//! a decoder written as layer lists (the `aezoo_nn::spec` grammar), latents
//! quantised to integers, and a learned per-channel entropy model; trained for
//! `α·(1 − SSIM) + (1 − α)·L1 + λ·bpp` (Ballé, Laparra & Simoncelli 2017,
//! *End-to-end Optimized Image Compression*, with the factorized prior reduced
//! to one Laplace per channel; the SSIM + L1 mix of Zhao et al. 2017).
//!
//! ```text
//! x → encoder → y (C, h, w) or (d,)           one channel per map channel, or per latent value
//! training:  ŷ = y + u, u ~ U(−½, ½)          (or round with a straight-through gradient)
//! inference: ŷ = round(y)
//! ŷ → decoder → x̂                             sigmoid-free: the decoder list ends as it likes, clamped to [0, 1]
//! rate:      bits = Σ −log₂ P(ŷ),  P(ŷ) = F_c(ŷ + ½) − F_c(ŷ − ½),  F_c the Laplace CDF (μ_c, b_c)
//! ```
//! The same interval masses drive the entropy coder, so the rate term is the
//! file size the coder reaches, up to its few bytes of overhead.

use aezoo_metrics::{mae, ssim, Reduction, SsimConfig};
use aezoo_nn::spec::{FeatShape, Sequential};
use aezoo_nn::{Autoencoder, Batch, Family, StepCtx, StepOutput};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

pub mod aez;

/// How latents are quantised while training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// Additive uniform noise U(−½, ½): a differentiable proxy of rounding.
    #[default]
    Noise,
    /// Rounding in the forward pass, identity in the backward.
    Ste,
}

fn default_alpha() -> f64 {
    0.75
}

/// The `model` section of a `codec` config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodecConfig {
    /// `[channels, height, width]` of the training images.
    pub image: [usize; 3],
    /// Encoder layers (the layer grammar), ending in the latent.
    pub encoder: Vec<String>,
    /// Decoder layers, from the latent back to `image`.
    pub decoder: Vec<String>,
    /// α in `α·(1 − SSIM) + (1 − α)·L1`.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// λ, the weight of the rate (bits per pixel): the rate point.
    pub lambda: f64,
    #[serde(default)]
    pub quantization: Quantization,
}

/// The learned factorized prior: one Laplace `(loc, scale)` per channel.
#[derive(Clone, Debug)]
pub struct EntropyModel {
    loc: Tensor,
    log_scale: Tensor,
}

/// The smallest probability an interval is given (the coder's floor too).
pub const MIN_LIKELIHOOD: f64 = 1e-9;

/// The Laplace CDF with unit scale at `x`: `½eˣ` below 0, `1 − ½e⁻ˣ` above.
fn laplace_cdf(x: &Tensor) -> Result<Tensor> {
    let neg = x.lt(0.0)?.to_dtype(x.dtype())?;
    let left = (x.minimum(0.0)?.exp()? * 0.5)?;
    let right = (1.0 - (x.maximum(0.0)?.neg()?.exp()? * 0.5)?)?;
    (&neg * left)? + ((1.0 - &neg)? * right)?
}

impl EntropyModel {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            loc: vb.get_with_hints(channels, "loc", Init::Const(0.0))?,
            log_scale: vb.get_with_hints(channels, "log_scale", Init::Const(0.0))?,
        })
    }

    /// The probability mass of each integer interval `[ŷ − ½, ŷ + ½]`, for
    /// `y_hat` of `(b, C, …)`: mirrored to the left tail first, so far-out
    /// values keep their tiny masses instead of cancelling to zero.
    pub fn likelihood(&self, y_hat: &Tensor) -> Result<Tensor> {
        let c = self.loc.dim(0)?;
        let mut shape = vec![1, c];
        shape.extend(std::iter::repeat_n(1, y_hat.rank() - 2));
        let loc = self.loc.reshape(shape.as_slice())?;
        let scale = self.log_scale.clamp(-10.0, 10.0)?.exp()?.reshape(shape.as_slice())?;
        let centred = y_hat.broadcast_sub(&loc)?;
        let upper = (&centred + 0.5)?.broadcast_div(&scale)?;
        let lower = (&centred - 0.5)?.broadcast_div(&scale)?;
        // s = −1 right of the median, +1 left of (and at) it.
        let s = ((upper.add(&lower)?.gt(0.0)?.to_dtype(y_hat.dtype())? * -2.0)? + 1.0)?;
        let p = (laplace_cdf(&(&s * &upper)?)? - laplace_cdf(&(&s * &lower)?)?)?.abs()?;
        p.maximum(MIN_LIKELIHOOD)
    }

    /// Total bits of `y_hat` under the model (a scalar).
    pub fn bits(&self, y_hat: &Tensor) -> Result<Tensor> {
        self.likelihood(y_hat)?.log()?.sum_all()? * (-1.0 / std::f64::consts::LN_2)
    }

    /// The dtype and device of the model's parameters.
    pub fn dtype_device(&self) -> (DType, candle_core::Device) {
        (self.loc.dtype(), self.loc.device().clone())
    }

    /// `(loc, scale)` per channel.
    pub fn params(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        let f = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec1::<f64>();
        Ok((f(&self.loc)?, f(&self.log_scale.clamp(-10.0, 10.0)?.exp()?)?))
    }
}

/// The decoding half of a codec: `decoder` and `entropy.{loc, log_scale}`,
/// built without the encoder's weights (the latent shape comes from the
/// encoder list's shape inference alone) — what a decoder-only program loads.
pub struct Synthesis {
    decoder: Sequential,
    entropy: EntropyModel,
    latent: FeatShape,
    image: [usize; 3],
}

fn bad(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

/// The latent shape the encoder list gives for `image`.
fn latent_of(cfg: &CodecConfig) -> Result<FeatShape> {
    let [c, h, w] = cfg.image;
    let shapes = aezoo_nn::spec::parse_list("encoder", &cfg.encoder)
        .and_then(|l| l.infer_shapes(FeatShape::Map { c, h, w }))
        .map_err(|e| bad(e.to_string()))?;
    shapes
        .last()
        .copied()
        .ok_or_else(|| bad("encoder: the list is empty".into()))
}

impl Synthesis {
    pub fn new(cfg: &CodecConfig, vb: VarBuilder) -> Result<Self> {
        let [c, h, w] = cfg.image;
        let latent = latent_of(cfg)?;
        let channels = match latent {
            FeatShape::Map { c, .. } => c,
            FeatShape::Flat { d } => d,
        };
        let decoder = Sequential::new("decoder", &cfg.decoder, latent, vb.pp("decoder"))?;
        if decoder.output_shape() != (FeatShape::Map { c, h, w }) {
            return Err(bad(format!(
                "decoder: gives {} from the latent {latent} but the images are ({c}, {h}, {w})",
                decoder.output_shape()
            )));
        }
        Ok(Self {
            decoder,
            entropy: EntropyModel::new(channels, vb.pp("entropy"))?,
            latent,
            image: cfg.image,
        })
    }

    /// Images in `[0, 1]` from (integer) latents.
    pub fn decode(&self, y_hat: &Tensor) -> Result<Tensor> {
        self.decoder.forward(y_hat)?.clamp(0.0, 1.0)
    }

    pub fn entropy(&self) -> &EntropyModel {
        &self.entropy
    }

    /// The latent's shape without the batch axis.
    pub fn latent(&self) -> FeatShape {
        self.latent
    }

    /// `[channels, height, width]` of the tiles the codec works on.
    pub fn image(&self) -> [usize; 3] {
        self.image
    }
}

/// `encoder` (layer list) and the [`Synthesis`] half.
pub struct Codec {
    encoder: Sequential,
    synthesis: Synthesis,
    alpha: f64,
    lambda: f64,
    quantization: Quantization,
    pixels: usize,
}

impl Family for Codec {
    type Config = CodecConfig;
    const NAME: &'static str = "codec";
    const ABOUT: &'static str =
        "learned image codec: layer-list encoder/decoder, integer latents, per-channel Laplace entropy model, SSIM+L1+λ·bpp (Ballé et al. 2017)";

    fn new(cfg: &CodecConfig, vb: VarBuilder) -> Result<Self> {
        let [c, h, w] = cfg.image;
        if !(cfg.alpha.is_finite() && (0.0..=1.0).contains(&cfg.alpha)) {
            return Err(bad(format!("alpha must be in [0, 1], got {}", cfg.alpha)));
        }
        if !(cfg.lambda.is_finite() && cfg.lambda > 0.0) {
            return Err(bad(format!(
                "lambda must be a number > 0 (the rate weight also trains the entropy model), got {}",
                cfg.lambda
            )));
        }
        if h < 11 || w < 11 {
            return Err(bad(format!("image {h}x{w}: the SSIM term needs at least 11x11")));
        }
        let encoder = Sequential::new("encoder", &cfg.encoder, FeatShape::Map { c, h, w }, vb.pp("encoder"))?;
        Ok(Self {
            encoder,
            synthesis: Synthesis::new(cfg, vb)?,
            alpha: cfg.alpha,
            lambda: cfg.lambda,
            quantization: cfg.quantization,
            pixels: h * w,
        })
    }

    fn image_shape(cfg: &CodecConfig) -> [usize; 3] {
        cfg.image
    }
}

impl Codec {
    /// The continuous latent `y` of `xs`.
    pub fn analysis(&self, xs: &Tensor) -> Result<Tensor> {
        self.encoder.forward(xs)
    }

    /// The decoding half.
    pub fn synthesis(&self) -> &Synthesis {
        &self.synthesis
    }

    /// The entropy model (for the coder and for rate estimates).
    pub fn entropy(&self) -> &EntropyModel {
        &self.synthesis.entropy
    }

    /// The latent's shape without the batch axis.
    pub fn latent(&self) -> FeatShape {
        self.synthesis.latent
    }

    /// `α·(1 − SSIM) + (1 − α)·L1` per batch, with its two parts.
    pub fn distortion(&self, recon: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let one_minus_ssim = (1.0 - ssim(recon, target, SsimConfig::default())?.mean_all()?)?;
        let l1 = mae(recon, target, Reduction::Mean)?;
        let d = ((&one_minus_ssim * self.alpha)? + (&l1 * (1.0 - self.alpha))?)?;
        Ok((d, one_minus_ssim, l1))
    }
}

impl Autoencoder for Codec {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, c, h, w) -> the integer latent ŷ = round(y)
        self.analysis(xs)?.round()
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.synthesis.decode(z)
    }

    fn step(&self, batch: &Batch, ctx: &mut StepCtx) -> Result<StepOutput> {
        let y = self.analysis(&batch.input)?;
        let y_hat = match (ctx.train, self.quantization) {
            (true, Quantization::Noise) => {
                let u = ctx
                    .rng
                    .rand_uniform(y.shape().clone(), -0.5, 0.5, y.dtype(), y.device())?;
                (&y + u)?
            }
            (true, Quantization::Ste) => (&y + (y.round()? - &y)?.detach())?,
            (false, _) => y.round()?,
        };
        let recon = self.decode(&y_hat)?;
        let (d, one_minus_ssim, l1) = self.distortion(&recon, &batch.target)?;
        let b = y.dim(0)?;
        let bpp = (self.entropy().bits(&y_hat)? / (b * self.pixels) as f64)?;
        let loss = (&d + (&bpp * self.lambda)?)?;
        Ok(StepOutput {
            loss,
            terms: vec![("one_minus_ssim", one_minus_ssim), ("l1", l1), ("bpp", bpp)],
            recon,
        })
    }

    fn latent_shape(&self) -> Vec<usize> {
        match self.latent() {
            FeatShape::Map { c, h, w } => vec![c, h, w],
            FeatShape::Flat { d } => vec![d],
        }
    }
}
