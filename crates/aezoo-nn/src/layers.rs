//! Parameterised layers with PyTorch's default initialisation, built as free
//! functions over a `VarBuilder` with `Copy + Default` option structs, as in
//! candle-nn's `conv.rs`.
//!
//! PyTorch initialises `Linear`, `Conv2d` and `ConvTranspose2d` with
//! `kaiming_uniform_(a=√5)` for the weight and `U(±1/√fan_in)` for the bias,
//! which both reduce to `U(±1/√fan_in)`. For a transposed convolution PyTorch
//! takes `fan_in` from `weight.size(1)` — the *output* channels per group times
//! the kernel area — and we do the same, so a model initialises with the same
//! distributions as its PyTorch twin. Weights keep PyTorch's layouts
//! (`(out, in)`, `(out, in/g, kh, kw)`, `(in, out/g, kh, kw)`), so checkpoints
//! convert by name alone.
//!
//! Mixed precision (PyTorch's autocast, done by the layers): a layer computes
//! in its *input's* dtype, casting its (f32 master) weights to it, so a model
//! fed bf16/f16 runs its convolutions and matmuls in half precision while the
//! weights, their gradients and the optimiser stay f32 (the cast's backward
//! casts the gradient back). Normalisations ([`GroupNorm`], [`Gdn`]) and the
//! attention softmax compute in the parameters' dtype and return the input's
//! (`computed_in`).

use candle_core::{DType, Module, Result, Shape, Tensor};

use candle_nn::{Init, VarBuilder};

use crate::conv3d::Conv3dOpts;
use crate::Act;
use aezoo_kernels as fused;

pub use candle_nn::{Conv2dConfig, ConvTranspose2dConfig};

fn uniform(bound: f64) -> Init {
    Init::Uniform { lo: -bound, up: bound }
}

/// A parameter in the dtype `xs` computes in (the same tensor when equal).
pub fn cast_like(param: &Tensor, xs: &Tensor) -> Result<Tensor> {
    param.to_dtype(xs.dtype())
}

fn cast_bias(bias: Option<&Tensor>, xs: &Tensor) -> Result<Option<Tensor>> {
    bias.map(|b| cast_like(b, xs)).transpose()
}

/// `f` applied to `xs` in `dtype` (a normalisation's parameter dtype), the
/// result back in `xs`'s dtype: half-precision inputs are normalised (and
/// attention's softmax taken) in f32.
pub(crate) fn computed_in(xs: &Tensor, dtype: DType, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    f(&xs.to_dtype(dtype)?)?.to_dtype(xs.dtype())
}

/// `y = x Wᵀ + b` over the last dimension.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// Options of [`linear`].
#[derive(Clone, Copy, Debug)]
pub struct LinearConfig {
    pub bias: bool,
}

impl Default for LinearConfig {
    fn default() -> Self {
        Self { bias: true }
    }
}

/// Refuses a layer with a zero size (or groups that do not divide its
/// input channels) before any tensor is made, naming it by its prefix:
/// a size a config gave 0 is an error, never a panic in a kernel.
fn check_layer(vb: &VarBuilder, sizes: &[(&str, usize)]) -> Result<()> {
    if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        candle_core::bail!("{}: {name} is 0; every layer size must be at least 1", vb.prefix());
    }
    Ok(())
}

/// A fully connected layer `in_dim → out_dim` (`weight`: `(out, in)`).
pub fn linear(in_dim: usize, out_dim: usize, cfg: LinearConfig, vb: VarBuilder) -> Result<Linear> {
    check_layer(&vb, &[("in_features", in_dim), ("out_features", out_dim)])?;
    let bound = 1.0 / (in_dim as f64).sqrt();
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", uniform(bound))?;
    let bias = if cfg.bias {
        Some(vb.get_with_hints(out_dim, "bias", uniform(bound))?)
    } else {
        None
    };
    Ok(Linear { weight, bias })
}

