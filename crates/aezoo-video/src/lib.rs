//! aezoo-video: the 3-D convolutional video autoencoder (family `video-ae`)
//! for Moving MNIST clips, with TensorFlow-SAME 3-D convolutions, residual
//! stacks and a learned scalar codebook (the scalar, hard-assignment form of
//! the VQ-VAE bottleneck, van den Oord et al. 2017).
//!
//! ```text
//! encoder  (b, 1, T, H, W) → same_pad · Conv3d k, s(1,2,2) → ReLU → (c1, T, H/2, W/2)
//!                          → same_pad · Conv3d k, s(1,2,2) → ReLU → (c2, T, H/4, W/4)
//!                          → residual stack (a | b | c)
//!                          → same_pad · Conv3d k, s(1,2,2)        → z: (L, T, H/8, W/8)
//! codebook z → nearest of K learned levels (straight-through)     → q
//! decoder  q → ConvT3d 3, s(1,2,2) → ReLU → residual stack → ConvT3d k, s(1,2,2) → ReLU
//!            → ConvT3d k, s(1,2,2) → sigmoid                      → (b, 1, T, H, W)
//! ```
//! The residual stacks are the seed model's: `resblock_a` = x + conv(ReLU(conv x))
//! (3×3×3 convs at the stack's width), `resblock_b` = x + a(a(a(x))),
//! `resblock_c` = x + b⁵(a(x)). The seed's BatchNorm3d layers are left out
//! (the stacks are as the issue specifies them). Clips cross the crate
//! boundary as `(b, T, H, W)` images with one channel per frame and are
//! reshaped inside.
//!
//! Loss: `MSE(x̂, x) + mean((sg(z) − q)²) + β · mean((z − sg(q))²)` — the
//! reconstruction, the codebook term that pulls levels to the encoder's
//! values, and the commitment term; each is logged. Rate: every latent value
//! is one of K levels, so a clip costs `L·T·(H/8)·(W/8)·log₂K` bits.

#![forbid(unsafe_code)]

use aezoo_metrics::{mse, Reduction};
use aezoo_nn::conv3d::Conv3dOpts;
use aezoo_nn::layers::{conv3d, conv_transpose3d, Conv3d, ConvTranspose3d};
use aezoo_nn::same_pad::same_pad;
use aezoo_nn::{ops, Autoencoder, Batch, Codebook, Family, StepCtx, StepOutput};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// Which of the seed's residual stacks runs at the middle width.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResStack {
    /// No residual stack.
    #[default]
    None,
    /// One `resblock_a`.
    A,
    /// `resblock_b`: three `resblock_a` with a skip.
    B,
    /// `resblock_c`: five `resblock_b` and one `resblock_a`, with a skip.
    C,
}

fn default_kernel() -> usize {
    5
}
fn default_commitment() -> f64 {
    0.25
}
fn default_range() -> [f64; 2] {
    [-1.0, 1.0]
}

/// The learned scalar codebook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodebookConfig {
    /// K, the number of levels (2 to 128).
    pub levels: usize,
    /// β, the weight of the commitment term.
    #[serde(default = "default_commitment")]
    pub commitment: f64,
    /// The levels start evenly spaced over this interval.
    #[serde(default = "default_range")]
    pub init_range: [f64; 2],
}

impl CodebookConfig {
    /// Checks the ranges: 2 to 128 levels, an increasing finite
    /// `init_range`, a commitment of at least 0.
    fn check(&self) -> Result<()> {
        if !(2..=128).contains(&self.levels) {
            candle_core::bail!(
                "video-ae: model.codebook.levels {} must be between 2 and 128",
                self.levels
            );
        }
        let [lo, hi] = self.init_range;
        if !(lo < hi) || !lo.is_finite() || !hi.is_finite() || !(self.commitment >= 0.0) {
            candle_core::bail!(
                "video-ae: model.codebook.init_range {:?} must be increasing and model.codebook.commitment {} >= 0",
                self.init_range,
                self.commitment
            );
        }
        Ok(())
    }
}

impl Codebook for CodebookConfig {
    fn levels(&self) -> usize {
        self.levels
    }

    fn set_levels(&mut self, levels: usize, init_range: Option<(f64, f64)>) -> Result<()> {
        let mut next = self.clone();
        next.levels = levels;
        if let Some((lo, hi)) = init_range {
            next.init_range = [lo, hi];
        }
        next.check()?;
        *self = next;
        Ok(())
    }
}

/// The `model` section of a `video-ae` config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoAeConfig {
    /// `[frames, height, width]` of a one-channel clip; height and width divisible by 8.
    pub clip: [usize; 3],
    /// Widths of the first two encoder convs (the residual stacks run at the second).
    pub channels: [usize; 2],
    /// L, the latent channels.
    pub latent_channels: usize,
    /// Kernel size (odd) of the strided convs, in all three axes.
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// The residual stack in the encoder and, mirrored, in the decoder.
    #[serde(default)]
    pub residual: ResStack,
    /// The quantiser; without it the latent stays continuous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codebook: Option<CodebookConfig>,
}

