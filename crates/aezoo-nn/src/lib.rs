//! aezoo-nn: the core layers every aezoo model is built from — gradient-correct
//! ops on candle 0.11, PyTorch-faithful layer init, TensorFlow `same_pad`, a
//! seeded RNG, the parameter store, the finite-difference gradient checker,
//! and the [`model::Autoencoder`] / [`model::Family`] traits.

#[macro_use]
pub mod simd;

pub mod conv;
pub mod conv3d;
mod direct;
pub mod fused;
pub mod gradcheck;
pub mod layers;
pub mod model;
pub mod ops;
pub mod params;
pub mod pool;
pub mod rng;
pub mod same_pad;
pub mod sgemm;
pub mod spec;
pub mod ssim;
pub mod subpixel;

pub use fused::Act;
pub use model::{Autoencoder, Batch, Family, StepCtx, StepOutput};
pub use params::ParamStore;
pub use rng::Rng;
