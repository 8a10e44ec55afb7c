//! Pictures of a run: image grids (reconstructions, samples) and the loss
//! curve, written as PNG (atomically).
//!
//! The loss plot is drawn with plotters on an in-memory bitmap; text uses the
//! DejaVu Sans font bundled in `assets/` (see its licence there), so no system
//! font library is needed.

use std::path::Path;
use std::sync::Once;

use aezoo_nn::params::write_atomic;
use candle_core::{DType, Device, Tensor};
use image::{ImageBuffer, Rgb, RgbImage};
use plotters::prelude::*;

use crate::error::{Result, TrainError};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The font is a valid TTF compiled in; failure here is a build bug.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn other(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Other(format!("{}: {e}", path.display()))
}

fn write_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| other(path, e))?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// At most this many frames of a clip are drawn side by side in a tile.
pub const CLIP_FRAMES_SHOWN: usize = 10;

/// `(n, c, h, w)` in [0, 1] → n RGB tiles of `h × w` u8 pixels. A clip
/// (`c` frames, neither 1 nor 3 channels) becomes one wide tile: up to
/// [`CLIP_FRAMES_SHOWN`] evenly spaced frames side by side.
fn tiles(images: &Tensor) -> Result<(usize, usize, usize, Vec<Vec<[u8; 3]>>)> {
    let (n, c, h, w) = images.dims4()?;
    if c != 1 && c != 3 {
        let shown: Vec<usize> = if c <= CLIP_FRAMES_SHOWN {
            (0..c).collect()
        } else {
            (0..CLIP_FRAMES_SHOWN).map(|k| k * c / CLIP_FRAMES_SHOWN).collect()
        };
        let frames = images.index_select(
            &Tensor::new(shown.iter().map(|&f| f as u32).collect::<Vec<_>>(), images.device())?,
            1,
        )?;
        let f = shown.len();
        // (n, f, h, w) -> (n, 1, h, f·w)
        let strip = frames.permute((0, 2, 1, 3))?.reshape((n, 1, h, f * w))?;
        return tiles(&strip);
    }
    let px: Vec<f32> = images
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .clamp(0f32, 1f32)?
        .flatten_all()?
        .to_vec1()?;
    let q = |v: f32| (v * 255.0).round() as u8;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let base = i * c * h * w;
        let tile = (0..h * w)
            .map(|p| match c {
                1 => {
                    let g = q(px[base + p]);
                    [g, g, g]
                }
                _ => [q(px[base + p]), q(px[base + h * w + p]), q(px[base + 2 * h * w + p])],
            })
            .collect();
        out.push(tile);
    }
    Ok((n, h, w, out))
}

/// The first image of `(n, c, h, w)` in [0, 1] as a plain `w × h` PNG (no
/// gutter, no scaling; grey for one channel, else RGB): what `aezoo decode`
/// and `aezoo decompress` write.
pub fn save_image(images: &Tensor, path: &Path) -> Result<()> {
    let first = images.narrow(0, 0, 1)?;
    let (_, c, h, w) = first.dims4()?;
    if c != 1 && c != 3 {
        // A clip: its frames side by side.
        let (_, h, w, tiles) = tiles(&first)?;
        let img: RgbImage = ImageBuffer::from_fn(w as u32, h as u32, |x, y| Rgb(tiles[0][y as usize * w + x as usize]));
        return write_png(&img, path);
    }
    // Read in bands of rows: a photograph's PNG costs its bytes, not float
    // copies of the image.
    let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let mut bytes = vec![0u8; c * h * w];
    for r in (0..h).step_by(256) {
        let rows = 256.min(h - r);
        let band: Vec<f32> = first
            .narrow(2, r, rows)?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        for y in 0..rows {
            for x in 0..w {
                for ch in 0..c {
                    bytes[((r + y) * w + x) * c + ch] = q(band[(ch * rows + y) * w + x]);
                }
            }
        }
    }
    if c == 1 {
        // One channel stays one channel (an 8-bit grey PNG).
        let img = image::GrayImage::from_raw(w as u32, h as u32, bytes)
            .ok_or_else(|| other(path, "image buffer of the wrong size"))?;
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| other(path, e))?;
        write_atomic(path, &png)?;
        return Ok(());
    }
    let img =
        RgbImage::from_raw(w as u32, h as u32, bytes).ok_or_else(|| other(path, "image buffer of the wrong size"))?;
    write_png(&img, path)
}

