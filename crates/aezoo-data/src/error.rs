//! The data crate's error type: every variant names the file (or data set) and
//! what was expected versus found.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{}: {what}", path.display())]
    Format { path: PathBuf, what: String },

    #[error("{}: truncated: expected {expected} bytes ({what}), found {found}", path.display())]
    Truncated {
        path: PathBuf,
        what: String,
        expected: usize,
        found: usize,
    },

    #[error("{dataset}: not found in {}: missing {missing}", dir.display())]
    NotFound {
        dataset: String,
        dir: PathBuf,
        missing: String,
    },

    #[error("{0}")]
    Invalid(String),

    #[error("Hugging Face Hub: {0}")]
    Hub(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, DataError>;
