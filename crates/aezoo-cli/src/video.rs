//! The video entries' commands: `aezoo show-video` (GIFs of clips and
//! their reconstructions, the per-epoch progression, the loss curve) and
//! `rd-video` (the codebook-size sweep).

use std::path::PathBuf;

use aezoo_data::Locator;
use aezoo_train::trainer::load_data;
use aezoo_zoo::ZOO;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;

use crate::common::{device, load_weights, DataArgs, WeightsArgs};

#[derive(Args)]
pub(crate) struct ShowVideoArgs {
    /// Video entry name (`video-ae-small`, …), used to find default weights.
    pub(crate) entry: String,
    /// Test clips to show, one per row (original left, reconstruction right).
    #[arg(long, default_value_t = 4)]
    pub(crate) clips: usize,
    /// Output folder for clips.gif, progress.gif and loss.png.
    #[arg(short = 'o', long, default_value = "show-video")]
    pub(crate) out: PathBuf,
    /// Frames per second of the GIFs.
    #[arg(long, default_value_t = 6)]
    pub(crate) fps: u32,
    /// Pixel scale of the GIFs.
    #[arg(long, default_value_t = 2)]
    pub(crate) scale: usize,
    /// The run folder whose progress.safetensors and metrics.jsonl to animate (default: the weights folder).
    #[arg(long, value_name = "DIR")]
    pub(crate) run: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

#[derive(Args)]
pub(crate) struct RdVideoArgs {
    /// Video entry name or config .json; one model per codebook size is trained from it.
    pub(crate) entry: String,
    /// Codebook sizes K to sweep.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32,64,128")]
    pub(crate) levels: Vec<usize>,
    /// Training epochs per K (default: the entry's).
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Output folder: one run folder per K, rd.csv, rd.md, rd.png.
    #[arg(short = 'o', long, default_value = "results/rd-video")]
    pub(crate) out: PathBuf,
    /// Re-use finished run folders in the output folder instead of training again.
    #[arg(long)]
    pub(crate) reuse: bool,
    /// Fine-tune each K from these trained weights (a weights folder of the entry) instead of training from scratch.
    #[arg(long, value_name = "DIR")]
    pub(crate) init: Option<PathBuf>,
    /// Generated training clips per K (data.moving_mnist.train_clips; default: the entry's).
    #[arg(long, value_name = "N")]
    pub(crate) train_clips: Option<usize>,
    /// Adam's learning rate per K (default: the entry's; lower it when fine-tuning with --init).
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

pub(crate) fn cmd_show_video(a: ShowVideoArgs) -> Result<()> {
    use aezoo_metrics::{psnr, ssim, SsimConfig};
    let dev = device(&a.data.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let cfg = &loaded.config;
    let shape = ZOO.image_shape(cfg)?;
    let Some(frames) = loaded.model.clip_frames() else {
        bail!(
            "`{}` ({}) works on images, not clips; show-video needs a video entry (one of: {})",
            cfg.entry,
            cfg.family,
            clip_entries().join(", ")
        );
    };
    if a.clips == 0 || a.fps == 0 {
        bail!("--clips and --fps must be at least 1");
    }
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let splits = load_data(cfg, &ZOO, &locator)?;
    let n = a.clips.min(splits.test.len());
    let idx: Vec<usize> = (0..n).collect();
    let x = splits.test.batch(&idx, &dev)?;
    let y = loaded.model.reconstruct(&x)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let p = psnr(&y, &x, 1.0)?.to_vec1::<f32>()?;
    let s = ssim(&y, &x, SsimConfig::default())?.to_vec1::<f32>()?;
    for i in 0..n {
        println!("test clip {i}: PSNR {:.2} dB  SSIM {:.4}", p[i], s[i]);
    }
    let delay = 1000 / a.fps;
    let (x, y) = (x.to_device(&Device::Cpu)?, y.to_device(&Device::Cpu)?);
    let gif: Vec<_> = (0..frames)
        .map(|t| aezoo_train::plot::clip_frame(&[x.clone(), y.clone()], t, a.scale))
        .collect::<std::result::Result<_, _>>()?;
    let clips_gif = a.out.join("clips.gif");
    aezoo_train::plot::save_gif(&gif, delay, &clips_gif)?;
    println!(
        "{n} test clips, original | reconstruction, {frames} frames → {}",
        clips_gif.display()
    );

    let run = a.run.clone().unwrap_or_else(|| loaded.dir.clone());
    let progress = run.join(aezoo_train::trainer::PROGRESS_FILE);
    if progress.is_file() {
        let (t, meta) = aezoo_train::infer::load_tensor("progress", &progress)?;
        let epochs: Vec<String> = meta
            .get("epochs")
            .map(|e| e.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        if t.dim(0)? != epochs.len() + 1 || t.dims()[2..] != shape[..] {
            bail!(
                "{}: `progress` has shape {:?}, which does not match its {} epochs of {shape:?} clips",
                progress.display(),
                t.dims(),
                epochs.len()
            );
        }
        let orig = t.get(0)?;
        let mut gif = Vec::new();
        for (e, _) in epochs.iter().enumerate() {
            let rec = t.get(e + 1)?;
            for f in 0..frames {
                let img = aezoo_train::plot::clip_frame(&[orig.clone(), rec.clone()], f, a.scale)?;
                gif.push(aezoo_train::plot::with_progress_bar(
                    &img,
                    (e + 1) as f64 / epochs.len() as f64,
                ));
            }
        }
        let out = a.out.join("progress.gif");
        aezoo_train::plot::save_gif(&gif, delay, &out)?;
        println!(
            "test clip 0 after each of epochs {} (bar: training progress) → {}",
            epochs.join(", "),
            out.display()
        );
    } else {
        println!(
            "no {} in {}: train with plots on for the per-epoch progression (or pass --run DIR)",
            aezoo_train::trainer::PROGRESS_FILE,
            run.display()
        );
    }
    if run.join("metrics.jsonl").is_file() {
        let (steps, epochs) = aezoo_train::runlog::RunLog::read_series(&run)?;
        let out = a.out.join("loss.png");
        aezoo_train::trainer::draw_loss_series(&cfg.entry, &steps, &epochs, &out)?;
        println!("loss curve → {}", out.display());
    }
    Ok(())
}

pub(crate) fn cmd_rd_video(a: RdVideoArgs) -> Result<()> {
    let (mut base, origin) = ZOO.resolve_entry(&a.entry)?;
    tracing::info!("config: {origin}");
    if let Some(n) = a.train_clips {
        let mm = base.data.moving_mnist.get_or_insert_with(Default::default);
        mm.train_clips = n;
    }
    if let Some(lr) = a.lr {
        base.train.lr = lr;
    }
    if a.levels.is_empty() {
        bail!("--levels: give at least one codebook size");
    }
    let dev = device(&a.data.device)?;
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let rows = aezoo_zoo::rd_video::sweep(
        &base,
        &a.levels,
        a.epochs,
        &a.out,
        &locator,
        &dev,
        a.reuse,
        a.init.as_deref(),
    )?;
    let mut command = format!(
        "aezoo rd-video {} --levels {}",
        a.entry,
        a.levels.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(",")
    );
    if let Some(e) = a.epochs {
        command.push_str(&format!(" --epochs {e}"));
    }
    if let Some(n) = a.train_clips {
        command.push_str(&format!(" --train-clips {n}"));
    }
    if let Some(lr) = a.lr {
        command.push_str(&format!(" --lr {lr}"));
    }
    if let Some(d) = &a.init {
        command.push_str(&format!(" --init {}", d.display()));
    }
    aezoo_zoo::rd_video::write_outputs(&base.entry, &rows, &a.out, &command)?;
    println!(
        "{:>4} {:>12} {:>14} {:>10} {:>8}",
        "K", "kbit/clip", "entropy kbit", "PSNR dB", "SSIM"
    );
    for r in &rows {
        println!(
            "{:>4} {:>12.2} {:>14.2} {:>10.2} {:>8.4}",
            r.levels,
            r.bits_per_clip / 1000.0,
            r.entropy_bits_per_clip / 1000.0,
            r.test.psnr,
            r.test.ssim
        );
    }
    println!("→ {}/rd.csv, rd.md, rd.png, rd_ssim.png", a.out.display());
    Ok(())
}

/// The built-in entries whose models take clips, for error messages.
fn clip_entries() -> Vec<&'static str> {
    ZOO.entry_names()
        .into_iter()
        .filter(|e| {
            ZOO.resolve_entry(e)
                .is_ok_and(|(c, _)| c.data.dataset == aezoo_train::config::MOVING_MNIST)
        })
        .collect()
}
