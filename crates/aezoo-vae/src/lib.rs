//! aezoo-vae: variational autoencoder families (Kingma & Welling 2014,
//! "Auto-Encoding Variational Bayes"), Bernoulli likelihood on logits and a
//! β-weighted KL (β = 1 is the plain VAE; Higgins et al. 2017 for β ≠ 1).
//!
//! - [`MlpVae`] (`vae-mlp`): fully connected, `784 → 400 → 2×32 → 400 → 784`.
//! - [`ConvVae`] (`vae-conv`, `vae-beta`): strided-conv encoder,
//!   transposed-conv decoder; the twin of `../shared/bench`'s `vae`.
//! - [`FlexVae`] (`vae-flex`: `vae-flex-small`, `vae-flex-sd`): a
//!   Stable-Diffusion-style VAE whose encoder and decoder are JSON lists of
//!   layer strings, with a weighted MSE/L1 + KLD + SSIM + sparsity loss.

#![forbid(unsafe_code)]

mod common;
mod conv;
mod flex;
mod mlp;

pub use conv::{ConvVae, ConvVaeConfig};
pub use flex::{FlexLoss, FlexVae, FlexVaeConfig, Reconstruction};
pub use mlp::{MlpVae, MlpVaeConfig};