/// `layers` applied in turn to `xs` read flattened to `(n, d)`, each after
/// the activation beside it, for inference: on the CPU in f32 one
/// `aezoo_kernels::linear_chain` (one parallel region, each task carrying
/// its rows through every layer), elsewhere layer by layer; a later layer
/// reads the first columns it needs of the one before. No gradient flows
/// back to `xs` or the layers.
pub fn linear_chain(xs: &Tensor, layers: &[(&Linear, Act)]) -> Result<Tensor> {
    let links: Vec<_> = layers
        .iter()
        .map(|(l, act)| (&l.weight, l.bias.as_ref(), *act))
        .collect();
    if let Some(y) = fused::linear_chain(xs, &links)? {
        return Ok(y);
    }
    let mut h = xs.flatten_from(1)?.detach();
    for (l, act) in layers {
        let i = l.weight.dim(1)?;
        let input = if h.dim(1)? == i { h } else { h.narrow(1, 0, i)? };
        h = l.forward_act(&input, *act)?;
    }
    Ok(h.detach())
}

impl Linear {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `act(xs · Wᵀ + b)`: one fused node on the CPU (`aezoo_kernels::linear`).
    pub fn forward_act(&self, xs: &Tensor, act: Act) -> Result<Tensor> {
        if let (Some(b), 2) = (&self.bias, xs.rank()) {
            if fused::applies(xs) {
                return fused::linear(xs, &self.weight, b, act);
            }
        }
        // xs: (..., in) -> (..., out). candle's CUDA and Metal matmul take
        // a row-strided input only when contiguous (a VAE's mean is a
        // narrow of the encoder's output).
        let contiguous;
        let xs = if xs.device().is_cpu() || xs.is_contiguous() {
            xs
        } else {
            contiguous = xs.contiguous()?;
            &contiguous
        };
        let w = cast_like(&self.weight, xs)?;
        let ys = match xs.rank() {
            2 => xs.matmul(&w.t()?)?,
            _ => xs.broadcast_matmul(&w.t()?)?,
        };
        let ys = match cast_bias(self.bias.as_ref(), xs)? {
            Some(b) => ys.broadcast_add(&b)?,
            None => ys,
        };
        apply_act(ys, act)
    }

    /// `act(flatten(xs) · Wᵀ + b)` for `xs` of shape `(b, …)` read as `(b,
    /// in)`, the result reshaped to `out` if given — on the CPU one fused
    /// node, with no flatten or reshape node whose gradient candle would
    /// accumulate into a fresh zero tensor (`vae-conv`'s 3136-wide
    /// bottleneck: two such tensors a step).
    pub fn forward_shaped(&self, xs: &Tensor, act: Act, out: Option<Shape>) -> Result<Tensor> {
        if let Some(b) = &self.bias {
            if fused::applies(xs) {
                return fused::linear_shaped(xs, &self.weight, b, act, out);
            }
        }
        let ys = self.forward_act(&xs.flatten_from(1)?, act)?;
        match out {
            Some(shape) => ys.reshape(shape),
            None => Ok(ys),
        }
    }
}

/// The activation after a composite (unfused) layer.
pub fn apply_act(ys: Tensor, act: Act) -> Result<Tensor> {
    match act {
        Act::None => Ok(ys),
        Act::Relu => crate::ops::relu(&ys),
        Act::Sigmoid => crate::ops::sigmoid(&ys),
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_act(xs, Act::None)
    }
}

/// A 2-D convolution (`weight`: `(out, in/groups, k, k)`).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
}

pub fn conv2d(in_c: usize, out_c: usize, k: usize, cfg: Conv2dConfig, vb: VarBuilder) -> Result<Conv2d> {
    conv2d_with(in_c, out_c, k, cfg, true, vb)
}

/// Like [`conv2d`] without a bias term.
pub fn conv2d_no_bias(in_c: usize, out_c: usize, k: usize, cfg: Conv2dConfig, vb: VarBuilder) -> Result<Conv2d> {
    conv2d_with(in_c, out_c, k, cfg, false, vb)
}

