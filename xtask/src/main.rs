//! `cargo xtask`: a thin dispatcher. It resolves the workspace root, builds
//! and runs the `aezoo` binary (release) through `$CARGO`, and strings a few
//! runs together (`quality`). No library logic lives here.
//!
//! ```text
//! cargo xtask train <entry> [aezoo train options]   train on the default data, save weights
//! cargo xtask eval <entry> [--weights DIR]          test metrics of saved weights
//! cargo xtask sample <entry> [-n N] [-o PNG]        samples of a generative entry
//! cargo xtask reconstruct <entry> IMG…              images through encoder and decoder
//! cargo xtask interpolate <entry> [IMG IMG]         a strip along a line between two codes
//! cargo xtask export <entry> DIR                    a weights folder ready for the Hub
//! cargo xtask compare [--protocol P] [--quick]      every entry under one protocol → RESULTS.md
//! cargo xtask compare --graphs                       GAE / VGAE on Cora and Citeseer, 10 seeds, vs the paper
//! cargo xtask encode-graph <entry> -o EMB            node embeddings of a graph entry (safetensors)
//! cargo xtask list                                  the zoo's entries
//! cargo xtask quality [--seeds N] [--torch-ref PY]  vae-conv under the PyTorch bench protocol
//! cargo xtask aezoo <anything>                      any aezoo subcommand
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `aezoo <args>` from the workspace root, built in release mode.
fn aezoo(args: &[String]) -> Result<()> {
    let status = Command::new(cargo())
        .current_dir(root())
        .args(["run", "--quiet", "--release", "-p", "aezoo-cli", "--bin", "aezoo", "--"])
        .args(args)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!(
            "aezoo {} failed ({status})",
            args.first().map(String::as_str).unwrap_or("")
        );
    }
    Ok(())
}

fn usage() -> &'static str {
    "usage: cargo xtask <train|eval|sample|reconstruct|interpolate|export|encode-graph|list|compare|quality|aezoo> [args]\n\
     \n  train <entry> [opts]    train a zoo entry on its default data (see `aezoo train --help`)\
     \n  eval <entry> [opts]     test-split metrics of its weights (see `aezoo eval --help`)\
     \n  sample <entry> [opts]   a PNG grid of prior samples (see `aezoo sample --help`)\
     \n  reconstruct <entry> IMG…  image files through encoder and decoder, PSNR/SSIM per image\
     \n  interpolate <entry> [IMG IMG]  decode a line between two codes into a PNG strip\
     \n  export <entry> DIR      config.json, model.safetensors, metrics.json, model card: ready for the Hub\
     \n  list                    the zoo's entries and families\
     \n  compare [--protocol zoo|seed] [--quick]\
     \n                          train + evaluate every entry under one protocol, write RESULTS.md\
     \n  compare --graphs        GAE / VGAE on Cora and Citeseer (with and without features), 10 seeds,\
     \n                          mean ± std of test AUC / AP beside Kipf & Welling (2016)\
     \n  encode-graph <entry> [-o EMB] [--full-graph]\
     \n                          node embeddings of a graph entry into a safetensors file\
     \n  quality [--seeds N] [--torch-ref PATH]\
     \n                          vae-conv, 1 epoch of full Fashion-MNIST, batch 128, Adam 1e-3:\
     \n                          test MSE per seed, beside PyTorch's when PATH (shared/bench/pytorch_ref.py)\
     \n                          is given (run through scripts/torch_ref_seeded.py with the same seeds)\
     \n  aezoo <args>            any aezoo subcommand"
}

fn quality(args: &[String]) -> Result<()> {
    let mut seeds = 5u64;
    let mut torch_ref: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" => seeds = it.next().context("--seeds N")?.parse().context("--seeds N")?,
            "--torch-ref" => torch_ref = Some(PathBuf::from(it.next().context("--torch-ref PATH")?)),
            other => bail!("quality: unknown option {other}\n{}", usage()),
        }
    }
    let out = root().join("runs/quality");
    let mut ours = Vec::new();
    for seed in 0..seeds {
        let dir = out.join(format!("vae-conv-seed{seed}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        aezoo(&[
            "train".into(),
            "vae-conv".into(),
            "--epochs".into(),
            "1".into(),
            "--batch-size".into(),
            "128".into(),
            "--lr".into(),
            "0.001".into(),
            "--seed".into(),
            seed.to_string(),
            "--no-plots".into(),
            "--out".into(),
            dir.display().to_string(),
        ])?;
        let m = read_metrics(&dir.join("metrics.json"))?;
        ours.push(m);
    }
    let mut torch = Vec::new();
    if let Some(script) = &torch_ref {
        for seed in 0..seeds {
            let o = Command::new("python3")
                .arg(root().join("scripts/torch_ref_seeded.py"))
                .arg(script)
                .arg("vae")
                .env("SEED", seed.to_string())
                .output()
                .with_context(|| format!("cannot run python3 {}", script.display()))?;
            let text = String::from_utf8_lossy(&o.stdout);
            let field = |key: &str| {
                text.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            match field("test_mse=") {
                Some(v) => torch.push((v, field("train_img_s=").unwrap_or(f64::NAN))),
                None => {
                    eprintln!(
                        "PyTorch reference printed no RESULT (is torch installed?): {}",
                        String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
                    );
                    break;
                }
            }
        }
    }
    println!("\nvae-conv, 1 epoch, batch 128, Adam 1e-3 (bench protocol); test MSE per pixel");
    println!("| seed | aezoo test MSE | PyTorch test MSE | aezoo train img/s | PyTorch train img/s |");
    println!("|---|---|---|---|---|");
    let dash = || "—".to_string();
    for (i, m) in ours.iter().enumerate() {
        let (tm, ts) = torch
            .get(i)
            .map(|(m, s)| (format!("{m:.5}"), format!("{s:.0}")))
            .unwrap_or_else(|| (dash(), dash()));
        println!("| {seed} | {:.5} | {tm} | {:.0} | {ts} |", m.mse, m.img_s, seed = i);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let om: Vec<f64> = ours.iter().map(|m| m.mse).collect();
    let os: Vec<f64> = ours.iter().map(|m| m.img_s).collect();
    let (tm, ts) = if torch.is_empty() {
        (dash(), dash())
    } else {
        let m: Vec<f64> = torch.iter().map(|t| t.0).collect();
        let s: Vec<f64> = torch.iter().map(|t| t.1).collect();
        (format!("{:.5}", mean(&m)), format!("{:.0}", mean(&s)))
    };
    println!("| mean | {:.5} | {tm} | {:.0} | {ts} |", mean(&om), mean(&os));
    Ok(())
}

struct Metrics {
    mse: f64,
    img_s: f64,
}

/// The test MSE and training speed from an aezoo run's `metrics.json`.
fn read_metrics(path: &Path) -> Result<Metrics> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    Ok(Metrics {
        mse: v["test"]["mse"]
            .as_f64()
            .with_context(|| format!("{}: no test.mse", path.display()))?,
        img_s: v["train_images_per_s"].as_f64().unwrap_or(f64::NAN),
    })
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        println!("{}", usage());
        return Ok(());
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "train" | "eval" | "sample" | "list" | "compare" | "reconstruct" | "interpolate" | "export"
        | "encode-graph" => aezoo(&args),
        "aezoo" => aezoo(rest),
        "quality" => quality(rest),
        "-h" | "--help" | "help" => {
            println!("{}", usage());
            Ok(())
        }
        other => bail!("unknown task `{other}`\n{}", usage()),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
