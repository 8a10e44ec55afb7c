//! The learned codec's commands: `aezoo compress` (images → `.aez` files),
//! `decompress`, `export-codec` (the encoder and decoder halves) and `rd`
//! (rate-distortion against JPEG and WebP).

use std::path::{Path, PathBuf};

use aezoo_train::weights;
use aezoo_zoo::{default_entry, Task, ZOO};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;

use crate::common::{device, expand_images, outputs, weights_dir, WeightsArgs};
use crate::eval::ExportArgs;

#[derive(Args)]
pub(crate) struct CompressArgs {
    /// Image files or folders (PNG, JPEG), any size.
    #[arg(required = true)]
    pub(crate) images: Vec<PathBuf>,
    /// The output: FILE.aez for one image, else a folder (default: <name>.aez beside each image).
    #[arg(short = 'o', long)]
    pub(crate) out: Option<PathBuf>,
    /// The codec entry.
    #[arg(long, default_value = default_entry(Task::Compress))]
    pub(crate) entry: String,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    /// Compute device: cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

#[derive(Args)]
pub(crate) struct DecompressArgs {
    /// .aez files.
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// The output: IMG.png for one file, else a folder (default: <name>.png beside each file).
    #[arg(short = 'o', long)]
    pub(crate) out: Option<PathBuf>,
    /// A weights folder holding the codec (decoder.safetensors, or model.safetensors); default: weights/<model id in the file>.
    #[arg(long, value_name = "DIR")]
    pub(crate) weights: Option<PathBuf>,
    /// Compute device: cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

#[derive(Args)]
pub(crate) struct RdArgs {
    /// The folder of images (PNG, JPEG), coded at their own size.
    #[arg(long, value_name = "DIR")]
    pub(crate) images: PathBuf,
    /// Codec entries (weights/<entry>, else the newest run), one rate point
    /// each; a group name stands for its rate points (`codec-photo` →
    /// `codec-photo-q1`, `-q2`, `-q3`), which make one curve; a weights
    /// folder (holding model.safetensors) stands for itself.
    #[arg(long, value_delimiter = ',', default_value = default_entry(Task::RateDistortion))]
    pub(crate) entries: Vec<String>,
    /// JPEG qualities (the `image` crate's encoder, and libjpeg-turbo's
    /// `cjpeg` where installed); the low end is where learned codecs work.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,5,10,20,30,50,70,90")]
    pub(crate) jpeg: Vec<u8>,
    /// WebP qualities (cwebp; skipped where it is not installed).
    #[arg(long, value_delimiter = ',', default_value = "0,2,5,10,20,30,50,70,90")]
    pub(crate) webp: Vec<u8>,
    /// Output folder: rd.csv, rd.md, rd.png, rd_msssim.png.
    #[arg(short = 'o', long, default_value = "results/rd")]
    pub(crate) out: PathBuf,
}

pub(crate) fn cmd_compress(a: CompressArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let dir = weights_dir(&a.entry, &a.weights)?;
    let lc = aezoo_zoo::codec::load_codec(&dir, &dev)?;
    let files = expand_images(&a.images)?;
    for (img, out) in outputs(&files, &a.out, "aez")? {
        let (bytes, x, decoded, secs) = compress_file(&lc, &img, &dev)?;
        let (_, _, h, w) = x.dims4()?;
        aezoo_nn::params::write_atomic(&out, &bytes)?;
        let bpp = 8.0 * std::fs::metadata(&out)?.len() as f64 / (h * w) as f64;
        println!(
            "{}: {w}x{h} → {} ({} bytes, {bpp:.4} bpp; PSNR {:.2} dB of the decoded 8-bit image; {:.0} ms)",
            img.display(),
            out.display(),
            bytes.len(),
            psnr_u8(&decoded, &x)?,
            secs * 1e3
        );
    }
    Ok(())
}

pub(crate) fn cmd_decompress(a: DecompressArgs) -> Result<()> {
    let dev = device(&a.device)?;
    for (file, out) in outputs(&a.files, &a.out, "png")? {
        let (y, header, dir) = decompress_file(&file, a.weights.as_deref(), &dev)?;
        aezoo_train::plot::save_image(&y, &out)?;
        println!(
            "{} → {} ({}x{}, decoded with {})",
            file.display(),
            out.display(),
            header.width,
            header.height,
            dir.display()
        );
    }
    Ok(())
}

/// One image into `.aez` bytes, with the image as read, what the bytes
/// decode to (as `decompress` will decode them) and the seconds the
/// compression took; errors name the image.
pub(crate) fn compress_file(
    lc: &aezoo_zoo::codec::LoadedCodec,
    img: &Path,
    dev: &Device,
) -> Result<(Vec<u8>, Tensor, Tensor, f64)> {
    let [c, _, _] = lc.codec.synthesis().image();
    let x = aezoo_data::image_file::load_image_native(img, c, dev)?;
    let t0 = std::time::Instant::now();
    let bytes = aezoo_compress::aez::compress(&lc.codec, &lc.config.entry, lc.fingerprint, &x)
        .map_err(|e| anyhow::anyhow!("{}: {e}", img.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    let decoded = aezoo_compress::aez::decompress(lc.codec.synthesis(), &lc.config.entry, lc.fingerprint, &bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", img.display()))?;
    Ok((bytes, x, decoded, secs))
}

/// One `.aez` file decoded with the codec of `weights` (default: the
/// weights folder of the model the file names); errors name the file.
pub(crate) fn decompress_file(
    file: &Path,
    weights: Option<&Path>,
    dev: &Device,
) -> Result<(Tensor, aezoo_compress::aez::Header, PathBuf)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (header, _) = aezoo_compress::aez::read(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let dir = match weights {
        Some(d) => d.to_path_buf(),
        None => weights::default_dir(&header.model)?,
    };
    let (cfg, synth, fp) = aezoo_zoo::codec::load_synthesis(&dir, dev)?;
    let y = aezoo_compress::aez::decompress(&synth, &cfg.entry, fp, &bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok((y, header, dir))
}

pub(crate) fn cmd_export_codec(a: ExportArgs) -> Result<()> {
    let dev = device(&a.data.device)?;
    let src = weights_dir(&a.entry, &a.weights)?;
    let lc = aezoo_zoo::codec::load_codec(&src, &dev)?;
    crate::eval::cmd_export(a.clone())?;
    aezoo_zoo::codec::write_halves(&lc.params, &a.dir)?;
    println!(
        "{} → {}/{{{}, {}}} (decoder fingerprint {:016x})",
        lc.config.entry,
        a.dir.display(),
        aezoo_zoo::codec::ENCODER_FILE,
        aezoo_zoo::codec::DECODER_FILE,
        lc.fingerprint
    );
    Ok(())
}

pub(crate) fn cmd_rd(a: RdArgs) -> Result<()> {
    let entries: Vec<String> = a.entries.iter().flat_map(|e| ZOO.expand_group(e)).collect();
    // An entry name (its default weights), or a weights folder itself.
    let folder = |e: &str| -> Result<PathBuf> {
        let p = Path::new(e);
        Ok(if p.join("model.safetensors").is_file() {
            p.to_path_buf()
        } else {
            weights::default_dir(e)?
        })
    };
    let codecs = entries
        .iter()
        .map(|e| Ok(aezoo_zoo::codec::load_codec(&folder(e)?, &Device::Cpu)?))
        .collect::<Result<Vec<_>>>()?;
    let images = expand_images(std::slice::from_ref(&a.images))?;
    let tmp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let points = aezoo_zoo::rd_image::evaluate(&codecs, &images, &a.jpeg, &a.webp, tmp.path())?;
    let q = |v: &[u8]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
    let command = format!(
        "aezoo rd --images {} --entries {} --jpeg {} --webp {}",
        a.images.display(),
        a.entries.join(","),
        q(&a.jpeg),
        q(&a.webp)
    );
    let bd = aezoo_zoo::rd_image::write_outputs(&points, &a.out, &command)?;
    for (codec, anchor, r) in bd {
        match r {
            Some(v) => println!("BD-rate of {codec} against {anchor}: {v:+.1} % (negative: fewer bits at equal PSNR)"),
            None => println!(
                "BD-rate of {codec} against {anchor}: none (fewer than two rate points, or no common PSNR range)"
            ),
        }
    }
    println!("{} points → {}/rd.csv, rd.md, rd.png", points.len(), a.out.display());
    Ok(())
}

/// PSNR (dB) between two images after both are rounded to 8 bits, as their
/// PNG files hold them.
pub(crate) fn psnr_u8(a: &Tensor, b: &Tensor) -> Result<f64> {
    // Rows in bands, so a photograph's comparison holds a band, not copies
    // of the image.
    let q = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round())
            .collect())
    };
    let h = a.dim(2)?;
    let (mut sse, mut n) = (0f64, 0usize);
    for r in (0..h).step_by(256) {
        let rows = 256.min(h - r);
        let (x, y) = (q(&a.narrow(2, r, rows)?)?, q(&b.narrow(2, r, rows)?)?);
        sse += x
            .iter()
            .zip(&y)
            .map(|(p, r)| ((p - r) as f64 / 255.0).powi(2))
            .sum::<f64>();
        n += x.len();
    }
    let mse = sse / n.max(1) as f64;
    Ok(if mse == 0.0 { f64::INFINITY } else { -10.0 * mse.log10() })
}
