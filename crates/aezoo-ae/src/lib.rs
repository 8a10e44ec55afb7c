//! aezoo-ae: deterministic autoencoder families.
//!
//! - [`LinearAe`] (`ae-linear`): the classic one-hidden-layer lesson model,
//!   `784 → 32 → 784` with a sigmoid output (Chollet, "Building Autoencoders in
//!   Keras", 2016; Hinton & Salakhutdinov 2006 for the idea).

mod linear;

pub use linear::{Activation, LinearAe, LinearAeConfig, ReconLoss};
