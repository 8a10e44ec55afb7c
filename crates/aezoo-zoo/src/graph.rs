//! Training, evaluation and comparison of graph autoencoder entries (GAE,
//! VGAE) under the protocol of Kipf & Welling (2016): the seeded 85/5/10
//! edge split, full-batch Adam, ROC AUC and average precision of the test
//! edges against as many sampled non-edges.
//!
//! A run folder is a weights folder: `config.json`, `model.safetensors`,
//! `metrics.jsonl` (one line per epoch: loss terms, validation AUC / AP),
//! `curves.png`, and `metrics.json` (written by the caller, see
//! [`GraphMetricsFile`]). The split is re-made from the config's seed, so
//! weights plus config reproduce their test figures exactly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aezoo_data::Locator;
use aezoo_graph::model::edge_logits;
pub use aezoo_graph::{data, EdgeSplit, Graph, GraphAutoencoder, GraphInput, ReconTarget};
use aezoo_metrics::ranking::{average_precision, roc_auc};
use aezoo_nn::params::write_atomic;
use aezoo_nn::{ParamStore, Rng};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use tracing_indicatif::span_ext::IndicatifSpanExt;

use std::marker::PhantomData;

use aezoo_graph::GraphFamily;
use aezoo_nn::optim::Adam;
use aezoo_train::config::{parse_json, parse_value, EntryConfig};
use aezoo_train::error::{io_err, Result, TrainError};
use aezoo_train::plot::{save_loss_plot, Series};
use aezoo_train::zoo::parse_model;
use aezoo_train::Pipeline;
use candle_nn::VarBuilder;

use crate::{PROTOCOLS, ZOO};

/// A graph family with its config type erased.
pub trait DynGraphFamily: Send + Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    /// Parses the `model` section; returns whether it reads node features.
    fn check(&self, model: &serde_json::Value, origin: &str) -> Result<bool>;
    /// Builds the model for inputs of width `in_dim` on `vb`.
    fn build(
        &self,
        model: &serde_json::Value,
        origin: &str,
        in_dim: usize,
        vb: VarBuilder,
    ) -> Result<Box<dyn GraphAutoencoder>>;
}

/// `F` as a [`DynGraphFamily`].
pub struct RegisteredGraph<F>(PhantomData<fn() -> F>);

impl<F> RegisteredGraph<F> {
    pub const NEW: Self = Self(PhantomData);
}

impl<F: GraphFamily> DynGraphFamily for RegisteredGraph<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }
    fn about(&self) -> &'static str {
        F::ABOUT
    }
    fn check(&self, model: &serde_json::Value, origin: &str) -> Result<bool> {
        let cfg: F::Config = parse_model(model, origin)?;
        Ok(F::uses_features(&cfg))
    }
    fn build(
        &self,
        model: &serde_json::Value,
        origin: &str,
        in_dim: usize,
        vb: VarBuilder,
    ) -> Result<Box<dyn GraphAutoencoder>> {
        let cfg: F::Config = parse_model(model, origin)?;
        let m = F::new(&cfg, in_dim, vb).map_err(|e| TrainError::Config {
            origin: origin.to_string(),
            msg: format!("model: {e}"),
        })?;
        Ok(Box::new(m))
    }
}

/// Every graph autoencoder family, one line each.
pub static GRAPH_FAMILIES: &[&dyn DynGraphFamily] = &[
    &RegisteredGraph::<aezoo_graph::Gae>::NEW,
    &RegisteredGraph::<aezoo_graph::Vgae>::NEW,
];

/// The graph pipeline as the [`aezoo_train::Zoo`] knows it: its families
/// are [`GRAPH_FAMILIES`], its entries take `train`, `eval`,
/// `encode-graph` and `compare --graphs`.
pub struct GraphPipeline;

