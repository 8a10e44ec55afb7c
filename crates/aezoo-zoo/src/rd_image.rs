//! Rate-distortion evaluation of learned codecs against JPEG and WebP
//! (`aezoo rd`, `cargo xtask rd --images DIR`): every image through every
//! codec and quality setting, bits per pixel from the bytes each produces,
//! PSNR and MS-SSIM of the decoded 8-bit image, encode and decode time per
//! megapixel; mean curves per codec, the Bjøntegaard delta rate of each
//! learned codec against JPEG and WebP (two or more rate points), each learned
//! point against the anchors at matched bpp and at matched PSNR, a CSV, a
//! table and two plots. The times of libjpeg and WebP include starting their
//! command-line coders.
//!
//! Three anchors: `jpeg`, the `image` crate's baseline encoder (4:4:4 — no
//! chroma subsampling — and the standard Huffman tables); `libjpeg`,
//! libjpeg-turbo's `cjpeg -optimize` / `djpeg` (4:2:0 and optimised Huffman
//! tables: the JPEG people use, Debian package `libjpeg-turbo-progs`); and
//! `webp`, libwebp's `cwebp` / `dwebp` (package `webp`). The two external
//! ones are skipped with a notice where they are not installed. All see the
//! same pixels: the image in the codec's channel count (grey or RGB).
//!
//! Entries named `<group>-q<N>` are the rate points of one codec: their
//! points form one curve, `aezoo:<group>`, with one BD-rate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use aezoo_metrics::rd::bd_rate;
use aezoo_metrics::{ms_ssim, SsimConfig};
use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, GrayImage, ImageBuffer, Rgb, RgbImage};
use serde::Serialize;

use crate::codec::LoadedCodec;
use aezoo_train::error::{Result, TrainError};

/// One image coded at one setting.
#[derive(Clone, Debug, Serialize)]
pub struct RdPoint {
    /// `aezoo:<group>` (see [`codec_group`]), `jpeg`, `libjpeg` or `webp`.
    pub codec: String,
    /// The quality setting (JPEG / WebP), or the entry (aezoo).
    pub setting: String,
    pub image: String,
    pub width: usize,
    pub height: usize,
    pub bytes: usize,
    pub bpp: f64,
    pub psnr: f64,
    /// `None` below 161 pixels on a side (five scales do not fit).
    pub ms_ssim: Option<f64>,
    pub encode_ms_per_mp: f64,
    pub decode_ms_per_mp: f64,
}

fn other(e: impl std::fmt::Display) -> TrainError {
    TrainError::Other(e.to_string())
}

/// `(1, c, h, w)` in [0, 1] → 8-bit image (grey or RGB).
fn to_image(t: &Tensor) -> Result<DynamicImage> {
    let (_, c, h, w) = t.dims4()?;
    let v: Vec<u8> = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .clamp(0f32, 1f32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|x| (x * 255.0).round() as u8)
        .collect();
    Ok(match c {
        1 => DynamicImage::ImageLuma8(GrayImage::from_raw(w as u32, h as u32, v).expect("sizes")),
        _ => {
            let img: RgbImage = ImageBuffer::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                Rgb([v[p], v[h * w + p], v[2 * h * w + p]])
            });
            DynamicImage::ImageRgb8(img)
        }
    })
}

/// 8-bit image → `(1, c, h, w)` in [0, 1].
fn to_tensor(img: &DynamicImage, c: usize) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let px =
        aezoo_data::folder::to_chw(img, c).ok_or_else(|| other(format!("{c}-channel images cannot be compared")))?;
    let v: Vec<f32> = px.iter().map(|&p| p as f32 / 255.0).collect();
    Ok(Tensor::from_vec(v, (1, c, h, w), &Device::Cpu)?)
}

/// PSNR and MS-SSIM of `decoded` against `original` (both 8-bit exact).
fn quality(original: &Tensor, decoded: &Tensor) -> Result<(f64, Option<f64>)> {
    let p = aezoo_metrics::psnr(decoded, original, 1.0)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?[0];
    let (_, _, h, w) = original.dims4()?;
    let m = if h.min(w) > 160 {
        Some(
            ms_ssim(decoded, original, SsimConfig::default())?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?[0],
        )
    } else {
        None
    };
    Ok((p, m))
}

