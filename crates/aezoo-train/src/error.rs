//! The trainer's error type: each variant says which file, field or step.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config file (or a config section) that does not parse or validate.
    #[error("{origin}: {msg}")]
    Config { origin: String, msg: String },

    #[error("unknown zoo entry `{name}`; known entries: {known}")]
    UnknownEntry { name: String, known: String },

    #[error("unknown model family `{name}` (in {origin}); known families: {known}")]
    UnknownFamily {
        name: String,
        origin: String,
        known: String,
    },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    #[error("training diverged at epoch {epoch}, step {step}: {what} is {value}; {kept}")]
    NonFinite {
        epoch: usize,
        step: u64,
        what: String,
        value: f32,
        /// What of the run is kept: its last checkpoint, or that none was written.
        kept: String,
    },

    #[error(transparent)]
    Data(#[from] aezoo_data::DataError),

    /// An error of a family's or pipeline's own type (a graph file that
    /// does not parse, …), its message kept.
    #[error(transparent)]
    Family(Box<dyn std::error::Error + Send + Sync>),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// A family's or pipeline's own error.
    pub fn family(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        TrainError::Family(Box::new(e))
    }
}

/// Maps an I/O error on `path` to [`TrainError::Io`].
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