/// `resblock_a`: `x + conv2(ReLU(conv1(x)))`, 3×3×3 convs at one width.
struct ResA {
    conv1: Conv3d,
    conv2: Conv3d,
}

fn res_a(c: usize, vb: VarBuilder) -> Result<ResA> {
    let same = Conv3dOpts {
        padding: [1; 3],
        ..Default::default()
    };
    Ok(ResA {
        conv1: conv3d(c, c, [3; 3], same, vb.pp("conv1"))?,
        conv2: conv3d(c, c, [3; 3], same, vb.pp("conv2"))?,
    })
}

impl Module for ResA {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs + self.conv2.forward(&ops::relu(&self.conv1.forward(xs)?)?)?
    }
}

/// A residual stack: `x + blocks(x)` (`b`, `c`), or one block (`a`), or nothing.
struct Stack {
    blocks: Vec<Box<dyn Module + Send + Sync>>,
    skip: bool,
}

impl Module for Stack {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = xs.clone();
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        if self.skip {
            h = (h + xs)?;
        }
        Ok(h)
    }
}

fn stack_b(c: usize, vb: VarBuilder) -> Result<Stack> {
    let blocks = (0..3)
        .map(|i| res_a(c, vb.pp(format!("blocks.{i}"))).map(|b| Box::new(b) as Box<dyn Module + Send + Sync>))
        .collect::<Result<_>>()?;
    Ok(Stack { blocks, skip: true })
}

fn stack(kind: ResStack, c: usize, vb: VarBuilder) -> Result<Stack> {
    let boxed = |m: Box<dyn Module + Send + Sync>| m;
    Ok(match kind {
        ResStack::None => Stack {
            blocks: vec![],
            skip: false,
        },
        ResStack::A => Stack {
            blocks: vec![boxed(Box::new(res_a(c, vb.pp("blocks.0"))?))],
            skip: false,
        },
        ResStack::B => stack_b(c, vb)?,
        ResStack::C => {
            let mut blocks: Vec<Box<dyn Module + Send + Sync>> = Vec::with_capacity(6);
            for i in 0..5 {
                blocks.push(Box::new(stack_b(c, vb.pp(format!("blocks.{i}")))?));
            }
            blocks.push(Box::new(res_a(c, vb.pp("blocks.5"))?));
            Stack { blocks, skip: true }
        }
    })
}

/// `encoder.{conv1, conv2, res, conv3}`, `codebook.levels`,
/// `decoder.{deconv1, res, deconv2, deconv3}`.
pub struct VideoAe {
    conv1: Conv3d,
    conv2: Conv3d,
    enc_res: Stack,
    conv3: Conv3d,
    levels: Option<Tensor>,
    commitment: f64,
    deconv1: ConvTranspose3d,
    dec_res: Stack,
    deconv2: ConvTranspose3d,
    deconv3: ConvTranspose3d,
    k: usize,
    clip: [usize; 3],
    latent: Vec<usize>,
}

impl Family for VideoAe {
    type Config = VideoAeConfig;
    const NAME: &'static str = "video-ae";
    const ABOUT: &'static str =
        "3-D conv video autoencoder, TF-SAME padding, residual stacks, learned scalar codebook (Moving MNIST; van den Oord et al. 2017)";

