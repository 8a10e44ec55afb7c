//! aezoo-train: the trainer library — entry configs, the training loop
//! ([`Learner`] with its observers) with checkpoints and exact resume,
//! evaluation, run logs and pictures, weights folders, the compare and bench
//! protocols. It names no model family: families come in through a
//! [`Zoo`] (the `aezoo-zoo` crate's tables), which every command passes in.

#![forbid(unsafe_code)]

pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod error;
pub mod eval;
pub mod infer;
pub mod observers;
pub mod plot;
pub mod precision;
pub mod runlog;
pub mod tensorboard;
pub mod trainer;
pub mod weights;
pub mod zoo;

pub use config::EntryConfig;
pub use error::{Result, TrainError};
pub use eval::{evaluate, EvalMetrics};
pub use trainer::{train, Learner, TrainOptions, TrainOutcome};
pub use zoo::{ConfigOrigin, DynFamily, Importer, Pipeline, Registered, Zoo};
