//! The layer grammar: an architecture as a JSON list of layer strings, in the
//! notation of FlexVAE (the "Flexible Variational Autoencoder" repository,
//! after the Stable Diffusion VAE of Rombach et al. 2022):
//! `"C2d_3_128_3_1_1"` is a 3→128 convolution, kernel 3, stride 1, padding 1;
//! `"2*VAERB_256_256"` is two residual blocks.
//!
//! | token | layer | arguments |
//! |---|---|---|
//! | `C2d` | Conv2d | `in_out_kernel[_stride[_padding]]` |
//! | `CT2d` | ConvTranspose2d | `in_out_kernel[_stride[_padding[_outpadding]]]` |
//! | `VAERB` | residual block: GN → SiLU → Conv3×3 → GN → SiLU → Conv3×3, + skip (1×1 conv when in ≠ out) | `in_out` |
//! | `VAEA` | GroupNorm + single-head self-attention over H×W, + residual | `channels` |
//! | `GN` | GroupNorm | `groups_channels` |
//! | `GDN`, `IGDN` | generalized divisive normalisation and its inverse (Ballé et al. 2016) | `channels` |
//! | `SiLU`, `ReLU`, `Sigm` | activations | — |
//! | `MaxP` | max-pool, stride = kernel | `kernel` |
//! | `UpS` | nearest upsampling | `factor` |
//! | `Lin` | Linear | `in_out` |
//! | `Flat` | (b, c, h, w) → (b, c·h·w) | — |
//! | `Unflat` | (b, c·h·w) → (b, c, h, w) | `c_h_w` |
//!
//! A list is parsed ([`parse_list`]), checked against an input shape
//! ([`LayerList::infer_shapes`]: channel and size mismatches between consecutive layers
//! are errors naming the position), then built ([`Sequential::new`]) with
//! PyTorch's `nn.Sequential` parameter names (`3.conv_1.weight`), so FlexVAE
//! checkpoints convert by name.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::layers::{
    conv2d, conv_transpose2d, gdn, group_norm, linear, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig,
    Gdn, GroupNorm, GroupNormConfig, Linear, LinearConfig,
};
use crate::ops;
use crate::Act;

/// Groups of the GroupNorms inside `VAERB` and `VAEA` (as in the SD VAE).
pub const BLOCK_GROUPS: usize = 32;

/// One parsed layer string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSpec {
    Conv2d {
        cin: usize,
        cout: usize,
        k: usize,
        s: usize,
        p: usize,
    },
    ConvT2d {
        cin: usize,
        cout: usize,
        k: usize,
        s: usize,
        p: usize,
        op: usize,
    },
    ResBlock {
        cin: usize,
        cout: usize,
    },
    Attention {
        c: usize,
    },
    GroupNorm {
        groups: usize,
        c: usize,
    },
    Gdn {
        c: usize,
        inverse: bool,
    },
    SiLU,
    ReLU,
    Sigmoid,
    MaxPool {
        k: usize,
    },
    Upsample {
        f: usize,
    },
    Linear {
        din: usize,
        dout: usize,
    },
    Flatten,
    Unflatten {
        c: usize,
        h: usize,
        w: usize,
    },
}

/// A grammar error: the list, the position, the string and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub list: String,
    pub index: usize,
    pub item: String,
    pub msg: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}] `{}`: {}", self.list, self.index, self.item, self.msg)
    }
}

impl std::error::Error for SpecError {}

impl From<SpecError> for candle_core::Error {
    fn from(e: SpecError) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}

/// Every token with the arguments it takes (for error messages).
pub const GRAMMAR: &[(&str, &str)] = &[
    ("C2d", "C2d_in_out_kernel[_stride[_padding]]"),
    ("CT2d", "CT2d_in_out_kernel[_stride[_padding[_outpadding]]]"),
    ("VAERB", "VAERB_in_out"),
    ("VAEA", "VAEA_channels"),
    ("GN", "GN_groups_channels"),
    ("GDN", "GDN_channels"),
    ("IGDN", "IGDN_channels"),
    ("SiLU", "SiLU"),
    ("ReLU", "ReLU"),
    ("Sigm", "Sigm"),
    ("MaxP", "MaxP_kernel"),
    ("UpS", "UpS_factor"),
    ("Lin", "Lin_in_out"),
    ("Flat", "Flat"),
    ("Unflat", "Unflat_channels_height_width"),
];