fn point(
    codec: &str,
    setting: String,
    name: &str,
    original: &Tensor,
    decoded: &Tensor,
    bytes: usize,
    enc_s: f64,
    dec_s: f64,
) -> Result<RdPoint> {
    let (_, _, h, w) = original.dims4()?;
    let (psnr, ms) = quality(original, decoded)?;
    let mp = (h * w) as f64 / 1e6;
    Ok(RdPoint {
        codec: codec.into(),
        setting,
        image: name.into(),
        width: w,
        height: h,
        bytes,
        bpp: 8.0 * bytes as f64 / (h * w) as f64,
        psnr,
        ms_ssim: ms,
        encode_ms_per_mp: enc_s * 1e3 / mp,
        decode_ms_per_mp: dec_s * 1e3 / mp,
    })
}

/// A learned codec on one image: compress, then decompress the bytes.
pub fn measure_aezoo(lc: &LoadedCodec, name: &str, original: &Tensor) -> Result<RdPoint> {
    let entry = &lc.config.entry;
    let t0 = Instant::now();
    let bytes = aezoo_compress::aez::compress(&lc.codec, entry, lc.fingerprint, original).map_err(other)?;
    let t1 = Instant::now();
    let decoded =
        aezoo_compress::aez::decompress(lc.codec.synthesis(), entry, lc.fingerprint, &bytes).map_err(other)?;
    let t2 = Instant::now();
    let decoded = to_tensor(&to_image(&decoded)?, original.dim(1)?)?;
    point(
        &format!("aezoo:{}", codec_group(entry)),
        entry.clone(),
        name,
        original,
        &decoded,
        bytes.len(),
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
    )
}

/// The codec an entry is a rate point of: `codec-photo-q2` → `codec-photo`;
/// an entry without a `-q<N>` suffix is its own codec.
pub fn codec_group(entry: &str) -> &str {
    match entry.rsplit_once("-q") {
        Some((group, n)) if !group.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => group,
        _ => entry,
    }
}

/// The anchors BD-rates are computed against, in table order.
pub const ANCHORS: [&str; 3] = ["jpeg", "libjpeg", "webp"];

/// JPEG at `quality` (1–100).
pub fn measure_jpeg(name: &str, original: &Tensor, quality: u8) -> Result<RdPoint> {
    let img = to_image(original)?;
    let t0 = Instant::now();
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(&img)
        .map_err(other)?;
    let t1 = Instant::now();
    let dec = image::load_from_memory(&bytes).map_err(other)?;
    let t2 = Instant::now();
    let decoded = to_tensor(&dec, original.dim(1)?)?;
    point(
        "jpeg",
        quality.to_string(),
        name,
        original,
        &decoded,
        bytes.len(),
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
    )
}

