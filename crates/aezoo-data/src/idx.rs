//! The IDX file format of MNIST and Fashion-MNIST (LeCun et al. 1998), raw or
//! gzipped — candle-datasets reads only the raw files.
//!
//! Layout: a 4-byte magic `0x00 0x00 <type> <ndim>` (type `0x08` = u8), then
//! `ndim` big-endian u32 sizes, then the data in C order. Images are
//! `ndim = 3` (count, rows, cols), labels `ndim = 1`. Every check failure is an
//! error naming the file and what was expected versus found.

use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

/// An IDX image file: `count` images of `rows × cols` u8 pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Reads the whole file, un-gzipping it if it starts with the gzip magic;
/// the file and what it inflates to stay within
/// [`aezoo_nn::limits::MAX_DECOMPRESSED_BYTES`].
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len > aezoo_nn::limits::MAX_DECOMPRESSED_BYTES {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            what: format!(
                "{len} bytes, above the limit of {} (aezoo_nn::limits)",
                aezoo_nn::limits::MAX_DECOMPRESSED_BYTES
            ),
        });
    }
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_maybe_gz(raw, path)
}

/// Un-gzips `raw` if it starts with the gzip magic (`1f 8b`); `path` names it
/// in errors.
pub fn decode_maybe_gz(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    decode_maybe_gz_within(raw, path, aezoo_nn::limits::MAX_DECOMPRESSED_BYTES)
}

/// [`decode_maybe_gz`] with the inflated size capped at `limit` bytes: a
/// stream that inflates past it is an error, and no more than `limit + 1`
/// bytes are ever held.
pub fn decode_maybe_gz_within(raw: Vec<u8>, path: &Path, limit: u64) -> Result<Vec<u8>> {
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit as usize + 1));
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::Format {
                path: path.to_path_buf(),
                what: format!("corrupt or truncated gzip stream ({e})"),
            })?;
        if out.len() as u64 > limit {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                what: format!("inflates to more than {limit} bytes (aezoo_nn::limits)"),
            });
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(bytes: &[u8], path: &Path, want_ndim: u8, kind: &str) -> Result<Vec<usize>> {
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: "the 4-byte IDX magic".into(),
            expected: 4,
            found: bytes.len(),
        });
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let want = 0x0000_0800u32 | want_ndim as u32;
    if magic != want {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            what: format!(
                "not an IDX {kind} file: expected magic 0x{want:08x} (u8, {want_ndim} dims), found 0x{magic:08x}"
            ),
        });
    }
    let hlen = 4 + 4 * want_ndim as usize;
    if bytes.len() < hlen {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: format!("the IDX header of {want_ndim} sizes"),
            expected: hlen,
            found: bytes.len(),
        });
    }
    Ok((0..want_ndim as usize)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect())
}

fn check_len(bytes: &[u8], path: &Path, hlen: usize, n: usize, what: String) -> Result<()> {
    let expected = hlen.saturating_add(n);
    if bytes.len() < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what,
            expected,
            found: bytes.len(),
        });
    }
    if bytes.len() > expected {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            what: format!(
                "{} bytes after the data the header announces ({what}, {expected} bytes in all): not an IDX file, or a corrupt one",
                bytes.len() - expected
            ),
        });
    }
    Ok(())
}

/// Parses IDX image bytes (already un-gzipped).
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<IdxImages> {
    let dims = header(bytes, path, 3, "images")?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    let n = count
        .checked_mul(rows)
        .and_then(|x| x.checked_mul(cols))
        .ok_or_else(|| DataError::Format {
            path: path.to_path_buf(),
            what: format!("implausible header: {count} images of {rows}x{cols}"),
        })?;
    check_len(bytes, path, 16, n, format!("{count} images of {rows}x{cols}"))?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: bytes[16..].to_vec(),
    })
}

/// Parses IDX label bytes (already un-gzipped).
pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let dims = header(bytes, path, 1, "labels")?;
    let count = dims[0];
    check_len(bytes, path, 8, count, format!("{count} labels"))?;
    Ok(bytes[8..].to_vec())
}

/// Reads an IDX image file, raw or gzipped.
pub fn read_images(path: &Path) -> Result<IdxImages> {
    parse_images(&read_maybe_gz(path)?, path)
}

/// Reads an IDX label file, raw or gzipped.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    parse_labels(&read_maybe_gz(path)?, path)
}

/// Serialises images to IDX bytes (un-gzipped).
pub fn encode_images(images: &IdxImages) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + images.pixels.len());
    out.extend_from_slice(&0x0000_0803u32.to_be_bytes());
    for d in [images.count, images.rows, images.cols] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    out
}

/// Serialises labels to IDX bytes (un-gzipped).
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&0x0000_0801u32.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}
