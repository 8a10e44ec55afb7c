//! aezoo-kernels: the CPU fast paths under aezoo's layers. Each computes the
//! same function as the composite of candle ops it replaces, with the same
//! parameters, and has an off switch (`AEZOO_NO_FUSED=1`, and the finer
//! ones in `aezoo_env::VARS`). `aezoo-nn` is the only crate that calls them
//! (besides `aezoo-cli`'s timing examples, a dev-dependency); its tests hold
//! every kernel to the composite and to finite differences.
//!
//! What the layers call, by subject:
//! - fused layers, one autograd node each with a hand-written backward
//!   ([`scaffold`] holds what they share): [`conv2d`], [`conv2d_pool2`],
//!   [`conv2d_shuffled`] and [`upsample_conv2d`] (sub-pixel form of an
//!   upsampling conv), [`conv_transpose2d`], [`linear`], [`linear_shaped`],
//!   and [`linear_chain`] (an MLP's inference in one parallel region);
//! - element-wise: [`sigmoid`], [`bce_with_logits`];
//! - convolutions as unfold + GEMM with gradient-correct custom ops:
//!   [`conv2d_gemm`], [`conv_transpose2d_gemm`], [`conv3d_gemm`],
//!   [`conv_transpose3d_gemm`]; pooling and upsampling: [`max_pool2d`],
//!   [`upsample_nearest2d`];
//! - losses and optimiser: [`ssim_planes`], [`inner_product_wce`],
//!   [`adam::update`];
//! - the machinery: [`float`] (the float trait, libm-free `exp`),
//!   [`simd`] (`multiversion!`), [`sgemm`] (the f32 GEMM), [`pool`] (where
//!   the work runs).

#[macro_use]
pub mod simd;

pub mod adam;
mod conv;
mod convt;
mod direct;
mod elementwise;
pub mod float;
mod gae;
mod im2col;
mod linear;
mod maxpool;
mod par;
pub mod pool;
mod scaffold;
pub mod sgemm;
mod ssim;
mod subpixel;
mod unfold;
mod upsample;
mod vol2col;

use candle_core::{DType, Tensor};

pub use conv::{conv2d, conv2d_pool2, conv2d_shuffled, Shuffle, SHUFFLE_MAX};
pub use convt::conv_transpose2d;
pub use elementwise::{bce_with_logits, sigmoid};
pub use float::{exp_f32, ln_1p_unit_f32, Act, Float};
pub use gae::{inner_product_wce, Pattern};
pub use im2col::{add_channel_bias, col2im, conv2d_gemm, conv_transpose2d_gemm, im2col, Geometry};
pub use linear::{linear, linear_chain, linear_shaped};
pub use maxpool::max_pool2d;
pub use par::gemm;
pub use ssim::ssim_planes;
pub use subpixel::{applies as upsample_conv2d_applies, enabled as subpixel_enabled, upsample_conv2d};
pub use upsample::upsample_nearest2d;
pub use vol2col::{
    add_bias5, col2vol, conv3d_columns_per_sample, conv3d_gemm, conv_transpose3d_columns_per_sample,
    conv_transpose3d_gemm, convt_len, dims5, vol2col, Conv3dOpts, Geometry3,
};

/// Whether the fused kernels are on (`AEZOO_NO_FUSED` off).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !aezoo_env::flag("AEZOO_NO_FUSED"))
}

/// Whether `xs` can take the fused kernels (on, CPU, f32 or f64).
pub fn applies(xs: &Tensor) -> bool {
    enabled() && xs.device().is_cpu() && matches!(xs.dtype(), DType::F32 | DType::F64)
}
