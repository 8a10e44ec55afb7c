//! `vae-kl`: diffusers' `AutoencoderKL` (Rombach et al. 2022, "High-Resolution
//! Image Synthesis with Latent Diffusion Models"), the VAE of Stable
//! Diffusion 1.x / 2.x and SDXL, built from the fields of its own
//! `config.json` with diffusers' parameter names.
//!
//! ```text
//! encoder: conv_in → down_blocks[i] (resnets, downsampler but the last) → mid_block
//!          → conv_norm_out → SiLU → conv_out (2 · latent channels) → [quant_conv]
//!          → (μ, log σ² clamped to [−30, 20])
//! latent:  z = (μ − shift_factor) · scaling_factor   what a diffusion model expects
//! decoder: z / scaling_factor + shift_factor → [post_quant_conv] → conv_in → mid_block
//!          → up_blocks[i] (resnets, upsampler but the last) → conv_norm_out → SiLU → conv_out
//! ```
//! Images cross the model in [0, 1]; diffusers' [−1, 1] is inside.
//! Training: `α·rec + kld_weight·KLD [+ β·(1 − SSIM)]`, as `vae-flex`.

use aezoo_nn::layers::{Conv2d, GroupNorm};
use aezoo_nn::model::Spatial;
use aezoo_nn::{ops, Autoencoder, Batch, Family, StepCtx, StepOutput};
use aezoo_vae::FlexLoss;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::blocks::{norm, resnet_block, same_conv, Downsample, MidBlock, ResnetBlock, Upsample};
use crate::latent::LatentSpace;

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn groups() -> usize {
    32
}
fn silu() -> String {
    "silu".into()
}
fn sample() -> SampleSize {
    SampleSize::Square(32)
}
fn sd_scale() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

/// `sample_size`: one side, or `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect([usize; 2]),
}

impl SampleSize {
    /// `(height, width)`.
    pub fn hw(self) -> [usize; 2] {
        match self {
            SampleSize::Square(s) => [s, s],
            SampleSize::Rect(hw) => hw,
        }
    }
}

/// The `model` section of a `vae-kl` entry: the fields of diffusers'
/// `AutoencoderKL` config (same names, same defaults), and aezoo's `loss`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    /// One `"DownEncoderBlock2D"` per level.
    pub down_block_types: Vec<String>,
    /// One `"UpDecoderBlock2D"` per level.
    pub up_block_types: Vec<String>,
    /// Channels per level, from the image side.
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Only `"silu"` (diffusers' default and every published KL VAE's).
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// The size the model was trained at: the nominal image, and the tile
    /// of tiled encoding and decoding.
    #[serde(default = "sample")]
    pub sample_size: SampleSize,
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent statistics some fine-tunes publish (kept, unused).
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// Run in f32 whatever the precision asked (the SDXL VAE overflows in f16).
    #[serde(default = "yes")]
    pub force_upcast: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// aezoo's training loss (not a diffusers field).
    #[serde(default)]
    pub loss: FlexLoss,
}

impl KlConfig {
    /// The image's downsampling to the latent: 2^(levels − 1).
    pub fn factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    fn check(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || n > 8 {
            return Err(candle_core::Error::Msg(format!(
                "block_out_channels: {n} levels; expected 1 to 8"
            )));
        }
        for (field, types, want) in [
            ("down_block_types", &self.down_block_types, "DownEncoderBlock2D"),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(candle_core::Error::Msg(format!(
                    "{field}: {} blocks for {n} levels of block_out_channels",
                    types.len()
                )));
            }
            if let Some(t) = types.iter().find(|t| *t != want) {
                return Err(candle_core::Error::Msg(format!(
                    "{field}: `{t}` is not supported (only {want})"
                )));
            }
        }
        if self.act_fn != "silu" {
            return Err(candle_core::Error::Msg(format!(
                "act_fn: `{}` is not supported (only silu)",
                self.act_fn
            )));
        }
        let g = self.norm_num_groups;
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| g == 0 || c == 0 || !c.is_multiple_of(g))
        {
            return Err(candle_core::Error::Msg(format!(
                "norm_num_groups: {g} groups do not divide the {c} channels of block_out_channels"
            )));
        }
        if self.layers_per_block == 0 || self.layers_per_block > 16 {
            return Err(candle_core::Error::Msg(format!(
                "layers_per_block: {} (1 to 16)",
                self.layers_per_block
            )));
        }
        let f = self.factor();
        let [h, w] = self.sample_size.hw();
        if h == 0 || w == 0 || h % f != 0 || w % f != 0 {
            return Err(candle_core::Error::Msg(format!(
                "sample_size: {h}×{w} is not a positive multiple of the downsampling factor {f}"
            )));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(candle_core::Error::Msg(format!(
                "scaling_factor: {} (must be > 0)",
                self.scaling_factor
            )));
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            return Err(candle_core::Error::Msg("shift_factor: not a finite number".into()));
        }
        self.loss.check()
    }
}

#[derive(Clone, Debug)]
struct DownBlock {
    resnets: Vec<ResnetBlock>,
    downsampler: Option<Downsample>,
}

