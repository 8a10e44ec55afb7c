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
//! cargo xtask compress IMG… [--entry E] [-o F.aez]   a learned codec's real bitstreams (and decompress F.aez… -o IMG.png)
//! cargo xtask export-codec <entry> DIR              encoder.safetensors and decoder.safetensors beside the full model
//! cargo xtask validate <entry> --data DIR           mean PSNR / SSIM / MAE over a folder of images
//! cargo xtask rd --images DIR [--entries a,b]       codec-photo (or the entries) against JPEG, libjpeg and WebP: CSV, BD-rate, plots
//! cargo xtask show-video <entry> [-o DIR]            GIFs: test clips beside reconstructions, per-epoch progression
//! cargo xtask rd-video <entry> [--levels 2,4,…]      codebook-size sweep of a video entry → rate vs PSNR/SSIM
//! cargo xtask list                                  the zoo's entries
//! cargo xtask quality [--entry E] [--seeds N] [--torch-ref PY | --twins]  test MSE per seed beside PyTorch's
//! cargo xtask bench [--steps N] [--rounds R]      aezoo beside its PyTorch twins, alternating rounds → BENCH.md
//! cargo xtask bench --vae [--rounds R]            the diffusers VAEs beside diffusers → BENCH.md's VAE section
//! cargo xtask fuzz [--seconds N] [--targets a,b]  every file parser under mutated inputs, memory-limited
//! cargo xtask build-gpu                            the CUDA build (sm_90) and gpu/aezoo.xz for a GPU machine (scripts/gpu/build.sh)
//! cargo xtask aezoo <anything>                      any aezoo subcommand
//! ```

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

mod vae;

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
    "usage: cargo xtask <train|eval|sample|reconstruct|interpolate|export|encode-graph|compress|decompress|export-codec|validate|rd|show-video|rd-video|list|compare|quality|bench|fuzz|build-gpu|aezoo> [args]\n\
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
     \n  compress IMG… [--entry codec-mnist] [-o FILE.aez]   images into .aez files; decompress FILE.aez… [-o IMG.png]\
     \n  export-codec <entry> DIR  the full model, encoder.safetensors and decoder.safetensors\
     \n  validate <entry> --data DIR  mean PSNR / SSIM / MAE of the reconstructions over a folder\
     \n  rd --images DIR [--entries a,b]  codec-photo's rate points (or the entries) against JPEG, libjpeg and WebP: rd.csv, rd.md (BD-rates), rd.png\
     \n  show-video <entry> [-o DIR]  animated GIFs: test clips beside their reconstructions,\
     \n                          the per-epoch progression, the loss curve\
     \n  rd-video <entry> [--levels 2,4,8,16,32,64,128] [--epochs N]\
     \n                          one model per codebook size K: rate against PSNR/SSIM (CSV, table, plots)\
     \n  quality [--entry vae-conv] [--seeds N] [--torch-ref PATH | --twins]\
     \n                          an image entry, 1 epoch of full Fashion-MNIST, batch 128, Adam 1e-3:\
     \n                          test MSE per seed, beside PyTorch's when PATH (shared/bench/pytorch_ref.py,\
     \n                          vae-conv only) is given (run through scripts/torch_ref_seeded.py with the\
     \n                          same seeds), or with --twins through scripts/bench/torch_twins.py --seed\
     \n  bench [--steps N] [--rounds 3] [--entries a,b] [--out BENCH.md] [--python python3] [--vae]\
     \n                          each image entry timed by aezoo and by its PyTorch twin\
     \n                          (scripts/bench/torch_twins.py), alternating for N rounds: train and\
     \n                          inference img/s (best round), peak RSS, ratios, FLOPs, share of the measured peak\
     \n                          --vae: the diffusers VAEs on one 256/512 image beside diffusers\
     \n                          (scripts/bench/diffusers_vae.py) → BENCH.md's VAE section\
     \n  build-gpu               aezoo with --features cuda (sm_90) on a machine without a GPU, packed as\
     \n                          gpu/aezoo.xz for scripts/gpu/check.sh on a GPU machine (scripts/gpu/build.sh)
     \n  fuzz [--seconds 10] [--inputs N] [--targets a,b] [--memory 6GiB]\
     \n                          every file parser fed mutated inputs in a memory-limited worker;\
     \n                          fails on a panic, abort, hang or an error not one line naming the file\
     \n  aezoo <args>            any aezoo subcommand"
}

