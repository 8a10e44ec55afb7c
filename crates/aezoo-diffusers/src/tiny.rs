//! `vae-tiny`: diffusers' `AutoencoderTiny` (TAESD and TAESDXL, Bohan
//! Ollin Boer 2023, "Tiny AutoEncoder for Stable Diffusion"): plain convs
//! and ReLU blocks that approximate the KL VAE's latents at a fraction of
//! its cost, with diffusers' parameter names (`encoder.layers.N…`,
//! `decoder.layers.N…`).
//!
//! ```text
//! encoder: conv → blocks, then per level: conv (stride 2, no bias) → blocks; conv → latent
//! decoder: tanh(z / 3) · 3 → conv → ReLU → per level: blocks → [upsample × 2 → conv (no bias)]
//!          → the last level's conv (with bias) → image in [0, 1]
//! latent:  (z − shift_factor) · scaling_factor (TAESD: 1 and 0, so the SD latents themselves)
//! ```

use aezoo_nn::layers::{conv2d_no_bias, Conv2d, Conv2dConfig};
use aezoo_nn::model::Spatial;
use aezoo_nn::{Act, Autoencoder, Batch, Family, StepCtx, StepOutput};
use aezoo_vae::FlexLoss;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::blocks::{same_conv, TinyBlock};
use crate::latent::LatentSpace;

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn channels() -> Vec<usize> {
    vec![64; 4]
}
fn enc_blocks() -> Vec<usize> {
    vec![1, 3, 3, 3]
}
fn dec_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}
fn relu() -> String {
    "relu".into()
}
fn nearest() -> String {
    "nearest".into()
}
fn magnitude() -> f64 {
    3.0
}
fn half() -> f64 {
    0.5
}
fn unit() -> f64 {
    1.0
}
fn tile() -> usize {
    512
}

/// The `model` section of a `vae-tiny` entry: the fields of diffusers'
/// `AutoencoderTiny` config (same names, same defaults), and aezoo's
/// `sample_size` (the nominal image and tile) and `loss`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "channels")]
    pub encoder_block_out_channels: Vec<usize>,
    #[serde(default = "channels")]
    pub decoder_block_out_channels: Vec<usize>,
    /// Only `"relu"` (TAESD's).
    #[serde(default = "relu")]
    pub act_fn: String,
    /// Only `"nearest"`.
    #[serde(default = "nearest")]
    pub upsample_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "two")]
    pub upsampling_scaling_factor: usize,
    #[serde(default = "enc_blocks")]
    pub num_encoder_blocks: Vec<usize>,
    #[serde(default = "dec_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    /// How diffusers maps latents to [0, 1] for storage as images (kept, unused).
    #[serde(default = "magnitude")]
    pub latent_magnitude: f64,
    #[serde(default = "half")]
    pub latent_shift: f64,
    #[serde(default)]
    pub force_upcast: bool,
    #[serde(default = "unit")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: f64,
    /// The nominal image side and tile (not a diffusers field; 512).
    #[serde(default = "tile")]
    pub sample_size: usize,
    #[serde(default)]
    pub loss: FlexLoss,
}

impl TinyConfig {
    /// The image's downsampling to the latent: 2^(levels − 1).
    pub fn factor(&self) -> usize {
        1 << self.encoder_block_out_channels.len().saturating_sub(1)
    }

    fn check(&self) -> Result<()> {
        let (ne, nd) = (
            self.encoder_block_out_channels.len(),
            self.decoder_block_out_channels.len(),
        );
        if ne == 0 || ne > 8 || ne != self.num_encoder_blocks.len() {
            return Err(candle_core::Error::Msg(format!(
                "encoder_block_out_channels ({ne}) and num_encoder_blocks ({}): 1 to 8 levels, as many of each",
                self.num_encoder_blocks.len()
            )));
        }
        if nd != ne || nd != self.num_decoder_blocks.len() {
            return Err(candle_core::Error::Msg(format!(
                "decoder_block_out_channels ({nd}) and num_decoder_blocks ({}): as many levels as the encoder's {ne}",
                self.num_decoder_blocks.len()
            )));
        }
        let e = &self.encoder_block_out_channels;
        if e.windows(2).any(|p| p[0] != p[1]) || self.decoder_block_out_channels.windows(2).any(|p| p[0] != p[1]) {
            return Err(candle_core::Error::Msg(
                "encoder_block_out_channels / decoder_block_out_channels: diffusers' tiny VAE keeps one width per side"
                    .into(),
            ));
        }
        if self
            .num_encoder_blocks
            .iter()
            .chain(&self.num_decoder_blocks)
            .any(|&n| n > 16)
        {
            return Err(candle_core::Error::Msg(
                "num_encoder_blocks / num_decoder_blocks: at most 16 blocks a level".into(),
            ));
        }
        if self.act_fn != "relu" {
            return Err(candle_core::Error::Msg(format!(
                "act_fn: `{}` is not supported (only relu)",
                self.act_fn
            )));
        }
        if self.upsample_fn != "nearest" || self.upsampling_scaling_factor != 2 {
            return Err(candle_core::Error::Msg(format!(
                "upsample_fn {} × {}: only nearest × 2 (TAESD's)",
                self.upsample_fn, self.upsampling_scaling_factor
            )));
        }
        if self.sample_size == 0 || !self.sample_size.is_multiple_of(self.factor()) {
            return Err(candle_core::Error::Msg(format!(
                "sample_size: {} is not a positive multiple of the downsampling factor {}",
                self.sample_size,
                self.factor()
            )));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0 && self.shift_factor.is_finite()) {
            return Err(candle_core::Error::Msg(
                "scaling_factor must be > 0 and shift_factor a finite number".into(),
            ));
        }
        self.loss.check()
    }
}

