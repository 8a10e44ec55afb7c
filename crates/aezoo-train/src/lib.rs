//! aezoo-train: the trainer library — the zoo registry, entry configs, Adam,
//! the training loop with checkpoints and exact resume, evaluation, run logs
//! and pictures. It knows no model family by name except in the registry's
//! one-line-per-family table.

pub mod bench;
pub mod checkpoint;
pub mod codec;
pub mod compare;
pub mod config;
pub mod error;
pub mod eval;
pub mod graph;
pub mod infer;
pub mod plot;
pub mod precision;
pub mod rd_image;
pub mod rd_video;
pub mod registry;
pub mod runlog;
pub mod tensorboard;
pub mod trainer;
pub mod weights;

pub use config::EntryConfig;
pub use error::{Result, TrainError};
pub use eval::{evaluate, EvalMetrics};
pub use trainer::{train, TrainOptions, TrainOutcome};