fn quality(args: &[String]) -> Result<()> {
    let mut seeds = 5u64;
    let mut torch_ref: Option<PathBuf> = None;
    let mut twins = false;
    let mut entry = "vae-conv".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" => seeds = it.next().context("--seeds N")?.parse().context("--seeds N")?,
            "--torch-ref" => torch_ref = Some(PathBuf::from(it.next().context("--torch-ref PATH")?)),
            "--twins" => twins = true,
            "--entry" => entry = it.next().context("--entry NAME")?.clone(),
            other => bail!("quality: unknown option {other}\n{}", usage()),
        }
    }
    if torch_ref.is_some() && twins {
        bail!("quality: --torch-ref and --twins each name the PyTorch side; give one");
    }
    if torch_ref.is_some() && entry != "vae-conv" {
        bail!("quality: shared/bench/pytorch_ref.py has vae-conv's twin only; use --twins for {entry}");
    }
    let out = root().join("runs/quality");
    let mut ours = Vec::new();
    for seed in 0..seeds {
        let dir = out.join(format!("{entry}-seed{seed}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        aezoo(&[
            "train".into(),
            entry.clone(),
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
    if torch_ref.is_some() || twins {
        for seed in 0..seeds {
            let mut cmd = Command::new("python3");
            match &torch_ref {
                Some(script) => cmd
                    .arg(root().join("scripts/torch_ref_seeded.py"))
                    .arg(script)
                    .arg("vae")
                    .env("SEED", seed.to_string()),
                None => cmd
                    .arg(root().join("scripts/bench/torch_twins.py"))
                    .arg(&entry)
                    .args(["--seed", &seed.to_string()]),
            };
            let o = cmd.output().context("cannot run python3 (the PyTorch side)")?;
            let text = String::from_utf8_lossy(&o.stdout);
            let json: Option<serde_json::Value> = text.lines().rev().find_map(|l| serde_json::from_str(l).ok());
            let field = |key: &str| match &json {
                Some(v) => v[key.trim_end_matches('=')].as_f64(),
                None => text
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|v| v.parse::<f64>().ok()),
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
    println!("\n{entry}, 1 epoch, batch 128, Adam 1e-3 (bench protocol); test MSE per pixel");
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

/// The image entries with a PyTorch twin, in table order.
const BENCH_ENTRIES: &[&str] = &[
    "ae-linear",
    "ae-mlp",
    "ae-sparse",
    "ae-conv",
    "ae-denoise",
    "vae-mlp",
    "vae-conv",
    "vae-beta",
    "codec-mnist",
];

/// The CPU: its name, the cores this process may use, and its nominal
/// peak f32 FLOP rate from `cpu MHz` and vector width (2 FMA units per core
/// assumed), shown beside the measured one.
fn cpu_peak() -> (String, usize, f64, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let mhz: f64 = field("cpu MHz").and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let flags = field("flags").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (per_cycle, isa) = if flags.split_whitespace().any(|f| f == "avx512f") {
        (64.0, "AVX-512: 2 FMA × 16 f32 × 2 flops")
    } else if flags.split_whitespace().any(|f| f == "fma") {
        (32.0, "AVX2: 2 FMA × 8 f32 × 2 flops")
    } else {
        (8.0, "SSE: 2 × 4 f32")
    };
    let peak = cores as f64 * mhz * 1e6 * per_cycle;
    (
        name,
        cores,
        peak,
        format!(
            "{cores} cores × {:.2} GHz (nominal) × {per_cycle} flops/cycle ({isa}) = {:.0} GFLOP/s",
            mhz / 1e3,
            peak / 1e9
        ),
    )
}

fn json_line(out: &[u8]) -> Option<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
}

/// One entry's runs: aezoo's and PyTorch's result lines, one per round.
struct BenchRow {
    entry: String,
    ours: Vec<serde_json::Value>,
    theirs: Vec<serde_json::Value>,
}

fn field(v: &serde_json::Value, k: &str) -> f64 {
    v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN)
}

fn finite<'a>(runs: &'a [serde_json::Value], k: &'a str) -> impl Iterator<Item = f64> + 'a {
    runs.iter().map(move |v| field(v, k)).filter(|x| x.is_finite())
}

/// The largest finite value of `k` over the rounds (the least disturbed
/// run: interference only ever slows a run down).
fn best(runs: &[serde_json::Value], k: &str) -> f64 {
    finite(runs, k).fold(f64::NAN, f64::max)
}

/// The smallest finite value of `k` over the rounds (times: the least
/// disturbed run).
fn least(runs: &[serde_json::Value], k: &str) -> f64 {
    finite(runs, k).fold(f64::NAN, f64::min)
}

/// `a / b` as a table cell (`—` when either is missing).
fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

/// `v` with `d` decimals as a table cell (`—` when missing).
fn num(v: f64, d: usize) -> String {
    if v.is_finite() {
        format!("{v:.d$}")
    } else {
        "—".into()
    }
}

fn bench(args: &[String]) -> Result<()> {
    let mut steps = 0usize;
    let mut rounds = 3usize;
    let mut entries: Vec<String> = BENCH_ENTRIES.iter().map(|s| s.to_string()).collect();
    let mut out = root().join("BENCH.md");
    let mut python = "python3".to_string();
    let mut vae = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--steps" => steps = it.next().context("--steps N")?.parse().context("--steps N")?,
            "--rounds" => {
                rounds = it.next().context("--rounds N")?.parse().context("--rounds N")?;
                if rounds == 0 {
                    bail!("--rounds must be at least 1");
                }
            }
            "--entries" => {
                entries = it
                    .next()
                    .context("--entries a,b")?
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--out" => out = PathBuf::from(it.next().context("--out PATH")?),
            "--python" => python = it.next().context("--python PATH")?.clone(),
            "--vae" => vae = true,
            other => bail!("bench: unknown option {other}\n{}", usage()),
        }
    }
    let status = Command::new(cargo())
        .current_dir(root())
        .args(["build", "--quiet", "--release", "-p", "aezoo-cli"])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cannot build aezoo");
    }
    let exe = root().join("target/release/aezoo");
    let twin = root().join("scripts/bench/torch_twins.py");
    let (cpu, cores, nominal, nominal_text) = cpu_peak();
    if vae {
        return vae::bench(&exe, &python, rounds, cores, &out);
    }
    let o = Command::new(&exe)
        .args(["bench", "--peak"])
        .output()
        .context("cannot run aezoo")?;
    let peak = json_line(&o.stdout)
        .map(|v| field(&v, "peak_flops"))
        .unwrap_or(f64::NAN);
    let mut torch_note: Option<String> = None;
    let mut rows = Vec::new();
    for e in &entries {
        let mut row = BenchRow {
            entry: e.clone(),
            ours: Vec::new(),
            theirs: Vec::new(),
        };
        // Rounds alternate the two frameworks, so a slow spell of a shared
        // machine falls on both.
        for r in 0..rounds {
            eprintln!("bench: {e} round {}/{rounds} (aezoo)", r + 1);
            let o = Command::new(&exe)
                .current_dir(root())
                .args(["bench", e, "--steps", &steps.to_string()])
                .env("RUST_LOG", "error")
                .output()
                .context("cannot run aezoo")?;
            let ours = json_line(&o.stdout)
                .with_context(|| format!("aezoo bench {e} failed: {}", String::from_utf8_lossy(&o.stderr).trim()))?;
            row.ours.push(ours);
            if torch_note.is_some() {
                continue;
            }
            eprintln!("bench: {e} round {}/{rounds} (PyTorch)", r + 1);
            let o = Command::new(&python)
                .current_dir(root())
                .arg(&twin)
                .args([
                    e.as_str(),
                    "--steps",
                    &steps.to_string(),
                    "--threads",
                    &cores.to_string(),
                ])
                .output();
            match o {
                Ok(o) if o.status.success() => {
                    if let Some(v) = json_line(&o.stdout).filter(|v| v.get("error").is_none()) {
                        row.theirs.push(v);
                    }
                }
                Ok(o) => {
                    let why = String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                        .to_string();
                    torch_note = Some(format!("the PyTorch twin did not run ({why}); ratios left out"));
                }
                Err(err) => {
                    torch_note = Some(format!("`{python}` cannot be started ({err}); ratios left out"));
                }
            }
        }
        rows.push(row);
    }
    // The ratio of the best runs, and the range of the per-round ratios.
    let ratio_cell = |row: &BenchRow, k: &str| {
        let r = ratio(best(&row.ours, k), best(&row.theirs, k));
        let per: Vec<f64> = row
            .ours
            .iter()
            .zip(&row.theirs)
            .map(|(a, b)| field(a, k) / field(b, k))
            .filter(|x| x.is_finite())
            .collect();
        if per.len() > 1 {
            let (lo, hi) = per
                .iter()
                .fold((f64::INFINITY, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
            format!("{r} ({lo:.2}–{hi:.2})")
        } else {
            r
        }
    };
    let mut cmd = "cargo xtask bench".to_string();
    if steps > 0 {
        cmd += &format!(" --steps {steps}");
    }
    if rounds != 3 {
        cmd += &format!(" --rounds {rounds}");
    }
    let peak_text = if peak.is_finite() {
        format!(
            "{:.0} GFLOP/s measured (`aezoo bench --peak`: independent f32 FMA chains on all {cores} threads at once; nominal: {nominal_text})",
            peak / 1e9
        )
    } else {
        format!("{nominal_text} (the measured peak was not available)")
    };
    let peak = if peak.is_finite() { peak } else { nominal };
    let mut md = format!("# Speed: aezoo beside PyTorch\n\nWritten by `{cmd}`");
    md += &format!(
        ". Each entry is run by aezoo (`aezoo bench`) and by its PyTorch twin (`scripts/bench/torch_twins.py`, built from the same `configs/<entry>.json`: same layers, parameter count, batch, Adam, data), each in its own process on {cores} threads, {rounds} round{} alternating the two: the protocol of `shared/bench/pytorch_ref.py` — Fashion-MNIST, {} training steps timed (forward, backward, optimiser; batching and noise not timed), inference over the 10,000 test images in batches of 1000, test MSE per pixel of clean inputs, peak resident memory of the process. Speeds are each framework's best round (interference on a shared machine only slows a run); in brackets, the range of the per-round ratios. Test MSE and memory are the same in every round (seeded runs).\n\nMachine: {cpu}. Peak: {peak_text}. Training FLOPs per image are taken as 3 × the forward FLOPs PyTorch's `FlopCounterMode` counts (forward + two backward products); the last columns are the share of the measured peak each framework reaches while training, at those nominal FLOPs: where aezoo computes a layer in fewer operations (`ae-denoise`'s decoder, a 2× upsampling into a 3 × 3 conv, in sub-pixel form: about half the multiply-adds, the same function — docs/perf.md), its share is of the work the model as written stands for.\n\n",
        if rounds == 1 { "" } else { "s" },
        if steps == 0 { "one epoch of".to_string() } else { steps.to_string() },
    );
    if let Some(n) = &torch_note {
        md += &format!("**PyTorch:** {n}.\n\n");
    }
    md += "| entry | params | train img/s aezoo | PyTorch | ratio | infer img/s aezoo | PyTorch | ratio | peak RSS MB aezoo | PyTorch | ratio | test MSE aezoo | PyTorch | fwd MFLOP/img | % peak aezoo | PyTorch |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for row in &rows {
        let (a, t) = (&row.ours, &row.theirs);
        let first = |runs: &[serde_json::Value], k: &str| runs.first().map(|v| field(v, k)).unwrap_or(f64::NAN);
        let flops = first(t, "forward_flops_per_image");
        let pct = |img_s: f64| {
            if flops.is_finite() && peak.is_finite() && img_s.is_finite() {
                format!("{:.1}", 100.0 * img_s * 3.0 * flops / peak)
            } else {
                "—".into()
            }
        };
        md += &format!(
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.entry,
            num(first(a, "params"), 0),
            num(best(a, "train_img_s"), 0),
            num(best(t, "train_img_s"), 0),
            ratio_cell(row, "train_img_s"),
            num(best(a, "infer_img_s"), 0),
            num(best(t, "infer_img_s"), 0),
            ratio_cell(row, "infer_img_s"),
            num(best(a, "peak_rss_mb"), 0),
            num(best(t, "peak_rss_mb"), 0),
            ratio(best(a, "peak_rss_mb"), best(t, "peak_rss_mb")),
            num(first(a, "test_mse"), 4),
            num(first(t, "test_mse"), 4),
            num(flops / 1e6, 2),
            pct(best(a, "train_img_s")),
            pct(best(t, "train_img_s")),
        );
    }
    let data = rows
        .first()
        .and_then(|r| r.ours.first())
        .and_then(|v| v.get("data"))
        .and_then(|d| d.as_str())
        .unwrap_or("");
    let fw = rows
        .iter()
        .find_map(|r| r.theirs.first())
        .and_then(|t| t.get("framework"))
        .and_then(|v| v.as_str())
        .unwrap_or("PyTorch not run");
    md += &format!(
        "\nTargets (issue 8): train and inference ratios ≥ 1.25×, peak memory ratio ≤ 1.00×, test MSE equal within noise. aezoo's data: {data}. PyTorch: {fw}. Absolute figures move between runs on shared machines; compare the ratios. Entries on other data have no row, since the protocol is Fashion-MNIST's: photographs (`vae-flex-*`, `codec-photo-*`), Moving MNIST clips (`video-ae*`) and graphs.\n"
    );
    // The VAE section (`--vae`) stays as it was.
    if let Some(sec) = std::fs::read_to_string(&out).ok().as_deref().and_then(vae::section) {
        md += &format!("\n{sec}");
    }
    std::fs::write(&out, md).with_context(|| format!("cannot write {}", out.display()))?;
    println!("wrote {}", out.display());
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
        | "encode-graph" | "show-video" | "rd-video" | "compress" | "decompress" | "export-codec" | "validate"
        | "rd" | "fuzz" => aezoo(&args),
        "aezoo" => aezoo(rest),
        "quality" => quality(rest),
        "bench" => bench(rest),
        "build-gpu" => build_gpu(rest),
        "-h" | "--help" | "help" => {
            println!("{}", usage());
            Ok(())
        }
        other => bail!("unknown task `{other}`\n{}", usage()),
    }
}

/// `scripts/gpu/build.sh`: it installs the CUDA 13.0 wheels it needs in a
/// venv, links against a driver stub and packs the binary for the device.
fn build_gpu(rest: &[String]) -> Result<()> {
    if let Some(a) = rest.first() {
        bail!("build-gpu: unknown option {a} (it takes none; see scripts/gpu/build.sh)");
    }
    let status = Command::new("bash")
        .arg(root().join("scripts/gpu/build.sh"))
        .current_dir(root())
        .status()
        .context("cannot run scripts/gpu/build.sh")?;
    if !status.success() {
        bail!("scripts/gpu/build.sh failed ({status})");
    }
    Ok(())
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
