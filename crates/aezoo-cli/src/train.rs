//! `aezoo train` (image entries through the trainer's `Learner`, graph
//! entries through their pipeline), `aezoo compare` and `aezoo list`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aezoo_data::Locator;
use aezoo_train::compare::{self, CompareOptions, Protocol};
use aezoo_train::{checkpoint, weights, EntryConfig, TrainOptions};
use aezoo_zoo::{graph, ZOO};
use anyhow::{bail, Context, Result};
use clap::Args;

use crate::common::{device, git_commit, timestamp, DataArgs};

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Entry name (`ae-linear`, `vae-conv`, …) or path to a config .json.
    #[arg(required_unless_present = "config")]
    pub(crate) entry: Option<String>,
    /// A config .json (the same as giving its path as the entry).
    #[arg(long, value_name = "JSON", conflicts_with = "entry")]
    pub(crate) config: Option<String>,
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Mixed precision: auto (bf16 on CUDA where the family supports it, f32 elsewhere), f32, bf16 or f16.
    #[arg(long, value_name = "P", value_parser = aezoo_train::precision::Precision::parse)]
    pub(crate) precision: Option<aezoo_train::precision::Precision>,
    /// Use only the first N training images.
    #[arg(long, value_name = "N")]
    pub(crate) train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_name = "N")]
    pub(crate) test_limit: Option<usize>,
    /// Run folder (default: runs/<entry>/<timestamp>).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Continue a stopped run from its last checkpoint (default: the entry's newest run).
    #[arg(long, value_name = "RUN_DIR", num_args = 0..=1)]
    pub(crate) resume: Option<Option<PathBuf>>,
    /// Stop (with a checkpoint) after this many optimiser steps in total.
    #[arg(long, value_name = "N")]
    pub(crate) max_steps: Option<u64>,
    /// Skip loss.png and reconstructions.png.
    #[arg(long)]
    pub(crate) no_plots: bool,
    /// Also write TensorBoard event files (scalars, reconstructions) into <run>/tensorboard/.
    #[arg(long)]
    pub(crate) tensorboard: bool,
    /// Start from trained weights (a weights folder or .safetensors): tensors with matching names and shapes are copied, the rest keep their fresh init.
    #[arg(long, value_name = "WEIGHTS")]
    pub(crate) init: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

#[derive(Args)]
pub(crate) struct CompareArgs {
    /// Protocols to run (built-in `zoo`, `seed`, `graphs`, or a protocol .json); repeatable.
    #[arg(long = "protocol", default_value = "zoo")]
    pub(crate) protocols: Vec<String>,
    /// The graph autoencoders against the paper (the `graphs` protocol: 8 rows × 10 seeds).
    #[arg(long)]
    pub(crate) graphs: bool,
    /// The whole table on the bundled subsets, fewer epochs: minutes, not hours.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Only these entries (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
    /// Where strips and results.json go.
    #[arg(long, default_value = "results")]
    pub(crate) results: PathBuf,
    /// The Markdown table to (re)write.
    #[arg(long, default_value = "RESULTS.md")]
    pub(crate) markdown: PathBuf,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

pub(crate) fn apply_overrides(cfg: &mut EntryConfig, a: &TrainArgs) {
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

pub(crate) fn cmd_train(mut a: TrainArgs) -> Result<()> {
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
                    let name = ZOO.resolve_entry(&entry).map(|(c, _)| c.entry).unwrap_or(entry.clone());
                    weights::latest_run(&name).with_context(|| {
                        format!("--resume: no run of `{name}` recorded in runs/{name}/latest; pass --resume RUN_DIR")
                    })?
                }
            };
            let ck = checkpoint::load(&run_dir)?;
            ZOO.validate(&ck.config, &ck.dir.join("config.json").display().to_string())?;
            (ck.config, run_dir, true)
        }
        None => {
            let (cfg, origin) = ZOO.resolve_entry(&entry)?;
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
    ZOO.validate(&cfg, "command line")?;
    let dev = device(&a.data.device)?;
    if graph::is_graph(&cfg) {
        if a.init.is_some() {
            bail!("--init: graph entries train from their seeded init only");
        }
        return crate::graph::train_graph(&cfg, &run_dir, resume, &a, &dev);
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
        opts.init_from = Some(init.clone());
    }
    let result = aezoo_train::train(&cfg, &ZOO, &opts);
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

    if let (true, Some(test)) = (out.completed, &out.metrics) {
        let metrics = weights::WeightsMetrics {
            entry: cfg.entry.clone(),
            family: cfg.family.clone(),
            params: out.params,
            test: test.clone(),
            test_clean: None,
            data: out.data.clone(),
            epochs: out.epochs_done,
            seed: cfg.train.seed,
            batch_size: cfg.train.batch_size,
            lr: cfg.train.lr,
            git_commit: git_commit(),
            completed: Some(out.completed),
            steps: Some(out.steps),
            train_images_per_s: Some(out.train_images_per_s),
            train_seconds: Some(out.train_seconds),
        };
        metrics.write(&run_dir, true)?;
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

pub(crate) fn cmd_compare(a: CompareArgs) -> Result<()> {
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
        let protocol = graph::GraphProtocol::resolve(name)?;
        let out = a.results.join(&protocol.name);
        let result = graph::compare(&protocol, &out, &opts.locator, &a.only, git_commit())?;
        aezoo_zoo::results::write_results_md(&a.results, &a.markdown)?;
        print!("{}", graph::markdown(&result, &out.display().to_string()));
    }
    for name in a.protocols.iter().filter(|p| !a.graphs && *p != "graphs") {
        let protocol = Protocol::resolve(name, &ZOO)?;
        let result = compare::run(&protocol, &ZOO, &opts)?;
        aezoo_zoo::results::write_results_md(&a.results, &a.markdown)?;
        print!("{}", compare::markdown(&result));
    }
    println!("\nwrote {} and {}/", a.markdown.display(), a.results.display());
    Ok(())
}

/// `aezoo list`: the zoo's entries and families.
pub(crate) fn cmd_list() -> Result<()> {
    println!("entries:");
    for name in ZOO.entry_names() {
        let (cfg, _) = ZOO.resolve_entry(name)?;
        println!("  {name:<14} {}", cfg.about);
    }
    println!("families:");
    for f in ZOO.families {
        println!("  {:<14} {}", f.name(), f.about());
    }
    for (name, about) in ZOO.pipelines.iter().flat_map(|p| p.families()) {
        println!("  {name:<14} {about}");
    }
    Ok(())
}