impl Pipeline for GraphPipeline {
    fn name(&self) -> &'static str {
        "graph"
    }
    fn kind(&self) -> &'static str {
        "graph autoencoder"
    }
    fn commands(&self) -> &'static str {
        "`train`, `eval`, `encode-graph` and `compare --graphs`"
    }
    fn families(&self) -> Vec<(&'static str, &'static str)> {
        GRAPH_FAMILIES.iter().map(|f| (f.name(), f.about())).collect()
    }
    fn validate(&self, cfg: &EntryConfig, origin: &str) -> Result<()> {
        validate(cfg, origin)
    }
}

/// The graph family called `name`, if it is one.
pub fn graph_family(name: &str) -> Option<&'static dyn DynGraphFamily> {
    GRAPH_FAMILIES.iter().copied().find(|f| f.name() == name)
}

/// Whether `cfg` is a graph entry (its family is in [`GRAPH_FAMILIES`]),
/// as the zoo decides it.
pub fn is_graph(cfg: &EntryConfig) -> bool {
    ZOO.pipeline_of(cfg) == Some(GraphPipeline.name())
}

/// Checks a graph entry: full-batch training settings only, and the
/// family's `model` section.
pub fn validate(cfg: &EntryConfig, origin: &str) -> Result<()> {
    let bad = |msg: String| TrainError::Config {
        origin: origin.to_string(),
        msg,
    };
    let fam = graph_family(&cfg.family).ok_or_else(|| bad(format!("`{}` is not a graph family", cfg.family)))?;
    let t = &cfg.train;
    if t.epochs == 0 {
        return Err(bad("train.epochs: must be >= 1".into()));
    }
    if !(t.lr.is_finite() && t.lr > 0.0) {
        return Err(bad(format!("train.lr: must be a positive number, got {}", t.lr)));
    }
    t.optimizer
        .validate()
        .map_err(|m| bad(format!("train.optimizer.{m}")))?;
    if t.batch_size != 0 {
        return Err(bad(
            "train.batch_size: graph entries train on the whole graph; remove it".into(),
        ));
    }
    let d = &cfg.data;
    if d.train_limit.is_some() || d.test_limit.is_some() || d.noise.is_some() || d.folder.is_some() {
        return Err(bad(
            "data: graph entries take only `dataset` (a graph name or an edge-list path)".into(),
        ));
    }
    if d.dataset.trim().is_empty() {
        return Err(bad("data.dataset: empty".into()));
    }
    fam.check(&cfg.model, origin)?;
    Ok(())
}

/// ROC AUC and average precision of scored edges against non-edges, in [0, 1].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkMetrics {
    pub auc: f64,
    pub ap: f64,
}

/// The folders a graph is looked for in before the bundled copies: `--data`,
/// `$AEZOO_DATA`, then `<user cache>/graphs`.
pub fn graph_dirs(locator: &Locator) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = locator.explicit.iter().chain(&locator.env_dir).cloned().collect();
    if let Some(c) = &locator.user_cache {
        dirs.push(c.join("graphs"));
    }
    dirs
}

/// The entry's graph, found through the data chain.
pub fn load_graph(cfg: &EntryConfig, locator: &Locator) -> Result<Graph> {
    data::load(&cfg.data.dataset, &graph_dirs(locator)).map_err(TrainError::family)
}

/// A graph entry ready to train or evaluate: the graph, its split, the
/// encoder's inputs, the decoder's target and the model.
pub struct GraphRun {
    pub cfg: EntryConfig,
    pub graph: Graph,
    pub split: EdgeSplit,
    pub input: GraphInput,
    pub target: ReconTarget,
    pub model: Box<dyn GraphAutoencoder>,
    pub params: ParamStore,
    /// Whether the encoder reads node features (false: GAE* / VGAE*).
    pub uses_features: bool,
}

