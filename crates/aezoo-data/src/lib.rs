//! aezoo-data: data sets and where they come from — IDX / IDX.gz readers
//! (MNIST, Fashion-MNIST), the offline resolution chain (`--data`,
//! `$AEZOO_DATA`, user cache, system packages, the Hub's parquet files, the
//! bundled real subsets), folders of PNG/JPEG images, seeded batching and
//! the noise transform.

#![forbid(unsafe_code)]

pub mod bundled;
pub mod dataset;
pub mod error;
pub mod folder;
pub mod hub;
pub mod idx;
pub mod image_file;
pub mod loader;
pub mod moving_mnist;
pub mod source;

pub use dataset::{ImageSet, Picture, Splits};
pub use error::{DataError, Result};
pub use folder::{FolderConfig, FolderSet};
pub use loader::{EpochPlan, GaussianNoise};
pub use moving_mnist::MovingMnistConfig;
pub use source::{DatasetId, Locator, Source};
