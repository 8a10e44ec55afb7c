//! aezoo-ae: deterministic autoencoder families.
//!
//! - [`MlpAe`] (`ae-mlp`): fully connected encoder and mirrored decoder with a
//!   sigmoid output, an optional L1 penalty on the code — the `ae-linear`
//!   lesson model (Chollet 2016), the multilayer autoencoder (Hinton &
//!   Salakhutdinov 2006) and the sparse autoencoder (Ng 2011) are entries of it.
//! - [`ConvAe`] (`ae-conv`): conv + max-pool encoder, transposed-conv or
//!   upsampling decoder (Masci et al. 2011); the denoising autoencoder
//!   (Vincent et al. 2008) is an entry of it trained on noised inputs.

#![forbid(unsafe_code)]

mod common;
mod conv;
mod mlp;

pub use common::{Activation, ReconLoss};
pub use conv::{ConvAe, ConvAeConfig, ConvDecoder};
pub use mlp::{MlpAe, MlpAeConfig};