impl GraphRun {
    /// Builds the split (seeded by `train.seed`) and the model; with
    /// `weights`, loads them strictly, else initialises from the seed.
    pub fn new(cfg: &EntryConfig, graph: Graph, weights: Option<&Path>, dev: &Device) -> Result<Self> {
        let fam = graph_family(&cfg.family).ok_or_else(|| TrainError::Config {
            origin: cfg.entry.clone(),
            msg: format!("`{}` is not a graph family", cfg.family),
        })?;
        let uses_features = fam.check(&cfg.model, &cfg.entry)?;
        if uses_features && graph.features.is_none() {
            return Err(TrainError::Config {
                origin: cfg.entry.clone(),
                msg: format!(
                    "model.features is true but {} has no features file; set it to false (GAE*)",
                    graph.describe()
                ),
            });
        }
        EdgeSplit::check(&graph).map_err(TrainError::family)?;
        let split = EdgeSplit::new(&graph, cfg.train.seed);
        let input = GraphInput::new(&graph, &split.train, uses_features);
        let target = ReconTarget::new(graph.num_nodes, &split.train);
        let params = match weights {
            Some(p) => ParamStore::load(p, false).map_err(|e| TrainError::Checkpoint {
                path: p.to_path_buf(),
                msg: e.to_string(),
            })?,
            None => ParamStore::init(cfg.train.seed),
        };
        let vb = params.var_builder(DType::F32, dev);
        let model = fam.build(&cfg.model, &cfg.entry, input.in_dim(), vb)?;
        if let Some(p) = weights {
            params.finish().map_err(|e| TrainError::Checkpoint {
                path: p.to_path_buf(),
                msg: e.to_string(),
            })?;
        }
        Ok(Self {
            cfg: cfg.clone(),
            graph,
            split,
            input,
            target,
            model,
            params,
            uses_features,
        })
    }

    /// Embeddings of the training graph (for VGAE the posterior means).
    pub fn embeddings(&self) -> Result<Tensor> {
        Ok(self.model.encode(&self.input)?)
    }

    /// AUC / AP of the validation and test edges.
    pub fn evaluate(&self) -> Result<(LinkMetrics, LinkMetrics)> {
        let z = self.embeddings()?;
        let s = &self.split;
        Ok((
            link_metrics(&z, &s.val, &s.val_neg)?,
            link_metrics(&z, &s.test, &s.test_neg)?,
        ))
    }
}

/// AUC / AP of `pos` against `neg` under the inner-product decoder.
pub fn link_metrics(z: &Tensor, pos: &[(u32, u32)], neg: &[(u32, u32)]) -> Result<LinkMetrics> {
    let mut scores = edge_logits(z, pos)?;
    scores.extend(edge_logits(z, neg)?);
    let labels: Vec<bool> = (0..scores.len()).map(|i| i < pos.len()).collect();
    let undefined = || TrainError::Other("link metrics: no edges, no non-edges, or a NaN score".into());
    Ok(LinkMetrics {
        auc: roc_auc(&scores, &labels).ok_or_else(undefined)?,
        ap: average_precision(&scores, &labels).ok_or_else(undefined)?,
    })
}

/// One epoch's line in `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphEpoch {
    pub epoch: usize,
    pub loss: f64,
    pub terms: Vec<(String, f64)>,
    pub val: LinkMetrics,
}

/// The end of a fit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphFit {
    pub history: Vec<GraphEpoch>,
    pub val: LinkMetrics,
    pub test: LinkMetrics,
    pub train_seconds: f64,
}