/// The most a `N*` prefix may repeat a layer.
pub const MAX_REPEAT: usize = 1000;

fn usage(token: &str) -> &'static str {
    GRAMMAR.iter().find(|(t, _)| *t == token).map(|(_, u)| *u).unwrap_or("")
}

/// Parses one layer string (without a repeat prefix).
fn parse_one(s: &str) -> std::result::Result<LayerSpec, String> {
    let mut parts = s.split('_');
    let token = parts.next().unwrap_or("");
    let args: Vec<&str> = parts.collect();
    let Some((_, form)) = GRAMMAR.iter().find(|(t, _)| *t == token) else {
        let known: Vec<&str> = GRAMMAR.iter().map(|(t, _)| *t).collect();
        return Err(format!("unknown layer `{token}`; expected one of {}", known.join(", ")));
    };
    let mut nums = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        match a.parse::<usize>() {
            Ok(v) if v as u64 > crate::limits::MAX_CONFIG_SIZE => {
                return Err(format!(
                    "argument {} `{a}` is above the limit of {} (aezoo_nn::limits)",
                    i + 1,
                    crate::limits::MAX_CONFIG_SIZE
                ))
            }
            Ok(v) => nums.push(v),
            Err(_) => {
                return Err(format!(
                    "argument {} `{a}` is not a non-negative integer (expected {form})",
                    i + 1
                ))
            }
        }
    }
    let arity = |lo: usize, hi: usize| -> std::result::Result<(), String> {
        if nums.len() < lo || nums.len() > hi {
            let want = if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo} to {hi}")
            };
            return Err(format!("takes {want} arguments, got {} (expected {form})", nums.len()));
        }
        Ok(())
    };
    let positive = |names: &[&str]| -> std::result::Result<(), String> {
        for (v, n) in nums.iter().zip(names) {
            if *v == 0 && !n.is_empty() {
                return Err(format!("{n} must be >= 1 (expected {form})"));
            }
        }
        Ok(())
    };
    let spec = match token {
        "C2d" => {
            arity(3, 5)?;
            positive(&["in", "out", "kernel", "stride", ""])?;
            LayerSpec::Conv2d {
                cin: nums[0],
                cout: nums[1],
                k: nums[2],
                s: nums.get(3).copied().unwrap_or(1),
                p: nums.get(4).copied().unwrap_or(0),
            }
        }
        "CT2d" => {
            arity(3, 6)?;
            positive(&["in", "out", "kernel", "stride", "", ""])?;
            let (s, op) = (nums.get(3).copied().unwrap_or(1), nums.get(5).copied().unwrap_or(0));
            if op >= s.max(1) {
                return Err(format!(
                    "output padding {op} must be smaller than the stride {s} (expected {form})"
                ));
            }
            LayerSpec::ConvT2d {
                cin: nums[0],
                cout: nums[1],
                k: nums[2],
                s,
                p: nums.get(4).copied().unwrap_or(0),
                op,
            }
        }
        "VAERB" => {
            arity(2, 2)?;
            positive(&["in", "out"])?;
            for c in [nums[0], nums[1]] {
                if c % BLOCK_GROUPS != 0 {
                    return Err(format!(
                        "{c} channels: its GroupNorm({BLOCK_GROUPS}) needs a multiple of {BLOCK_GROUPS}"
                    ));
                }
            }
            LayerSpec::ResBlock {
                cin: nums[0],
                cout: nums[1],
            }
        }
        "VAEA" => {
            arity(1, 1)?;
            positive(&["channels"])?;
            if nums[0] % BLOCK_GROUPS != 0 {
                return Err(format!(
                    "{} channels: its GroupNorm({BLOCK_GROUPS}) needs a multiple of {BLOCK_GROUPS}",
                    nums[0]
                ));
            }
            LayerSpec::Attention { c: nums[0] }
        }
        "GN" => {
            arity(2, 2)?;
            positive(&["groups", "channels"])?;
            if nums[1] % nums[0] != 0 {
                return Err(format!("{} channels cannot be split into {} groups", nums[1], nums[0]));
            }
            LayerSpec::GroupNorm {
                groups: nums[0],
                c: nums[1],
            }
        }
        "GDN" | "IGDN" => {
            arity(1, 1)?;
            positive(&["channels"])?;
            LayerSpec::Gdn {
                c: nums[0],
                inverse: token == "IGDN",
            }
        }
        "SiLU" | "ReLU" | "Sigm" | "Flat" => {
            arity(0, 0)?;
            match token {
                "SiLU" => LayerSpec::SiLU,
                "ReLU" => LayerSpec::ReLU,
                "Sigm" => LayerSpec::Sigmoid,
                _ => LayerSpec::Flatten,
            }
        }
        "MaxP" => {
            arity(1, 1)?;
            positive(&["kernel"])?;
            LayerSpec::MaxPool { k: nums[0] }
        }
        "UpS" => {
            arity(1, 1)?;
            positive(&["factor"])?;
            LayerSpec::Upsample { f: nums[0] }
        }
        "Lin" => {
            arity(2, 2)?;
            positive(&["in", "out"])?;
            LayerSpec::Linear {
                din: nums[0],
                dout: nums[1],
            }
        }
        "Unflat" => {
            arity(3, 3)?;
            positive(&["channels", "height", "width"])?;
            LayerSpec::Unflatten {
                c: nums[0],
                h: nums[1],
                w: nums[2],
            }
        }
        _ => unreachable!("every GRAMMAR token is handled: {}", usage(token)),
    };
    Ok(spec)
}

