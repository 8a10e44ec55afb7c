//! `aezoo eval` (test metrics, `--check` against `metrics.json`),
//! `aezoo export` (a weights folder ready for the Hub) and `aezoo validate`
//! (metrics over a folder of images).

use std::path::PathBuf;

use aezoo_data::Locator;
use aezoo_train::trainer::load_data;
use aezoo_train::weights;
use aezoo_zoo::ZOO;
use anyhow::{bail, Context, Result};
use clap::Args;

use crate::common::{
    device, expand_images, git_commit, image_options, load_weights, load_weights_from, weights_dir, DataArgs,
    WeightsArgs,
};
use crate::graph::{eval_graph, is_graph_weights};

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Entry name (used to find default weights).
    pub(crate) entry: String,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Fail unless the metrics equal the weights' metrics.json to 4 decimal places.
    #[arg(long)]
    pub(crate) check: bool,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

#[derive(Args, Clone)]
pub(crate) struct ExportArgs {
    /// Entry name (used to find default weights).
    pub(crate) entry: String,
    /// The folder to write (config.json, model.safetensors, metrics.json, README.md).
    pub(crate) dir: PathBuf,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

#[derive(Args)]
pub(crate) struct ValidateArgs {
    /// Entry name (used to find default weights).
    pub(crate) entry: String,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    /// Invert the image files first (dark drawings on white paper for MNIST-style models).
    #[arg(long)]
    pub(crate) invert: bool,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

pub(crate) fn cmd_eval(a: EvalArgs) -> Result<()> {
    let dev = device(&a.data.device)?;
    let dir = weights_dir(&a.entry, &a.weights)?;
    if is_graph_weights(&dir) {
        return eval_graph(&a, &dir, &dev);
    }
    let loaded = load_weights_from(&a.entry, &dir, &dev)?;
    let cfg = &loaded.config;
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let splits = load_data(cfg, &ZOO, &locator)?;
    tracing::info!("data: {}", splits.describe());
    let bs = a.batch_size.unwrap_or(cfg.train.eval_batch_size);
    let m = aezoo_train::evaluate(
        loaded.model.as_ref(),
        &splits.test,
        bs,
        cfg.data.noise,
        cfg.train.seed,
        &dev,
    )?;
    if a.json {
        let out = serde_json::json!({
            "entry": cfg.entry,
            "weights": loaded.dir,
            "data": splits.describe(),
            "test": m,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{}: {} test images: MSE {:.5}  PSNR {:.2} dB  SSIM {:.4}  loss {:.4}",
            cfg.entry, m.images, m.mse, m.psnr, m.ssim, m.loss
        );
    }
    if a.check {
        let path = loaded.dir.join("metrics.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("--check: cannot read {}", path.display()))?;
        let shipped: weights::WeightsMetrics = serde_json::from_str(&text)
            .with_context(|| format!("--check: {} is not an aezoo metrics.json", path.display()))?;
        if shipped.data != splits.describe() {
            bail!(
                "--check: {} was measured on `{}`, this machine has `{}`; install that data (see README) to check",
                path.display(),
                shipped.data,
                splits.describe()
            );
        }
        weights::agree(&m, &shipped.test)
            .map_err(|d| anyhow::anyhow!("--check: differs from {} ({d})", path.display()))?;
        println!("matches {} to 4 decimal places", path.display());
    }
    Ok(())
}

pub(crate) fn cmd_export(a: ExportArgs) -> Result<()> {
    let dev = device(&a.data.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    // Provenance from the run's summary when there is one.
    let commit = weights::WeightsMetrics::read(&loaded.dir)
        .ok()
        .and_then(|m| m.git_commit)
        .or_else(git_commit);
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let metrics = weights::measure(&loaded, &ZOO, &locator, &dev, commit)?;
    weights::export(&loaded, &metrics, &a.dir, &ZOO)?;
    println!(
        "{} → {} (test MSE {:.5} on {})",
        loaded.config.entry,
        a.dir.display(),
        metrics.test.mse,
        metrics.data
    );
    Ok(())
}

pub(crate) fn cmd_validate(a: ValidateArgs) -> Result<()> {
    use aezoo_data::image_file::load_image;
    use aezoo_metrics::{mae, psnr, ssim, Reduction, SsimConfig};
    let dev = device(&a.data.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let shape = ZOO.image_shape(&loaded.config)?;
    let Some(folder) = &a.data.data else {
        bail!("--data DIR: the folder of images to validate on");
    };
    let opts = image_options(&loaded.config, a.invert);
    let with_ssim = shape[1] >= 11 && shape[2] >= 11;
    // Running means over every image, not the last batch's.
    let (mut sp, mut ss, mut sm, mut n) = (0f64, 0f64, 0f64, 0usize);
    for img in expand_images(std::slice::from_ref(folder))? {
        let x = load_image(&img, shape, opts, &dev)?;
        let y = loaded.model.reconstruct(&x)?;
        sp += psnr(&y, &x, 1.0)?.to_vec1::<f32>()?[0] as f64;
        if with_ssim {
            ss += ssim(&y, &x, SsimConfig::default())?.to_vec1::<f32>()?[0] as f64;
        }
        sm += mae(&y, &x, Reduction::Mean)?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        n += 1;
    }
    let k = n as f64;
    let ssim_s = if with_ssim {
        format!("{:.4}", ss / k)
    } else {
        "—".into()
    };
    println!(
        "{}: {n} images of {}: mean PSNR {:.2} dB  SSIM {ssim_s}  MAE {:.5}",
        loaded.config.entry,
        folder.display(),
        sp / k,
        sm / k
    );
    Ok(())
}
