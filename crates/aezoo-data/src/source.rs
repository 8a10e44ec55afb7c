//! Where a data set comes from: the resolution chain of `../shared/design.md`.
//!
//! `--data DIR` → `$AEZOO_DATA` → the user cache (`$XDG_CACHE_HOME/aezoo`, else
//! `~/.cache/aezoo`) → system locations (Debian's `dataset-fashion-mnist`
//! installs `/usr/share/datasets/fashion-mnist`) → the Hugging Face Hub's
//! parquet conversion (from the local hf-hub cache; a download only when asked
//! for and not `HF_HUB_OFFLINE`) → the small real subset bundled in this crate.
//!
//! A directory matches when it holds the four IDX files (raw or `.gz`) either
//! directly or in a `<name>/` sub-folder. An explicit `--data` that does not
//! hold them is an error, never a silent fallback; a location that holds them
//! but whose files are broken is an error too (it names the file).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::bundled;
use crate::dataset::{ImageSet, Splits};
use crate::error::{DataError, Result};
use crate::hub;
use crate::idx;

/// The IDX data sets aezoo knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetId {
    Mnist,
    FashionMnist,
}

/// Where distribution packages install data sets.
pub const SYSTEM_ROOT: &str = "/usr/share/datasets";

/// The four IDX files of a data set, without `.gz`.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

impl DatasetId {
    pub const ALL: [DatasetId; 2] = [DatasetId::Mnist, DatasetId::FashionMnist];