fn conv2d_with(in_c: usize, out_c: usize, k: usize, cfg: Conv2dConfig, bias: bool, vb: VarBuilder) -> Result<Conv2d> {
    check_layer(
        &vb,
        &[
            ("in_channels", in_c),
            ("out_channels", out_c),
            ("kernel_size", k),
            ("groups", cfg.groups),
        ],
    )?;
    if !in_c.is_multiple_of(cfg.groups) {
        candle_core::bail!(
            "{}: {in_c} input channels do not split into {} groups",
            vb.prefix(),
            cfg.groups
        );
    }
    let fan_in = in_c / cfg.groups * k * k;
    let bound = 1.0 / (fan_in as f64).sqrt();
    let weight = vb.get_with_hints((out_c, in_c / cfg.groups, k, k), "weight", uniform(bound))?;
    let bias = if bias {
        Some(vb.get_with_hints(out_c, "bias", uniform(bound))?)
    } else {
        None
    };
    Ok(Conv2d { weight, bias, cfg })
}

impl Conv2d {
    pub fn config(&self) -> &Conv2dConfig {
        &self.cfg
    }

    /// `act(conv2d(xs) + b)`: one fused node on the CPU (`aezoo_kernels::conv2d`).
    pub fn forward_act(&self, xs: &Tensor, act: Act) -> Result<Tensor> {
        let c = &self.cfg;
        if let Some(b) = &self.bias {
            if c.groups == 1 && fused::applies(xs) {
                return fused::conv2d(xs, &self.weight, b, c.padding, c.stride, c.dilation, act);
            }
        }
        let ys = crate::ops::conv2d(
            xs,
            &cast_like(&self.weight, xs)?,
            cast_bias(self.bias.as_ref(), xs)?.as_ref(),
            c.padding,
            c.stride,
            c.dilation,
            c.groups,
        )?;
        apply_act(ys, act)
    }
}

impl Conv2d {
    /// `max_pool2d(act(conv2d(xs) + b), 2, 2)`: one fused node on the CPU
    /// (`aezoo_kernels::conv2d_pool2`), the conv and [`crate::ops::max_pool2d`]
    /// elsewhere.
    pub fn forward_act_pool2(&self, xs: &Tensor, act: Act) -> Result<Tensor> {
        let c = &self.cfg;
        if let Some(b) = &self.bias {
            if c.groups == 1 && fused::applies(xs) {
                return fused::conv2d_pool2(xs, &self.weight, b, c.padding, c.stride, c.dilation, act);
            }
        }
        crate::ops::max_pool2d(&self.forward_act(xs, act)?, 2, 2)
    }

    /// `act(conv2d(upsample_nearest2d(xs, f, f)) + b)`: on the CPU, for a
    /// stride-1 undilated conv, one conv on `xs` with the `f²` sub-pixel
    /// kernels ([`crate::ops::upsample_conv2d`]: no upsampled copy,
    /// about half the multiply-adds for 3 × 3); elsewhere upsample then conv.
    pub fn forward_up_act(&self, xs: &Tensor, factor: usize, act: Act) -> Result<Tensor> {
        let c = &self.cfg;
        if let Some(b) = &self.bias {
            if (c.groups, c.stride, c.dilation) == (1, 1, 1)
                && fused::upsample_conv2d_applies(xs, factor, &self.weight, c.padding)
            {
                return fused::upsample_conv2d(xs, factor, &self.weight, b, c.padding, act);
            }
        }
        self.forward_act(&crate::ops::upsample_nearest2d(xs, factor, factor)?, act)
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, in, h, w) -> (b, out, oh, ow)
        self.forward_act(xs, Act::None)
    }
}

/// A 2-D transposed convolution (`weight`: `(in, out, k, k)`).
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: ConvTranspose2dConfig,
}

pub fn conv_transpose2d(
    in_c: usize,
    out_c: usize,
    k: usize,
    cfg: ConvTranspose2dConfig,
    vb: VarBuilder,
) -> Result<ConvTranspose2d> {
    check_layer(
        &vb,
        &[("in_channels", in_c), ("out_channels", out_c), ("kernel_size", k)],
    )?;
    // PyTorch: fan_in = weight.size(1) * k * k = out_c * k * k (groups = 1).
    let fan_in = out_c * k * k;
    let bound = 1.0 / (fan_in as f64).sqrt();
    let weight = vb.get_with_hints((in_c, out_c, k, k), "weight", uniform(bound))?;
    let bias = Some(vb.get_with_hints(out_c, "bias", uniform(bound))?);
    Ok(ConvTranspose2d { weight, bias, cfg })
}

