//! aezoo-vae: variational autoencoder families (Kingma & Welling 2014,
//! "Auto-Encoding Variational Bayes").
//!
//! - [`ConvVae`] (`vae-conv`): strided-conv encoder, transposed-conv decoder,
//!   Bernoulli likelihood on logits, β-weighted KL (β = 1 is the plain VAE;
//!   Higgins et al. 2017 for β ≠ 1). The twin of `../shared/bench`'s `vae`.

mod conv;

pub use conv::{ConvVae, ConvVaeConfig};