    /// The name used in configs and folder names.
    pub fn name(self) -> &'static str {
        match self {
            DatasetId::Mnist => "mnist",
            DatasetId::FashionMnist => "fashion-mnist",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
            DataError::Invalid(format!(
                "unknown data set `{name}`, expected one of: {}",
                Self::ALL.map(|d| d.name()).join(", ")
            ))
        })
    }

    /// The Hub dataset holding its parquet conversion, and the train / test files.
    pub fn hub_files(self) -> (&'static str, &'static str, &'static str) {
        match self {
            DatasetId::Mnist => ("ylecun/mnist", "mnist/train/0000.parquet", "mnist/test/0000.parquet"),
            DatasetId::FashionMnist => (
                "zalando-datasets/fashion_mnist",
                "fashion_mnist/train/0000.parquet",
                "fashion_mnist/test/0000.parquet",
            ),
        }
    }

    /// How to get the full set, for the notice printed when a subset is used.
    pub fn how_to_get_full(self) -> &'static str {
        match self {
            DatasetId::Mnist => {
                "the full MNIST: put its IDX files in ~/.cache/aezoo/mnist (or pass --data DIR), or add --download to fetch it from the Hugging Face Hub"
            }
            DatasetId::FashionMnist => {
                "the full Fashion-MNIST: `apt-get install dataset-fashion-mnist`, or put its IDX files in ~/.cache/aezoo/fashion-mnist (or pass --data DIR), or add --download to fetch it from the Hugging Face Hub"
            }
        }
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which link of the chain a data set came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--data DIR`.
    Explicit(PathBuf),
    /// `$AEZOO_DATA`.
    Env(PathBuf),
    /// The user cache folder.
    UserCache(PathBuf),
    /// A system location (a distribution package).
    System(PathBuf),
    /// The Hugging Face Hub's parquet files (from the hf-hub cache or a download).
    Hub { repo: String, downloaded: bool },
    /// The small real subset bundled in aezoo-data.
    Bundled,
}

impl Source {
    pub fn is_bundled(&self) -> bool {
        matches!(self, Source::Bundled)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Explicit(p) => write!(f, "from {} (--data)", p.display()),
            Source::Env(p) => write!(f, "from {} ($AEZOO_DATA)", p.display()),
            Source::UserCache(p) => write!(f, "from {} (user cache)", p.display()),
            Source::System(p) => write!(f, "from {} (system)", p.display()),
            Source::Hub { repo, downloaded } => write!(
                f,
                "from the Hugging Face Hub dataset {repo} ({})",
                if *downloaded { "downloaded" } else { "hf-hub cache" }
            ),
            Source::Bundled => write!(f, "the subset bundled with aezoo"),
        }
    }
}

/// Where to look; [`Locator::from_env`] fills it from the environment, tests
/// fill it by hand.
#[derive(Clone, Debug, Default)]
pub struct Locator {
    /// `--data DIR`.
    pub explicit: Option<PathBuf>,
    /// `$AEZOO_DATA`.
    pub env_dir: Option<PathBuf>,
    /// The user cache root (data sets live in `<root>/<name>`).
    pub user_cache: Option<PathBuf>,
    /// System data roots; a data set lives in `<root>/<name>` (Debian's
    /// `dataset-fashion-mnist` installs `/usr/share/datasets/fashion-mnist`).
    pub system_roots: Vec<PathBuf>,
    /// The hf-hub cache folder; `None` skips the Hub.
    pub hub_cache: Option<PathBuf>,
    /// Whether a Hub download may be attempted (never under `HF_HUB_OFFLINE`).
    pub download: bool,
}

impl Locator {
    /// The chain as a user's environment defines it.
    pub fn from_env(explicit: Option<PathBuf>, download: bool) -> Self {
        let user_cache = aezoo_env::path("XDG_CACHE_HOME")
            .or_else(|| aezoo_env::path("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("aezoo"));
        Self {
            explicit,
            env_dir: aezoo_env::path("AEZOO_DATA"),
            user_cache,
            system_roots: vec![PathBuf::from(SYSTEM_ROOT)],
            hub_cache: Some(hub::default_cache_dir()),
            download: (download || aezoo_env::flag("AEZOO_DOWNLOAD")) && !aezoo_env::flag("HF_HUB_OFFLINE"),
        }
    }

    /// A chain that only knows the bundled subsets (and `explicit`).
    pub fn bundled_only() -> Self {
        Self::default()
    }

    /// Resolves `id` through the chain and loads it.
    pub fn load(&self, id: DatasetId) -> Result<Splits> {
        if let Some(dir) = &self.explicit {
            let found = find_idx_dir(dir, id).ok_or_else(|| DataError::NotFound {
                dataset: id.name().into(),
                dir: dir.clone(),
                missing: missing_files(dir, id),
            })?;
            return load_idx_dir(&found, id, Source::Explicit(found.clone()));
        }
        if let Some(dir) = &self.env_dir {
            if let Some(found) = find_idx_dir(dir, id) {
                return load_idx_dir(&found, id, Source::Env(found.clone()));
            }
            tracing::debug!("{id}: not in $AEZOO_DATA={}", dir.display());
        }
        if let Some(root) = &self.user_cache {
            if let Some(found) = find_idx_dir(&root.join(id.name()), id) {
                return load_idx_dir(&found, id, Source::UserCache(found.clone()));
            }
        }
        for root in &self.system_roots {
            if let Some(found) = find_idx_dir(&root.join(id.name()), id) {
                return load_idx_dir(&found, id, Source::System(found.clone()));
            }
        }
        if let Some(cache) = &self.hub_cache {
            if let Some(splits) = hub::load_cached(cache, id)? {
                return Ok(splits);
            }
            if self.download {
                return hub::download(id);
            }
        }
        bundled::load(id)
    }
}

fn has_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    let raw = dir.join(stem);
    if raw.is_file() {
        return Some(raw);
    }
    let gz = dir.join(format!("{stem}.gz"));
    gz.is_file().then_some(gz)
}

/// `dir` or `dir/<name>` if it holds all four IDX files.
pub fn find_idx_dir(dir: &Path, id: DatasetId) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join(id.name())]
        .into_iter()
        .find(|d| IDX_FILES.iter().all(|f| has_file(d, f).is_some()))
}

fn missing_files(dir: &Path, id: DatasetId) -> String {
    let sub = dir.join(id.name());
    let look = if sub.is_dir() { sub } else { dir.to_path_buf() };
    let missing: Vec<String> = IDX_FILES
        .iter()
        .filter(|f| has_file(&look, f).is_none())
        .map(|f| format!("{f}[.gz]"))
        .collect();
    format!(
        "{} (looked in {} and {}/{})",
        missing.join(", "),
        dir.display(),
        dir.display(),
        id.name()
    )
}

/// Loads the four IDX files of a folder.
pub fn load_idx_dir(dir: &Path, id: DatasetId, source: Source) -> Result<Splits> {
    let file = |stem: &str| {
        has_file(dir, stem).ok_or_else(|| DataError::NotFound {
            dataset: id.name().into(),
            dir: dir.to_path_buf(),
            missing: format!("{stem}[.gz]"),
        })
    };
    let train = pair(
        idx::read_images(&file(IDX_FILES[0])?)?,
        idx::read_labels(&file(IDX_FILES[1])?)?,
        &file(IDX_FILES[1])?,
    )?;
    let test_images = file(IDX_FILES[2])?;
    let test = pair(
        idx::read_images(&test_images)?,
        idx::read_labels(&file(IDX_FILES[3])?)?,
        &file(IDX_FILES[3])?,
    )?;
    // The splits are of one image shape: a test file of another shape with
    // the same byte count is refused here, naming it, not later in eval.
    if test.image_shape() != train.image_shape() {
        return Err(DataError::Format {
            path: test_images,
            what: format!(
                "images of {:?}, but the training images are {:?}",
                test.image_shape(),
                train.image_shape()
            ),
        });
    }
    Ok(Splits {
        name: id.name().into(),
        train,
        test,
        source,
    })
}

/// Joins an image file and its label file, checking the counts agree.
pub(crate) fn pair(images: idx::IdxImages, labels: Vec<u8>, label_path: &Path) -> Result<ImageSet> {
    if labels.len() != images.count {
        return Err(DataError::Format {
            path: label_path.to_path_buf(),
            what: format!(
                "{} labels, but the image file has {} images",
                labels.len(),
                images.count
            ),
        });
    }
    ImageSet::new(images.pixels, labels, images.count, [1, images.rows, images.cols])
}