/// Trains `run` for the config's epochs (full batch, Adam), with a progress
/// bar; a non-finite loss stops it with an error naming the epoch.
pub fn fit(run: &GraphRun, show_progress: bool) -> Result<GraphFit> {
    let t = &run.cfg.train;
    let mut adam = Adam::new(run.params.vars(), t.lr, t.optimizer.clone())?;
    let mut rng = Rng::new(t.seed);
    let span = tracing::info_span!("train", "indicatif.pb_show" = tracing::field::Empty, entry = %run.cfg.entry);
    if show_progress {
        span.pb_set_style(
            &indicatif::ProgressStyle::with_template(
                "{span_fields} {wide_bar:.cyan/blue} {pos}/{len} epochs {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        span.pb_set_length(t.epochs as u64);
    }
    let entered = span.enter();
    let start = Instant::now();
    let mut history = Vec::with_capacity(t.epochs);
    let mut train_seconds = 0.0;
    for epoch in 1..=t.epochs {
        let t0 = Instant::now();
        let out = run.model.step(&run.input, &run.target, &mut rng, true)?;
        let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                epoch,
                step: epoch as u64,
                what: "the loss".into(),
                value: loss as f32,
                kept: "graph runs keep no checkpoints; nothing is written".into(),
            });
        }
        let grads = out.loss.backward()?;
        adam.step(&grads)?;
        train_seconds += t0.elapsed().as_secs_f64();
        let z = run.embeddings()?;
        let val = link_metrics(&z, &run.split.val, &run.split.val_neg)?;
        let terms = out
            .terms
            .iter()
            .map(|(n, v)| Ok((n.to_string(), v.to_dtype(DType::F64)?.to_scalar::<f64>()?)))
            .collect::<Result<Vec<_>>>()?;
        if show_progress {
            tracing::Span::current().pb_inc(1);
            tracing::Span::current().pb_set_message(&format!(
                "loss {loss:.4}  val AUC {:.2}  AP {:.2}",
                100.0 * val.auc,
                100.0 * val.ap
            ));
        }
        history.push(GraphEpoch {
            epoch,
            loss,
            terms,
            val,
        });
    }
    drop(entered);
    drop(span);
    let (val, test) = run.evaluate()?;
    tracing::debug!("fit took {:.1} s", start.elapsed().as_secs_f64());
    Ok(GraphFit {
        history,
        val,
        test,
        train_seconds,
    })
}

/// `metrics.json` of a graph weights folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphMetricsFile {
    pub entry: String,
    pub family: String,
    /// The graph as [`Graph::describe`] gives it.
    pub data: String,
    pub seed: u64,
    pub epochs: usize,
    pub lr: f64,
    pub params: usize,
    pub val: LinkMetrics,
    pub test: LinkMetrics,
    pub train_seconds: f64,
    #[serde(default)]
    pub git_commit: Option<String>,
}

/// The end of a graph run.
#[derive(Clone, Debug)]
pub struct GraphOutcome {
    pub run_dir: PathBuf,
    pub metrics: GraphMetricsFile,
}

/// Trains a graph entry into `run_dir`: config.json, model.safetensors,
/// metrics.jsonl, curves.png and metrics.json.
pub fn train(
    cfg: &EntryConfig,
    run_dir: &Path,
    locator: &Locator,
    dev: &Device,
    git_commit: Option<String>,
) -> Result<GraphOutcome> {
    let graph = load_graph(cfg, locator)?;
    tracing::info!("data: {}", graph.describe());
    std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
    write_atomic(&run_dir.join("config.json"), cfg.to_json().as_bytes())?;
    let run = GraphRun::new(cfg, graph, None, dev)?;
    tracing::info!(
        "{}: {} parameters; split (seed {}): {} train / {} val / {} test edges, pos_weight {:.2}, norm {:.4}",
        cfg.entry,
        run.params.num_params(),
        cfg.train.seed,
        run.split.train.len(),
        run.split.val.len(),
        run.split.test.len(),
        run.target.pos_weight,
        run.target.norm
    );
    let fit = fit(&run, true)?;
    run.params.save(&run_dir.join("model.safetensors"))?;
    let mut lines = String::new();
    for h in &fit.history {
        lines += &(serde_json::to_string(h).expect("serialises") + "\n");
    }
    write_atomic(&run_dir.join("metrics.jsonl"), lines.as_bytes())?;
    save_curves(&cfg.entry, &fit.history, &run_dir.join("curves.png"))?;
    let metrics = GraphMetricsFile {
        entry: cfg.entry.clone(),
        family: cfg.family.clone(),
        data: run.graph.describe(),
        seed: cfg.train.seed,
        epochs: cfg.train.epochs,
        lr: cfg.train.lr,
        params: run.params.num_params(),
        val: fit.val,
        test: fit.test,
        train_seconds: fit.train_seconds,
        git_commit,
    };
    write_atomic(
        &run_dir.join("metrics.json"),
        (serde_json::to_string_pretty(&metrics).expect("serialises") + "\n").as_bytes(),
    )?;
    write_atomic(&run_dir.join("README.md"), model_card(cfg, &metrics).as_bytes())?;
    Ok(GraphOutcome {
        run_dir: run_dir.to_path_buf(),
        metrics,
    })
}