impl ConvTranspose2d {
    /// `act(conv_transpose2d(xs) + b)`: one fused node on the CPU (`aezoo_kernels::conv_transpose2d`).
    pub fn forward_act(&self, xs: &Tensor, act: Act) -> Result<Tensor> {
        let c = &self.cfg;
        if let Some(b) = &self.bias {
            if fused::applies(xs) {
                return fused::conv_transpose2d(
                    xs,
                    &self.weight,
                    b,
                    c.padding,
                    c.output_padding,
                    c.stride,
                    c.dilation,
                    act,
                );
            }
        }
        let ys = crate::ops::conv_transpose2d(
            xs,
            &cast_like(&self.weight, xs)?,
            cast_bias(self.bias.as_ref(), xs)?.as_ref(),
            c.padding,
            c.output_padding,
            c.stride,
            c.dilation,
        )?;
        apply_act(ys, act)
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, in, h, w) -> (b, out, (h-1)s - 2p + k + op, ...)
        self.forward_act(xs, Act::None)
    }
}

/// A 3-D convolution (`weight`: `(out, in, kt, kh, kw)`), PyTorch's
/// `nn.Conv3d` init; padding is explicit (use [`crate::same_pad`] for
/// TensorFlow's SAME).
#[derive(Clone, Debug)]
pub struct Conv3d {
    weight: Tensor,
    bias: Tensor,
    opts: Conv3dOpts,
}

pub fn conv3d(in_c: usize, out_c: usize, k: [usize; 3], opts: Conv3dOpts, vb: VarBuilder) -> Result<Conv3d> {
    check_layer(
        &vb,
        &[
            ("in_channels", in_c),
            ("out_channels", out_c),
            ("kernel_t", k[0]),
            ("kernel_h", k[1]),
            ("kernel_w", k[2]),
        ],
    )?;
    let fan_in = in_c * k.iter().product::<usize>();
    let bound = 1.0 / (fan_in as f64).sqrt();
    let weight = vb.get_with_hints((out_c, in_c, k[0], k[1], k[2]), "weight", uniform(bound))?;
    let bias = vb.get_with_hints(out_c, "bias", uniform(bound))?;
    Ok(Conv3d { weight, bias, opts })
}

impl Conv3d {
    /// The kernel size `(kt, kh, kw)`.
    pub fn kernel(&self) -> [usize; 3] {
        let d = self.weight.dims();
        [d[2], d[3], d[4]]
    }

    pub fn opts(&self) -> Conv3dOpts {
        self.opts
    }
}

impl Module for Conv3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, in, t, h, w) -> (b, out, ot, oh, ow)
        let (w, b) = (cast_like(&self.weight, xs)?, cast_like(&self.bias, xs)?);
        crate::ops::conv3d(xs, &w, Some(&b), self.opts)
    }
}

/// A 3-D transposed convolution (`weight`: `(in, out, kt, kh, kw)`), PyTorch's
/// `nn.ConvTranspose3d` init (fan-in from the output channels).
#[derive(Clone, Debug)]
pub struct ConvTranspose3d {
    weight: Tensor,
    bias: Tensor,
    opts: Conv3dOpts,
}

pub fn conv_transpose3d(
    in_c: usize,
    out_c: usize,
    k: [usize; 3],
    opts: Conv3dOpts,
    vb: VarBuilder,
) -> Result<ConvTranspose3d> {
    check_layer(
        &vb,
        &[
            ("in_channels", in_c),
            ("out_channels", out_c),
            ("kernel_t", k[0]),
            ("kernel_h", k[1]),
            ("kernel_w", k[2]),
        ],
    )?;
    let fan_in = out_c * k.iter().product::<usize>();
    let bound = 1.0 / (fan_in as f64).sqrt();
    let weight = vb.get_with_hints((in_c, out_c, k[0], k[1], k[2]), "weight", uniform(bound))?;
    let bias = vb.get_with_hints(out_c, "bias", uniform(bound))?;
    Ok(ConvTranspose3d { weight, bias, opts })
}

