//! `aezoo`: train, evaluate and use the autoencoder zoo from the command
//! line. This file parses the command line and dispatches; each command
//! group lives in its own module, the process set-up in [`process`].

#![forbid(unsafe_code)]

mod bench;
mod codec;
mod common;
mod device;
mod eval;
mod fuzz;
mod fuzz_targets;
mod graph;
mod infer;
mod process;
mod train;
mod video;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
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
    Train(train::TrainArgs),
    /// Test-split metrics (MSE, PSNR, SSIM, loss) of trained weights.
    Eval(eval::EvalArgs),
    /// Decode samples from the prior of a generative entry into a PNG grid.
    Sample(infer::SampleArgs),
    /// Reconstruct image files through encoder and decoder; PSNR/SSIM per image.
    Reconstruct(infer::ReconstructArgs),
    /// Decode a straight line between the codes of two images into a PNG strip.
    Interpolate(infer::InterpolateArgs),
    /// Write a weights folder ready to upload (config.json, model.safetensors, metrics.json, README.md).
    Export(eval::ExportArgs),
    /// Train and evaluate entries under one protocol; write RESULTS.md and reconstruction strips.
    Compare(train::CompareArgs),
    /// Node embeddings of a graph entry (GAE, VGAE) into a safetensors file.
    EncodeGraph(graph::EncodeGraphArgs),
    /// Encode image files or folders into one latents.safetensors (file names kept).
    Encode(infer::EncodeArgs),
    /// Decode a latents.safetensors back into images.
    Decode(infer::DecodeArgs),
    /// Find, by measuring, the largest training batch that fits a memory budget.
    MaxBatch(bench::MaxBatchArgs),
    /// Compress images into .aez files with a learned codec (bits per pixel measured from the file).
    Compress(codec::CompressArgs),
    /// Decompress .aez files into PNG images (needs only the codec's decoder half).
    Decompress(codec::DecompressArgs),
    /// Write a codec's weights folder with encoder.safetensors and decoder.safetensors beside the full model.
    ExportCodec(eval::ExportArgs),
    /// Rate-distortion of learned codecs against JPEG and WebP over a folder of images: CSV, table, BD-rates, plots.
    Rd(codec::RdArgs),
    /// Mean PSNR, SSIM and MAE of an entry's reconstructions over a folder of images (running means over all of them).
    Validate(eval::ValidateArgs),
    /// Animated GIFs of a video entry: test clips beside their reconstructions, the per-epoch progression, the loss curve.
    ShowVideo(video::ShowVideoArgs),
    /// Rate-distortion sweep of a video entry over codebook sizes K: table, CSV and plot.
    RdVideo(video::RdVideoArgs),
    /// Time training and inference of an image entry under the PyTorch bench protocol (one JSON line).
    Bench(bench::BenchArgs),
    /// Set a GPU against the CPU on every entry: loss, gradients and reconstruction (f32), bf16 loss, f64 gradient check.
    CheckDevice(device::CheckDeviceArgs),
    /// Feed every file parser mutated inputs under a memory limit; fails on a panic, abort, hang or unclear error.
    Fuzz(fuzz::FuzzArgs),
    /// (internal) one training step at a batch size, for `max-batch`; prints peak memory.
    #[command(hide = true)]
    ProbeBatch(bench::ProbeArgs),
    /// List the zoo's entries and model families.
    List,
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
    // Allocator, candle's pool, rayon's stacks, subnormals flushed (before
    // any other thread exists; parsing starts none).
    let cli = Cli::parse();
    process::tune(cli.cmd.large_buffers());
    init_logging();
    // The whole command runs on a worker of the compute pool, so the
    // parallel regions of a step never park this thread (aezoo_nn::runtime).
    match aezoo_nn::runtime::on_worker(|| run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error as the command prints it. Our library errors already carry
/// their causes in their message: each cause once, on one line (a
/// backtrace that candle appends under RUST_BACKTRACE dropped).
pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = aezoo_nn::limits::one_line(&cause.to_string());
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

impl Cmd {
    /// Commands that take photographs at their own size, whose activations
    /// outgrow a thread arena ([`process::tune`]).
    fn large_buffers(&self) -> bool {
        match self {
            Cmd::Reconstruct(_) | Cmd::Encode(_) | Cmd::Decode(_) => true,
            Cmd::Compress(_) | Cmd::Decompress(_) | Cmd::Validate(_) | Cmd::Rd(_) => true,
            Cmd::Bench(a) => a.image_size.is_some(),
            _ => false,
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train(a) => train::cmd_train(a),
        Cmd::Eval(a) => eval::cmd_eval(a),
        Cmd::Sample(a) => infer::cmd_sample(a),
        Cmd::Compare(a) => train::cmd_compare(a),
        Cmd::Reconstruct(a) => infer::cmd_reconstruct(a),
        Cmd::Interpolate(a) => infer::cmd_interpolate(a),
        Cmd::Export(a) => eval::cmd_export(a),
        Cmd::EncodeGraph(a) => graph::cmd_encode_graph(a),
        Cmd::Encode(a) => infer::cmd_encode(a),
        Cmd::Decode(a) => infer::cmd_decode(a),
        Cmd::MaxBatch(a) => bench::cmd_max_batch(a),
        Cmd::ShowVideo(a) => video::cmd_show_video(a),
        Cmd::Compress(a) => codec::cmd_compress(a),
        Cmd::Decompress(a) => codec::cmd_decompress(a),
        Cmd::ExportCodec(a) => codec::cmd_export_codec(a),
        Cmd::Validate(a) => eval::cmd_validate(a),
        Cmd::Rd(a) => codec::cmd_rd(a),
        Cmd::RdVideo(a) => video::cmd_rd_video(a),
        Cmd::Bench(a) => bench::cmd_bench(a),
        Cmd::ProbeBatch(a) => bench::cmd_probe_batch(a),
        Cmd::Fuzz(a) => fuzz::cmd_fuzz(a),
        Cmd::CheckDevice(a) => device::cmd_check_device(a),
        Cmd::List => train::cmd_list(),
    }
}
