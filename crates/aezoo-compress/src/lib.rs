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
//! ŷ → decoder → x̂                             sigmoid-free: the decoder list ends as it likes, clamped to [0, 1] (not while training)
//! rate:      bits = Σ −log₂ P(ŷ),  P(ŷ) = F_c(ŷ + ½) − F_c(ŷ − ½),  F_c the Laplace CDF (μ_c, b_c)
//! ```
//! The same interval masses drive the entropy coder, so the rate term is the
//! file size the coder reaches, up to its few bytes of overhead.

#![forbid(unsafe_code)]

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
    /// `[height, width]` of the largest tile `.aez` files cut images into
    /// (default: `image`). A fully convolutional codec (no `Lin`, `Flat`,
    /// `Unflat`) codes an image smaller than this as one tile, padded only to
    /// its stride; a tile other than the training size needs one, and both
    /// lists are shape-checked at that size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile: Option<[usize; 2]>,
    /// The entropy model's `loc` and `log_scale` are stored divided by this
    /// (default 1), so Adam — whose steps are about `lr` whatever the
    /// gradient — moves the prior this many times faster than the
    /// transforms. Without it a channel the encoder has switched off keeps
    /// costing bits for thousands of steps while its scale creeps down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_gain: Option<f64>,
}

/// The learned factorized prior: one Laplace `(loc, scale)` per channel.
#[derive(Clone, Debug)]
pub struct EntropyModel {
    /// Per-channel location and log-scale as stored (`entropy.loc`,
    /// `entropy.log_scale`); the model uses them times `gain` (a forward
    /// op, so the optimizer's updates of the stored tensors reach it).
    loc: Tensor,
    log_scale: Tensor,
    gain: f64,
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
        Self::with_gain(channels, 1.0, vb)
    }

    /// The prior with its parameters stored divided by `gain`
    /// ([`CodecConfig::prior_gain`]).
    pub fn with_gain(channels: usize, gain: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            loc: vb.get_with_hints(channels, "loc", Init::Const(0.0))?,
            log_scale: vb.get_with_hints(channels, "log_scale", Init::Const(0.0))?,
            gain,
        })
    }

    /// `(loc, log_scale)` as the model uses them.
    fn effective(&self) -> Result<(Tensor, Tensor)> {
        if self.gain == 1.0 {
            return Ok((self.loc.clone(), self.log_scale.clone()));
        }
        Ok(((&self.loc * self.gain)?, (&self.log_scale * self.gain)?))
    }

    /// The probability mass of each integer interval `[ŷ − ½, ŷ + ½]`, for
    /// `y_hat` of `(b, C, …)`: mirrored to the left tail first, so far-out
    /// values keep their tiny masses instead of cancelling to zero.
    pub fn likelihood(&self, y_hat: &Tensor) -> Result<Tensor> {
        let (loc, log_scale) = self.effective()?;
        let c = loc.dim(0)?;
        let mut shape = vec![1, c];
        shape.extend(std::iter::repeat_n(1, y_hat.rank() - 2));
        let loc = loc.reshape(shape.as_slice())?;
        let scale = log_scale.clamp(-10.0, 10.0)?.exp()?.reshape(shape.as_slice())?;
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
        let (loc, log_scale) = self.effective()?;
        Ok((f(&loc)?, f(&log_scale.clamp(-10.0, 10.0)?.exp()?)?))
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
    tile: [usize; 2],
    tile_latent: FeatShape,
    /// The encoder and decoder lists, for shape checks at other tile sizes.
    lists: (Vec<String>, Vec<String>),
    fully_conv: bool,
}

/// The largest tile side a file may announce.
pub const MAX_TILE_SIDE: usize = 4096;

