//! The blocks of diffusers' `AutoencoderKL` (`ResnetBlock2D`, the mid
//! block's single-head `Attention`, `Downsample2D`, `Upsample2D`) and of
//! `AutoencoderTiny` (`AutoencoderTinyBlock`), built on aezoo-nn's layers,
//! with diffusers' parameter names.

use aezoo_nn::layers::{
    conv2d, conv2d_no_bias, group_norm, linear, Conv2d, Conv2dConfig, GroupNorm, GroupNormConfig, Linear, LinearConfig,
};
use aezoo_nn::spec::{res_block_named, ResBlock};
use aezoo_nn::{ops, Act};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// diffusers' `resnet_eps` in its VAEs.
pub const EPS: f64 = 1e-6;

/// A `k × k` conv with "same" padding (stride 1).
pub fn same_conv(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    conv2d(cin, cout, k, cfg, vb)
}

/// `GroupNorm(groups, c, eps = 1e-6)`, as every norm of the KL VAE.
pub fn norm(groups: usize, c: usize, vb: VarBuilder) -> Result<GroupNorm> {
    group_norm(groups, c, GroupNormConfig { eps: EPS }, vb)
}

/// `ResnetBlock2D` without a time embedding: `norm1 → SiLU → conv1 → norm2 →
/// SiLU → conv2`, plus the input (through `conv_shortcut`, 1 × 1, when the
/// widths differ) — the `VAERB` layer's block under diffusers' names.
pub type ResnetBlock = ResBlock;

/// A [`ResnetBlock`] `cin → cout` with `groups` groups in its norms.
pub fn resnet_block(cin: usize, cout: usize, groups: usize, vb: VarBuilder) -> Result<ResnetBlock> {
    let names = ["norm1", "conv1", "norm2", "conv2", "conv_shortcut"];
    res_block_named(cin, cout, groups, GroupNormConfig { eps: EPS }, names, vb)
}

/// The mid block's `Attention`: GroupNorm, then one head of scaled
/// dot-product attention between the `h·w` positions (`to_q`, `to_k`,
/// `to_v`, `to_out.0`, all with biases), plus the input. The softmax runs in
/// f32 (diffusers' `upcast_softmax`).
#[derive(Clone, Debug)]
pub struct Attention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl Attention {
    pub fn new(c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let lin = |name: &str| linear(c, c, LinearConfig::default(), vb.pp(name));
        Ok(Self {
            group_norm: norm(groups, c, vb.pp("group_norm"))?,
            to_q: lin("to_q")?,
            to_k: lin("to_k")?,
            to_v: lin("to_v")?,
            to_out: linear(c, c, LinearConfig::default(), vb.pp("to_out").pp("0"))?,
        })
    }
}

impl Module for Attention {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        // (b, c, h, w) -> (b, h·w, c)
        let seq = self
            .group_norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let (q, k, v) = (
            self.to_q.forward(&seq)?,
            self.to_k.forward(&seq)?,
            self.to_v.forward(&seq)?,
        );
        // The softmax over the keys in f32 (diffusers' `upcast_softmax`).
        let ys = self.to_out.forward(&ops::attention(&q, &k, &v, DType::F32)?)?;
        // (b, h·w, c) -> (b, c, h, w)
        ys.transpose(1, 2)?.reshape((b, c, h, w))? + xs
    }
}

/// `Downsample2D` of the KL encoder: zero padding on the right and bottom
/// by one, then a 3 × 3 conv of stride 2 without padding.
#[derive(Clone, Debug)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv: conv2d(c, c, 3, cfg, vb.pp("conv"))?,
        })
    }
}

impl Module for Downsample {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, c, h, w) -> (b, c, ⌈h/2⌉, ⌈w/2⌉)
        let padded = xs.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
        self.conv.forward(&padded)
    }
}

/// `Upsample2D`: nearest-neighbour × 2, then a 3 × 3 conv (one fused node on
/// the CPU: aezoo-nn's sub-pixel form).
#[derive(Clone, Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: same_conv(c, c, 3, vb.pp("conv"))?,
        })
    }
}

impl Module for Upsample {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.conv.forward_up_act(xs, 2, Act::None)
    }
}

/// The mid block: resnet, [attention], resnet (`resnets.0`,
/// `attentions.0`, `resnets.1`).
#[derive(Clone, Debug)]
pub struct MidBlock {
    resnets: [ResnetBlock; 2],
    attention: Option<Attention>,
}

impl MidBlock {
    pub fn new(c: usize, groups: usize, attention: bool, vb: VarBuilder) -> Result<Self> {
        let r = vb.pp("resnets");
        Ok(Self {
            resnets: [
                resnet_block(c, c, groups, r.pp("0"))?,
                resnet_block(c, c, groups, r.pp("1"))?,
            ],
            attention: if attention {
                Some(Attention::new(c, groups, vb.pp("attentions").pp("0"))?)
            } else {
                None
            },
        })
    }
}

impl Module for MidBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(xs)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnets[1].forward(&h)
    }
}

/// `AutoencoderTinyBlock`: `ReLU(conv(x) + skip(x))`, `conv` being three
/// 3 × 3 convs with ReLUs between (`conv.0`, `conv.2`, `conv.4`), `skip` a
/// 1 × 1 conv without bias when the widths differ.
#[derive(Clone, Debug)]
pub struct TinyBlock {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
}

impl TinyBlock {
    pub fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let c = vb.pp("conv");
        Ok(Self {
            convs: [
                same_conv(cin, cout, 3, c.pp("0"))?,
                same_conv(cout, cout, 3, c.pp("2"))?,
                same_conv(cout, cout, 3, c.pp("4"))?,
            ],
            skip: if cin == cout {
                None
            } else {
                Some(conv2d_no_bias(cin, cout, 1, Conv2dConfig::default(), vb.pp("skip"))?)
            },
        })
    }
}

impl Module for TinyBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.convs[0].forward_act(xs, Act::Relu)?;
        let h = self.convs[1].forward_act(&h, Act::Relu)?;
        let h = self.convs[2].forward(&h)?;
        let skip = match &self.skip {
            Some(s) => s.forward(xs)?,
            None => xs.clone(),
        };
        ops::relu(&(h + skip)?)
    }
}
