//! The Hugging Face Hub link of the data chain: the parquet conversion of a
//! data set (`refs/convert/parquet`), as candle-datasets uses it.
//!
//! A cached copy is found through hf-hub with `local_files_only`, so no
//! network is touched and the layout hf-hub writes (`HF_HUB_CACHE`, `HF_HOME`)
//! is honoured; the parquet rows (`image.bytes` PNG, `label`) are decoded here
//! with errors that name the file, since candle-datasets unwraps on a bad
//! image. A download goes through `candle_datasets::vision`, which fills the
//! same cache.

use std::path::{Path, PathBuf};

use candle_core::DType;
use hf_hub::{HFClient, HFError};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::dataset::{ImageSet, Splits};
use crate::error::{DataError, Result};
use crate::source::{DatasetId, Source};

/// The revision holding the Hub's automatic parquet conversion.
pub const PARQUET_REVISION: &str = "refs/convert/parquet";

/// The hf-hub cache folder the environment selects (`HF_HUB_CACHE`,
/// `HF_HOME/hub`, `~/.cache/huggingface/hub`).
pub fn default_cache_dir() -> PathBuf {
    hf_hub::resolve_cache_dir()
}

/// The cached path of `file` in dataset `repo` at the parquet revision, if the
/// hf-hub cache under `cache_dir` has it. Never touches the network.
pub fn cached_file(cache_dir: &Path, repo: &str, file: &str) -> Result<Option<PathBuf>> {
    let client = HFClient::builder()
        .cache_dir(cache_dir)
        .build_sync()
        .map_err(|e| DataError::Hub(format!("cannot create a client: {e}")))?;
    let (owner, name) = hf_hub::split_id(repo);
    let res = client
        .dataset(owner, name)
        .download_file()
        .filename(file)
        .revision(PARQUET_REVISION)
        .local_files_only(true)
        .send();
    match res {
        Ok(p) => Ok(Some(p)),
        Err(HFError::LocalEntryNotFound { .. }) => Ok(None),
        Err(e) => Err(DataError::Hub(format!("{repo}/{file}: {e}"))),
    }
}

/// Loads `id` from the hf-hub cache, if both parquet files are there.
pub fn load_cached(cache_dir: &Path, id: DatasetId) -> Result<Option<Splits>> {
    let (repo, train_file, test_file) = id.hub_files();
    let (Some(train), Some(test)) = (
        cached_file(cache_dir, repo, train_file)?,
        cached_file(cache_dir, repo, test_file)?,
    ) else {
        return Ok(None);
    };
    Ok(Some(Splits {
        name: id.name().into(),
        train: read_parquet(&train)?,
        test: read_parquet(&test)?,
        source: Source::Hub {
            repo: repo.into(),
            downloaded: false,
        },
    }))
}

/// Reads an MNIST-like parquet file: rows of `image: {bytes: PNG, path}` and
/// `label: int64`, 28×28 grey images.
pub fn read_parquet(path: &Path) -> Result<ImageSet> {
    let bad = |what: String| DataError::Format {
        path: path.to_path_buf(),
        what,
    };
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(|e| bad(format!("not a parquet file: {e}")))?;
    let rows = reader.metadata().file_metadata().num_rows().max(0) as u64;
    // The footer's row count, within the budget before anything is reserved.
    aezoo_nn::limits::within("rows of 784 pixels:", rows, aezoo_nn::limits::MAX_DATASET_BYTES / 784)
        .map_err(|m| bad(format!("num_rows: {m}")))?;
    let rows = rows as usize;
    let mut pixels = Vec::with_capacity(rows * 784);
    let mut labels = Vec::with_capacity(rows);
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| bad(format!("cannot read rows: {e}")))?;
    for (r, row) in iter.enumerate() {
        let row = row.map_err(|e| bad(format!("row {r}: {e}")))?;
        let (mut image, mut label) = (None, None);
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("image", Field::Group(g)) => {
                    for (n, f) in g.get_column_iter() {
                        if let ("bytes", Field::Bytes(b)) = (n.as_str(), f) {
                            image = Some(b.data().to_vec());
                        }
                    }
                }
                ("label", Field::Long(l)) => label = Some(*l),
                ("label", Field::Int(l)) => label = Some(*l as i64),
                _ => {}
            }
        }
        let image = image.ok_or_else(|| bad(format!("row {r}: no `image.bytes` column")))?;
        let label = label.ok_or_else(|| bad(format!("row {r}: no integer `label` column")))?;
        let img = crate::image_file::decode_image(&image, path)
            .map_err(|e| match e {
                DataError::Format { what, .. } => bad(format!("row {r}: {what}")),
                other => other,
            })?
            .to_luma8();
        if img.dimensions() != (28, 28) {
            return Err(bad(format!(
                "row {r}: expected a 28x28 image, found {}x{}",
                img.width(),
                img.height()
            )));
        }
        if !(0..=255).contains(&label) {
            return Err(bad(format!("row {r}: label {label} out of range")));
        }
        pixels.extend_from_slice(img.as_raw());
        labels.push(label as u8);
    }
    let n = labels.len();
    ImageSet::new(pixels, labels, n, [1, 28, 28])
}

/// Downloads `id` from the Hub through candle-datasets (which caches it).
pub fn download(id: DatasetId) -> Result<Splits> {
    let (repo, _, _) = id.hub_files();
    tracing::info!("{id}: downloading from the Hugging Face Hub ({repo})");
    let ds = match id {
        DatasetId::Mnist => candle_datasets::vision::mnist::load(),
        DatasetId::FashionMnist => candle_datasets::vision::fashion_mnist::load(),
    }
    .map_err(|e| {
        DataError::Hub(format!(
            "{repo}: download failed ({e}); offline? set HF_HUB_OFFLINE=1 to skip the Hub"
        ))
    })?;
    let to_set = |images: &candle_core::Tensor, labels: &candle_core::Tensor| -> Result<ImageSet> {
        let n = images.dim(0)?;
        let px: Vec<u8> = (images * 255.0)?
            .round()?
            .clamp(0f32, 255f32)?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_vec1()?;
        let lb: Vec<u8> = labels.to_dtype(DType::U8)?.to_vec1()?;
        ImageSet::new(px, lb, n, [1, 28, 28])
    };
    Ok(Splits {
        name: id.name().into(),
        train: to_set(&ds.train_images, &ds.train_labels)?,
        test: to_set(&ds.test_images, &ds.test_labels)?,
        source: Source::Hub {
            repo: repo.into(),
            downloaded: true,
        },
    })
}