/// A layer of diffusers' `nn.Sequential`, with the parameter-free ones
/// merged into the conv they meet: conv → ReLU is one fused node, nearest
/// 2× upsampling → conv one sub-pixel node.
#[derive(Clone, Debug)]
enum Layer {
    Conv(Conv2d, Act),
    Block(TinyBlock),
    UpConv(Conv2d),
}

fn run(layers: &[Layer], xs: &Tensor) -> Result<Tensor> {
    layers.iter().try_fold(xs.clone(), |h, layer| match layer {
        Layer::Conv(c, act) => c.forward_act(&h, *act),
        Layer::Block(b) => b.forward(&h),
        Layer::UpConv(c) => c.forward_up_act(&h, 2, Act::None),
    })
}

/// diffusers' `AutoencoderTiny`.
pub struct AutoencoderTiny {
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    latent: LatentSpace,
    loss: FlexLoss,
}

impl AutoencoderTiny {
    /// The raw latent of images in [0, 1] (the encoder's output, unscaled).
    pub fn encode_unscaled(&self, xs: &Tensor) -> Result<Tensor> {
        run(&self.encoder, &self.latent.upcast(xs)?)?.to_dtype(self.latent.dtype)
    }

    /// The decoder's output for a raw latent, in [0, 1] unclamped (diffusers
    /// returns `2·y − 1`).
    pub fn decode_unscaled(&self, z: &Tensor) -> Result<Tensor> {
        let z = self.latent.upcast(z)?;
        let clamped = ((z / 3.0)?.tanh()? * 3.0)?;
        run(&self.decoder, &clamped)?.to_dtype(self.latent.dtype)
    }
}

impl Family for AutoencoderTiny {
    type Config = TinyConfig;
    const NAME: &'static str = "vae-tiny";
    const ABOUT: &'static str =
        "diffusers' AutoencoderTiny (TAESD) from its config.json, diffusers' keys; MSE/L1 [+ SSIM] (Bohan 2023)";

    fn new(cfg: &TinyConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        let (ev, dv) = (vb.pp("encoder").pp("layers"), vb.pp("decoder").pp("layers"));
        let mut encoder = Vec::new();
        let ch = cfg.encoder_block_out_channels[0];
        for (i, &n) in cfg.num_encoder_blocks.iter().enumerate() {
            let at = encoder.len();
            let conv = if i == 0 {
                same_conv(cfg.in_channels, ch, 3, ev.pp(at))?
            } else {
                let s2 = Conv2dConfig {
                    padding: 1,
                    stride: 2,
                    ..Default::default()
                };
                conv2d_no_bias(ch, ch, 3, s2, ev.pp(at))?
            };
            encoder.push(Layer::Conv(conv, Act::None));
            for _ in 0..n {
                let at = encoder.len();
                encoder.push(Layer::Block(TinyBlock::new(ch, ch, ev.pp(at))?));
            }
        }
        let at = encoder.len();
        encoder.push(Layer::Conv(
            same_conv(ch, cfg.latent_channels, 3, ev.pp(at))?,
            Act::None,
        ));

        let ch = cfg.decoder_block_out_channels[0];
        // `at`: diffusers' index of the layer (its ReLU and upsamplings
        // hold no parameters but count).
        let mut decoder = vec![Layer::Conv(same_conv(cfg.latent_channels, ch, 3, dv.pp(0))?, Act::Relu)];
        let mut at = 2;
        let levels = cfg.num_decoder_blocks.len();
        for (i, &n) in cfg.num_decoder_blocks.iter().enumerate() {
            for _ in 0..n {
                decoder.push(Layer::Block(TinyBlock::new(ch, ch, dv.pp(at))?));
                at += 1;
            }
            if i + 1 == levels {
                decoder.push(Layer::Conv(same_conv(ch, cfg.out_channels, 3, dv.pp(at))?, Act::None));
            } else {
                let same = Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                };
                decoder.push(Layer::UpConv(conv2d_no_bias(ch, ch, 3, same, dv.pp(at + 1))?));
                at += 2;
            }
        }
        Ok(Self {
            encoder,
            decoder,
            latent: LatentSpace::new(
                cfg.latent_channels,
                cfg.factor(),
                [cfg.sample_size; 2],
                (cfg.scaling_factor, cfg.shift_factor),
                cfg.force_upcast,
                vb.dtype(),
            ),
            loss: cfg.loss.clone(),
        })
    }

    fn image_shape(cfg: &TinyConfig) -> [usize; 3] {
        [cfg.in_channels, cfg.sample_size, cfg.sample_size]
    }
}

impl Autoencoder for AutoencoderTiny {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        self.latent.scaled(&self.encode_unscaled(xs)?)
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_unscaled(&self.latent.unscaled(z)?)?.clamp(0.0, 1.0)
    }

    fn step(&self, batch: &Batch, ctx: &mut StepCtx) -> Result<StepOutput> {
        // Deterministic: no posterior, so no KL term.
        let z = self.encode_unscaled(&ctx.to_compute(&batch.input)?)?;
        let out = self.decode_unscaled(&ctx.to_compute(&z)?)?;
        let (loss, terms) = self.loss.recon_terms(&out, &batch.target, &z)?;
        Ok(StepOutput {
            loss,
            terms,
            recon: out.clamp(0.0, 1.0)?,
        })
    }

    fn latent_shape(&self) -> Vec<usize> {
        self.latent.shape()
    }

    fn mixed_precision(&self) -> bool {
        self.latent.half_ok()
    }

    fn spatial(&self) -> Option<Spatial> {
        Some(self.latent.spatial)
    }
}