/// Lays out rows of tiles (each row a list of tile indices, `None` = blank)
/// with a 2-pixel gutter, each pixel drawn as `scale × scale`.
fn compose(rows: &[Vec<Option<usize>>], tiles: &[Vec<[u8; 3]>], h: usize, w: usize, scale: usize) -> RgbImage {
    let gut = 2;
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let width = gut + cols * (w * scale + gut);
    let height = gut + rows.len() * (h * scale + gut);
    let mut img: RgbImage = ImageBuffer::from_pixel(width as u32, height as u32, Rgb([40, 40, 48]));
    for (r, row) in rows.iter().enumerate() {
        for (ci, t) in row.iter().enumerate() {
            let Some(t) = t else { continue };
            let (x0, y0) = (gut + ci * (w * scale + gut), gut + r * (h * scale + gut));
            for y in 0..h * scale {
                for x in 0..w * scale {
                    let p = tiles[*t][(y / scale) * w + x / scale];
                    img.put_pixel((x0 + x) as u32, (y0 + y) as u32, Rgb(p));
                }
            }
        }
    }
    img
}

/// A grid of `(n, c, h, w)` images in [0, 1], `cols` per row.
pub fn save_grid(images: &Tensor, cols: usize, scale: usize, path: &Path) -> Result<()> {
    let (n, h, w, t) = tiles(images)?;
    let cols = cols.max(1);
    let rows: Vec<Vec<Option<usize>>> = (0..n.div_ceil(cols))
        .map(|r| (r * cols..((r + 1) * cols).min(n)).map(Some).collect())
        .collect();
    write_png(&compose(&rows, &t, h, w, scale), path)
}

/// Rows of images, one `(n, c, h, w)` tensor per row (e.g. originals,
/// noised inputs, reconstructions), all with the same `n`.
pub fn save_rows(rows: &[Tensor], scale: usize, path: &Path) -> Result<()> {
    let (png, _, _) = rows_png(rows, scale)?;
    write_atomic(path, &png)?;
    Ok(())
}

/// [`save_rows`]'s picture as PNG bytes, with its width and height.
pub fn rows_png(rows: &[Tensor], scale: usize) -> Result<(Vec<u8>, u32, u32)> {
    let all = Tensor::cat(rows, 0)?;
    let (total, h, w, t) = tiles(&all)?;
    let n = total / rows.len().max(1);
    let layout: Vec<Vec<Option<usize>>> = if w > 3 * h {
        // Wide tiles (clips): item by item, its rows stacked.
        (0..n)
            .flat_map(|j| (0..rows.len()).map(move |r| vec![Some(r * n + j)]))
            .collect()
    } else {
        (0..rows.len())
            .map(|r| (r * n..(r + 1) * n).map(Some).collect())
            .collect()
    };
    let scale = if w > 256 { 1 } else { scale };
    let img = compose(&layout, &t, h, w, scale);
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| TrainError::Other(format!("PNG encoding: {e}")))?;
    Ok((bytes, img.width(), img.height()))
}

/// A series for [`save_loss_plot`].
pub struct Series<'a> {
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
    pub color: RGBColor,
    /// Draw the raw points faintly and a centred moving average over them.
    pub smooth: bool,
}

/// A centred moving average over about 5 % of the points (none below 20
/// points): it follows the trend without the lag of an exponential average.
fn smoothed(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let half = points.len() / 40;
    (0..points.len())
        .map(|i| {
            let (lo, hi) = (i.saturating_sub(half), (i + half + 1).min(points.len()));
            let mean = points[lo..hi].iter().map(|p| p.1).sum::<f64>() / (hi - lo) as f64;
            (points[i].0, mean)
        })
        .collect()
}

fn y_decimals(lo: f64, hi: f64) -> usize {
    let span = (hi - lo).abs();
    match span {
        s if s >= 20.0 => 0,
        s if s >= 2.0 => 1,
        s if s >= 0.2 => 2,
        s if s >= 0.02 => 3,
        _ => 4,
    }
}

/// Loss curves against optimiser steps.
pub fn save_loss_plot(title: &str, series: &[Series], path: &Path) -> Result<()> {
    save_line_plot(title, "step", "loss", series, path)
}