    fn new(cfg: &VideoAeConfig, vb: VarBuilder) -> Result<Self> {
        let [t, h, w] = cfg.clip;
        let [c1, c2] = cfg.channels;
        let (l, k) = (cfg.latent_channels, cfg.kernel);
        if t == 0 || h == 0 || w == 0 || h % 8 != 0 || w % 8 != 0 {
            candle_core::bail!(
                "video-ae: model.clip {:?} needs frames > 0 and height, width divisible by 8",
                cfg.clip
            );
        }
        if c1 == 0 || c2 == 0 || l == 0 {
            candle_core::bail!(
                "video-ae: model.channels {:?} and model.latent_channels {l} must be > 0",
                cfg.channels
            );
        }
        if k == 0 || k % 2 == 0 {
            candle_core::bail!("video-ae: model.kernel {k} must be odd (the decoder mirrors it with padding (k-1)/2)");
        }
        if (k - 1) / 2 >= t.min(h).min(w) {
            candle_core::bail!(
                "video-ae: model.kernel {k} is too large for the clip {:?}: its outer taps would read only padding",
                cfg.clip
            );
        }
        if let Some(cb) = &cfg.codebook {
            cb.check()?;
        }
        let down = Conv3dOpts {
            stride: [1, 2, 2],
            ..Default::default()
        };
        let up = |k: usize| Conv3dOpts {
            stride: [1, 2, 2],
            padding: [(k - 1) / 2; 3],
            output_padding: [0, 1, 1],
        };
        let (ve, vd) = (vb.pp("encoder"), vb.pp("decoder"));
        let levels = match &cfg.codebook {
            Some(cb) => {
                let [lo, hi] = cb.init_range;
                let n = cb.levels;
                let init: Vec<f64> = (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect();
                let v = vb.pp("codebook").get_with_hints(n, "levels", Init::Const(0.0))?;
                // A fresh store hands out zeros: fill the levels evenly. A
                // loaded one keeps its values (all-zero levels are no codebook).
                if v.abs()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? == 0.0 {
                    set_levels(&v, &init)?;
                }
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            conv1: conv3d(1, c1, [k; 3], down, ve.pp("conv1"))?,
            conv2: conv3d(c1, c2, [k; 3], down, ve.pp("conv2"))?,
            enc_res: stack(cfg.residual, c2, ve.pp("res"))?,
            conv3: conv3d(c2, l, [k; 3], down, ve.pp("conv3"))?,
            levels,
            commitment: cfg.codebook.as_ref().map_or(0.0, |c| c.commitment),
            deconv1: conv_transpose3d(l, c2, [3; 3], up(3), vd.pp("deconv1"))?,
            dec_res: stack(cfg.residual, c2, vd.pp("res"))?,
            deconv2: conv_transpose3d(c2, c1, [k; 3], up(k), vd.pp("deconv2"))?,
            deconv3: conv_transpose3d(c1, 1, [k; 3], up(k), vd.pp("deconv3"))?,
            k,
            clip: cfg.clip,
            latent: vec![l, t, h / 8, w / 8],
        })
    }

    fn image_shape(cfg: &VideoAeConfig) -> [usize; 3] {
        cfg.clip
    }

    fn codebook(cfg: &mut VideoAeConfig) -> Option<&mut dyn Codebook> {
        cfg.codebook.as_mut().map(|c| c as &mut dyn Codebook)
    }
}

/// Writes `values` into a parameter tensor in place: the store hands out the
/// variable's own storage, so the trainer's `Var` sees them.
fn set_levels(levels: &Tensor, values: &[f64]) -> Result<()> {
    let v = Tensor::new(values, levels.device())?.to_dtype(levels.dtype())?;
    levels.slice_set(&v, 0, 0)
}

impl VideoAe {
    /// The continuous encoder output `z`: `(b, L, T, H/8, W/8)`.
    pub fn encode_continuous(&self, xs: &Tensor) -> Result<Tensor> {
        let [t, h, w] = self.clip;
        let b = xs.dim(0)?;
        // xs: (b, T, H, W) -> (b, 1, T, H, W)
        let xs = xs.reshape((b, 1, t, h, w))?;
        let k = [self.k; 3];
        let s = [1, 2, 2];
        let x = ops::relu(&self.conv1.forward(&same_pad(&xs, &k, &s)?)?)?;
        let x = ops::relu(&self.conv2.forward(&same_pad(&x, &k, &s)?)?)?;
        let x = self.enc_res.forward(&x)?;
        self.conv3.forward(&same_pad(&x, &k, &s)?)
    }

    /// `(q, idx)`: each value of `z` replaced by its nearest level (identity
    /// and no indices without a codebook).
    pub fn quantize(&self, z: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        match &self.levels {
            Some(levels) => {
                let (q, idx) = ops::scalar_quantize(z, levels)?;
                Ok((q, Some(idx)))
            }
            None => Ok((z.clone(), None)),
        }
    }

    /// The codebook levels, if the model has one.
    pub fn levels(&self) -> Option<&Tensor> {
        self.levels.as_ref()
    }
}

impl Autoencoder for VideoAe {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, T, H, W) -> the quantised latent (b, L, T, H/8, W/8)
        Ok(self.quantize(&self.encode_continuous(xs)?)?.0)
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        // z: (b, L, T, H/8, W/8) -> (b, T, H, W)
        let [t, h, w] = self.clip;
        let b = z.dim(0)?;
        let x = ops::relu(&self.deconv1.forward(z)?)?;
        let x = self.dec_res.forward(&x)?;
        let x = ops::relu(&self.deconv2.forward(&x)?)?;
        ops::sigmoid(&self.deconv3.forward(&x)?)?.reshape((b, t, h, w))
    }

    fn step(&self, batch: &Batch, _ctx: &mut StepCtx) -> Result<StepOutput> {
        let z = self.encode_continuous(&batch.input)?;
        let (q, idx) = self.quantize(&z)?;
        let recon = self.decode(&q)?;
        let rec = mse(&recon, &batch.target, Reduction::Mean)?;
        let mut terms = vec![("mse", rec.clone())];
        let mut loss = rec;
        if let (Some(levels), Some(idx)) = (&self.levels, idx) {
            let chosen = levels.index_select(&idx.flatten_all()?, 0)?.reshape(z.shape())?;
            let codebook = mse(&chosen, &z.detach(), Reduction::Mean)?;
            let commit = mse(&z, &chosen.detach(), Reduction::Mean)?;
            loss = ((loss + &codebook)? + (&commit * self.commitment)?)?;
            terms.push(("codebook", codebook));
            terms.push(("commit", commit));
        }
        Ok(StepOutput { loss, terms, recon })
    }

    fn latent_shape(&self) -> Vec<usize> {
        self.latent.clone()
    }

    fn clip_frames(&self) -> Option<usize> {
        Some(self.clip[0])
    }

    fn codebook_levels(&self) -> Option<Result<Tensor>> {
        self.levels.as_ref().map(|l| l.to_dtype(DType::F32))
    }
}
