//! A folder of image files as a data set: every PNG and JPEG under it (sorted
//! by path, sub-folders included), converted to the model's channels (grey or
//! RGB), brought to its size by a centre crop after scaling the short side
//! (or by stretching, or as random crops drawn anew for every training
//! batch), and split into train and validation by a seeded shuffle. A file that cannot be decoded is skipped with a warning or stops
//! the run, as the config says.

use std::path::{Path, PathBuf};

use aezoo_nn::Rng;
use image::imageops::FilterType;
use image::DynamicImage;
use serde::{Deserialize, Serialize};

use crate::dataset::{ImageSet, Picture, Splits};
use crate::error::{DataError, Result};
use crate::source::Source;

/// How an image is brought to the model's `h × w`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fit {
    /// Scale the short side to fit, then cut the centre (keeps the aspect ratio).
    #[default]
    CenterCrop,
    /// Scale both sides to fit exactly (distorts when the aspect ratio differs).
    Stretch,
    /// Training: a new random window each time an image is drawn, cut from
    /// the picture scaled so its short side is `data.folder.crop_from`;
    /// validation and inference: that picture's centre window.
    RandomCrop,
}

/// What to do with a file that cannot be decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Warn (naming the file) and leave it out.
    #[default]
    Skip,
    /// Stop with an error naming the file.
    Fail,
}

fn default_val() -> f64 {
    0.1
}

/// The `data.folder` section of a config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    /// The folder, unless `--data DIR` names another (an explicit flag wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub fit: Fit,
    /// Share of the images held out for validation (seeded by `train.seed`).
    #[serde(default = "default_val")]
    pub val_fraction: f64,
    #[serde(default)]
    pub on_error: OnError,
    /// With `random-crop`: the short side, in pixels, pictures are scaled to
    /// before crops are cut (default: twice the model's larger side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_from: Option<usize>,
    /// With `random-crop`: crops drawn from each training picture per epoch
    /// (default 1), so a folder of a few large photographs makes epochs of
    /// useful length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crops_per_picture: Option<usize>,
}

impl Default for FolderConfig {
    fn default() -> Self {
        Self {
            path: None,
            fit: Fit::CenterCrop,
            val_fraction: default_val(),
            on_error: OnError::Skip,
            crop_from: None,
            crops_per_picture: None,
        }
    }
}

/// The files a folder holds, sorted; PNG and JPEG by extension.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| DataError::Io {
            path: d.clone(),
            source,
        })?;
        for e in rd {
            let p = e
                .map_err(|source| DataError::Io {
                    path: d.clone(),
                    source,
                })?
                .path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `img` at `w × h` by `fit`.
pub fn fit_image(img: &DynamicImage, w: u32, h: u32, fit: Fit) -> DynamicImage {
    match fit {
        Fit::Stretch => img.resize_exact(w, h, FilterType::Triangle),
        Fit::CenterCrop | Fit::RandomCrop => {
            let (iw, ih) = (img.width().max(1), img.height().max(1));
            let s = (w as f64 / iw as f64).max(h as f64 / ih as f64);
            let (sw, sh) = (
                ((iw as f64 * s).round() as u32).max(w),
                ((ih as f64 * s).round() as u32).max(h),
            );
            let scaled = img.resize_exact(sw, sh, FilterType::Triangle);
            scaled.crop_imm((sw - w) / 2, (sh - h) / 2, w, h)
        }
    }
}

/// `img` as `c × h × w` bytes (c = 1 grey or 3 RGB, channel-major).
pub fn to_chw(img: &DynamicImage, c: usize) -> Option<Vec<u8>> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    match c {
        1 => Some(img.to_luma8().into_raw()),
        3 => {
            let rgb = img.to_rgb8();
            let raw = rgb.as_raw();
            Some((0..3).flat_map(|ch| (0..h * w).map(move |p| raw[p * 3 + ch])).collect())
        }
        _ => None,
    }
}