/// Line series against a linear x axis, with axis names.
pub fn save_line_plot(title: &str, x_desc: &str, y_desc: &str, series: &[Series], path: &Path) -> Result<()> {
    register_font();
    let (w, h) = (900u32, 540u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| other(path, e))?;
        let all: Vec<&(f64, f64)> = series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let (x0, x1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
        let (y0, y1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
        let (x0, x1) = if all.is_empty() {
            (0.0, 1.0)
        } else if x1 > x0 {
            (x0, x1)
        } else {
            (x0 - 0.5, x0 + 0.5)
        };
        let (y0, y1) = if all.is_empty() {
            (0.0, 1.0)
        } else {
            let pad = ((y1 - y0) * 0.05).max(1e-12);
            (y0 - pad, y1 + pad)
        };
        // The legend goes in the right-hand corner the curves leave free:
        // below a curve that ends high (a rate-distortion curve), above one
        // that ends low (a loss curve).
        let ends_high = series
            .first()
            .and_then(|s| s.points.iter().rev().find(|(x, y)| x.is_finite() && y.is_finite()))
            .is_some_and(|&(_, y)| y > (y0 + y1) / 2.0);
        let legend_at = if ends_high {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| other(path, e))?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(238, 238, 242))
            .x_label_formatter(&|x| format!("{x:.prec$}", prec = y_decimals(x0, x1)))
            .y_label_formatter(&|y| format!("{y:.prec$}", prec = y_decimals(y0, y1)))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| other(path, e))?;
        for s in series {
            let color = s.color;
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let line = if s.smooth {
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.mix(0.3).stroke_width(1)))
                    .map_err(|e| other(path, e))?;
                smoothed(&pts)
            } else {
                pts.clone()
            };
            let drawn = chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(|e| other(path, e))?;
            drawn
                .label(s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            if !s.smooth && pts.len() <= 60 {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| other(path, e))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(legend_at)
            .draw()
            .map_err(|e| other(path, e))?;
        root.present().map_err(|e| other(path, e))?;
    }
    let img = RgbImage::from_raw(w, h, buf).ok_or_else(|| other(path, "bitmap size mismatch"))?;
    write_png(&img, path)
}

/// Frame `t` of clips as one picture: row `j`, column `i` is frame `t` of
/// clip `j` of `columns[i]` (each `(n, frames, h, w)` in [0, 1], the same `n`),
/// e.g. originals beside reconstructions.
pub fn clip_frame(columns: &[Tensor], t: usize, scale: usize) -> Result<RgbImage> {
    let picked: Vec<Tensor> = columns
        .iter()
        .map(|c| c.narrow(1, t, 1))
        .collect::<candle_core::Result<_>>()?;
    let all = Tensor::cat(&picked, 0)?;
    let (total, h, w, tiles) = tiles(&all)?;
    let n = total / columns.len().max(1);
    let layout: Vec<Vec<Option<usize>>> = (0..n)
        .map(|j| (0..columns.len()).map(|i| Some(i * n + j)).collect())
        .collect();
    Ok(compose(&layout, &tiles, h, w, scale.max(1)))
}

/// `img` with a bar under it filled to `fraction` (e.g. epoch / epochs).
pub fn with_progress_bar(img: &RgbImage, fraction: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let bar = 6;
    let mut out: RgbImage = ImageBuffer::from_pixel(w, h + bar, Rgb([40, 40, 48]));
    image::imageops::replace(&mut out, img, 0, 0);
    let filled = ((w as f64) * fraction.clamp(0.0, 1.0)).round() as u32;
    for y in h + 1..h + bar - 1 {
        for x in 0..filled {
            out.put_pixel(x, y, Rgb([66, 133, 244]));
        }
    }
    out
}

/// An animated GIF (looping) of `frames`, each shown `delay_ms`.
pub fn save_gif(frames: &[RgbImage], delay_ms: u32, path: &Path) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, DynamicImage, Frame};
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut bytes, 10);
        enc.set_repeat(Repeat::Infinite).map_err(|e| other(path, e))?;
        for f in frames {
            let rgba = DynamicImage::ImageRgb8(f.clone()).to_rgba8();
            let frame = Frame::from_parts(rgba, 0, 0, Delay::from_numer_denom_ms(delay_ms, 1));
            enc.encode_frame(frame).map_err(|e| other(path, e))?;
        }
    }
    write_atomic(path, &bytes)?;
    Ok(())
}
