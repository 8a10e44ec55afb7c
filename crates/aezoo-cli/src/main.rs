//! `aezoo`: train, evaluate and sample the autoencoder zoo from the command line.

mod process;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aezoo_data::Locator;
use aezoo_nn::Rng;
use aezoo_train::registry::{self, FAMILIES};
use aezoo_train::{checkpoint, weights, EntryConfig, TrainOptions};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Parser, Subcommand};
use tracing_indicatif::filter::{hide_indicatif_span_fields, IndicatifFilter};
use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Parser)]
#[command(
    name = "aezoo",
    version,
    about = "A zoo of autoencoders on candle: train, evaluate, sample."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a zoo entry (a name from `aezoo list`, or a config .json file).
    Train(TrainArgs),
    /// Test-split metrics (MSE, PSNR, SSIM, loss) of trained weights.
    Eval(EvalArgs),
    /// Decode samples from the prior of a generative entry into a PNG grid.
    Sample(SampleArgs),
    /// Reconstruct image files through encoder and decoder; PSNR/SSIM per image.
    Reconstruct(ReconstructArgs),
    /// Decode a straight line between the codes of two images into a PNG strip.
    Interpolate(InterpolateArgs),
    /// Write a weights folder ready to upload (config.json, model.safetensors, metrics.json, README.md).
    Export(ExportArgs),
    /// Train and evaluate entries under one protocol; write RESULTS.md and reconstruction strips.
    Compare(CompareArgs),
    /// Node embeddings of a graph entry (GAE, VGAE) into a safetensors file.
    EncodeGraph(EncodeGraphArgs),
    /// Encode image files or folders into one latents.safetensors (file names kept).
    Encode(EncodeArgs),
    /// Decode a latents.safetensors back into images.
    Decode(DecodeArgs),
    /// Find, by measuring, the largest training batch that fits a memory budget.
    MaxBatch(MaxBatchArgs),
    /// Compress images into .aez files with a learned codec (bits per pixel measured from the file).
    Compress(CompressArgs),
    /// Decompress .aez files into PNG images (needs only the codec's decoder half).
    Decompress(DecompressArgs),
    /// Write a codec's weights folder with encoder.safetensors and decoder.safetensors beside the full model.
    ExportCodec(ExportArgs),
    /// Rate-distortion of learned codecs against JPEG and WebP over a folder of images: CSV, table, BD-rates, plots.
    Rd(RdArgs),
    /// Mean PSNR, SSIM and MAE of an entry's reconstructions over a folder of images (running means over all of them).
    Validate(ValidateArgs),
    /// Animated GIFs of a video entry: test clips beside their reconstructions, the per-epoch progression, the loss curve.
    ShowVideo(ShowVideoArgs),
    /// Rate-distortion sweep of a video entry over codebook sizes K: table, CSV and plot.
    RdVideo(RdVideoArgs),
    /// Time training and inference of an image entry under the PyTorch bench protocol (one JSON line).
    Bench(BenchArgs),
    /// (internal) one training step at a batch size, for `max-batch`; prints peak memory.
    #[command(hide = true)]
    ProbeBatch(ProbeArgs),
    /// List the zoo's entries and model families.
    List,
}

#[derive(Args)]
struct CompressArgs {
    /// Image files or folders (PNG, JPEG), any size.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The output: FILE.aez for one image, else a folder (default: <name>.aez beside each image).
    #[arg(short = 'o', long)]
    out: Option<PathBuf>,
    /// The codec entry.
    #[arg(long, default_value = "codec-mnist")]
    entry: String,
    #[command(flatten)]
    weights: WeightsArgs,
    /// Compute device: cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct DecompressArgs {
    /// .aez files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The output: IMG.png for one file, else a folder (default: <name>.png beside each file).
    #[arg(short = 'o', long)]
    out: Option<PathBuf>,
    /// A weights folder holding the codec (decoder.safetensors, or model.safetensors); default: weights/<model id in the file>.
    #[arg(long, value_name = "DIR")]
    weights: Option<PathBuf>,
    /// Compute device: cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct RdArgs {
    /// The folder of images (PNG, JPEG), coded at their own size.
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Codec entries (weights/<entry>, else the newest run), one rate point
    /// each; a group name stands for its rate points (`codec-photo` →
    /// `codec-photo-q1`, `-q2`, `-q3`), which make one curve; a weights
    /// folder (holding model.safetensors) stands for itself.
    #[arg(long, value_delimiter = ',', default_value = "codec-photo")]
    entries: Vec<String>,
    /// JPEG qualities (the `image` crate's encoder, and libjpeg-turbo's
    /// `cjpeg` where installed); the low end is where learned codecs work.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,5,10,20,30,50,70,90")]
    jpeg: Vec<u8>,
    /// WebP qualities (cwebp; skipped where it is not installed).
    #[arg(long, value_delimiter = ',', default_value = "0,2,5,10,20,30,50,70,90")]
    webp: Vec<u8>,
    /// Output folder: rd.csv, rd.md, rd.png, rd_msssim.png.
    #[arg(short = 'o', long, default_value = "results/rd")]
    out: PathBuf,
}