/// A loaded folder: train and validation splits, and the files of each.
#[derive(Clone, Debug)]
pub struct FolderSet {
    pub splits: Splits,
    pub train_files: Vec<PathBuf>,
    pub val_files: Vec<PathBuf>,
    /// Files left out (`on_error: skip`) and why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Loads `dir` for a model of `[c, h, w]` images.
pub fn load_folder(dir: &Path, [c, h, w]: [usize; 3], cfg: &FolderConfig, seed: u64) -> Result<FolderSet> {
    if c != 1 && c != 3 {
        return Err(DataError::Invalid(format!(
            "{}: the model takes {c}-channel images; folders give 1 (grey) or 3 (RGB)",
            dir.display()
        )));
    }
    if !(cfg.val_fraction >= 0.0 && cfg.val_fraction < 1.0) {
        return Err(DataError::Invalid(format!(
            "data.folder.val_fraction: must be in [0, 1), got {}",
            cfg.val_fraction
        )));
    }
    if !dir.is_dir() {
        return Err(DataError::NotFound {
            dataset: "image folder".into(),
            dir: dir.to_path_buf(),
            missing: "the folder itself".into(),
        });
    }
    let crop_from = cfg.crop_from.unwrap_or(2 * h.max(w));
    if cfg.fit == Fit::RandomCrop && crop_from < h.max(w) {
        return Err(DataError::Invalid(format!(
            "data.folder.crop_from: {crop_from} is smaller than the model's {h}x{w} input"
        )));
    }
    let repeat = cfg.crops_per_picture.unwrap_or(1);
    if repeat == 0 || (repeat > 1 && cfg.fit != Fit::RandomCrop) {
        return Err(DataError::Invalid(format!(
            "data.folder.crops_per_picture: {repeat}; must be >= 1, and above 1 only with fit \"random-crop\""
        )));
    }
    let files = image_files(dir)?;
    let mut kept = Vec::with_capacity(files.len());
    let per = aezoo_nn::limits::product(&[c, h, w]).unwrap_or(usize::MAX);
    let total = files.len().saturating_mul(per);
    if total as u64 > aezoo_nn::limits::MAX_DATASET_BYTES {
        return Err(DataError::Invalid(format!(
            "{}: {} images of {c}x{h}x{w} are {total} bytes, above the limit of {} (aezoo_nn::limits)",
            dir.display(),
            files.len(),
            aezoo_nn::limits::MAX_DATASET_BYTES
        )));
    }
    let mut pixels = Vec::with_capacity(total);
    let mut pictures = Vec::new();
    let mut skipped = Vec::new();
    for f in files {
        match crate::image_file::open_image(&f) {
            Ok(img) => {
                if cfg.fit == Fit::RandomCrop {
                    // The whole picture at short side `crop_from`; its centre window is the fixed image.
                    let s = crop_from as f64 / img.width().min(img.height()).max(1) as f64;
                    let (pw, ph) = (
                        ((img.width() as f64 * s).round() as u32).max(w as u32),
                        ((img.height() as f64 * s).round() as u32).max(h as u32),
                    );
                    let pic = img.resize_exact(pw, ph, FilterType::Triangle);
                    let centre = pic.crop_imm((pw - w as u32) / 2, (ph - h as u32) / 2, w as u32, h as u32);
                    pixels.extend(to_chw(&centre, c).expect("c is 1 or 3"));
                    pictures.push(Picture {
                        pixels: to_chw(&pic, c).expect("c is 1 or 3"),
                        height: ph as usize,
                        width: pw as usize,
                    });
                } else {
                    let img = fit_image(&img, w as u32, h as u32, cfg.fit);
                    pixels.extend(to_chw(&img, c).expect("c is 1 or 3"));
                }
                kept.push(f);
            }
            Err(e) => {
                let why = match e {
                    DataError::Format { what, .. } => what,
                    other => other.to_string(),
                };
                if cfg.on_error == OnError::Fail {
                    return Err(DataError::Format { path: f, what: why });
                }
                tracing::warn!("{}: {why}; skipped (data.folder.on_error = \"skip\")", f.display());
                skipped.push((f, why));
            }
        }
    }
    let n = kept.len();
    let n_val = ((n as f64) * cfg.val_fraction).round() as usize;
    if n < 2 || (cfg.val_fraction > 0.0 && (n_val == 0 || n_val == n)) {
        return Err(DataError::Invalid(format!(
            "{}: {n} readable PNG/JPEG images; need at least 2, and enough for a {} validation share",
            dir.display(),
            cfg.val_fraction
        )));
    }
    let mut rng = Rng::derived(seed, 0xf01d);
    let perm = rng.permutation(n);
    let (val_idx, train_idx) = perm.split_at(n_val);
    let pick = |idx: &[usize]| -> Result<(ImageSet, Vec<PathBuf>, Vec<usize>)> {
        let mut idx = idx.to_vec();
        idx.sort_unstable();
        let sz = c * h * w;
        let px: Vec<u8> = idx
            .iter()
            .flat_map(|&i| pixels[i * sz..(i + 1) * sz].iter().copied())
            .collect();
        let files = idx.iter().map(|&i| kept[i].clone()).collect();
        Ok((ImageSet::new(px, vec![0; idx.len()], idx.len(), [c, h, w])?, files, idx))
    };
    let (train, train_files, train_sorted) = pick(train_idx)?;
    let train = if pictures.is_empty() {
        train
    } else {
        train
            .with_crops(train_sorted.iter().map(|&i| pictures[i].clone()).collect())?
            .with_crops_per_picture(repeat)
    };
    let (test, val_files, _) = if n_val == 0 { pick(train_idx)? } else { pick(val_idx)? };
    Ok(FolderSet {
        splits: Splits {
            name: format!("folder {}", dir.display()),
            train,
            test,
            source: Source::Explicit(dir.to_path_buf()),
        },
        train_files,
        val_files,
        skipped,
    })
}
