//! Image files (PNG, JPEG, GIF) as model input: decoded, converted to the
//! model's channels (grey or RGB), resized to its height and width, scaled to
//! [0, 1]. An unreadable file is an error naming it.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{DataError, Result};
use crate::folder::{fit_image, to_chw, Fit};

/// Options of [`load_image`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ImageOptions {
    /// `1 − x`: for dark-on-light pictures given to a model of light-on-dark
    /// images (MNIST, Fashion-MNIST).
    pub invert: bool,
    /// How the picture is brought to the model's size (a folder-trained
    /// model reads files as its training data was read).
    pub fit: Fit,
}

/// Decodes an image file, its size read from the header and checked
/// against the budget ([`aezoo_nn::limits::MAX_IMAGE_PIXELS`],
/// [`aezoo_nn::limits::MAX_IMAGE_SIDE`]) before any pixel is decoded; a
/// decoder's error on one line, naming the file.
pub fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let reader = |p: &Path| {
        image::ImageReader::open(p)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| DataError::Io {
                path: p.to_path_buf(),
                source: e,
            })
    };
    let (w, h) = reader(path)?.into_dimensions().map_err(|e| decode_err(path, &e))?;
    check_dims(path, w, h)?;
    reader(path)?.decode().map_err(|e| decode_err(path, &e))
}

/// Decodes an image held in memory (`path` names its source in errors),
/// its size checked from the header first, as [`open_image`].
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<image::DynamicImage> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DataError::Io {
                path: path.to_path_buf(),
                source: e,
            })
    };
    let (w, h) = reader()?.into_dimensions().map_err(|e| decode_err(path, &e))?;
    check_dims(path, w, h)?;
    reader()?.decode().map_err(|e| decode_err(path, &e))
}

fn decode_err(path: &Path, e: &image::ImageError) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        what: format!(
            "cannot decode the image ({})",
            aezoo_nn::limits::one_line(&e.to_string())
        ),
    }
}

fn check_dims(path: &Path, w: u32, h: u32) -> Result<()> {
    use aezoo_nn::limits::{MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE};
    let (w, h) = (w as usize, h as usize);
    if w == 0 || h == 0 || w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE || w * h > MAX_IMAGE_PIXELS {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            what: format!(
                "a {w}x{h} image ({} pixels) is beyond the limits of {MAX_IMAGE_SIDE} per side and {MAX_IMAGE_PIXELS} pixels (aezoo_nn::limits)",
                w * h
            ),
        });
    }
    Ok(())
}

/// Reads `path` as a `(1, c, h, w)` f32 tensor in [0, 1] for a model whose
/// images are `[c, h, w]` (c = 1 or 3).
pub fn load_image(path: &Path, [c, h, w]: [usize; 3], opts: ImageOptions, dev: &Device) -> Result<Tensor> {
    let img = open_image(path)?;
    let img = if (img.width() as usize, img.height() as usize) != (w, h) {
        fit_image(&img, w as u32, h as u32, opts.fit)
    } else {
        img
    };
    let px = to_chw(&img, c).ok_or_else(|| {
        DataError::Invalid(format!(
            "{}: the model takes {c}-channel images; only 1 (grey) and 3 (RGB) can be read from files",
            path.display()
        ))
    })?;
    let v: Vec<f32> = px
        .iter()
        .map(|&p| {
            let x = p as f32 / 255.0;
            if opts.invert {
                1.0 - x
            } else {
                x
            }
        })
        .collect();
    Ok(Tensor::from_vec(v, (1, c, h, w), &Device::Cpu)?.to_device(dev)?)
}

/// An image file at its own size as `(1, c, h, w)` in `[0, 1]` (grey for
/// `c = 1`, RGB for `c = 3`): what a codec compresses.
pub fn load_image_native(path: &Path, c: usize, dev: &Device) -> Result<Tensor> {
    let img = open_image(path)?;
    let (h, w) = (img.height() as usize, img.width() as usize);
    let px = to_chw(&img, c).ok_or_else(|| {
        DataError::Invalid(format!(
            "{}: the model takes {c}-channel images; only 1 (grey) and 3 (RGB) can be read from files",
            path.display()
        ))
    })?;
    let v: Vec<f32> = px.iter().map(|&p| p as f32 / 255.0).collect();
    Ok(Tensor::from_vec(v, (1, c, h, w), &Device::Cpu)?.to_device(dev)?)
}