fn bad(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

/// The shape the layer list `items` gives for `input`.
fn output_of(list: &str, items: &[String], input: FeatShape) -> Result<FeatShape> {
    let shapes = aezoo_nn::spec::parse_list(list, items)
        .and_then(|l| l.infer_shapes(input))
        .map_err(|e| bad(e.to_string()))?;
    shapes
        .last()
        .copied()
        .ok_or_else(|| bad(format!("{list}: the list is empty")))
}

/// The latent shape the encoder list gives for `image`.
fn latent_of(cfg: &CodecConfig) -> Result<FeatShape> {
    let [c, h, w] = cfg.image;
    output_of("encoder", &cfg.encoder, FeatShape::Map { c, h, w })
}

/// `prior_gain`, checked.
fn prior_gain(cfg: &CodecConfig) -> Result<f64> {
    match cfg.prior_gain {
        None => Ok(1.0),
        Some(g) if g.is_finite() && (0.01..=1000.0).contains(&g) => Ok(g),
        Some(g) => Err(bad(format!("prior_gain must be in [0.01, 1000], got {g}"))),
    }
}

/// Whether neither list has a layer tied to one input size.
fn fully_convolutional(cfg: &CodecConfig) -> bool {
    use aezoo_nn::spec::{parse_list, LayerSpec};
    [("encoder", &cfg.encoder), ("decoder", &cfg.decoder)]
        .iter()
        .all(|(n, items)| {
            parse_list(n, items).is_ok_and(|l| {
                !l.specs.iter().any(|s| {
                    matches!(
                        s,
                        LayerSpec::Linear { .. } | LayerSpec::Flatten | LayerSpec::Unflatten { .. }
                    )
                })
            })
        })
}

/// The latent of a `[th, tw]` tile: the encoder must give a feature map and
/// the decoder must bring it back to `(c, th, tw)`.
fn latent_at(cfg_lists: (&[String], &[String]), c: usize, [th, tw]: [usize; 2]) -> Result<FeatShape> {
    if th == 0 || tw == 0 || th > MAX_TILE_SIDE || tw > MAX_TILE_SIDE {
        return Err(bad(format!("tile {th}x{tw}: sides from 1 to {MAX_TILE_SIDE}")));
    }
    let why = |e: candle_core::Error| bad(format!("tile {th}x{tw}: {e}"));
    let latent = output_of("encoder", cfg_lists.0, FeatShape::Map { c, h: th, w: tw }).map_err(why)?;
    if !matches!(latent, FeatShape::Map { .. }) {
        return Err(bad(format!("tile {th}x{tw}: the encoder gives a flat latent {latent}")));
    }
    let back = output_of("decoder", cfg_lists.1, latent).map_err(why)?;
    if back != (FeatShape::Map { c, h: th, w: tw }) {
        return Err(bad(format!(
            "tile {th}x{tw}: the decoder gives {back} from the tile's latent {latent}"
        )));
    }
    Ok(latent)
}

/// The largest coding tile and its latent.
fn tile_of(cfg: &CodecConfig) -> Result<([usize; 2], FeatShape, bool)> {
    let [c, h, w] = cfg.image;
    let fully_conv = fully_convolutional(cfg);
    let Some(tile) = cfg.tile.filter(|t| *t != [h, w]) else {
        return Ok(([h, w], latent_of(cfg)?, fully_conv));
    };
    if !fully_conv {
        return Err(bad(format!(
            "tile {}x{}: a tile other than the image size needs a fully convolutional codec (no Lin, Flat, Unflat)",
            tile[0], tile[1]
        )));
    }
    Ok((tile, latent_at((&cfg.encoder, &cfg.decoder), c, tile)?, fully_conv))
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
        let (tile, tile_latent, fully_conv) = tile_of(cfg)?;
        Ok(Self {
            decoder,
            entropy: EntropyModel::with_gain(channels, prior_gain(cfg)?, vb.pp("entropy"))?,
            latent,
            image: cfg.image,
            tile,
            tile_latent,
            lists: (cfg.encoder.clone(), cfg.decoder.clone()),
            fully_conv,
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

    /// `[channels, height, width]` of the training images.
    pub fn image(&self) -> [usize; 3] {
        self.image
    }

    /// `[height, width]` of the largest tile `.aez` files are coded in.
    pub fn tile(&self) -> [usize; 2] {
        self.tile
    }

    /// The latent of one largest tile, without the batch axis.
    pub fn tile_latent(&self) -> FeatShape {
        self.tile_latent
    }

    /// The tile an `h × w` image is coded in: the largest tile, or — for a
    /// fully convolutional codec — the image itself padded to the codec's
    /// stride when that is smaller (one tile, no seams).
    pub fn tile_for(&self, h: usize, w: usize) -> [usize; 2] {
        let [_, ih, iw] = self.image;
        let FeatShape::Map { h: lh, w: lw, .. } = self.latent else {
            return self.tile;
        };
        if !self.fully_conv || lh == 0 || lw == 0 || ih % lh != 0 || iw % lw != 0 {
            return self.tile;
        }
        let (gh, gw) = (ih / lh, iw / lw);
        let t = [h.div_ceil(gh).max(1) * gh, w.div_ceil(gw).max(1) * gw];
        let t = [t[0].min(self.tile[0]), t[1].min(self.tile[1])];
        if self.latent_for(t).is_ok() {
            t
        } else {
            self.tile
        }
    }

    /// The latent of a `tile` (a file's): the largest tile, or for a fully
    /// convolutional codec any tile within it that both lists shape-check.
    pub fn latent_for(&self, tile: [usize; 2]) -> Result<FeatShape> {
        if tile == self.tile {
            return Ok(self.tile_latent);
        }
        if !self.fully_conv || tile[0] > self.tile[0] || tile[1] > self.tile[1] {
            return Err(bad(format!(
                "tile {}x{}: this codec codes {}x{} tiles{}",
                tile[0],
                tile[1],
                self.tile[0],
                self.tile[1],
                if self.fully_conv { " at most" } else { "" }
            )));
        }
        latent_at((&self.lists.0, &self.lists.1), self.image[0], tile)
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
        // Training sees the decoder's raw output: a clamp there would give no
        // gradient to pixels outside [0, 1] (a fresh decoder's output mostly is).
        let recon = if ctx.train {
            self.synthesis.decoder.forward(&y_hat)?
        } else {
            self.decode(&y_hat)?
        };
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
