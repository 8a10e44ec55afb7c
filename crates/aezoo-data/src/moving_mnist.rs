//! Moving MNIST (Srivastava, Mansimov & Salakhutdinov 2015): clips of two
//! handwritten digits bouncing inside a square frame.
//!
//! Two sources. The seeded generator follows the paper's construction
//! (`GetRandomTrajectory` of its `data_handler.py`): each digit starts at a
//! uniform position in the unit square, moves in a uniform direction by
//! `step_length` per frame, reflects off the walls, is drawn at
//! `⌊(size − 28)·pos⌋`, and overlapping digits combine by `max`; training clips
//! use training digits, test clips test digits, each from its own RNG stream,
//! so the test set does not change with the number of training clips. The
//! loader reads the published `mnist_test_seq.npy` (`uint8`, shape
//! `(frames, clips, height, width)`, C order).
//!
//! A clip is an [`ImageSet`] item with one channel per frame:
//! `(frames, size, size)` bytes, so batches are `(b, frames, h, w)`.

use std::path::{Path, PathBuf};

use aezoo_nn::Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::{ImageSet, Splits};
use crate::error::{DataError, Result};
use crate::source::{DatasetId, Locator, Source};

/// The file name of the published set.
pub const NPY_FILE: &str = "mnist_test_seq.npy";

/// The RNG streams of the generator (train and test clips).
const TRAIN_STREAM: u64 = 0x4d4d_0001;
const TEST_STREAM: u64 = 0x4d4d_0002;

/// How Moving MNIST clips are made or read (`data.moving_mnist`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MovingMnistConfig {
    /// Frames per clip.
    #[serde(default = "default_frames")]
    pub frames: usize,
    /// Frame height and width.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Digits per clip.
    #[serde(default = "default_digits")]
    pub digits: usize,
    /// Distance moved per frame, as a fraction of the free span `size − 28`.
    #[serde(default = "default_step")]
    pub step_length: f64,
    /// Generated training clips.
    pub train_clips: usize,
    /// Generated test clips, or the clips held out of the `.npy` file (its last ones).
    pub test_clips: usize,
}

fn default_frames() -> usize {
    20
}
fn default_size() -> usize {
    64
}
fn default_digits() -> usize {
    2
}
fn default_step() -> f64 {
    0.1
}

impl Default for MovingMnistConfig {
    fn default() -> Self {
        Self {
            frames: 20,
            size: 64,
            digits: 2,
            step_length: 0.1,
            train_clips: 1000,
            test_clips: 200,
        }
    }
}

/// `n` clips generated from `digits` (28 × 28, one channel) with `rng`.
pub fn generate(digits: &ImageSet, n: usize, cfg: &MovingMnistConfig, rng: &mut Rng) -> Result<ImageSet> {
    let [c, dh, dw] = digits.image_shape();
    if c != 1 || digits.is_empty() {
        return Err(DataError::Invalid(format!(
            "moving-mnist: needs one-channel digits, got {} images of {c}x{dh}x{dw}",
            digits.len()
        )));
    }
    let (t, s) = (cfg.frames, cfg.size);
    if s < dh.max(dw) || t == 0 || !(cfg.step_length.is_finite() && cfg.step_length > 0.0) {
        return Err(DataError::Invalid(format!(
            "moving-mnist: frames {t}, size {s} (at least the digit size {dh}x{dw}) and step_length {} (> 0) are required",
            cfg.step_length
        )));
    }
    let total = aezoo_nn::limits::product(&[n, t, s, s]).unwrap_or(usize::MAX);
    if total as u64 > aezoo_nn::limits::MAX_DATASET_BYTES {
        return Err(DataError::Invalid(format!(
            "moving-mnist: {n} clips of {t} frames of {s}x{s} are {total} bytes, above the limit of {} (aezoo_nn::limits); lower data.moving_mnist.train_clips, test_clips, frames or size",
            aezoo_nn::limits::MAX_DATASET_BYTES
        )));
    }
    let clip = t * s * s;
    let mut pixels = vec![0u8; total];
    let mut labels = Vec::with_capacity(n);
    let (span_y, span_x) = ((s - dh) as f64, (s - dw) as f64);
    for (ci, out) in pixels.chunks_mut(clip).enumerate() {
        for d in 0..cfg.digits {
            let k = rng.below(digits.len() as u64) as usize;
            if d == 0 {
                labels.push(digits.labels().get(k).copied().unwrap_or(0));
            }
            let img = digits.image(k);
            let (mut y, mut x) = (rng.uniform(), rng.uniform());
            let theta = rng.uniform() * 2.0 * std::f64::consts::PI;
            let (mut vy, mut vx) = (theta.sin(), theta.cos());
            for f in 0..t {
                y += vy * cfg.step_length;
                x += vx * cfg.step_length;
                if x <= 0.0 {
                    x = 0.0;
                    vx = -vx;
                }
                if x >= 1.0 {
                    x = 1.0;
                    vx = -vx;
                }
                if y <= 0.0 {
                    y = 0.0;
                    vy = -vy;
                }
                if y >= 1.0 {
                    y = 1.0;
                    vy = -vy;
                }
                let (top, left) = ((span_y * y) as usize, (span_x * x) as usize);
                let frame = &mut out[f * s * s..(f + 1) * s * s];
                for r in 0..dh {
                    let row = &mut frame[(top + r) * s + left..(top + r) * s + left + dw];
                    for (p, &v) in row.iter_mut().zip(&img[r * dw..(r + 1) * dw]) {
                        *p = (*p).max(v);
                    }
                }
            }
        }
        debug_assert_eq!(labels.len(), ci + 1);
    }
    ImageSet::new(pixels, labels, n, [t, s, s])
}