impl Module for ConvTranspose3d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // xs: (b, in, t, h, w) -> (b, out, (t-1)s - 2p + k + op, ...)
        let (w, b) = (cast_like(&self.weight, xs)?, cast_like(&self.bias, xs)?);
        crate::ops::conv_transpose3d(xs, &w, Some(&b), self.opts)
    }
}

/// Group normalisation (Wu & He 2018) with an affine transform initialised to
/// the identity; computed with candle-nn's composite `GroupNorm` (checked).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    dtype: DType,
}

/// Options of [`group_norm`].
#[derive(Clone, Copy, Debug)]
pub struct GroupNormConfig {
    pub eps: f64,
}

impl Default for GroupNormConfig {
    fn default() -> Self {
        Self { eps: 1e-5 }
    }
}

pub fn group_norm(num_groups: usize, num_channels: usize, cfg: GroupNormConfig, vb: VarBuilder) -> Result<GroupNorm> {
    check_layer(&vb, &[("channels", num_channels)])?;
    if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
        candle_core::bail!("group_norm: {num_channels} channels cannot be split into {num_groups} groups");
    }
    let weight = vb.get_with_hints(num_channels, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(num_channels, "bias", Init::Const(0.0))?;
    let dtype = weight.dtype();
    let inner = candle_nn::GroupNorm::new(weight, bias, num_channels, num_groups, cfg.eps)?;
    Ok(GroupNorm { inner, dtype })
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        computed_in(xs, self.dtype, |xs| self.inner.forward(xs))
    }
}

/// Generalized divisive normalisation (Ballé, Laparra & Simoncelli 2016,
/// *Density Modeling of Images using a Generalized Normalization
/// Transformation*), the nonlinearity of learned image codecs:
/// `yᵢ = xᵢ / √(βᵢ + Σⱼ γᵢⱼ xⱼ²)`, and its inverse (IGDN, in decoders)
/// `yᵢ = xᵢ · √(βᵢ + Σⱼ γᵢⱼ xⱼ²)`.
///
/// β and γ stay non-negative through squares: `β = beta² + 10⁻⁶` and
/// `γ = (gamma + √0.1·I)²` element-wise, so the stored zeros-ish start is
/// β = 1, γ ≈ 0.1·I (all of `gamma` starts at 10⁻³: an exact zero off the
/// diagonal would square to a parameter with no gradient).
#[derive(Clone, Debug)]
pub struct Gdn {
    beta: Tensor,
    gamma: Tensor,
    inverse: bool,
}

/// The floor added to β, so the denominator never reaches zero.
pub const GDN_BETA_MIN: f64 = 1e-6;
/// `√γ` starts at this on the diagonal.
const GDN_GAMMA_DIAG: f64 = 0.316_227_766_016_837_94; // √0.1

/// GDN (`inverse = false`) or IGDN over `channels` channels.
pub fn gdn(channels: usize, inverse: bool, vb: VarBuilder) -> Result<Gdn> {
    check_layer(&vb, &[("channels", channels)])?;
    let beta = vb.get_with_hints(channels, "beta", Init::Const(1.0))?;
    let gamma = vb.get_with_hints((channels, channels), "gamma", Init::Const(1e-3))?;
    Ok(Gdn { beta, gamma, inverse })
}

impl Gdn {
    /// `(β, γ)` as used by the forward pass.
    pub fn effective(&self) -> Result<(Tensor, Tensor)> {
        let c = self.beta.dim(0)?;
        let beta = (self.beta.sqr()? + GDN_BETA_MIN)?;
        let eye = Tensor::eye(c, self.gamma.dtype(), self.gamma.device())?;
        let gamma = (&self.gamma + (eye * GDN_GAMMA_DIAG)?)?.sqr()?;
        Ok((beta, gamma))
    }
}

impl Module for Gdn {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (beta, gamma) = self.effective()?;
        computed_in(xs, beta.dtype(), |xs| crate::ops::gdn(xs, &beta, &gamma, self.inverse))
    }
}
