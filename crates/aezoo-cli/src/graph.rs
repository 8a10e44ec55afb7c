//! The graph pipeline's commands: `train` and `eval` of graph entries
//! (GAE, VGAE; full-batch, no checkpoints) and `aezoo encode-graph`.

use std::path::{Path, PathBuf};

use aezoo_data::Locator;
use aezoo_train::{weights, EntryConfig};
use aezoo_zoo::graph::{self, GraphInput, GraphMetricsFile};
use aezoo_zoo::ZOO;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;

use crate::common::{device, git_commit, weights_dir, DataArgs, WeightsArgs};
use crate::eval::EvalArgs;
use crate::train::TrainArgs;

#[derive(Args)]
pub(crate) struct EncodeGraphArgs {
    /// Graph entry name (`gae-cora`, …), used to find default weights.
    pub(crate) entry: String,
    /// Output safetensors file (tensor `embeddings`, (nodes, latent) f32).
    #[arg(short = 'o', long, default_value = "embeddings.safetensors")]
    pub(crate) out: PathBuf,
    /// Encode with every edge of the graph, not only the training edges of the weights' split.
    #[arg(long)]
    pub(crate) full_graph: bool,
    #[command(flatten)]
    pub(crate) weights: WeightsArgs,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

/// A graph entry: full-batch training in seconds, so no checkpoints to resume.
pub(crate) fn train_graph(cfg: &EntryConfig, run_dir: &Path, resume: bool, a: &TrainArgs, dev: &Device) -> Result<()> {
    if resume || a.max_steps.is_some() {
        bail!(
            "{}: graph entries train full-batch in seconds and keep no checkpoints; run `aezoo train {}` again",
            cfg.entry,
            cfg.entry
        );
    }
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let out = graph::train(cfg, run_dir, &locator, dev, git_commit())?;
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
pub(crate) fn is_graph_weights(dir: &Path) -> bool {
    // Graph weights are folders; a lone file is not read twice.
    dir.is_dir() && weights::read_config(dir, &ZOO).is_ok_and(|c| graph::is_graph(&c))
}

pub(crate) fn eval_graph(a: &EvalArgs, dir: &Path, dev: &Device) -> Result<()> {
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

pub(crate) fn cmd_encode_graph(a: EncodeGraphArgs) -> Result<()> {
    let dev = device(&a.data.device)?;
    let dir = weights_dir(&a.entry, &a.weights)?;
    if !is_graph_weights(&dir) {
        bail!("{}: not the weights of a graph entry (GAE, VGAE)", dir.display());
    }
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let mut run = graph::load(&dir, &locator, &dev)?;
    let adjacency = if a.full_graph {
        run.input = GraphInput::new(&run.graph, &run.graph.edges, run.uses_features);
        "all edges"
    } else {
        "training edges of the weights' split"
    };
    let z = run.embeddings()?;
    let (n, d) = z.dims2()?;
    graph::save_embeddings(
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