/// A parsed list: the strings as written and the expanded layers, each
/// remembering which string it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerList {
    pub name: String,
    pub items: Vec<String>,
    pub specs: Vec<LayerSpec>,
    origin: Vec<usize>,
}

/// Parses a list, expanding `N*LAYER`. Errors name the list, the position
/// (in the list as written) and the string.
pub fn parse_list(list: &str, items: &[String]) -> std::result::Result<LayerList, SpecError> {
    let mut specs = Vec::new();
    let mut origin = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let err = |msg: String| SpecError {
            list: list.into(),
            index,
            item: item.clone(),
            msg,
        };
        let (n, layer) = match item.split_once('*') {
            Some((n, layer)) => {
                let n: usize = n.trim().parse().map_err(|_| {
                    err(format!(
                        "repeat count `{n}` is not a positive integer (expected N*LAYER)"
                    ))
                })?;
                if n == 0 || n > MAX_REPEAT {
                    return Err(err(format!("repeat count {n} must be 1 to {MAX_REPEAT}")));
                }
                (n, layer.trim())
            }
            None => (1, item.trim()),
        };
        if layer.is_empty() {
            return Err(err("empty layer string".into()));
        }
        let spec = parse_one(layer).map_err(err)?;
        specs.extend(std::iter::repeat_n(spec, n));
        origin.extend(std::iter::repeat_n(index, n));
    }
    if specs.is_empty() {
        return Err(SpecError {
            list: list.into(),
            index: 0,
            item: String::new(),
            msg: "the list is empty".into(),
        });
    }
    Ok(LayerList {
        name: list.into(),
        items: items.to_vec(),
        specs,
        origin,
    })
}

/// A feature map `(c, h, w)` or a flat vector `(d,)` (without the batch axis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatShape {
    Map { c: usize, h: usize, w: usize },
    Flat { d: usize },
}

