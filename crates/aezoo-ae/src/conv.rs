//! The convolutional autoencoder (Masci et al. 2011): per stage a 3×3 conv
//! (padding 1) + ReLU + 2×2 max-pool down to `(C, H/2ⁿ, W/2ⁿ)`; the decoder
//! goes back up with 2×2 stride-2 transposed convs, or with nearest ×2
//! upsampling + 3×3 conv, ReLU between stages, sigmoid at the end.
//! With `data.noise` in the entry config it is the denoising autoencoder
//! (Vincent et al. 2008). `pool: false` keeps full resolution (no spatial
//! bottleneck: a denoiser, not a compressor).

use aezoo_nn::layers::{conv2d, conv_transpose2d, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use aezoo_nn::{Act, Autoencoder, Batch, Family, StepCtx, StepOutput};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::common::ReconLoss;

/// How the decoder gets back to full resolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvDecoder {
    /// 2×2 transposed convolutions with stride 2.
    #[default]
    Transposed,
    /// Nearest-neighbour ×2 upsampling, then a 3×3 convolution.
    Upsample,
}

fn yes() -> bool {
    true
}

/// The `model` section of an `ae-conv` config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvAeConfig {
    /// `[channels, height, width]`; with pooling, height and width divisible by `2^stages`.
    pub image: [usize; 3],
    /// Output channels of each encoder stage, e.g. `[32, 64]`.
    pub channels: Vec<usize>,
    #[serde(default)]
    pub decoder: ConvDecoder,
    /// 2×2 max-pool after each encoder stage.
    #[serde(default = "yes")]
    pub pool: bool,
    /// A last 3×3 conv at full resolution (the Keras-tutorial layout): the
    /// decoder stages keep the encoder's widths and this conv maps to the
    /// image channels. Without it, the last stage does.
    #[serde(default)]
    pub head: bool,
    #[serde(default)]
    pub loss: ReconLoss,
}

enum Up {
    Transposed(ConvTranspose2d),
    Upsample(Conv2d),
    Conv(Conv2d),
}

/// `encoder.conv{i}`; `decoder.deconv{i}` (transposed) or `decoder.conv{i}`;
/// with `head`, `decoder.conv{n+1}` last.
pub struct ConvAe {
    convs: Vec<Conv2d>,
    ups: Vec<Up>,
    pool: bool,
    loss: ReconLoss,
    code: Vec<usize>,
}

impl Family for ConvAe {
    type Config = ConvAeConfig;
    const NAME: &'static str = "ae-conv";
    const ABOUT: &'static str =
        "conv + max-pool encoder, transposed-conv or upsampling decoder (Masci et al. 2011; Vincent et al. 2008 with noise)";

    fn new(cfg: &ConvAeConfig, vb: VarBuilder) -> Result<Self> {
        let [c, h, w] = cfg.image;
        let n = cfg.channels.len();
        if n == 0 || cfg.channels.contains(&0) || c == 0 {
            candle_core::bail!(
                "ae-conv: `channels` must be non-empty and non-zero, image {:?}",
                cfg.image
            );
        }
        let f = if cfg.pool { 1usize << n } else { 1 };
        if h % f != 0 || w % f != 0 {
            candle_core::bail!("ae-conv: image {h}x{w} must be divisible by 2^{n} = {f} for {n} pooled stages");
        }
        let same3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let (venc, vdec) = (vb.pp("encoder"), vb.pp("decoder"));
        let mut convs = Vec::with_capacity(n);
        let mut cin = c;
        for (i, &cout) in cfg.channels.iter().enumerate() {
            convs.push(conv2d(cin, cout, 3, same3, venc.pp(format!("conv{}", i + 1)))?);
            cin = cout;
        }
        let outs: Vec<usize> = if cfg.head {
            cfg.channels.iter().rev().copied().collect()
        } else {
            cfg.channels.iter().rev().skip(1).copied().chain([c]).collect()
        };
        let mut ups = Vec::with_capacity(n);
        let mut cin = *cfg.channels.last().expect("non-empty");
        for (i, &cout) in outs.iter().enumerate() {
            let up = match (cfg.pool, cfg.decoder) {
                (true, ConvDecoder::Transposed) => {
                    let t = ConvTranspose2dConfig {
                        stride: 2,
                        ..Default::default()
                    };
                    Up::Transposed(conv_transpose2d(cin, cout, 2, t, vdec.pp(format!("deconv{}", i + 1)))?)
                }
                (true, ConvDecoder::Upsample) => {
                    Up::Upsample(conv2d(cin, cout, 3, same3, vdec.pp(format!("conv{}", i + 1)))?)
                }
                (false, _) => Up::Conv(conv2d(cin, cout, 3, same3, vdec.pp(format!("conv{}", i + 1)))?),
            };
            ups.push(up);
            cin = cout;
        }
        if cfg.head {
            ups.push(Up::Conv(conv2d(cin, c, 3, same3, vdec.pp(format!("conv{}", n + 1)))?));
        }
        Ok(Self {
            convs,
            ups,
            pool: cfg.pool,
            loss: cfg.loss,
            code: vec![*cfg.channels.last().expect("non-empty"), h / f, w / f],
        })
    }

    fn image_shape(cfg: &ConvAeConfig) -> [usize; 3] {
        cfg.image
    }
}

impl ConvAe {
    /// The decoder; its last layer ends in `out` (sigmoid for images).
    fn decode_with(&self, z: &Tensor, out: Act) -> Result<Tensor> {
        let mut x = z.clone();
        let last = self.ups.len() - 1;
        for (i, up) in self.ups.iter().enumerate() {
            let act = if i < last { Act::Relu } else { out };
            x = match up {
                Up::Transposed(t) => t.forward_act(&x, act)?,
                Up::Upsample(c) => c.forward_up_act(&x, 2, act)?,
                Up::Conv(c) => c.forward_act(&x, act)?,
            };
        }
        Ok(x)
    }
}

impl Autoencoder for ConvAe {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, c, h, w) -> (b, C, h/2ⁿ, w/2ⁿ)
        let mut h = xs.clone();
        for conv in &self.convs {
            h = if self.pool {
                conv.forward_act_pool2(&h, Act::Relu)?
            } else {
                conv.forward_act(&h, Act::Relu)?
            };
        }
        Ok(h)
    }

    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_with(z, Act::Sigmoid)
    }

    fn step(&self, batch: &Batch, ctx: &mut StepCtx) -> Result<StepOutput> {
        // Mixed precision: the networks in `ctx.compute`, the loss in the target's dtype.
        let xs = ctx.to_compute(&batch.input)?;
        let recon = self.decode(&self.encode(&xs)?)?.to_dtype(batch.target.dtype())?;
        let (name, loss) = self.loss.compute(&recon, &batch.target)?;
        Ok(StepOutput {
            loss: loss.clone(),
            terms: vec![(name, loss)],
            recon,
        })
    }

    fn latent_shape(&self) -> Vec<usize> {
        self.code.clone()
    }

    fn mixed_precision(&self) -> bool {
        true
    }
}