#[derive(Clone, Debug)]
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &KlConfig, vb: VarBuilder) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let b = vb.pp("down_blocks").pp(i);
            let mut resnets = Vec::with_capacity(cfg.layers_per_block);
            for j in 0..cfg.layers_per_block {
                resnets.push(resnet_block(
                    if j == 0 { cin } else { cout },
                    cout,
                    g,
                    b.pp("resnets").pp(j),
                )?);
            }
            let downsampler = if i + 1 < ch.len() {
                Some(Downsample::new(cout, b.pp("downsamplers").pp("0"))?)
            } else {
                None
            };
            down_blocks.push(DownBlock { resnets, downsampler });
            cin = cout;
        }
        let top = *ch.last().expect("checked: at least one level");
        Ok(Self {
            conv_in: same_conv(cfg.in_channels, ch[0], 3, vb.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock::new(top, g, cfg.mid_block_add_attention, vb.pp("mid_block"))?,
            conv_norm_out: norm(g, top, vb.pp("conv_norm_out"))?,
            conv_out: same_conv(top, 2 * cfg.latent_channels, 3, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Encoder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(xs)?;
        for b in &self.down_blocks {
            for r in &b.resnets {
                h = r.forward(&h)?;
            }
            if let Some(d) = &b.downsampler {
                h = d.forward(&h)?;
            }
        }
        h = self.mid_block.forward(&h)?;
        self.conv_out.forward(&ops::silu(&self.conv_norm_out.forward(&h)?)?)
    }
}

#[derive(Clone, Debug)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    upsampler: Option<Upsample>,
}

#[derive(Clone, Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &KlConfig, vb: VarBuilder) -> Result<Self> {
        let ch: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let mut up_blocks = Vec::with_capacity(ch.len());
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let b = vb.pp("up_blocks").pp(i);
            let mut resnets = Vec::with_capacity(cfg.layers_per_block + 1);
            for j in 0..=cfg.layers_per_block {
                resnets.push(resnet_block(
                    if j == 0 { cin } else { cout },
                    cout,
                    g,
                    b.pp("resnets").pp(j),
                )?);
            }
            let upsampler = if i + 1 < ch.len() {
                Some(Upsample::new(cout, b.pp("upsamplers").pp("0"))?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsampler });
            cin = cout;
        }
        let bottom = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: same_conv(cfg.latent_channels, ch[0], 3, vb.pp("conv_in"))?,
            mid_block: MidBlock::new(ch[0], g, cfg.mid_block_add_attention, vb.pp("mid_block"))?,
            up_blocks,
            conv_norm_out: norm(g, bottom, vb.pp("conv_norm_out"))?,
            conv_out: same_conv(bottom, cfg.out_channels, 3, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        h = self.mid_block.forward(&h)?;
        for b in &self.up_blocks {
            for r in &b.resnets {
                h = r.forward(&h)?;
            }
            if let Some(u) = &b.upsampler {
                h = u.forward(&h)?;
            }
        }
        self.conv_out.forward(&ops::silu(&self.conv_norm_out.forward(&h)?)?)
    }
}

/// diffusers' `AutoencoderKL`.
pub struct AutoencoderKl {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    latent: LatentSpace,
    loss: FlexLoss,
}

impl AutoencoderKl {
    /// `(μ, log σ²)` of images in [0, 1], each `(b, C, h/f, w/f)`, unscaled,
    /// in the parameters' dtype (the networks run in `xs`'s).
    pub fn posterior(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let xs = self.latent.upcast(xs)?;
        let mut h = self.encoder.forward(&xs.affine(2.0, -1.0)?)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h)?;
        }
        let h = h.to_dtype(self.latent.dtype)?;
        let c = self.latent.channels;
        Ok((h.narrow(1, 0, c)?, h.narrow(1, c, c)?.clamp(-30.0, 20.0)?))
    }

    /// The decoder's output for an unscaled latent, in diffusers' [−1, 1]
    /// space, unclamped, in the parameters' dtype.
    pub fn decode_unscaled(&self, z: &Tensor) -> Result<Tensor> {
        let mut z = self.latent.upcast(z)?;
        if let Some(q) = &self.post_quant_conv {
            z = q.forward(&z)?;
        }
        self.decoder.forward(&z)?.to_dtype(self.latent.dtype)
    }
}

impl Family for AutoencoderKl {
    type Config = KlConfig;
    const NAME: &'static str = "vae-kl";
    const ABOUT: &'static str =
        "diffusers' AutoencoderKL (the Stable Diffusion VAE) from its config.json, diffusers' keys; KLD + MSE/L1 [+ SSIM] (Rombach et al. 2022)";

    fn new(cfg: &KlConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        let c2 = 2 * cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            quant_conv: if cfg.use_quant_conv {
                Some(same_conv(c2, c2, 1, vb.pp("quant_conv"))?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(same_conv(
                    cfg.latent_channels,
                    cfg.latent_channels,
                    1,
                    vb.pp("post_quant_conv"),
                )?)
            } else {
                None
            },
            latent: LatentSpace::new(
                cfg.latent_channels,
                cfg.factor(),
                cfg.sample_size.hw(),
                (cfg.scaling_factor, cfg.shift_factor.unwrap_or(0.0)),
                cfg.force_upcast,
                vb.dtype(),
            ),
            loss: cfg.loss.clone(),
        })
    }

    fn image_shape(cfg: &KlConfig) -> [usize; 3] {
        let [h, w] = cfg.sample_size.hw();
        [cfg.in_channels, h, w]
    }
}

impl Autoencoder for AutoencoderKl {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        self.latent.scaled(&self.posterior(xs)?.0)
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_unscaled(&self.latent.unscaled(z)?)?
            .affine(0.5, 0.5)?
            .clamp(0.0, 1.0)
    }

    fn step(&self, batch: &Batch, ctx: &mut StepCtx) -> Result<StepOutput> {
        // The unscaled posterior: diffusers trains the VAE before any scaling.
        let (mu, logvar) = self.posterior(&ctx.to_compute(&batch.input)?)?;
        self.loss.sample_step((&mu, &logvar), 1.0, &batch.target, ctx, |z| {
            self.decode_unscaled(z)?.affine(0.5, 0.5)
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
