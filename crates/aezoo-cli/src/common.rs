//! What the commands share: the data and weights arguments, the device,
//! finding and loading weights, reading image files and folders, naming
//! outputs, and the run's provenance (timestamp, git commit).

use std::path::{Path, PathBuf};

use aezoo_train::{weights, EntryConfig};
use aezoo_zoo::ZOO;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;

#[derive(Args, Clone)]
pub(crate) struct DataArgs {
    /// Data folder holding the IDX files (or a `<dataset>/` folder with them).
    #[arg(long, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// Allow fetching the data set from the Hugging Face Hub when not found locally.
    #[arg(long)]
    pub(crate) download: bool,
    /// Compute device: cpu, cuda[:N] or metal[:N] (GPU builds need the `cuda`/`metal` feature).
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

/// Where trained weights come from.
#[derive(Args, Clone)]
pub(crate) struct WeightsArgs {
    /// A weights folder (config.json + model.safetensors, or a diffusers folder: config.json +
    /// diffusion_pytorch_model.safetensors) or a lone .safetensors file of an importable format;
    /// default: weights/<entry>, else the entry's newest run.
    #[arg(long, value_name = "DIR", conflicts_with = "hub")]
    pub(crate) weights: Option<PathBuf>,
    /// A Hugging Face Hub model repository, `user/repo[/subfolder][@revision]`, e.g.
    /// `stabilityai/sd-vae-ft-mse` or `…/stable-diffusion-2-1/vae` (honours HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE).
    #[arg(long, value_name = "USER/REPO[/SUB][@REV]")]
    pub(crate) hub: Option<String>,
}

/// How a fully convolutional model takes images larger than its tile.
#[derive(Args, Clone)]
pub(crate) struct TileArgs {
    /// Tile side in pixels for fully convolutional models (diffusers VAEs): larger
    /// images go through in overlapping tiles, blended as diffusers' enable_tiling,
    /// memory bounded by the tile. Default: the model's sample_size; 0: whole images.
    #[arg(long, value_name = "PIXELS")]
    pub(crate) tile: Option<usize>,
}

impl TileArgs {
    /// The model's [`aezoo_nn::model::Spatial`] with `--tile` applied.
    pub(crate) fn apply(&self, sp: Option<aezoo_nn::model::Spatial>) -> Result<Option<aezoo_nn::model::Spatial>> {
        match (sp, self.tile) {
            (Some(sp), Some(t)) => Ok(Some(sp.with_tile(t).map_err(|e| anyhow::anyhow!("--tile {t}: {e}"))?)),
            (sp, _) => Ok(sp),
        }
    }
}

pub(crate) fn device(spec: &str) -> Result<Device> {
    let (kind, idx) = spec.split_once(':').unwrap_or((spec, "0"));
    let idx: usize = idx.parse().with_context(|| format!("--device {spec}: bad ordinal"))?;
    Ok(match kind {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(idx).with_context(|| format!("--device {spec}"))?,
        "metal" => Device::new_metal(idx).with_context(|| format!("--device {spec}"))?,
        _ => bail!("--device {spec}: expected cpu, cuda[:N] or metal[:N]"),
    })
}

pub(crate) fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

pub(crate) fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn weights_dir(entry: &str, w: &WeightsArgs) -> Result<PathBuf> {
    Ok(match (&w.weights, &w.hub) {
        (Some(d), _) => d.clone(),
        (None, Some(spec)) => weights::from_hub(&weights::HubSpec::parse(spec)?, &ZOO)?,
        (None, None) => weights::default_dir(entry)?,
    })
}

/// Loads the weights an inference command names, warning when they belong
/// to another entry than the one asked for.
pub(crate) fn load_weights(entry: &str, w: &WeightsArgs, dev: &Device) -> Result<weights::Loaded> {
    load_weights_from(entry, &weights_dir(entry, w)?, dev)
}

pub(crate) fn load_weights_from(entry: &str, dir: &Path, dev: &Device) -> Result<weights::Loaded> {
    let loaded = weights::load(dir, &ZOO, dev)?;
    if loaded.config.entry != entry {
        tracing::warn!(
            "{} holds weights of `{}`, not `{entry}`",
            dir.display(),
            loaded.config.entry
        );
    }
    tracing::info!("weights: {}", dir.display());
    Ok(loaded)
}

pub(crate) fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(())
}

/// How an inference command reads image files for this entry: as its
/// training folder was read (centre crop), or stretched for IDX-trained entries.
pub(crate) fn image_options(cfg: &EntryConfig, invert: bool) -> aezoo_data::image_file::ImageOptions {
    aezoo_data::image_file::ImageOptions {
        invert,
        fit: cfg
            .data
            .folder
            .as_ref()
            .map(|f| f.fit)
            .unwrap_or(aezoo_data::folder::Fit::Stretch),
    }
}

/// Files named on the command line, folders expanded (sorted; earlier
/// `*.recon.png` outputs left out).
pub(crate) fn expand_images(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in args {
        if p.is_dir() {
            let files = aezoo_data::folder::image_files(p)?;
            out.extend(
                files
                    .into_iter()
                    .filter(|f| !f.to_string_lossy().ends_with(".recon.png")),
            );
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        bail!(
            "no PNG or JPEG files in {}",
            args.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(out)
}

/// `(in, out)` pairs: `out` is the file itself for one input with an `ext`
/// name, else `<dir or beside>/<stem>.<ext>`.
pub(crate) fn outputs(inputs: &[PathBuf], out: &Option<PathBuf>, ext: &str) -> Result<Vec<(PathBuf, PathBuf)>> {
    let single = inputs.len() == 1 && out.as_ref().is_some_and(|o| o.extension().is_some_and(|e| e == ext));
    if let Some(dir) = out.as_ref().filter(|_| !single) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(inputs
        .iter()
        .map(|p| {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let o = match out {
                Some(o) if single => o.clone(),
                Some(dir) => dir.join(format!("{stem}.{ext}")),
                None => p.with_file_name(format!("{stem}.{ext}")),
            };
            (p.clone(), o)
        })
        .collect())
}