impl std::fmt::Display for FeatShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeatShape::Map { c, h, w } => write!(f, "({c}, {h}, {w})"),
            FeatShape::Flat { d } => write!(f, "({d},)"),
        }
    }
}

fn conv_out(n: usize, k: usize, s: usize, p: usize) -> Option<usize> {
    (n + 2 * p).checked_sub(k).map(|v| v / s + 1)
}

impl LayerList {
    /// The shape after each layer, from `input`; a channel, width or size
    /// mismatch is an error naming the string (and its position as written)
    /// whose layer does not fit.
    pub fn infer_shapes(&self, input: FeatShape) -> std::result::Result<Vec<FeatShape>, SpecError> {
        infer_shapes(self, input)
    }
}

fn infer_shapes(list: &LayerList, input: FeatShape) -> std::result::Result<Vec<FeatShape>, SpecError> {
    let mut shapes = Vec::with_capacity(list.specs.len());
    let mut cur = input;
    for (i, spec) in list.specs.iter().enumerate() {
        let index = list.origin[i];
        let err = |msg: String| SpecError {
            list: list.name.clone(),
            index,
            item: list.items[index].clone(),
            msg,
        };
        let need_map = |cur: FeatShape, cin: Option<usize>| -> std::result::Result<(usize, usize, usize), SpecError> {
            match cur {
                FeatShape::Map { c, h, w } => {
                    if let Some(cin) = cin {
                        if cin != c {
                            return Err(err(format!(
                                "expects {cin} input channels but the previous layer gives {c} (shape {cur})"
                            )));
                        }
                    }
                    Ok((c, h, w))
                }
                FeatShape::Flat { d } => Err(err(format!(
                    "needs a feature map (c, h, w) but gets a flat vector of {d}; add `Unflat_c_h_w` before it"
                ))),
            }
        };
        cur = match *spec {
            LayerSpec::Conv2d { cin, cout, k, s, p } => {
                let (_, h, w) = need_map(cur, Some(cin))?;
                match (conv_out(h, k, s, p), conv_out(w, k, s, p)) {
                    (Some(oh), Some(ow)) if oh > 0 && ow > 0 => FeatShape::Map { c: cout, h: oh, w: ow },
                    _ => return Err(err(format!("kernel {k} with padding {p} does not fit a {h}×{w} input"))),
                }
            }
            LayerSpec::ConvT2d { cin, cout, k, s, p, op } => {
                let (_, h, w) = need_map(cur, Some(cin))?;
                let o = |n: usize| ((n - 1) * s + k + op).checked_sub(2 * p).filter(|&v| v > 0);
                match (o(h), o(w)) {
                    (Some(oh), Some(ow)) => FeatShape::Map { c: cout, h: oh, w: ow },
                    _ => return Err(err(format!("padding {p} leaves no output for a {h}×{w} input"))),
                }
            }
            LayerSpec::ResBlock { cin, cout } => {
                let (_, h, w) = need_map(cur, Some(cin))?;
                FeatShape::Map { c: cout, h, w }
            }
            LayerSpec::Attention { c } | LayerSpec::GroupNorm { c, .. } | LayerSpec::Gdn { c, .. } => {
                need_map(cur, Some(c))?;
                cur
            }
            LayerSpec::SiLU | LayerSpec::ReLU | LayerSpec::Sigmoid => cur,
            LayerSpec::MaxPool { k } => {
                let (c, h, w) = need_map(cur, None)?;
                if h < k || w < k {
                    return Err(err(format!("a {k}×{k} pool does not fit a {h}×{w} input")));
                }
                FeatShape::Map { c, h: h / k, w: w / k }
            }
            LayerSpec::Upsample { f } => {
                let (c, h, w) = need_map(cur, None)?;
                FeatShape::Map { c, h: h * f, w: w * f }
            }
            LayerSpec::Linear { din, dout } => match cur {
                FeatShape::Flat { d } if d == din => FeatShape::Flat { d: dout },
                FeatShape::Flat { d } => {
                    return Err(err(format!("expects {din} inputs but the previous layer gives {d}")))
                }
                FeatShape::Map { .. } => {
                    return Err(err(format!(
                        "needs a flat vector but gets a feature map {cur}; add `Flat` before it"
                    )))
                }
            },
            LayerSpec::Flatten => {
                let (c, h, w) = need_map(cur, None)?;
                FeatShape::Flat { d: c * h * w }
            }
            LayerSpec::Unflatten { c, h, w } => match cur {
                FeatShape::Flat { d } if crate::limits::product(&[c, h, w]) == Some(d) => FeatShape::Map { c, h, w },
                FeatShape::Flat { d } => {
                    let product =
                        crate::limits::product(&[c, h, w]).map_or("more than a usize".into(), |p| p.to_string());
                    return Err(err(format!("{c}·{h}·{w} = {product} is not the {d} inputs")));
                }
                FeatShape::Map { .. } => return Err(err(format!("needs a flat vector but gets a feature map {cur}"))),
            },
        };
        // Each layer's output within the tensor budget (per image), so no
        // later product overflows and no activation outgrows memory.
        let dims: &[usize] = match &cur {
            FeatShape::Map { c, h, w } => &[*c, *h, *w],
            FeatShape::Flat { d } => &[*d],
        };
        crate::limits::elems_within("the output", dims, crate::limits::MAX_TENSOR_ELEMS).map_err(err)?;
        shapes.push(cur);
    }
    Ok(shapes)
}