/// The weights folder's model card.
pub fn model_card(cfg: &EntryConfig, m: &GraphMetricsFile) -> String {
    format!(
        "---\nlibrary_name: aezoo\ntags:\n- graph-autoencoder\n- link-prediction\n- {family}\n---\n\n\
         # {entry}\n\n{about}\n\n\
         Trained by `aezoo train {entry}` (seed {seed}, {epochs} full-batch epochs, Adam lr {lr}) on {data}.\n\n\
         | split (seed {seed}) | ROC AUC (%) | AP (%) |\n|---|---:|---:|\n\
         | validation | {va:.2} | {vp:.2} |\n| test | {ta:.2} | {tp:.2} |\n\n\
         The edge split is re-made from the seed in `config.json`: `aezoo eval {entry} --weights DIR --check` \
         re-measures these figures; `aezoo encode-graph {entry} --weights DIR -o emb.safetensors` writes the node \
         embeddings. Model: Kipf & Welling (2016), \"Variational Graph Auto-Encoders\", arXiv:1611.07308.\n",
        family = cfg.family,
        entry = cfg.entry,
        about = cfg.about,
        seed = m.seed,
        epochs = m.epochs,
        lr = m.lr,
        data = m.data,
        va = 100.0 * m.val.auc,
        vp = 100.0 * m.val.ap,
        ta = 100.0 * m.test.auc,
        tp = 100.0 * m.test.ap,
    )
}

/// Training loss and validation AUC / AP against epochs.
pub fn save_curves(title: &str, history: &[GraphEpoch], path: &Path) -> Result<()> {
    let loss: Vec<(f64, f64)> = history.iter().map(|h| (h.epoch as f64, h.loss)).collect();
    let auc: Vec<(f64, f64)> = history.iter().map(|h| (h.epoch as f64, h.val.auc)).collect();
    let ap: Vec<(f64, f64)> = history.iter().map(|h| (h.epoch as f64, h.val.ap)).collect();
    use plotters::style::RGBColor;
    save_loss_plot(
        &format!("{title}: training loss and validation AUC / AP by epoch"),
        &[
            Series {
                label: "training loss",
                points: &loss,
                color: RGBColor(31, 119, 180),
                smooth: false,
            },
            Series {
                label: "validation AUC",
                points: &auc,
                color: RGBColor(214, 39, 40),
                smooth: false,
            },
            Series {
                label: "validation AP",
                points: &ap,
                color: RGBColor(44, 160, 44),
                smooth: false,
            },
        ],
        path,
    )
}

/// A graph weights folder loaded for evaluation or encoding.
pub fn load(dir: &Path, locator: &Locator, dev: &Device) -> Result<GraphRun> {
    let cfg = aezoo_train::weights::read_config(dir, &ZOO)?;
    let graph = load_graph(&cfg, locator)?;
    GraphRun::new(&cfg, graph, Some(&dir.join("model.safetensors")), dev)
}

/// Writes node embeddings (`embeddings`: `(n, latent)` f32) to a safetensors
/// file with the entry, graph and adjacency in its metadata.
pub fn save_embeddings(z: &Tensor, meta: &[(&str, String)], path: &Path) -> Result<()> {
    aezoo_train::infer::save_tensor("embeddings", z, meta, path)
}

// ---------------------------------------------------------------- compare --graphs

/// A published figure: test AUC and AP in percent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperFigure {
    pub auc: f64,
    pub ap: f64,
}

