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

use crate::common::{create_parent, device, expand_images, image_options, load_weights, DataArgs, WeightsArgs};

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
    /// input size as its training data was (centre crop for folder-trained entries).
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
    let with_ssim = shape[1] >= 11 && shape[2] >= 11;
    let (mut sum_p, mut sum_s, mut n) = (0f64, 0f64, 0usize);
    for img in expand_images(&a.images)? {
        let x = load_image(&img, shape, opts, &dev)?;
        let y = loaded.model.reconstruct(&x)?;
        let p = psnr(&y, &x, 1.0)?.to_vec1::<f32>()?[0];
        let s = if with_ssim {
            let v = ssim(&y, &x, SsimConfig::default())?.to_vec1::<f32>()?[0];
            sum_s += v as f64;
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
        aezoo_train::plot::save_rows(&[Tensor::cat(&[&x, &y], 3)?], 4, &out)?;
        println!("{}: PSNR {p:.2} dB  SSIM {s}  → {}", img.display(), out.display());
    }
    if n > 1 {
        let s = if with_ssim {
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
    use aezoo_data::image_file::load_image;
    let dev = device(&a.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let shape = ZOO.image_shape(&loaded.config)?;
    let opts = image_options(&loaded.config, false);
    let files = expand_images(&a.images)?;
    let mut codes = Vec::with_capacity(files.len());
    for chunk in files.chunks(32) {
        let xs = chunk
            .iter()
            .map(|f| load_image(f, shape, opts, &dev))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        codes.push(loaded.model.encode(&Tensor::cat(&xs, 0)?)?);
    }
    let z = Tensor::cat(&codes, 0)?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    aezoo_train::infer::save_tensor(
        "latents",
        &z,
        &[
            ("entry", loaded.config.entry.clone()),
            ("files", serde_json::to_string(&names)?),
            ("image_shape", serde_json::to_string(&shape)?),
        ],
        &a.out,
    )?;
    println!(
        "{}: {} images → latents {:?} in {}",
        loaded.config.entry,
        files.len(),
        z.dims(),
        a.out.display()
    );
    Ok(())
}

/// A latents file written by `aezoo encode`, checked against the model
/// that will decode it, with the names of its latents' source files.
pub(crate) fn read_latents(path: &Path, loaded: &aezoo_train::weights::Loaded) -> Result<(Tensor, Vec<String>)> {
    let (z, meta) = aezoo_train::infer::load_tensor("latents", path)?;
    let path = path.display().to_string();
    let want = loaded.model.latent_shape();
    if z.rank() != want.len() + 1 || z.dims()[1..] != want[..] {
        bail!(
            "{path}: latents of shape {:?} do not fit {} (one latent is {want:?})",
            z.dims(),
            loaded.config.entry
        );
    }
    let n = z.dim(0)?;
    let names: Vec<String> = meta
        .get("files")
        .and_then(|f| serde_json::from_str(f).ok())
        .filter(|v: &Vec<String>| v.len() == n)
        .unwrap_or_else(|| (0..n).map(|i| format!("latent{i:05}")).collect());
    Ok((z, names))
}

pub(crate) fn cmd_decode(a: DecodeArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let (z, names) = read_latents(&a.latents, &loaded)?;
    let n = z.dim(0)?;
    let z = z.to_device(&dev)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    for (i, name) in names.iter().enumerate() {
        let img = loaded.model.decode(&z.narrow(0, i, 1)?)?;
        let stem = Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("latent{i:05}"));
        aezoo_train::plot::save_image(&img, &a.out.join(format!("{stem}.png")))?;
    }
    println!("{}: {n} latents → {}/", loaded.config.entry, a.out.display());
    Ok(())
}