/// The residual block of the SD VAE: `GN → SiLU → Conv3×3 → GN → SiLU →
/// Conv3×3`, plus the input (through a 1×1 conv when the widths differ).
#[derive(Clone, Debug)]
pub struct ResBlock {
    groupnorm_1: GroupNorm,
    conv_1: Conv2d,
    groupnorm_2: GroupNorm,
    conv_2: Conv2d,
    residual_layer: Option<Conv2d>,
}

/// The parameter names of a [`ResBlock`]'s norms, convs and shortcut.
pub type ResBlockNames = [&'static str; 5];

/// The PyTorch `VAE_ResidualBlock`'s names (the `VAERB` layer).
pub const VAERB_NAMES: ResBlockNames = ["groupnorm_1", "conv_1", "groupnorm_2", "conv_2", "residual_layer"];

/// A [`ResBlock`] `cin → cout` (names as the PyTorch `VAE_ResidualBlock`).
pub fn res_block(cin: usize, cout: usize, vb: VarBuilder) -> Result<ResBlock> {
    res_block_named(cin, cout, BLOCK_GROUPS, GroupNormConfig::default(), VAERB_NAMES, vb)
}

/// A [`ResBlock`] with another project's groups, norm ε and parameter
/// names (diffusers' `ResnetBlock2D`: `norm1`, `conv1`, …, `conv_shortcut`).
pub fn res_block_named(
    cin: usize,
    cout: usize,
    groups: usize,
    gn: GroupNormConfig,
    [n1, c1, n2, c2, shortcut]: ResBlockNames,
    vb: VarBuilder,
) -> Result<ResBlock> {
    let pad1 = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    Ok(ResBlock {
        groupnorm_1: group_norm(groups, cin, gn, vb.pp(n1))?,
        conv_1: conv2d(cin, cout, 3, pad1, vb.pp(c1))?,
        groupnorm_2: group_norm(groups, cout, gn, vb.pp(n2))?,
        conv_2: conv2d(cout, cout, 3, pad1, vb.pp(c2))?,
        residual_layer: if cin == cout {
            None
        } else {
            Some(conv2d(cin, cout, 1, Conv2dConfig::default(), vb.pp(shortcut))?)
        },
    })
}

impl Module for ResBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, cin, h, w) -> (b, cout, h, w)
        let ys = self.conv_1.forward(&ops::silu(&self.groupnorm_1.forward(xs)?)?)?;
        let ys = self.conv_2.forward(&ops::silu(&self.groupnorm_2.forward(&ys)?)?)?;
        let skip = match &self.residual_layer {
            Some(c) => c.forward(xs)?,
            None => xs.clone(),
        };
        ys + skip
    }
}