/// Whether every one of `tools` runs here (`<tool> -version` succeeds).
fn tools_run(tools: &[&str]) -> bool {
    tools.iter().all(|b| {
        Command::new(b)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Whether `cwebp` and `dwebp` run here.
pub fn webp_available() -> bool {
    tools_run(&["cwebp", "dwebp"])
}

/// Whether libjpeg-turbo's `cjpeg` and `djpeg` run here.
pub fn libjpeg_available() -> bool {
    tools_run(&["cjpeg", "djpeg"])
}

/// An 8-bit image as binary PNM (P5 grey, P6 RGB): what `cjpeg` reads.
fn to_pnm(img: &DynamicImage) -> Vec<u8> {
    let (w, h) = (img.width(), img.height());
    let (magic, px) = match img {
        DynamicImage::ImageLuma8(g) => ("P5", g.as_raw().clone()),
        other => ("P6", other.to_rgb8().into_raw()),
    };
    let mut out = format!("{magic}\n{w} {h}\n255\n").into_bytes();
    out.extend(px);
    out
}

/// Parses the binary PNM `djpeg` writes (P5 / P6, maxval 255).
fn from_pnm(bytes: &[u8], what: &Path) -> Result<DynamicImage> {
    let bad = || other(format!("{}: not an 8-bit binary PNM", what.display()));
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while at < bytes.len() && !bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if start == at {
            return Err(bad());
        }
        fields.push(std::str::from_utf8(&bytes[start..at]).map_err(|_| bad())?.to_string());
    }
    let px = bytes.get(at + 1..).ok_or_else(bad)?;
    let (w, h): (u32, u32) = (
        fields[1].parse().map_err(|_| bad())?,
        fields[2].parse().map_err(|_| bad())?,
    );
    if fields[3] != "255" {
        return Err(bad());
    }
    match fields[0].as_str() {
        "P5" => GrayImage::from_raw(w, h, px.get(..(w * h) as usize).ok_or_else(bad)?.to_vec())
            .map(DynamicImage::ImageLuma8)
            .ok_or_else(bad),
        "P6" => RgbImage::from_raw(w, h, px.get(..(3 * w * h) as usize).ok_or_else(bad)?.to_vec())
            .map(DynamicImage::ImageRgb8)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// Runs `cmd`, failing with its stderr.
fn run_tool(cmd: &mut Command) -> Result<()> {
    let o = cmd.output().map_err(other)?;
    if !o.status.success() {
        return Err(other(format!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr))));
    }
    Ok(())
}

/// An external coder on one image whose input file is already written:
/// times `encode` (writing `coded`) and `decode` (writing `back`), measures
/// the bytes of `coded` and the quality of `back` read by `read`.
fn measure_tool(
    codec: &str,
    quality: u8,
    name: &str,
    original: &Tensor,
    (encode, coded): (&mut Command, &Path),
    (decode, back): (&mut Command, &Path),
    read: impl Fn(&Path) -> Result<DynamicImage>,
) -> Result<RdPoint> {
    let t0 = Instant::now();
    run_tool(encode)?;
    let t1 = Instant::now();
    run_tool(decode)?;
    let t2 = Instant::now();
    let bytes = std::fs::metadata(coded).map_err(other)?.len() as usize;
    let decoded = to_tensor(&read(back)?, original.dim(1)?)?;
    point(
        codec,
        quality.to_string(),
        name,
        original,
        &decoded,
        bytes,
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
    )
}

/// libjpeg-turbo at `quality` (1–100): `cjpeg -quality Q -optimize` (4:2:0
/// for colour) and `djpeg`, in `tmp`.
pub fn measure_libjpeg(name: &str, original: &Tensor, quality: u8, tmp: &Path) -> Result<RdPoint> {
    let (pnm, jpg, back) = (tmp.join("in.pnm"), tmp.join("out.jpg"), tmp.join("back.pnm"));
    std::fs::write(&pnm, to_pnm(&to_image(original)?)).map_err(other)?;
    measure_tool(
        "libjpeg",
        quality,
        name,
        original,
        (
            Command::new("cjpeg")
                .args(["-quality", &quality.to_string(), "-optimize", "-outfile"])
                .arg(&jpg)
                .arg(&pnm),
            &jpg,
        ),
        (Command::new("djpeg").arg("-outfile").arg(&back).arg(&jpg), &back),
        |p| from_pnm(&std::fs::read(p).map_err(other)?, p),
    )
}

/// WebP (lossy) at `quality` (0–100) through `cwebp` / `dwebp`, in `tmp`.
pub fn measure_webp(name: &str, original: &Tensor, quality: u8, tmp: &Path) -> Result<RdPoint> {
    let (png, webp, back) = (tmp.join("in.png"), tmp.join("out.webp"), tmp.join("back.png"));
    to_image(original)?.save(&png).map_err(other)?;
    measure_tool(
        "webp",
        quality,
        name,
        original,
        (
            Command::new("cwebp")
                .args(["-quiet", "-q", &quality.to_string()])
                .arg(&png)
                .arg("-o")
                .arg(&webp),
            &webp,
        ),
        (
            Command::new("dwebp").arg("-quiet").arg(&webp).arg("-o").arg(&back),
            &back,
        ),
        |p| aezoo_data::image_file::open_image(p).map_err(other),
    )
}

/// Mean `(bpp, psnr, ms_ssim)` per setting of one codec, sorted by rate.
pub fn mean_curve(points: &[RdPoint], codec: &str) -> Vec<(String, f64, f64, Option<f64>)> {
    let mut settings: Vec<String> = points
        .iter()
        .filter(|p| p.codec == codec)
        .map(|p| p.setting.clone())
        .collect();
    settings.sort();
    settings.dedup();
    let mut out: Vec<(String, f64, f64, Option<f64>)> = settings
        .into_iter()
        .map(|s| {
            let ps: Vec<&RdPoint> = points.iter().filter(|p| p.codec == codec && p.setting == s).collect();
            let n = ps.len() as f64;
            let ms = if ps.iter().all(|p| p.ms_ssim.is_some()) {
                Some(ps.iter().map(|p| p.ms_ssim.unwrap_or(0.0)).sum::<f64>() / n)
            } else {
                None
            };
            (
                s,
                ps.iter().map(|p| p.bpp).sum::<f64>() / n,
                ps.iter().map(|p| p.psnr).sum::<f64>() / n,
                ms,
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.total_cmp(&b.1));
    out
}

/// `y` at `x` by linear interpolation along points sorted by `x`; `None`
/// outside their range.
fn interpolate(points: impl Iterator<Item = (f64, f64)>, x: f64) -> Option<f64> {
    let pts: Vec<(f64, f64)> = points.collect();
    pts.windows(2).find(|w| w[0].0 <= x && x <= w[1].0).map(|w| {
        let t = if w[1].0 > w[0].0 {
            (x - w[0].0) / (w[1].0 - w[0].0)
        } else {
            0.0
        };
        w[0].1 + t * (w[1].1 - w[0].1)
    })
}

/// Writes `rd.csv`, `rd.md` (mean curves, BD-rates, times) and `rd.png`
/// (PSNR against bpp; `rd_msssim.png` where MS-SSIM was measured) into `out`.
pub fn write_outputs(points: &[RdPoint], out: &Path, command: &str) -> Result<Vec<(String, String, Option<f64>)>> {
    use aezoo_nn::params::write_atomic;
    std::fs::create_dir_all(out).map_err(aezoo_train::error::io_err(out))?;
    let mut csv =
        String::from("codec,setting,image,width,height,bytes,bpp,psnr_db,ms_ssim,encode_ms_per_mp,decode_ms_per_mp\n");
    for p in points {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            p.codec,
            p.setting,
            p.image.replace(',', "_"),
            p.width,
            p.height,
            p.bytes,
            p.bpp,
            p.psnr,
            p.ms_ssim.map(|v| v.to_string()).unwrap_or_default(),
            p.encode_ms_per_mp,
            p.decode_ms_per_mp
        ));
    }
    write_atomic(&out.join("rd.csv"), csv.as_bytes())?;
    let mut codecs: Vec<String> = points.iter().map(|p| p.codec.clone()).collect();
    codecs.sort();
    codecs.dedup();
    let curves: Vec<(String, Vec<(String, f64, f64, Option<f64>)>)> =
        codecs.iter().map(|c| (c.clone(), mean_curve(points, c))).collect();
    let images = {
        let mut v: Vec<&str> = points.iter().map(|p| p.image.as_str()).collect();
        v.sort();
        v.dedup();
        v.len()
    };
    let mut md = format!(
        "# Rate-distortion: learned codecs against JPEG and WebP\n\nMade by `{command}` on {images} images. Bits per pixel from the bytes each codec wrote; PSNR and MS-SSIM of the decoded 8-bit image; means over the images per setting. `jpeg` is the `image` crate's encoder (4:4:4, standard tables), `libjpeg` libjpeg-turbo's `cjpeg -optimize` (4:2:0), `webp` libwebp's `cwebp`.\n\n"
    );
    let learned: Vec<&String> = codecs.iter().filter(|c| c.starts_with("aezoo:")).collect();
    let mut bd = Vec::new();
    md.push_str("| codec | against | BD-rate (PSNR) |\n|---|---|---:|\n");
    for l in &learned {
        for anchor in ANCHORS.into_iter().filter(|a| codecs.iter().any(|c| c == a)) {
            let pts = |c: &str| -> Vec<(f64, f64)> {
                curves
                    .iter()
                    .find(|(n, _)| n == c)
                    .map(|(_, v)| v.iter().map(|p| (p.1, p.2)).collect())
                    .unwrap_or_default()
            };
            let r = bd_rate(&pts(anchor), &pts(l));
            md.push_str(&format!(
                "| {l} | {anchor} | {} |\n",
                r.map(|v| format!("{v:+.1} %"))
                    .unwrap_or_else(|| "— (no common PSNR range or too few points)".into())
            ));
            bd.push((l.to_string(), anchor.to_string(), r));
        }
    }
    // Each learned rate point against the anchors' curves at matched rate and
    // at matched quality (linear in log rate between neighbouring settings).
    md.push_str("\n| codec | bpp | PSNR (dB) | anchor | anchor's PSNR at this bpp | anchor's bpp at this PSNR |\n|---|---:|---:|---|---:|---:|\n");
    for l in &learned {
        let Some((_, mine)) = curves.iter().find(|(n, _)| n == *l) else {
            continue;
        };
        for (_, bpp, psnr, _) in mine {
            for anchor in ANCHORS {
                let Some((_, a)) = curves.iter().find(|(n, _)| n == anchor) else {
                    continue;
                };
                let at_rate = interpolate(a.iter().map(|p| (p.1.ln(), p.2)), bpp.ln());
                let mut by_q: Vec<(f64, f64)> = a.iter().map(|p| (p.2, p.1.ln())).collect();
                by_q.sort_by(|x, y| x.0.total_cmp(&y.0));
                let at_q = interpolate(by_q.into_iter(), *psnr).map(f64::exp);
                let f = |v: Option<f64>, d: usize| {
                    v.map(|v| format!("{v:.d$}"))
                        .unwrap_or_else(|| "— (outside its range)".into())
                };
                md.push_str(&format!(
                    "| {l} | {bpp:.4} | {psnr:.2} | {anchor} | {} | {} |\n",
                    f(at_rate, 2),
                    f(at_q, 4)
                ));
            }
        }
    }
    md.push_str("\n| codec | setting | bpp | PSNR (dB) | MS-SSIM | encode ms/MP | decode ms/MP |\n|---|---|---:|---:|---:|---:|---:|\n");
    for (c, curve) in &curves {
        for (s, bpp, psnr, ms) in curve {
            let t: Vec<&RdPoint> = points.iter().filter(|p| &p.codec == c && &p.setting == s).collect();
            let n = t.len() as f64;
            md.push_str(&format!(
                "| {c} | {s} | {bpp:.4} | {psnr:.2} | {} | {:.1} | {:.1} |\n",
                ms.map(|v| format!("{v:.4}")).unwrap_or_else(|| "—".into()),
                t.iter().map(|p| p.encode_ms_per_mp).sum::<f64>() / n,
                t.iter().map(|p| p.decode_ms_per_mp).sum::<f64>() / n
            ));
        }
    }
    write_atomic(&out.join("rd.md"), md.as_bytes())?;
    let colors = [
        plotters::style::RGBColor(66, 133, 244),
        plotters::style::RGBColor(219, 68, 55),
        plotters::style::RGBColor(15, 157, 88),
        plotters::style::RGBColor(244, 160, 0),
        plotters::style::RGBColor(120, 80, 200),
    ];
    // One plot per quality measure: a series per codec over its mean curve.
    let plot = |title: &str, y_desc: &str, y: fn(&(String, f64, f64, Option<f64>)) -> f64, file: &str| {
        let pts: Vec<Vec<(f64, f64)>> = curves
            .iter()
            .map(|(_, v)| v.iter().map(|p| (p.1, y(p))).collect())
            .collect();
        let series: Vec<aezoo_train::plot::Series> = curves
            .iter()
            .zip(&pts)
            .enumerate()
            .map(|(i, ((name, _), pts))| aezoo_train::plot::Series {
                label: name,
                points: pts,
                color: colors[i % colors.len()],
                smooth: false,
            })
            .collect();
        aezoo_train::plot::save_line_plot(title, "bits per pixel", y_desc, &series, &out.join(file))
    };
    plot("PSNR against rate (mean over images)", "PSNR (dB)", |p| p.2, "rd.png")?;
    if curves.iter().all(|(_, v)| v.iter().all(|p| p.3.is_some())) {
        plot(
            "MS-SSIM against rate (mean over images)",
            "MS-SSIM",
            |p| p.3.unwrap_or(0.0),
            "rd_msssim.png",
        )?;
    }
    Ok(bd)
}

/// Every image of `images` through each codec at its native size (in the
/// codecs' channel count), JPEG at `jpeg_q` and WebP at `webp_q` (when
/// `cwebp` runs).
pub fn evaluate(
    codecs: &[LoadedCodec],
    images: &[PathBuf],
    jpeg_q: &[u8],
    webp_q: &[u8],
    tmp: &Path,
) -> Result<Vec<RdPoint>> {
    let c = codecs.first().map(|l| l.codec.synthesis().image()[0]).unwrap_or(3);
    if let Some(bad) = codecs.iter().find(|l| l.codec.synthesis().image()[0] != c) {
        return Err(other(format!(
            "{} codes {}-channel images, the first codec {c}",
            bad.config.entry,
            bad.codec.synthesis().image()[0]
        )));
    }
    let webp = !webp_q.is_empty() && webp_available();
    if !webp_q.is_empty() && !webp {
        tracing::warn!("cwebp / dwebp not found: WebP skipped (apt-get install webp)");
    }
    let libjpeg = !jpeg_q.is_empty() && libjpeg_available();
    if !jpeg_q.is_empty() && !libjpeg {
        tracing::warn!("cjpeg / djpeg not found: libjpeg-turbo skipped (apt-get install libjpeg-turbo-progs)");
    }
    let mut points = Vec::new();
    for path in images {
        let name = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let original = aezoo_data::image_file::load_image_native(path, c, &Device::Cpu)?;
        for lc in codecs {
            points.push(measure_aezoo(lc, &name, &original)?);
        }
        for &q in jpeg_q {
            points.push(measure_jpeg(&name, &original, q)?);
            if libjpeg {
                points.push(measure_libjpeg(&name, &original, q, tmp)?);
            }
        }
        if webp {
            for &q in webp_q {
                points.push(measure_webp(&name, &original, q, tmp)?);
            }
        }
        tracing::info!("rd: {name} done");
    }
    Ok(points)
}