/// One row of a graph protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphRow {
    pub entry: String,
    /// The row's name when several rows share an entry.
    #[serde(default)]
    pub id: Option<String>,
    /// The paper's name for it (`GAE`, `VGAE*`).
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub model: Option<serde_json::Value>,
    #[serde(default)]
    pub train: Option<serde_json::Value>,
    #[serde(default)]
    pub reference: Option<PaperFigure>,
}

impl GraphRow {
    pub fn key(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.entry)
    }
}

/// A graph protocol (`configs/protocols/graphs.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphProtocol {
    pub name: String,
    pub about: String,
    /// Seeds 0..seeds per row.
    pub seeds: u64,
    /// Where the reference figures come from.
    pub reference: String,
    pub rows: Vec<GraphRow>,
}

impl GraphProtocol {
    /// A built-in protocol by name, or a protocol file.
    pub fn resolve(name_or_path: &str) -> Result<Self> {
        let p = Path::new(name_or_path);
        let (text, origin) = if name_or_path.ends_with(".json") || p.is_file() {
            (std::fs::read_to_string(p).map_err(io_err(p))?, name_or_path.to_string())
        } else {
            let (name, text) =
                PROTOCOLS
                    .iter()
                    .find(|(n, _)| *n == name_or_path)
                    .ok_or_else(|| TrainError::Config {
                        origin: "compare".into(),
                        msg: format!("unknown protocol `{name_or_path}`"),
                    })?;
            (text.to_string(), format!("<built-in>/configs/protocols/{name}.json"))
        };
        let p: Self = parse_json(&text, &origin)?;
        if p.seeds == 0 {
            return Err(TrainError::Config {
                origin,
                msg: "seeds: must be >= 1".into(),
            });
        }
        Ok(p)
    }
}

/// One row's results over the seeds (AUC / AP in percent).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphRowResult {
    pub id: String,
    pub entry: String,
    pub label: Option<String>,
    pub family: String,
    pub features: bool,
    pub data: String,
    pub params: usize,
    pub test_auc: Vec<f64>,
    pub test_ap: Vec<f64>,
    pub reference: Option<PaperFigure>,
    pub train_seconds: f64,
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

impl GraphRowResult {
    /// Whether both means are within 1 point of the paper or above it.
    pub fn meets_reference(&self) -> Option<bool> {
        let r = self.reference.as_ref()?;
        let (auc, _) = mean_std(&self.test_auc);
        let (ap, _) = mean_std(&self.test_ap);
        Some(auc >= r.auc - 1.0 && ap >= r.ap - 1.0)
    }
}

/// All rows of a graph compare.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphCompareResult {
    pub protocol: String,
    pub about: String,
    pub reference: String,
    pub seeds: u64,
    pub rows: Vec<GraphRowResult>,
    pub git_commit: Option<String>,
}

/// The config a row trains with at `seed`.
pub fn row_config(row: &GraphRow, seed: u64) -> Result<EntryConfig> {
    let (cfg, _) = ZOO.resolve_entry(&row.entry)?;
    let mut v = serde_json::to_value(&cfg).expect("config serialises");
    if let Some(m) = &row.model {
        aezoo_train::compare::merge(&mut v["model"], m);
    }
    if let Some(t) = &row.train {
        aezoo_train::compare::merge(&mut v["train"], t);
    }
    v["train"]["seed"] = seed.into();
    let cfg: EntryConfig = parse_value(&v, row.key(), "config")?;
    ZOO.validate(&cfg, row.key())?;
    Ok(cfg)
}