/// GroupNorm, then single-head self-attention between the `h·w` positions
/// (each a `c`-vector), plus the input: the SD VAE's `VAE_AttentionBlock`.
#[derive(Clone, Debug)]
pub struct AttentionBlock {
    groupnorm: GroupNorm,
    in_proj: Linear,
    out_proj: Linear,
}

/// An [`AttentionBlock`] over `c` channels (`attention.in_proj` is `c → 3c`).
pub fn attention_block(c: usize, vb: VarBuilder) -> Result<AttentionBlock> {
    let att = vb.pp("attention");
    Ok(AttentionBlock {
        groupnorm: group_norm(BLOCK_GROUPS, c, GroupNormConfig::default(), vb.pp("groupnorm"))?,
        in_proj: linear(c, 3 * c, LinearConfig::default(), att.pp("in_proj"))?,
        out_proj: linear(c, c, LinearConfig::default(), att.pp("out_proj"))?,
    })
}

impl Module for AttentionBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        // (b, c, h, w) -> (b, h·w, c)
        let seq = self.groupnorm.forward(xs)?.reshape((b, c, h * w))?.transpose(1, 2)?;
        // (b, h·w, 3c) -> q, k, v: (b, h·w, c)
        let qkv = self.in_proj.forward(&seq)?;
        let q = qkv.narrow(D::Minus1, 0, c)?.contiguous()?;
        let k = qkv.narrow(D::Minus1, c, c)?.contiguous()?;
        let v = qkv.narrow(D::Minus1, 2 * c, c)?.contiguous()?;
        // The softmax in the parameters' dtype, as autocast does for half inputs.
        let att = ops::attention(&q, &k, &v, self.in_proj.weight().dtype())?;
        // (b, h·w, c) -> (b, c, h, w)
        let ys = self.out_proj.forward(&att)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        ys + xs
    }
}

/// A built layer.
#[derive(Clone, Debug)]
pub enum Layer {
    Conv2d(Conv2d),
    ConvT2d(ConvTranspose2d),
    ResBlock(ResBlock),
    Attention(AttentionBlock),
    GroupNorm(GroupNorm),
    Gdn(Gdn),
    SiLU,
    ReLU,
    Sigmoid,
    MaxPool(usize),
    Upsample(usize),
    Linear(Linear),
    Flatten,
    Unflatten(usize, usize, usize),
}

impl Layer {
    /// Builds one layer; its parameters under `vb`.
    pub fn new(spec: LayerSpec, vb: VarBuilder) -> Result<Self> {
        Ok(match spec {
            LayerSpec::Conv2d { cin, cout, k, s, p } => Layer::Conv2d(conv2d(
                cin,
                cout,
                k,
                Conv2dConfig {
                    padding: p,
                    stride: s,
                    ..Default::default()
                },
                vb,
            )?),
            LayerSpec::ConvT2d { cin, cout, k, s, p, op } => Layer::ConvT2d(conv_transpose2d(
                cin,
                cout,
                k,
                ConvTranspose2dConfig {
                    padding: p,
                    stride: s,
                    output_padding: op,
                    ..Default::default()
                },
                vb,
            )?),
            LayerSpec::ResBlock { cin, cout } => Layer::ResBlock(res_block(cin, cout, vb)?),
            LayerSpec::Attention { c } => Layer::Attention(attention_block(c, vb)?),
            LayerSpec::GroupNorm { groups, c } => {
                Layer::GroupNorm(group_norm(groups, c, GroupNormConfig::default(), vb)?)
            }
            LayerSpec::Gdn { c, inverse } => Layer::Gdn(gdn(c, inverse, vb)?),
            LayerSpec::SiLU => Layer::SiLU,
            LayerSpec::ReLU => Layer::ReLU,
            LayerSpec::Sigmoid => Layer::Sigmoid,
            LayerSpec::MaxPool { k } => Layer::MaxPool(k),
            LayerSpec::Upsample { f } => Layer::Upsample(f),
            LayerSpec::Linear { din, dout } => Layer::Linear(linear(din, dout, LinearConfig::default(), vb)?),
            LayerSpec::Flatten => Layer::Flatten,
            LayerSpec::Unflatten { c, h, w } => Layer::Unflatten(c, h, w),
        })
    }
}