/// Reads a `.npy` file in the published layout `(frames, clips, h, w)`,
/// `uint8`, C order, into clips of `(frames, h, w)`.
pub fn load_npy(path: &Path) -> Result<ImageSet> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > aezoo_nn::limits::MAX_DATASET_BYTES {
        return Err(npy_err(
            path,
            format!(
                "{len} bytes, above the limit of {} (aezoo_nn::limits)",
                aezoo_nn::limits::MAX_DATASET_BYTES
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy(&bytes, path)
}

fn npy_err(path: &Path, what: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The value of `'key':` in a `.npy` header dictionary, up to the next `,`
/// at bracket depth zero.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    None
}

/// [`load_npy`] on bytes already read (`path` names them in errors).
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<ImageSet> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(npy_err(path, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(npy_err(path, "truncated .npy header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        _ => {
            return Err(npy_err(
                path,
                format!(".npy format version {major}.{minor} is not supported"),
            ))
        }
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .ok_or_else(|| npy_err(path, format!("truncated .npy header: {hlen} bytes announced")))?;
    let header = std::str::from_utf8(header).map_err(|_| npy_err(path, ".npy header is not text"))?;
    // numpy ends the header with one newline; any other control character
    // is damage (and would break the messages that quote the header).
    if header.trim_end_matches('\n').chars().any(char::is_control) {
        return Err(npy_err(path, ".npy header holds control characters: damaged"));
    }
    let descr = header_value(header, "descr").ok_or_else(|| npy_err(path, ".npy header has no 'descr'"))?;
    // Exactly what numpy writes for uint8; a bool array or another
    // spelling is refused, not reinterpreted.
    if descr.trim_matches(|c| c == '\'' || c == '"') != "|u1" {
        return Err(npy_err(
            path,
            format!("dtype {descr}: Moving MNIST is uint8 (|u1); convert with arr.astype(np.uint8)"),
        ));
    }
    match header_value(header, "fortran_order") {
        Some("False") => {}
        Some(v) => return Err(npy_err(path, format!("fortran_order {v}: expected C order (False)"))),
        None => return Err(npy_err(path, ".npy header has no 'fortran_order'")),
    }
    let shape_s = header_value(header, "shape").ok_or_else(|| npy_err(path, ".npy header has no 'shape'"))?;
    let shape: Vec<usize> = shape_s
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| npy_err(path, format!("shape {shape_s} is not a tuple of sizes")))?;
    let &[t, n, h, w] = shape.as_slice() else {
        return Err(npy_err(
            path,
            format!(
                "shape {shape_s}: expected 4 axes (frames, clips, height, width) as in the published mnist_test_seq.npy (20, 10000, 64, 64)"
            ),
        ));
    };
    if t == 0 || n == 0 || h == 0 || w == 0 {
        return Err(npy_err(path, format!("shape {shape_s} is empty")));
    }
    let data = &bytes[hstart + hlen..];
    let want = t
        .checked_mul(n)
        .and_then(|v| v.checked_mul(h))
        .and_then(|v| v.checked_mul(w))
        .ok_or_else(|| npy_err(path, format!("shape {shape_s} is too large")))?;
    if data.len() != want {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: format!("uint8 array of shape {shape_s}"),
            expected: want,
            found: data.len(),
        });
    }
    // (t, n, h, w) -> (n, t, h, w)
    let plane = h * w;
    let mut pixels = vec![0u8; want];
    for f in 0..t {
        for c in 0..n {
            let src = &data[(f * n + c) * plane..(f * n + c + 1) * plane];
            pixels[(c * t + f) * plane..(c * t + f + 1) * plane].copy_from_slice(src);
        }
    }
    ImageSet::new(pixels, Vec::new(), n, [t, h, w])
}

/// Where a `.npy` was found: `--data` (a file or a folder holding
/// `mnist_test_seq.npy`), `$AEZOO_DATA`, the user cache (`moving-mnist/`).
fn find_npy(locator: &Locator) -> Result<Option<(PathBuf, Source)>> {
    if let Some(p) = &locator.explicit {
        let file = if p.is_dir() { p.join(NPY_FILE) } else { p.clone() };
        if !file.is_file() {
            return Err(DataError::NotFound {
                dataset: "moving-mnist".into(),
                dir: p.clone(),
                missing: format!("{NPY_FILE} (the published Moving MNIST; without --data the clips are generated)"),
            });
        }
        return Ok(Some((file.clone(), Source::Explicit(file))));
    }
    let candidates = [
        locator.env_dir.clone().map(|d| (d, true)),
        locator.user_cache.clone().map(|d| (d, false)),
    ];
    for (dir, env) in candidates.into_iter().flatten() {
        for f in [dir.join(NPY_FILE), dir.join("moving-mnist").join(NPY_FILE)] {
            if f.is_file() {
                let src = if env {
                    Source::Env(f.clone())
                } else {
                    Source::UserCache(f.clone())
                };
                return Ok(Some((f, src)));
            }
        }
    }
    Ok(None)
}

/// Moving MNIST through the chain: the published `.npy` where one is found
/// (its last `test_clips` clips held out), else clips generated from the
/// MNIST digits the locator finds (full MNIST, or the bundled 10,000).
pub fn load(locator: &Locator, cfg: &MovingMnistConfig, seed: u64) -> Result<Splits> {
    if let Some((file, source)) = find_npy(locator)? {
        let all = load_npy(&file)?;
        let n = all.len();
        if cfg.test_clips == 0 || cfg.test_clips >= n {
            return Err(DataError::Invalid(format!(
                "{}: {n} clips; data.moving_mnist.test_clips ({}) must be between 1 and {}",
                file.display(),
                cfg.test_clips,
                n - 1
            )));
        }
        let train_n = (n - cfg.test_clips).min(if cfg.train_clips == 0 {
            usize::MAX
        } else {
            cfg.train_clips
        });
        return Ok(Splits {
            name: "moving-mnist".into(),
            train: all.slice(0, train_n),
            test: all.slice(n - cfg.test_clips, cfg.test_clips),
            source,
        });
    }
    let digits = Locator {
        explicit: None,
        ..locator.clone()
    }
    .load(DatasetId::Mnist)?;
    let train = generate(
        &digits.train,
        cfg.train_clips,
        cfg,
        &mut Rng::derived(seed, TRAIN_STREAM),
    )?;
    let test = generate(&digits.test, cfg.test_clips, cfg, &mut Rng::derived(seed, TEST_STREAM))?;
    Ok(Splits {
        name: format!(
            "moving-mnist (generated from {} MNIST digits)",
            digits.train.len() + digits.test.len()
        ),
        train,
        test,
        source: digits.source,
    })
}