/// Trains every row at seeds `0..seeds` and writes `<out>/results.json`,
/// `<out>/<id>.png` (the seed-0 curves). `only` re-runs some rows and keeps
/// the others from an earlier results.json.
pub fn compare(
    protocol: &GraphProtocol,
    out: &Path,
    locator: &Locator,
    only: &[String],
    git_commit: Option<String>,
) -> Result<GraphCompareResult> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let path = out.join("results.json");
    let old: Vec<GraphRowResult> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<GraphCompareResult>(&t).ok())
        .map(|r| r.rows)
        .unwrap_or_default();
    let mut rows = Vec::new();
    for row in &protocol.rows {
        if !only.is_empty() && !only.iter().any(|o| o == row.key()) {
            if let Some(r) = old.iter().find(|r| r.id == row.key()) {
                rows.push(r.clone());
            }
            continue;
        }
        let mut res: Option<GraphRowResult> = None;
        for seed in 0..protocol.seeds {
            let cfg = row_config(row, seed)?;
            let graph = load_graph(&cfg, locator)?;
            let run = GraphRun::new(&cfg, graph, None, &Device::Cpu)?;
            let fit = fit(&run, true)?;
            tracing::info!(
                "{} seed {seed}: test AUC {:.2}  AP {:.2}  ({:.1} s)",
                row.key(),
                100.0 * fit.test.auc,
                100.0 * fit.test.ap,
                fit.train_seconds
            );
            if seed == 0 {
                save_curves(row.key(), &fit.history, &out.join(format!("{}.png", row.key())))?;
            }
            let r = res.get_or_insert_with(|| GraphRowResult {
                id: row.key().to_string(),
                entry: row.entry.clone(),
                label: row.label.clone(),
                family: cfg.family.clone(),
                features: run.uses_features,
                data: run.graph.describe(),
                params: run.params.num_params(),
                test_auc: vec![],
                test_ap: vec![],
                reference: row.reference.clone(),
                train_seconds: 0.0,
            });
            r.test_auc.push(100.0 * fit.test.auc);
            r.test_ap.push(100.0 * fit.test.ap);
            r.train_seconds += fit.train_seconds;
        }
        rows.extend(res);
    }
    let result = GraphCompareResult {
        protocol: protocol.name.clone(),
        about: protocol.about.clone(),
        reference: protocol.reference.clone(),
        seeds: protocol.seeds,
        rows,
        git_commit,
    };
    write_atomic(
        &path,
        (serde_json::to_string_pretty(&result).expect("serialises") + "\n").as_bytes(),
    )?;
    Ok(result)
}

/// The Markdown section of a graph compare.
pub fn markdown(r: &GraphCompareResult, results_rel: &str) -> String {
    let mut s = format!("## Protocol `{}`\n\n{}\n\n", r.protocol, r.about);
    s += "| row | entry | family | features | params | test AUC (%) | test AP (%) | paper AUC / AP | within 1 point or above | train s / run | curves (seed 0) |\n";
    s += "|---|---|---|:---:|---:|---:|---:|---:|:---:|---:|---|\n";
    for row in &r.rows {
        let (auc, auc_sd) = mean_std(&row.test_auc);
        let (ap, ap_sd) = mean_std(&row.test_ap);
        let paper = row
            .reference
            .as_ref()
            .map(|p| format!("{:.1} / {:.1}", p.auc, p.ap))
            .unwrap_or_else(|| "—".into());
        let verdict = match row.meets_reference() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        s += &format!(
            "| {} | `{}` | {} | {} | {} | {:.2} ± {:.2} | {:.2} ± {:.2} | {} | {} | {:.1} | [{}/{}.png]({}/{}.png) |\n",
            row.label.as_deref().unwrap_or(&row.id),
            row.entry,
            row.family,
            if row.features { "yes" } else { "no" },
            row.params,
            auc,
            auc_sd,
            ap,
            ap_sd,
            paper,
            verdict,
            row.train_seconds / row.test_auc.len().max(1) as f64,
            results_rel,
            row.id,
            results_rel,
            row.id
        );
    }
    let data: Vec<&str> = {
        let mut d: Vec<&str> = r.rows.iter().map(|x| x.data.as_str()).collect();
        d.sort_unstable();
        d.dedup();
        d
    };
    s += &format!(
        "\nMean ± sample standard deviation over seeds 0–{} (each seed: its own edge split, initialisation and sampling noise). References: {}. Data: {}.",
        r.seeds - 1,
        r.reference,
        data.join("; ")
    );
    if let Some(c) = &r.git_commit {
        s += &format!(" Commit: `{c}`.");
    }
    s += "\n";
    s
}