impl Module for Layer {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Layer::Conv2d(m) => m.forward(xs),
            Layer::ConvT2d(m) => m.forward(xs),
            Layer::ResBlock(m) => m.forward(xs),
            Layer::Attention(m) => m.forward(xs),
            Layer::GroupNorm(m) => m.forward(xs),
            Layer::Gdn(m) => m.forward(xs),
            Layer::SiLU => ops::silu(xs),
            Layer::ReLU => ops::relu(xs),
            Layer::Sigmoid => ops::sigmoid(xs),
            Layer::MaxPool(k) => ops::max_pool2d(xs, *k, *k),
            Layer::Upsample(f) => ops::upsample_nearest2d(xs, *f, *f),
            Layer::Linear(m) => m.forward(xs),
            Layer::Flatten => xs.flatten_from(1),
            Layer::Unflatten(c, h, w) => xs.reshape((xs.dim(0)?, *c, *h, *w)),
        }
    }
}

/// Layers applied in turn, built from a checked list.
#[derive(Clone, Debug)]
pub struct Sequential {
    layers: Vec<Layer>,
    output: FeatShape,
}

impl Sequential {
    /// Parses `items`, checks them against `input`, builds layer `i` under
    /// `vb.pp(i)` (PyTorch's `nn.Sequential` names).
    pub fn new(list: &str, items: &[String], input: FeatShape, vb: VarBuilder) -> Result<Self> {
        let parsed = parse_list(list, items)?;
        let shapes = parsed.infer_shapes(input)?;
        let layers = parsed
            .specs
            .iter()
            .enumerate()
            .map(|(i, s)| Layer::new(*s, vb.pp(i.to_string())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            output: *shapes.last().expect("a parsed list is not empty"),
        })
    }

    /// The shape of one output (without the batch axis).
    pub fn output_shape(&self) -> FeatShape {
        self.output
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // A conv, transposed conv or linear layer followed by ReLU or
        // Sigmoid runs as one fused node (`forward_act`): the activation is
        // applied in the layer's epilogue and its gradient inside the
        // layer's backward, instead of a pass and a tensor of its own. An
        // upsampling followed by a conv runs as the conv's sub-pixel form
        // (`forward_up_act`), with the conv's activation likewise.
        let layers = &self.layers;
        let act_at = |i: usize| match layers.get(i) {
            Some(Layer::ReLU) => Some(Act::Relu),
            Some(Layer::Sigmoid) => Some(Act::Sigmoid),
            _ => None,
        };
        let mut x = xs.clone();
        let mut i = 0;
        while i < layers.len() {
            if let (Layer::Upsample(f), Some(Layer::Conv2d(m))) = (&layers[i], layers.get(i + 1)) {
                let act = act_at(i + 2);
                x = m.forward_up_act(&x, *f, act.unwrap_or_default())?;
                i += 2 + usize::from(act.is_some());
                continue;
            }
            let fused = match (&layers[i], act_at(i + 1)) {
                (Layer::Conv2d(m), Some(a)) => Some(m.forward_act(&x, a)?),
                (Layer::ConvT2d(m), Some(a)) => Some(m.forward_act(&x, a)?),
                (Layer::Linear(m), Some(a)) => Some(m.forward_act(&x, a)?),
                _ => None,
            };
            x = match fused {
                // The activation ran inside the layer: skip it.
                Some(y) => {
                    i += 1;
                    y
                }
                None => layers[i].forward(&x)?,
            };
            i += 1;
        }
        Ok(x)
    }
}
