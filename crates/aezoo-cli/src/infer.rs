//! Inference on trained weights: `aezoo sample`, `reconstruct`,
//! `interpolate`, `encode` (images → a latents file) and `decode`.

use std::path::{Path, PathBuf};

use aezoo_data::Locator;
use aezoo_nn::Rng;
use aezoo_train::trainer::load_data;
use aezoo_zoo::ZOO;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;

use crate::common::{
    create_parent, device, expand_images, image_options, load_weights, DataArgs, TileArgs, WeightsArgs,
};

#[derive(Args)]
pub(crate) struct SampleArgs {
    /// Entry name (used to find default weights).
    pub(crate) entry: String,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 64)]
    pub(crate) n: usize,
    /// Output PNG.
    #[arg(short = 'o', long, default_value = "samples.png")]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Images per row (default: √n).
    #[arg(long)]
    pub(crate) cols: Option<usize>,
    /// Pixel scale of the grid.
    #[arg(long, default_value_t = 2)]
    pub(crate) scale: usize,
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

#[derive(Args)]
pub(crate) struct ReconstructArgs {
    /// Entry name (used to find default weights).
    pub(crate) entry: String,
    /// Image files (PNG, JPEG, GIF) or folders of them; brought to the model's
    /// input size as its training data was (centre crop for folder-trained entries),
    /// or taken at their own size by a fully convolutional model (vae-kl, vae-tiny:
    /// tiled past its tile, the reconstruction saved at that size).
    #[arg(required = true)]
    pub(crate) images: Vec<PathBuf>,
    /// Output folder (default: beside each image, as <name>.recon.png).
    #[arg(short = 'o', long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Invert the images first (dark drawings on white paper for MNIST-style models).
    #[arg(long)]
    pub(crate) invert: bool,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    #[command(flatten)]
    pub(crate) tile: TileArgs,
    /// Also reconstruct each image whole (no tiles) and print the PSNR of the
    /// tiled reconstruction against it: what the tiles' seams cost.
    #[arg(long)]
    pub(crate) seam: bool,
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

#[derive(Args)]
pub(crate) struct InterpolateArgs {
    /// Entry name (used to find default weights).
    pub(crate) entry: String,
    /// Two image files to interpolate between (default: test images --from and --to).
    pub(crate) images: Vec<PathBuf>,
    /// Test-split index of the first image, when no files are given.
    #[arg(long, default_value_t = 0)]
    pub(crate) from: usize,
    /// Test-split index of the second image, when no files are given.
    #[arg(long, default_value_t = 1)]
    pub(crate) to: usize,
    /// Decoded points between and including the two codes.
    #[arg(long, default_value_t = 10)]
    pub(crate) steps: usize,
    /// Output PNG (the strip of decoded points)
    #[arg(short = 'o', long, default_value = "interpolation.png")]
    pub(crate) out: PathBuf,
    /// Invert the image files first (dark drawings on white paper for MNIST-style models).
    #[arg(long)]
    pub(crate) invert: bool,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

#[derive(Args)]
pub(crate) struct EncodeArgs {
    /// Entry name (used to find default weights).
    pub(crate) entry: String,
    /// Image files or folders of them (PNG, JPEG).
    #[arg(required = true)]
    pub(crate) images: Vec<PathBuf>,
    /// The latents file: tensor `latents` (n, …latent shape), the file names in its metadata.
    #[arg(short = 'o', long, default_value = "latents.safetensors")]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    #[command(flatten)]
    pub(crate) tile: TileArgs,
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

#[derive(Args)]
pub(crate) struct DecodeArgs {
    /// Entry name (used to find default weights).
    pub(crate) entry: String,
    /// A latents file written by `aezoo encode`.
    pub(crate) latents: PathBuf,
    /// Output folder: one `<name>.png` per latent, named after its source file.
    #[arg(short = 'o', long, default_value = "decoded")]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    #[command(flatten)]
    pub(crate) tile: TileArgs,
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

pub(crate) fn cmd_sample(a: SampleArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    if !loaded.model.is_generative() {
        bail!(
            "`{}` ({}) has no prior to sample from; sampling needs a variational entry (`aezoo list`: the vae families)",
            loaded.config.entry,
            loaded.config.family
        );
    }
    if a.n == 0 {
        bail!("-n must be at least 1");
    }
    let mut rng = Rng::new(a.seed);
    let images = loaded.model.sample(a.n, &mut rng)?;
    let cols = a.cols.unwrap_or_else(|| (a.n as f64).sqrt().ceil() as usize);
    create_parent(&a.out)?;
    aezoo_train::plot::save_grid(&images, cols, a.scale, Path::new(&a.out))?;
    println!("{} samples of {} → {}", a.n, loaded.config.entry, a.out.display());
    Ok(())
}

pub(crate) fn cmd_reconstruct(a: ReconstructArgs) -> Result<()> {
    use aezoo_data::image_file::load_image;
    use aezoo_metrics::{psnr, ssim, SsimConfig};
    let dev = device(&a.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let shape = ZOO.image_shape(&loaded.config)?;
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let opts = image_options(&loaded.config, a.invert);
    let (mut sum_p, mut sum_s, mut n, mut n_s) = (0f64, 0f64, 0usize, 0usize);
    let spatial = a.tile.apply(loaded.model.spatial())?;
    for img in expand_images(&a.images)? {
        // A fully convolutional model takes each image at its own size.
        let (x, y) = match spatial {
            Some(sp) => {
                let x = aezoo_data::image_file::load_image_native(&img, shape[0], &dev)?;
                let y = aezoo_train::infer::reconstruct_any_size(loaded.model.as_ref(), sp, &x)?;
                (x, y)
            }
            None => {
                let x = load_image(&img, shape, opts, &dev)?;
                let y = loaded.model.reconstruct(&x)?;
                (x, y)
            }
        };
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        // A photograph's metrics in bands of rows (memory for a band, not
        // copies of the image); a batch of small images' at once.
        let (p, banded_ssim) = if spatial.is_some() {
            let (p, s) = aezoo_metrics::psnr_ssim_in_bands(&y, &x, SsimConfig::default(), 256)?;
            (p as f32, Some(s))
        } else {
            (psnr(&y, &x, 1.0)?.to_vec1::<f32>()?[0], None)
        };
        let with_ssim = h >= 11 && w >= 11;
        let seam = match spatial {
            Some(sp) if a.seam && aezoo_nn::tiling::needs_tiles([h, w], sp.tile) => {
                let y0 = aezoo_train::infer::reconstruct_any_size(loaded.model.as_ref(), sp.whole(), &x)?;
                let s = psnr(&y, &y0, 1.0)?.to_vec1::<f32>()?[0];
                format!("  tiled vs whole: PSNR {s:.2} dB")
            }
            Some(_) if a.seam => "  tiled vs whole: the same (one tile)".to_string(),
            _ => String::new(),
        };
        let s = if with_ssim {
            let v = match banded_ssim {
                Some(v) => v.unwrap_or(f64::NAN) as f32,
                None => ssim(&y, &x, SsimConfig::default())?.to_vec1::<f32>()?[0],
            };
            sum_s += v as f64;
            n_s += 1;
            format!("{v:.4}")
        } else {
            "—".into()
        };
        sum_p += p as f64;
        n += 1;
        let stem = img
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let out = match &a.out {
            Some(dir) => dir.join(format!("{stem}.recon.png")),
            None => img.with_file_name(format!("{stem}.recon.png")),
        };
        // A photograph's reconstruction at its own size; a small fixed-size
        // image beside its input, enlarged, so the two can be compared.
        match spatial {
            Some(_) => aezoo_train::plot::save_image(&y, &out)?,
            None => aezoo_train::plot::save_rows(&[Tensor::cat(&[&x, &y], 3)?], 4, &out)?,
        }
        println!("{}: PSNR {p:.2} dB  SSIM {s}{seam}  → {}", img.display(), out.display());
    }
    if n > 1 {
        let s = if n_s == n {
            format!("{:.4}", sum_s / n as f64)
        } else {
            "—".into()
        };
        println!("mean over {n} images: PSNR {:.2} dB  SSIM {s}", sum_p / n as f64);
    }
    Ok(())
}

pub(crate) fn cmd_interpolate(a: InterpolateArgs) -> Result<()> {
    use aezoo_data::image_file::load_image;
    let dev = device(&a.data.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    if a.steps < 2 {
        bail!("--steps must be at least 2");
    }
    let (xa, xb) = match a.images.as_slice() {
        [] => {
            let locator = Locator::from_env(a.data.data.clone(), a.data.download);
            let splits = load_data(&loaded.config, &ZOO, &locator)?;
            let n = splits.test.len();
            if a.from >= n || a.to >= n {
                bail!("--from/--to: the test split has {n} images");
            }
            (splits.test.batch(&[a.from], &dev)?, splits.test.batch(&[a.to], &dev)?)
        }
        [fa, fb] => {
            let shape = ZOO.image_shape(&loaded.config)?;
            let o = image_options(&loaded.config, a.invert);
            (load_image(fa, shape, o, &dev)?, load_image(fb, shape, o, &dev)?)
        }
        _ => bail!("interpolate takes two image files, or none (test images --from and --to)"),
    };
    let strip = aezoo_train::infer::interpolate(loaded.model.as_ref(), &xa, &xb, a.steps)?;
    let row = Tensor::cat(&[&xa, &strip, &xb], 0)?;
    create_parent(&a.out)?;
    aezoo_train::plot::save_rows(&[row], 3, &a.out)?;
    println!(
        "{}: {} steps between the two codes (inputs at both ends) → {}",
        loaded.config.entry,
        a.steps,
        a.out.display()
    );
    Ok(())
}

pub(crate) fn cmd_encode(a: EncodeArgs) -> Result<()> {
    use aezoo_data::image_file::{load_image, load_image_native};
    let dev = device(&a.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let shape = ZOO.image_shape(&loaded.config)?;
    let opts = image_options(&loaded.config, false);
    let files = expand_images(&a.images)?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut meta = vec![
        ("entry", loaded.config.entry.clone()),
        ("files", serde_json::to_string(&names)?),
    ];
    let (tensors, what) = match a.tile.apply(loaded.model.spatial())? {
        // Each image at its own size: one stacked tensor when they agree,
        // else one tensor per image (`latents.<i>`).
        Some(sp) => {
            let mut codes = Vec::with_capacity(files.len());
            let mut sizes = Vec::with_capacity(files.len());
            for f in &files {
                let x = load_image_native(f, shape[0], &dev)?;
                sizes.push([x.dim(2)?, x.dim(3)?]);
                codes.push(aezoo_train::infer::encode_any_size(loaded.model.as_ref(), sp, &x)?);
            }
            meta.push(("image_sizes", serde_json::to_string(&sizes)?));
            if codes.windows(2).all(|p| p[0].dims() == p[1].dims()) {
                let z = Tensor::cat(&codes, 0)?;
                let what = format!("latents {:?}", z.dims());
                (vec![("latents".to_string(), z)], what)
            } else {
                let what = format!("{} latents of their images' sizes (latents.0 …)", codes.len());
                (
                    codes
                        .into_iter()
                        .enumerate()
                        .map(|(i, z)| (format!("latents.{i}"), z))
                        .collect(),
                    what,
                )
            }
        }
        None => {
            let mut codes = Vec::with_capacity(files.len());
            for chunk in files.chunks(32) {
                let xs = chunk
                    .iter()
                    .map(|f| load_image(f, shape, opts, &dev))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                codes.push(loaded.model.encode(&Tensor::cat(&xs, 0)?)?);
            }
            meta.push(("image_shape", serde_json::to_string(&shape)?));
            let z = Tensor::cat(&codes, 0)?;
            let what = format!("latents {:?}", z.dims());
            (vec![("latents".to_string(), z)], what)
        }
    };
    aezoo_train::infer::save_tensors(&tensors, &meta, &a.out)?;
    println!(
        "{}: {} images → {what} in {}",
        loaded.config.entry,
        files.len(),
        a.out.display()
    );
    Ok(())
}

/// One latent of a latents file: `(1, …)`, the name of its source image,
/// and the image's size before padding (fully convolutional models).
pub(crate) struct Latent {
    pub(crate) z: Tensor,
    pub(crate) name: String,
    pub(crate) size: Option<[usize; 2]>,
}

/// A latents file written by `aezoo encode`, checked against the model
/// that will decode it: one stacked tensor `latents`, or `latents.<i>`.
pub(crate) fn read_latents(path: &Path, loaded: &aezoo_train::weights::Loaded) -> Result<Vec<Latent>> {
    let (tensors, meta) = aezoo_train::infer::load_tensors(path)?;
    let p = path.display().to_string();
    let zs: Vec<Tensor> = match tensors.get("latents") {
        Some(z) => {
            if z.rank() == 0 || z.dim(0)? == 0 {
                bail!("{p}: `latents` holds no latent");
            }
            (0..z.dim(0)?)
                .map(|i| z.narrow(0, i, 1))
                .collect::<candle_core::Result<_>>()?
        }
        None => {
            let mut v = Vec::new();
            while let Some(z) = tensors.get(&format!("latents.{}", v.len())) {
                v.push(z.clone());
            }
            if v.is_empty() {
                bail!("{p}: no tensor `latents` (or `latents.0`, …)");
            }
            v
        }
    };
    let want = loaded.model.latent_shape();
    let spatial = loaded.model.spatial();
    for (i, z) in zs.iter().enumerate() {
        let d = z.dims();
        let fits = match spatial {
            Some(sp) => {
                let pixels = d.get(2..4).map(|s| s.iter().map(|v| v * sp.factor).product::<usize>());
                if pixels.is_some_and(|px| px > aezoo_nn::limits::MAX_IMAGE_PIXELS) {
                    bail!(
                        "{p}: latent {i} of shape {d:?} decodes to more than {} pixels (aezoo_nn::limits)",
                        aezoo_nn::limits::MAX_IMAGE_PIXELS
                    );
                }
                d.len() == 4 && d[0] == 1 && d[1] == want[0] && d[2] > 0 && d[3] > 0
            }
            None => d.len() == want.len() + 1 && d[0] == 1 && d[1..] == want[..],
        };
        if !fits {
            bail!(
                "{p}: latent {i} of shape {d:?} does not fit {} (one latent is {want:?}{})",
                loaded.config.entry,
                if spatial.is_some() {
                    " at the model's tile; any height and width"
                } else {
                    ""
                }
            );
        }
    }
    let n = zs.len();
    let names: Vec<String> = meta
        .get("files")
        .and_then(|f| serde_json::from_str(f).ok())
        .filter(|v: &Vec<String>| v.len() == n)
        .unwrap_or_else(|| (0..n).map(|i| format!("latent{i:05}")).collect());
    let sizes: Vec<Option<[usize; 2]>> = meta
        .get("image_sizes")
        .and_then(|f| serde_json::from_str::<Vec<[usize; 2]>>(f).ok())
        .filter(|v| v.len() == n)
        .map(|v| v.into_iter().map(Some).collect())
        .unwrap_or_else(|| vec![None; n]);
    Ok(zs
        .into_iter()
        .zip(names)
        .zip(sizes)
        .map(|((z, name), size)| Latent { z, name, size })
        .collect())
}

pub(crate) fn cmd_decode(a: DecodeArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let latents = read_latents(&a.latents, &loaded)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let spatial = a.tile.apply(loaded.model.spatial())?;
    for (i, l) in latents.iter().enumerate() {
        let z = l.z.to_device(&dev)?;
        let img = match spatial {
            Some(sp) => aezoo_train::infer::decode_any_size(loaded.model.as_ref(), sp, &z, l.size)?,
            None => loaded.model.decode(&z)?,
        };
        let stem = Path::new(&l.name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("latent{i:05}"));
        aezoo_train::plot::save_image(&img, &a.out.join(format!("{stem}.png")))?;
    }
    println!(
        "{}: {} latents → {}/",
        loaded.config.entry,
        latents.len(),
        a.out.display()
    );
    Ok(())
}
