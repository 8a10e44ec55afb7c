//! aezoo-nn: the layers every aezoo model is built from — gradient-correct
//! ops on candle 0.11 (dispatching to `aezoo-kernels` on the CPU),
//! PyTorch-faithful layer init, TensorFlow `same_pad`, the layer grammar,
//! a seeded RNG, the parameter store, Adam, the finite-difference gradient
//! checker, and the [`model::Autoencoder`] / [`model::Family`] traits. It is
//! the only crate that calls the kernels.

#![forbid(unsafe_code)]

pub mod conv3d;
pub mod gradcheck;
pub mod layers;
pub mod limits;
pub mod model;
pub mod ops;
pub mod optim;
pub mod params;
pub mod rng;
pub mod runtime;
pub mod same_pad;
pub mod spec;
pub mod tiling;

pub use aezoo_kernels::Act;
pub use model::{Autoencoder, Batch, Codebook, Family, StepCtx, StepOutput};
pub use params::ParamStore;
pub use rng::Rng;