#[derive(Args)]
struct ValidateArgs {
    /// Entry name (used to find default weights).
    entry: String,
    #[command(flatten)]
    weights: WeightsArgs,
    /// Invert the image files first (dark drawings on white paper for MNIST-style models).
    #[arg(long)]
    invert: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct ShowVideoArgs {
    /// Video entry name (`video-ae-small`, …), used to find default weights.
    entry: String,
    /// Test clips to show, one per row (original left, reconstruction right).
    #[arg(long, default_value_t = 4)]
    clips: usize,
    /// Output folder for clips.gif, progress.gif and loss.png.
    #[arg(short = 'o', long, default_value = "show-video")]
    out: PathBuf,
    /// Frames per second of the GIFs.
    #[arg(long, default_value_t = 6)]
    fps: u32,
    /// Pixel scale of the GIFs.
    #[arg(long, default_value_t = 2)]
    scale: usize,
    /// The run folder whose progress.safetensors and metrics.jsonl to animate (default: the weights folder).
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    #[command(flatten)]
    weights: WeightsArgs,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct RdVideoArgs {
    /// Video entry name or config .json; one model per codebook size is trained from it.
    entry: String,
    /// Codebook sizes K to sweep.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32,64,128")]
    levels: Vec<usize>,
    /// Training epochs per K (default: the entry's).
    #[arg(long)]
    epochs: Option<usize>,
    /// Output folder: one run folder per K, rd.csv, rd.md, rd.png.
    #[arg(short = 'o', long, default_value = "results/rd-video")]
    out: PathBuf,
    /// Re-use finished run folders in the output folder instead of training again.
    #[arg(long)]
    reuse: bool,
    /// Fine-tune each K from these trained weights (a weights folder of the entry) instead of training from scratch.
    #[arg(long, value_name = "DIR")]
    init: Option<PathBuf>,
    /// Generated training clips per K (data.moving_mnist.train_clips; default: the entry's).
    #[arg(long, value_name = "N")]
    train_clips: Option<usize>,
    /// Adam's learning rate per K (default: the entry's; lower it when fine-tuning with --init).
    #[arg(long)]
    lr: Option<f64>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct EncodeGraphArgs {
    /// Graph entry name (`gae-cora`, …), used to find default weights.
    entry: String,
    /// Output safetensors file (tensor `embeddings`, (nodes, latent) f32).
    #[arg(short = 'o', long, default_value = "embeddings.safetensors")]
    out: PathBuf,
    /// Encode with every edge of the graph, not only the training edges of the weights' split.
    #[arg(long)]
    full_graph: bool,
    #[command(flatten)]
    weights: WeightsArgs,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct CompareArgs {
    /// Protocols to run (built-in `zoo`, `seed`, `graphs`, or a protocol .json); repeatable.
    #[arg(long = "protocol", default_value = "zoo")]
    protocols: Vec<String>,
    /// The graph autoencoders against the paper (the `graphs` protocol: 8 rows × 10 seeds).
    #[arg(long)]
    graphs: bool,
    /// The whole table on the bundled subsets, fewer epochs: minutes, not hours.
    #[arg(long)]
    quick: bool,
    /// Only these entries (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where strips and results.json go.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// The Markdown table to (re)write.
    #[arg(long, default_value = "RESULTS.md")]
    markdown: PathBuf,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Data folder holding the IDX files (or a `<dataset>/` folder with them).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Allow fetching the data set from the Hugging Face Hub when not found locally.
    #[arg(long)]
    download: bool,
    /// Compute device: cpu, cuda[:N] or metal[:N] (GPU builds need the `cuda`/`metal` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Where trained weights come from.
#[derive(Args, Clone)]
struct WeightsArgs {
    /// A weights folder (config.json + model.safetensors); default: weights/<entry>, else the entry's newest run.
    #[arg(long, value_name = "DIR", conflicts_with = "hub")]
    weights: Option<PathBuf>,
    /// A Hugging Face Hub model repository, `user/repo[@revision]` (honours HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE).
    #[arg(long, value_name = "USER/REPO[@REV]")]
    hub: Option<String>,
}

#[derive(Args)]
struct TrainArgs {
    /// Entry name (`ae-linear`, `vae-conv`, …) or path to a config .json.
    #[arg(required_unless_present = "config")]
    entry: Option<String>,
    /// A config .json (the same as giving its path as the entry).
    #[arg(long, value_name = "JSON", conflicts_with = "entry")]
    config: Option<String>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Mixed precision: auto (bf16 on CUDA where the family supports it, f32 elsewhere), f32, bf16 or f16.
    #[arg(long, value_name = "P", value_parser = aezoo_train::precision::Precision::parse)]
    precision: Option<aezoo_train::precision::Precision>,
    /// Use only the first N training images.
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_name = "N")]
    test_limit: Option<usize>,
    /// Run folder (default: runs/<entry>/<timestamp>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue a stopped run from its last checkpoint (default: the entry's newest run).
    #[arg(long, value_name = "RUN_DIR", num_args = 0..=1)]
    resume: Option<Option<PathBuf>>,
    /// Stop (with a checkpoint) after this many optimiser steps in total.
    #[arg(long, value_name = "N")]
    max_steps: Option<u64>,
    /// Skip loss.png and reconstructions.png.
    #[arg(long)]
    no_plots: bool,
    /// Also write TensorBoard event files (scalars, reconstructions) into <run>/tensorboard/.
    #[arg(long)]
    tensorboard: bool,
    /// Start from trained weights (a weights folder or .safetensors): tensors with matching names and shapes are copied, the rest keep their fresh init.
    #[arg(long, value_name = "WEIGHTS")]
    init: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Entry name (used to find default weights).
    entry: String,
    #[command(flatten)]
    weights: WeightsArgs,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Print the metrics as JSON.
    #[arg(long)]
    json: bool,
    /// Fail unless the metrics equal the weights' metrics.json to 4 decimal places.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct SampleArgs {
    /// Entry name (used to find default weights).
    entry: String,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 64)]
    n: usize,
    /// Output PNG.
    #[arg(short = 'o', long, default_value = "samples.png")]
    out: PathBuf,
    #[command(flatten)]
    weights: WeightsArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per row (default: √n).
    #[arg(long)]
    cols: Option<usize>,
    /// Pixel scale of the grid.
    #[arg(long, default_value_t = 2)]
    scale: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct ReconstructArgs {
    /// Entry name (used to find default weights).
    entry: String,
    /// Image files (PNG, JPEG, GIF) or folders of them; brought to the model's
    /// input size as its training data was (centre crop for folder-trained entries).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Output folder (default: beside each image, as <name>.recon.png).
    #[arg(short = 'o', long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Invert the images first (dark drawings on white paper for MNIST-style models).
    #[arg(long)]
    invert: bool,
    #[command(flatten)]
    weights: WeightsArgs,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct EncodeArgs {
    /// Entry name (used to find default weights).
    entry: String,
    /// Image files or folders of them (PNG, JPEG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The latents file: tensor `latents` (n, …latent shape), the file names in its metadata.
    #[arg(short = 'o', long, default_value = "latents.safetensors")]
    out: PathBuf,
    #[command(flatten)]
    weights: WeightsArgs,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct DecodeArgs {
    /// Entry name (used to find default weights).
    entry: String,
    /// A latents file written by `aezoo encode`.
    latents: PathBuf,
    /// Output folder: one `<name>.png` per latent, named after its source file.
    #[arg(short = 'o', long, default_value = "decoded")]
    out: PathBuf,
    #[command(flatten)]
    weights: WeightsArgs,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct MaxBatchArgs {
    /// Entry name or config .json.
    entry: String,
    /// The memory budget, e.g. `4GiB`, `512MiB` (default: 80 % of the machine's available memory).
    #[arg(long)]
    budget: Option<String>,
    /// The largest batch to try.
    #[arg(long, default_value_t = 4096)]
    limit: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct BenchArgs {
    /// Entry name or config .json (not needed with --peak).
    #[arg(required_unless_present = "peak")]
    entry: Option<String>,
    /// Print the f32 FMA rate all threads sustain together (FLOP/s, JSON) instead.
    #[arg(long)]
    peak: bool,
    /// Training steps to time (0: one epoch of Fashion-MNIST).
    #[arg(long, default_value_t = 0)]
    steps: usize,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct ProbeArgs {
    entry: String,
    batch: usize,
}

#[derive(Args)]
struct InterpolateArgs {
    /// Entry name (used to find default weights).
    entry: String,
    /// Two image files to interpolate between (default: test images --from and --to).
    images: Vec<PathBuf>,
    /// Test-split index of the first image, when no files are given.
    #[arg(long, default_value_t = 0)]
    from: usize,
    /// Test-split index of the second image, when no files are given.
    #[arg(long, default_value_t = 1)]
    to: usize,
    /// Decoded points between and including the two codes.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Output PNG (the strip of decoded points)
    #[arg(short = 'o', long, default_value = "interpolation.png")]
    out: PathBuf,
    /// Invert the image files first (dark drawings on white paper for MNIST-style models).
    #[arg(long)]
    invert: bool,
    #[command(flatten)]
    weights: WeightsArgs,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args, Clone)]
struct ExportArgs {
    /// Entry name (used to find default weights).
    entry: String,
    /// The folder to write (config.json, model.safetensors, metrics.json, README.md).
    dir: PathBuf,
    #[command(flatten)]
    weights: WeightsArgs,
    #[command(flatten)]
    data: DataArgs,
}

fn device(spec: &str) -> Result<Device> {
    let (kind, idx) = spec.split_once(':').unwrap_or((spec, "0"));
    let idx: usize = idx.parse().with_context(|| format!("--device {spec}: bad ordinal"))?;
    Ok(match kind {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(idx).with_context(|| format!("--device {spec}"))?,
        "metal" => Device::new_metal(idx).with_context(|| format!("--device {spec}"))?,
        _ => bail!("--device {spec}: expected cpu, cuda[:N] or metal[:N]"),
    })
}

fn init_logging() {
    let indicatif = IndicatifLayer::new().with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(indicatif.get_stderr_writer())
                .with_filter(filter),
        )
        .with(indicatif.with_filter(IndicatifFilter::new(false)))
        .init();
}

fn main() -> ExitCode {
    // Allocator, candle's pool, rayon's stacks, subnormals flushed.
    process::tune();
    let cli = Cli::parse();
    init_logging();
    // The whole command runs on a worker of the compute pool, so the
    // parallel regions of a step never park this thread (aezoo_nn::runtime).
    match aezoo_nn::runtime::on_worker(|| run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our library errors already carry their causes in their message:
            // print each cause once.
            let mut parts: Vec<String> = Vec::new();
            for cause in e.chain() {
                let text = cause.to_string();
                if !parts.iter().any(|p| p.contains(&text)) {
                    parts.push(text);
                }
            }
            eprintln!("error: {}", parts.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train(a) => cmd_train(a),
        Cmd::Eval(a) => cmd_eval(a),
        Cmd::Sample(a) => cmd_sample(a),
        Cmd::Compare(a) => cmd_compare(a),
        Cmd::Reconstruct(a) => cmd_reconstruct(a),
        Cmd::Interpolate(a) => cmd_interpolate(a),
        Cmd::Export(a) => cmd_export(a),
        Cmd::EncodeGraph(a) => cmd_encode_graph(a),
        Cmd::Encode(a) => cmd_encode(a),
        Cmd::Decode(a) => cmd_decode(a),
        Cmd::MaxBatch(a) => cmd_max_batch(a),
        Cmd::ShowVideo(a) => cmd_show_video(a),
        Cmd::Compress(a) => cmd_compress(a),
        Cmd::Decompress(a) => cmd_decompress(a),
        Cmd::ExportCodec(a) => cmd_export_codec(a),
        Cmd::Validate(a) => cmd_validate(a),
        Cmd::Rd(a) => cmd_rd(a),
        Cmd::RdVideo(a) => cmd_rd_video(a),
        Cmd::Bench(a) => {
            if a.peak {
                let flops = aezoo_nn::runtime::measured_peak_flops(0.5);
                println!(
                    "{}",
                    serde_json::json!({ "peak_flops": flops, "threads": aezoo_nn::runtime::threads() })
                );
                return Ok(());
            }
            let (cfg, _) = registry::resolve_entry(a.entry.as_deref().unwrap_or_default())?;
            let locator = Locator::from_env(a.data.data.clone(), a.data.download);
            let r = aezoo_train::bench::run(&cfg, &locator, a.steps)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Cmd::ProbeBatch(a) => cmd_probe_batch(a),
        Cmd::List => {
            println!("entries:");
            for name in registry::entry_names() {
                let (cfg, _) = registry::resolve_entry(name)?;
                println!("  {name:<14} {}", cfg.about);
            }
            println!("families:");
            for f in FAMILIES {
                println!("  {:<14} {}", f.name(), f.about());
            }
            for f in registry::GRAPH_FAMILIES {
                println!("  {:<14} {}", f.name(), f.about());
            }
            Ok(())
        }
    }
}

fn timestamp() -> String {
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

fn apply_overrides(cfg: &mut EntryConfig, a: &TrainArgs) {
    let t = &mut cfg.train;
    if let Some(v) = a.epochs {
        t.epochs = v;
    }
    if let Some(v) = a.batch_size {
        t.batch_size = v;
    }
    if let Some(v) = a.lr {
        t.lr = v;
    }
    if let Some(v) = a.seed {
        t.seed = v;
    }
    if let Some(v) = a.precision {
        t.precision = v;
    }
    if let Some(v) = a.train_limit {
        cfg.data.train_limit = Some(v);
    }
    if let Some(v) = a.test_limit {
        cfg.data.test_limit = Some(v);
    }
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cmd_train(mut a: TrainArgs) -> Result<()> {
    if let Some(c) = a.config.take() {
        a.entry = Some(c);
    }
    let entry = a.entry.clone().context("give an entry name or --config JSON")?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to quit now)");
        })
        .context("cannot install the Ctrl-C handler")?;
    }

    let (mut cfg, run_dir, resume) = match &a.resume {
        Some(dir) => {
            let run_dir = match dir {
                Some(d) => d.clone(),
                None => {
                    let name = registry::resolve_entry(&entry)
                        .map(|(c, _)| c.entry)
                        .unwrap_or(entry.clone());
                    weights::latest_run(&name).with_context(|| {
                        format!("--resume: no run of `{name}` recorded in runs/{name}/latest; pass --resume RUN_DIR")
                    })?
                }
            };
            let ck = checkpoint::load(&run_dir)?;
            (ck.config, run_dir, true)
        }
        None => {
            let (cfg, origin) = registry::resolve_entry(&entry)?;
            tracing::info!("config: {origin}");
            let run_dir = match &a.out {
                Some(d) => d.clone(),
                None => {
                    let base = weights::runs_root(&cfg.entry).join(timestamp());
                    let mut d = base.clone();
                    let mut k = 2;
                    while d.exists() {
                        d = PathBuf::from(format!("{}-{k}", base.display()));
                        k += 1;
                    }
                    d
                }
            };
            (cfg, run_dir, false)
        }
    };
    apply_overrides(&mut cfg, &a);
    cfg.validate("command line")?;
    let dev = device(&a.data.device)?;
    if cfg.is_graph() {
        if a.init.is_some() {
            bail!("--init: graph entries train from their seeded init only");
        }
        return train_graph(&cfg, &run_dir, resume, &a, &dev);
    }

    let mut opts = TrainOptions::new(&run_dir, Locator::from_env(a.data.data.clone(), a.data.download));
    opts.device = dev;
    opts.resume = resume;
    opts.max_steps = a.max_steps;
    opts.stop = Some(stop.clone());
    opts.plots = !a.no_plots;
    opts.tensorboard = a.tensorboard;
    if let Some(init) = &a.init {
        if resume {
            bail!("--init starts a fresh run from weights; it cannot be combined with --resume");
        }
        opts.init_from = Some(if init.is_dir() {
            init.join("model.safetensors")
        } else {
            init.clone()
        });
    }
    let result = aezoo_train::train(&cfg, &opts);
    // Record the run as the entry's newest once it has something to resume
    // or evaluate (a run that failed before its first checkpoint has not).
    if checkpoint::latest(&run_dir).is_some() {
        weights::mark_latest(&cfg.entry, &run_dir)?;
    }
    let out = result?;
    if !out.completed && stop.load(Ordering::SeqCst) {
        eprintln!(
            "interrupted: checkpoint at step {} in {}; continue with `aezoo train {} --resume {}`",
            out.steps,
            run_dir.display(),
            cfg.entry,
            run_dir.display()
        );
        std::process::exit(130);
    }

    let summary = serde_json::json!({
        "entry": cfg.entry,
        "family": cfg.family,
        "completed": out.completed,
        "epochs": out.epochs_done,
        "steps": out.steps,
        "seed": cfg.train.seed,
        "batch_size": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "params": out.params,
        "data": out.data,
        "test": out.metrics,
        "train_images_per_s": out.train_images_per_s,
        "train_seconds": out.train_seconds,
        "git_commit": git_commit(),
    });
    if out.completed {
        aezoo_nn::params::write_atomic(
            &run_dir.join("metrics.json"),
            (serde_json::to_string_pretty(&summary)? + "\n").as_bytes(),
        )?;
    }
    if let Some(m) = &out.metrics {
        println!(
            "{}: test MSE {:.5}  PSNR {:.2} dB  SSIM {:.4}  loss {:.4}  ({:.0} train img/s)",
            cfg.entry, m.mse, m.psnr, m.ssim, m.loss, out.train_images_per_s
        );
    }
    println!("run: {}", run_dir.display());
    Ok(())
}

/// A graph entry: full-batch training in seconds, so no checkpoints to resume.
fn train_graph(cfg: &EntryConfig, run_dir: &Path, resume: bool, a: &TrainArgs, dev: &Device) -> Result<()> {
    if resume || a.max_steps.is_some() {
        bail!(
            "{}: graph entries train full-batch in seconds and keep no checkpoints; run `aezoo train {}` again",
            cfg.entry,
            cfg.entry
        );
    }
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let out = aezoo_train::graph::train(cfg, run_dir, &locator, dev, git_commit())?;
    weights::mark_latest(&cfg.entry, run_dir)?;
    let m = &out.metrics;
    println!(
        "{}: test AUC {:.2}  AP {:.2}  (validation AUC {:.2}  AP {:.2}; {} epochs in {:.1} s)",
        cfg.entry,
        100.0 * m.test.auc,
        100.0 * m.test.ap,
        100.0 * m.val.auc,
        100.0 * m.val.ap,
        m.epochs,
        m.train_seconds
    );
    println!("run: {}", run_dir.display());
    Ok(())
}

/// Whether a weights folder holds a graph entry (its config.json's family).
fn is_graph_weights(dir: &Path) -> bool {
    weights::read_config(dir).map(|c| c.is_graph()).unwrap_or(false)
}

fn eval_graph(a: &EvalArgs, dir: &Path, dev: &Device) -> Result<()> {
    use aezoo_train::graph::{self, GraphMetricsFile};
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let run = graph::load(dir, &locator, dev)?;
    tracing::info!("weights: {}", dir.display());
    let (val, test) = run.evaluate()?;
    let cfg = &run.cfg;
    if a.json {
        let out = serde_json::json!({
            "entry": cfg.entry,
            "weights": dir,
            "data": run.graph.describe(),
            "seed": cfg.train.seed,
            "val": val,
            "test": test,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{}: {} test edges + {} non-edges (split seed {}): AUC {:.2}  AP {:.2}  (validation AUC {:.2}  AP {:.2})",
            cfg.entry,
            run.split.test.len(),
            run.split.test_neg.len(),
            cfg.train.seed,
            100.0 * test.auc,
            100.0 * test.ap,
            100.0 * val.auc,
            100.0 * val.ap
        );
    }
    if a.check {
        let path = dir.join("metrics.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("--check: cannot read {}", path.display()))?;
        let shipped: GraphMetricsFile = serde_json::from_str(&text)
            .with_context(|| format!("--check: {} is not an aezoo graph metrics.json", path.display()))?;
        let r4 = |v: f64| (v * 1e4).round();
        for (what, got, want) in [
            ("test AUC", test.auc, shipped.test.auc),
            ("test AP", test.ap, shipped.test.ap),
            ("validation AUC", val.auc, shipped.val.auc),
            ("validation AP", val.ap, shipped.val.ap),
        ] {
            if r4(got) != r4(want) {
                bail!("--check: {what} {got:.6} differs from {} ({want:.6})", path.display());
            }
        }
        println!("matches {} to 4 decimal places", path.display());
    }
    Ok(())
}

fn cmd_encode_graph(a: EncodeGraphArgs) -> Result<()> {
    use aezoo_train::graph::GraphInput;
    let dev = device(&a.data.device)?;
    let dir = weights_dir(&a.entry, &a.weights)?;
    if !is_graph_weights(&dir) {
        bail!("{}: not the weights of a graph entry (GAE, VGAE)", dir.display());
    }
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let mut run = aezoo_train::graph::load(&dir, &locator, &dev)?;
    let adjacency = if a.full_graph {
        run.input = GraphInput::new(&run.graph, &run.graph.edges, run.uses_features);
        "all edges"
    } else {
        "training edges of the weights' split"
    };
    let z = run.embeddings()?;
    let (n, d) = z.dims2()?;
    aezoo_train::graph::save_embeddings(
        &z,
        &[
            ("entry", run.cfg.entry.clone()),
            ("graph", run.graph.describe()),
            ("adjacency", adjacency.to_string()),
            ("split_seed", run.cfg.train.seed.to_string()),
        ],
        &a.out,
    )?;
    println!(
        "{}: {n} nodes × {d} embeddings ({adjacency}) → {}",
        run.cfg.entry,
        a.out.display()
    );
    Ok(())
}

fn weights_dir(entry: &str, w: &WeightsArgs) -> Result<PathBuf> {
    Ok(match (&w.weights, &w.hub) {
        (Some(d), _) => d.clone(),
        (None, Some(spec)) => weights::from_hub(&weights::HubSpec::parse(spec)?)?,
        (None, None) => weights::default_dir(entry)?,
    })
}

/// Loads the weights an inference command names, warning when they belong
/// to another entry than the one asked for.
fn load_weights(entry: &str, w: &WeightsArgs, dev: &Device) -> Result<weights::Loaded> {
    load_weights_from(entry, &weights_dir(entry, w)?, dev)
}

fn load_weights_from(entry: &str, dir: &Path, dev: &Device) -> Result<weights::Loaded> {
    let loaded = weights::load(dir, dev)?;
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

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let dev = device(&a.data.device)?;
    let dir = weights_dir(&a.entry, &a.weights)?;
    if is_graph_weights(&dir) {
        return eval_graph(&a, &dir, &dev);
    }
    let loaded = load_weights_from(&a.entry, &dir, &dev)?;
    let cfg = &loaded.config;
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let splits = aezoo_train::trainer::load_data(cfg, &locator)?;
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

fn cmd_sample(a: SampleArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    if !loaded.model.is_generative() {
        bail!(
            "`{}` ({}) has no prior to sample from; sampling needs a variational entry such as vae-conv",
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

fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(())
}

/// How an inference command reads image files for this entry: as its
/// training folder was read (centre crop), or stretched for IDX-trained entries.
fn image_options(cfg: &EntryConfig, invert: bool) -> aezoo_data::image_file::ImageOptions {
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
fn expand_images(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
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

fn cmd_reconstruct(a: ReconstructArgs) -> Result<()> {
    use aezoo_data::image_file::load_image;
    use aezoo_metrics::{psnr, ssim, SsimConfig};
    let dev = device(&a.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let shape = registry::family(&loaded.config.family, &a.entry)?.check(&loaded.config.model, &a.entry)?;
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

fn cmd_encode(a: EncodeArgs) -> Result<()> {
    use aezoo_data::image_file::load_image;
    let dev = device(&a.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let shape = registry::family(&loaded.config.family, &a.entry)?.check(&loaded.config.model, &a.entry)?;
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

fn cmd_decode(a: DecodeArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let path = a.latents.display().to_string();
    let (z, meta) = aezoo_train::infer::load_tensor("latents", &a.latents)?;
    let want = loaded.model.latent_shape();
    if z.rank() != want.len() + 1 || z.dims()[1..] != want[..] {
        bail!(
            "{path}: latents of shape {:?} do not fit {} (one latent is {want:?})",
            z.dims(),
            loaded.config.entry
        );
    }
    let n = z.dim(0)?;
    let z = z.to_device(&dev)?;
    let names: Vec<String> = meta
        .get("files")
        .and_then(|f| serde_json::from_str(f).ok())
        .filter(|v: &Vec<String>| v.len() == n)
        .unwrap_or_else(|| (0..n).map(|i| format!("latent{i:05}")).collect());
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

/// Bytes from `4GiB`, `512MiB`, `1.5G`, `800M` or a plain number.
fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .with_context(|| format!("--budget `{s}`: expected a size like 4GiB or 512MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("--budget `{s}`: unknown unit `{other}` (use KiB, MiB or GiB)"),
    };
    Ok((v * mult) as u64)
}

/// One probe: a fresh process trains two steps at `batch` and reports its peak RSS.
fn probe(entry: &str, batch: usize) -> Result<Option<u64>> {
    let exe = std::env::current_exe().context("cannot find the aezoo binary")?;
    let o = std::process::Command::new(exe)
        .args(["probe-batch", entry, &batch.to_string()])
        .env("RUST_LOG", "error")
        .output()
        .context("cannot start a probe")?;
    if !o.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&o.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_bytes "))
        .and_then(|v| v.trim().parse().ok()))
}

fn cmd_probe_batch(a: ProbeArgs) -> Result<()> {
    let (cfg, _) = registry::resolve_entry(&a.entry)?;
    let peak = aezoo_train::bench::probe_batch(&cfg, a.batch)?;
    println!("peak_rss_bytes {peak}");
    Ok(())
}

fn cmd_max_batch(a: MaxBatchArgs) -> Result<()> {
    if a.device != "cpu" {
        bail!("max-batch measures host memory (peak RSS) and runs on the CPU; GPU memory probing is not built yet");
    }
    let budget = match &a.budget {
        Some(s) => parse_bytes(s)?,
        None => aezoo_train::bench::proc_bytes("/proc/meminfo", "MemAvailable:")
            .map(|b| b / 10 * 8)
            .context("no /proc/meminfo: pass --budget")?,
    };
    let (cfg, _) = registry::resolve_entry(&a.entry)?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "{}: each probe is a fresh `aezoo probe-batch` process that builds the model, runs two training steps \
         (forward, backward, Adam) on a batch of that size and reports its peak resident memory (VmHWM); budget {:.2} GiB",
        cfg.entry,
        gib(budget)
    );
    let fits = |b: usize| -> Result<Option<u64>> {
        let peak = probe(&a.entry, b)?;
        match peak {
            Some(p) => println!(
                "  batch {b:>5}: peak {:.3} GiB {}",
                gib(p),
                if p <= budget { "fits" } else { "over" }
            ),
            None => println!("  batch {b:>5}: failed (out of memory or error)"),
        }
        Ok(peak.filter(|&p| p <= budget))
    };
    // Doubling, then bisection between the last batch that fits and the first that does not.
    let (mut lo, mut hi) = (0usize, None);
    let mut b = 1usize;
    while b <= a.limit {
        if fits(b)?.is_some() {
            lo = b;
            b *= 2;
        } else {
            hi = Some(b);
            break;
        }
    }
    if let Some(mut hi) = hi {
        while hi - lo > 1 && lo > 0 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)?.is_some() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    if lo == 0 {
        bail!(
            "{}: even a batch of 1 does not train within {:.2} GiB",
            cfg.entry,
            gib(budget)
        );
    }
    println!(
        "{}: largest batch within {:.2} GiB: {lo}{}",
        cfg.entry,
        gib(budget),
        if hi.is_none() {
            " (the --limit; larger not tried)".to_string()
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `(in, out)` pairs: `out` is the file itself for one input with an `ext`
/// name, else `<dir or beside>/<stem>.<ext>`.
fn outputs(inputs: &[PathBuf], out: &Option<PathBuf>, ext: &str) -> Result<Vec<(PathBuf, PathBuf)>> {
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

/// PSNR (dB) between two images after both are rounded to 8 bits, as their
/// PNG files hold them.
fn psnr_u8(a: &Tensor, b: &Tensor) -> Result<f64> {
    let q = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_dtype(candle_core::DType::F32)?
            .clamp(0f32, 1f32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| (v * 255.0).round() as f64)
            .collect())
    };
    let (x, y) = (q(a)?, q(b)?);
    let mse = x.iter().zip(&y).map(|(p, r)| ((p - r) / 255.0).powi(2)).sum::<f64>() / x.len() as f64;
    Ok(if mse == 0.0 { f64::INFINITY } else { -10.0 * mse.log10() })
}

fn cmd_compress(a: CompressArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let dir = weights_dir(&a.entry, &a.weights)?;
    let lc = aezoo_train::codec::load_codec(&dir, &dev)?;
    let [c, _, _] = lc.codec.synthesis().image();
    let files = expand_images(&a.images)?;
    for (img, out) in outputs(&files, &a.out, "aez")? {
        let x = aezoo_data::image_file::load_image_native(&img, c, &dev)?;
        let (_, _, h, w) = x.dims4()?;
        let t0 = std::time::Instant::now();
        let bytes = aezoo_compress::aez::compress(&lc.codec, &lc.config.entry, lc.fingerprint, &x)
            .map_err(|e| anyhow::anyhow!("{}: {e}", img.display()))?;
        let secs = t0.elapsed().as_secs_f64();
        // What the file decodes to, as `decompress` will decode it.
        let decoded = aezoo_compress::aez::decompress(lc.codec.synthesis(), &lc.config.entry, lc.fingerprint, &bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", img.display()))?;
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

fn cmd_decompress(a: DecompressArgs) -> Result<()> {
    let dev = device(&a.device)?;
    for (file, out) in outputs(&a.files, &a.out, "png")? {
        let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let (header, _) = aezoo_compress::aez::read(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let dir = match &a.weights {
            Some(d) => d.clone(),
            None => weights::default_dir(&header.model)?,
        };
        let (cfg, synth, fp) = aezoo_train::codec::load_synthesis(&dir, &dev)?;
        let y = aezoo_compress::aez::decompress(&synth, &cfg.entry, fp, &bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
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

fn cmd_export_codec(a: ExportArgs) -> Result<()> {
    let dev = device(&a.data.device)?;
    let src = weights_dir(&a.entry, &a.weights)?;
    let lc = aezoo_train::codec::load_codec(&src, &dev)?;
    cmd_export(a.clone())?;
    aezoo_train::codec::write_halves(&lc.params, &a.dir)?;
    println!(
        "{} → {}/{{{}, {}}} (decoder fingerprint {:016x})",
        lc.config.entry,
        a.dir.display(),
        aezoo_train::codec::ENCODER_FILE,
        aezoo_train::codec::DECODER_FILE,
        lc.fingerprint
    );
    Ok(())
}

fn cmd_rd(a: RdArgs) -> Result<()> {
    let entries: Vec<String> = a.entries.iter().flat_map(|e| registry::expand_group(e)).collect();
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
        .map(|e| Ok(aezoo_train::codec::load_codec(&folder(e)?, &Device::Cpu)?))
        .collect::<Result<Vec<_>>>()?;
    let images = expand_images(std::slice::from_ref(&a.images))?;
    let tmp = tempfile::tempdir().context("cannot make a temporary folder")?;
    let points = aezoo_train::rd_image::evaluate(&codecs, &images, &a.jpeg, &a.webp, tmp.path())?;
    let q = |v: &[u8]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
    let command = format!(
        "aezoo rd --images {} --entries {} --jpeg {} --webp {}",
        a.images.display(),
        a.entries.join(","),
        q(&a.jpeg),
        q(&a.webp)
    );
    let bd = aezoo_train::rd_image::write_outputs(&points, &a.out, &command)?;
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

fn cmd_validate(a: ValidateArgs) -> Result<()> {
    use aezoo_data::image_file::load_image;
    use aezoo_metrics::{mae, psnr, ssim, Reduction, SsimConfig};
    let dev = device(&a.data.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let shape = registry::family(&loaded.config.family, &a.entry)?.check(&loaded.config.model, &a.entry)?;
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

fn cmd_show_video(a: ShowVideoArgs) -> Result<()> {
    use aezoo_metrics::{psnr, ssim, SsimConfig};
    let dev = device(&a.data.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    let cfg = &loaded.config;
    let shape = registry::family(&cfg.family, &a.entry)?.check(&cfg.model, &a.entry)?;
    if shape[0] == 1 || shape[0] == 3 {
        bail!(
            "`{}` ({}) works on {}-channel images, not clips; show-video needs a video entry such as video-ae-small",
            cfg.entry,
            cfg.family,
            shape[0]
        );
    }
    if a.clips == 0 || a.fps == 0 {
        bail!("--clips and --fps must be at least 1");
    }
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let splits = aezoo_train::trainer::load_data(cfg, &locator)?;
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
    let frames = shape[0];
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

fn cmd_rd_video(a: RdVideoArgs) -> Result<()> {
    let (mut base, origin) = registry::resolve_entry(&a.entry)?;
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
    let rows = aezoo_train::rd_video::sweep(
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
    aezoo_train::rd_video::write_outputs(&base.entry, &rows, &a.out, &command)?;
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

fn cmd_interpolate(a: InterpolateArgs) -> Result<()> {
    use aezoo_data::image_file::load_image;
    let dev = device(&a.data.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    if a.steps < 2 {
        bail!("--steps must be at least 2");
    }
    let (xa, xb) = match a.images.as_slice() {
        [] => {
            let locator = Locator::from_env(a.data.data.clone(), a.data.download);
            let splits = aezoo_train::trainer::load_data(&loaded.config, &locator)?;
            let n = splits.test.len();
            if a.from >= n || a.to >= n {
                bail!("--from/--to: the test split has {n} images");
            }
            (splits.test.batch(&[a.from], &dev)?, splits.test.batch(&[a.to], &dev)?)
        }
        [fa, fb] => {
            let shape = registry::family(&loaded.config.family, &a.entry)?.check(&loaded.config.model, &a.entry)?;
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

fn cmd_export(a: ExportArgs) -> Result<()> {
    let dev = device(&a.data.device)?;
    let loaded = load_weights(&a.entry, &a.weights, &dev)?;
    // Provenance from the run's summary when there is one.
    let commit = std::fs::read_to_string(loaded.dir.join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["git_commit"].as_str().map(str::to_string))
        .or_else(git_commit);
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let metrics = weights::measure(&loaded, &locator, &dev, commit)?;
    weights::export(&loaded, &metrics, &a.dir)?;
    println!(
        "{} → {} (test MSE {:.5} on {})",
        loaded.config.entry,
        a.dir.display(),
        metrics.test.mse,
        metrics.data
    );
    Ok(())
}

fn cmd_compare(a: CompareArgs) -> Result<()> {
    use aezoo_train::compare::{self, CompareOptions, Protocol};
    let opts = CompareOptions {
        results_dir: a.results.clone(),
        runs_dir: PathBuf::from("runs/compare"),
        quick: a.quick,
        device: device(&a.data.device)?,
        only: a.only.clone(),
        locator: Locator::from_env(a.data.data.clone(), a.data.download),
        git_commit: git_commit(),
    };
    let graph_protocols: Vec<String> = if a.graphs {
        if a.protocols.len() == 1 && a.protocols[0] == "zoo" {
            vec!["graphs".into()]
        } else {
            a.protocols.clone()
        }
    } else {
        a.protocols.iter().filter(|p| *p == "graphs").cloned().collect()
    };
    for name in &graph_protocols {
        use aezoo_train::graph;
        let protocol = graph::GraphProtocol::resolve(name)?;
        let out = a.results.join(&protocol.name);
        let result = graph::compare(&protocol, &out, &opts.locator, &a.only, git_commit())?;
        compare::write_results_md(&a.results, &a.markdown)?;
        print!("{}", graph::markdown(&result, &out.display().to_string()));
    }
    for name in a.protocols.iter().filter(|p| !a.graphs && *p != "graphs") {
        let protocol = Protocol::resolve(name)?;
        let result = compare::run(&protocol, &opts)?;
        compare::write_results_md(&a.results, &a.markdown)?;
        print!("{}", compare::markdown(&result));
    }
    println!("\nwrote {} and {}/", a.markdown.display(), a.results.display());
    Ok(())
}
