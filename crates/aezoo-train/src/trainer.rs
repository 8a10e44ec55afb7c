//! The training loop of image entries, in the shape of burn's `Learner`:
//! [`Learner::new`] resumes a run from its newest checkpoint or initialises
//! a fresh one, [`Learner::fit`] runs epochs of steps and ends each with an
//! evaluation, and everything a run leaves besides its weights is written
//! by [`Observer`]s ([`crate::observers`]: the progress bar,
//! `metrics.jsonl`, TensorBoard, the pictures, the checkpoints).
//!
//! Per step: a seeded batch (optionally noised), the family's `step`, a
//! finite-loss check, backward, Adam. Per epoch: evaluation on the test
//! split. A run stopped at any step (Ctrl-C, `max_steps`, a kill) and
//! resumed from its last checkpoint ends with the same weights as a run
//! that was never stopped: the data order depends only on (seed, epoch),
//! the sampling generator's state and Adam's moments are checkpointed, and
//! evaluation draws from its own stream.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use aezoo_data::{DatasetId, EpochPlan, Locator, Splits};
use aezoo_nn::optim::Adam;
use aezoo_nn::params::write_atomic;
use aezoo_nn::{Autoencoder, Batch, ParamStore, Rng, StepCtx};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, EpochSums, OptimizerState, TrainerState, STATE_FORMAT};
use crate::config::EntryConfig;
use crate::error::{io_err, Result, TrainError};
use crate::eval::{evaluate, EvalMetrics};
use crate::observers::{Checkpoints, MetricsLog, Observer, Pictures, ProgressBar, TensorBoard};
use crate::precision::LossScaler;
use crate::zoo::Zoo;

/// The RNG stream random crops are drawn from (apart from sampling's).
const CROP_STREAM: u64 = 0xc0_0000_0000_0000;

/// A weight past this magnitude means the run diverges (a learning rate
/// far too high): the run stops there, before a checkpoint keeps it. Trained
/// weights of every zoo entry stay below 10³.
pub const WEIGHT_LIMIT: f64 = 1e6;

/// How many test images the reconstruction strip shows (the same first
/// images of the test split for every entry).
pub const STRIP_IMAGES: usize = 8;

/// Everything about a run that is not the entry's config.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The run folder (created if needed).
    pub run_dir: PathBuf,
    pub device: Device,
    /// Where the data comes from.
    pub locator: Locator,
    /// Continue from the run folder's newest checkpoint.
    pub resume: bool,
    /// Stop (with a checkpoint) once this many optimiser steps are done in
    /// total; the run can be resumed later.
    pub max_steps: Option<u64>,
    /// Set from outside (Ctrl-C) to stop after the current step, with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Write `loss.png` and `reconstructions.png`.
    pub plots: bool,
    /// Write TensorBoard event files into `<run>/tensorboard/`.
    pub tensorboard: bool,
    /// Start a fresh run from these weights (a `model.safetensors`): every
    /// parameter found there with the same shape is copied, the rest keep
    /// their seeded init (fine-tuning, e.g. a new codebook size).
    pub init_from: Option<PathBuf>,
}

impl TrainOptions {
    pub fn new(run_dir: impl Into<PathBuf>, locator: Locator) -> Self {
        Self {
            run_dir: run_dir.into(),
            device: Device::Cpu,
            locator,
            resume: false,
            max_steps: None,
            stop: None,
            plots: true,
            tensorboard: false,
            init_from: None,
        }
    }
}

/// The end of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    /// All epochs done (false when stopped early).
    pub completed: bool,
    pub epochs_done: usize,
    pub steps: u64,
    /// Test metrics after the last completed epoch.
    pub metrics: Option<EvalMetrics>,
    /// Training throughput (forward, backward, optimiser; evaluation excluded).
    pub train_images_per_s: f64,
    pub train_seconds: f64,
    pub data: String,
    pub params: usize,
}

/// A model built from a config, with its parameter store.
pub struct Built {
    pub model: Box<dyn Autoencoder>,
    pub params: ParamStore,
}

/// Builds the entry's model with fresh parameters seeded by `train.seed`.
pub fn build_fresh(cfg: &EntryConfig, zoo: &Zoo, dev: &Device) -> Result<Built> {
    let params = ParamStore::init(cfg.train.seed);
    let vb = params.var_builder(DType::F32, dev);
    let model = zoo.family_of(cfg)?.build(&cfg.model, &cfg.entry, vb)?;
    Ok(Built { model, params })
}

/// Loads the entry's data through the chain, applies the config's limits and
/// checks the image shape against the model's.
pub fn load_data(cfg: &EntryConfig, zoo: &Zoo, locator: &Locator) -> Result<Splits> {
    let mut splits = if cfg.data.dataset == crate::config::FOLDER {
        load_folder(cfg, zoo, locator)?.splits
    } else if cfg.data.dataset == crate::config::MOVING_MNIST {
        let mm = cfg.data.moving_mnist.clone().unwrap_or_default();
        aezoo_data::moving_mnist::load(locator, &mm, cfg.train.seed)?
    } else {
        locator.load(DatasetId::parse(&cfg.data.dataset)?)?
    };
    if let Some(n) = cfg.data.train_limit {
        splits.train = splits.train.take(n);
    }
    if let Some(n) = cfg.data.test_limit {
        splits.test = splits.test.take(n);
    }
    let want = zoo.image_shape(cfg)?;
    if splits.test.image_shape() != splits.train.image_shape() {
        return Err(TrainError::Config {
            origin: cfg.entry.clone(),
            msg: format!(
                "{}: the test images are {:?}, the training images {:?}",
                splits.name,
                splits.test.image_shape(),
                splits.train.image_shape()
            ),
        });
    }
    if splits.train.image_shape() != want {
        return Err(TrainError::Config {
            origin: cfg.entry.clone(),
            msg: format!(
                "model.image is {want:?} but {} images are {:?}",
                splits.name,
                splits.train.image_shape()
            ),
        });
    }
    if splits.train.is_empty() || splits.test.is_empty() {
        return Err(TrainError::Other(format!(
            "{}: empty split ({} train / {} test images)",
            splits.name,
            splits.train.len(),
            splits.test.len()
        )));
    }
    Ok(splits)
}

/// An image-folder entry's data: the folder of `--data DIR` (an explicit
/// flag wins), else `data.folder.path`, at the model's image shape, split
/// by `train.seed`.
pub fn load_folder(cfg: &EntryConfig, zoo: &Zoo, locator: &Locator) -> Result<aezoo_data::FolderSet> {
    let fcfg = cfg.data.folder.clone().unwrap_or_default();
    let dir = locator
        .explicit
        .clone()
        .or_else(|| fcfg.path.clone())
        .ok_or_else(|| TrainError::Config {
            origin: cfg.entry.clone(),
            msg: "data.dataset is \"folder\": give the folder with --data DIR (or data.folder.path)".into(),
        })?;
    let shape = zoo.image_shape(cfg)?;
    Ok(aezoo_data::folder::load_folder(&dir, shape, &fcfg, cfg.train.seed)?)
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

/// Copies every tensor of the weights at `path` (a weights folder in any
/// layout the zoo reads, or a safetensors file) whose name and shape match
/// a parameter of `params` into it; logs what was kept fresh and what was
/// not used.
pub fn init_from(params: &ParamStore, path: &Path, zoo: &Zoo) -> Result<()> {
    let (path, src) = crate::weights::weight_tensors(path, zoo)?;
    let path = path.as_path();
    let (mut copied, mut fresh) = (0usize, Vec::new());
    let vars = params.vars();
    let unused = src.keys().filter(|k| !vars.iter().any(|(n, _)| n == *k)).count();
    for (name, var) in vars {
        match src.get(&name) {
            Some(t) if t.dims() == var.dims() => {
                var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
                copied += 1;
            }
            _ => fresh.push(name),
        }
    }
    if copied == 0 {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            msg: "no parameter of this model has a tensor of the same name and shape there".into(),
        });
    }
    tracing::info!(
        "init: {copied} tensors from {} ({unused} there not used); kept their fresh init: {}",
        path.display(),
        if fresh.is_empty() {
            "none".to_string()
        } else {
            fresh.join(", ")
        }
    );
    Ok(())
}

/// Trains `cfg` (from scratch, or from the run folder's checkpoint when
/// `opts.resume`) with the standard observers.
pub fn train(cfg: &EntryConfig, zoo: &Zoo, opts: &TrainOptions) -> Result<TrainOutcome> {
    Learner::new(cfg, zoo, opts)?.fit()
}

/// Where a run stands: the model, its parameters and optimiser, the data,
/// and the position in the schedule — what a checkpoint holds and what
/// observers read.
pub struct RunState {
    pub cfg: EntryConfig,
    pub run_dir: PathBuf,
    pub device: Device,
    pub splits: Splits,
    /// `splits.describe()`, as logged.
    pub data: String,
    pub model: Box<dyn Autoencoder>,
    pub params: ParamStore,
    pub adam: Adam,
    /// Dynamic loss scaling (f16 only).
    pub scaler: Option<LossScaler>,
    /// The training stream (sampling, noise).
    pub rng: Rng,
    /// Epochs completed.
    pub epoch: usize,
    /// The next batch of the current epoch.
    pub batch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// Training time over the whole run, resumes included.
    pub train_seconds: f64,
    /// The loss sums of the epoch in progress (restored on resume).
    pub sums: EpochSums,
}

impl RunState {
    /// The trainer state a checkpoint records now.
    pub fn trainer_state(&self) -> TrainerState {
        TrainerState {
            format: STATE_FORMAT,
            entry: self.cfg.entry.clone(),
            epoch: self.epoch,
            batch_in_epoch: self.batch,
            step: self.step,
            rng: self.rng.state(),
            optimizer: OptimizerState {
                kind: "adam".into(),
                step: self.adam.step_count(),
                lr: self.adam.lr(),
                moments_file: "optimizer.safetensors".into(),
            },
            train_seconds: self.train_seconds,
            loss_scale: self.scaler.as_ref().map(LossScaler::state),
            epoch_sums: (self.batch > 0).then(|| self.sums.clone()),
        }
    }

    /// What a failed run leaves to resume from, for its error message.
    pub fn kept(&self) -> String {
        match checkpoint::latest(&self.run_dir) {
            Some(dir) => format!("the last checkpoint ({}) is kept", dir.display()),
            None => "no checkpoint had been written yet; nothing to resume".to_string(),
        }
    }

    /// Writes a checkpoint of the current state.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        checkpoint::save(
            &self.run_dir,
            &self.params,
            &self.adam,
            &self.cfg,
            &self.trainer_state(),
        )
    }
}

/// One optimiser step, as observers see it.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// The epoch it belongs to (0-based) and its batch index in it.
    pub epoch: usize,
    pub batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// Steps done, this one included.
    pub step: u64,
    pub loss: f64,
    pub terms: &'a [(String, f64)],
    /// Mean loss over this epoch's batches so far (of this process).
    pub running_loss: f64,
    pub lr: f64,
    pub images: usize,
    pub seconds: f64,
    /// The run stops after this step (Ctrl-C, `max_steps`).
    pub stopping: bool,
}

impl StepEvent<'_> {
    /// Whether this was the epoch's last batch.
    pub fn ends_epoch(&self) -> bool {
        self.batch + 1 == self.batches
    }
}

/// An evaluated epoch, as observers see it.
#[derive(Debug)]
pub struct EpochEvent<'a> {
    /// The reconstruction strip, made once for the observers that show it.
    strip: std::cell::OnceCell<(Vec<u8>, u32, u32)>,
    /// Epochs completed, this one included (1-based).
    pub epoch: usize,
    pub step: u64,
    pub train_loss: f64,
    pub train_terms: &'a [(String, f64)],
    pub metrics: &'a EvalMetrics,
    pub train_images_per_s: f64,
    pub train_seconds: f64,
}

impl EpochEvent<'_> {
    /// The first test images above their reconstructions (PNG bytes, width,
    /// height), made on first use.
    pub fn strip(&self, run: &RunState) -> Result<&(Vec<u8>, u32, u32)> {
        if let Some(s) = self.strip.get() {
            return Ok(s);
        }
        let idx: Vec<usize> = (0..STRIP_IMAGES.min(run.splits.test.len())).collect();
        let made = recon_strip(&run.cfg, run.model.as_ref(), &run.splits, &idx, &run.device)?;
        Ok(self.strip.get_or_init(|| made))
    }
}

/// The training loop with its observers.
pub struct Learner {
    run: RunState,
    observers: Vec<Box<dyn Observer>>,
    /// The half-precision dtype networks compute in, or f32.
    compute: DType,
    max_steps: Option<u64>,
    stop: Option<Arc<AtomicBool>>,
    images_this_run: usize,
    seconds_this_run: f64,
    last_metrics: Option<EvalMetrics>,
}

impl Learner {
    /// Loads the data and builds the model, then resumes the run folder's
    /// newest checkpoint (`opts.resume`) or starts a fresh run there, with
    /// the standard observers: progress bar, `metrics.jsonl`, checkpoints,
    /// and as `opts` asks, TensorBoard events and pictures.
    pub fn new(cfg: &EntryConfig, zoo: &Zoo, opts: &TrainOptions) -> Result<Self> {
        let run_dir = &opts.run_dir;
        let dev = &opts.device;
        let t = &cfg.train;
        let splits = load_data(cfg, zoo, &opts.locator)?;
        let data = splits.describe();
        if splits.source.is_bundled() {
            // A bundled source that is not an IDX set by name is Moving MNIST
            // generated from the bundled MNIST digits: the hint is MNIST's.
            let id = DatasetId::parse(&cfg.data.dataset).unwrap_or(DatasetId::Mnist);
            tracing::warn!("data: {data}; a small real subset. For {}", id.how_to_get_full());
        } else {
            tracing::info!("data: {data}");
        }
        let Built { model, params } = build_fresh(cfg, zoo, dev)?;
        if let (Some(path), false) = (&opts.init_from, opts.resume) {
            init_from(&params, path, zoo)?;
        }
        let compute = t
            .precision
            .resolve(dev, model.mixed_precision())
            .map_err(|m| TrainError::Config {
                origin: cfg.entry.clone(),
                msg: format!("train.precision: {m}"),
            })?;
        if compute != DType::F32 && !(dev.is_cuda() || dev.is_metal()) {
            tracing::warn!(
                "train.precision {}: candle's CPU kernels have no fast half-precision paths, so this trains slower than f32 here (it is meant for GPUs)",
                t.precision.as_str()
            );
        }
        // The run folder exists only once data and model are ready.
        std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
        let adam = Adam::new(params.vars(), t.lr, t.optimizer.clone())?;
        let scaler = (compute == DType::F16).then(LossScaler::new);
        let mut run = RunState {
            cfg: cfg.clone(),
            run_dir: run_dir.clone(),
            device: dev.clone(),
            splits,
            data,
            model,
            params,
            adam,
            scaler,
            rng: Rng::derived(t.seed, 1),
            epoch: 0,
            batch: 0,
            step: 0,
            train_seconds: 0.0,
            sums: EpochSums::default(),
        };
        checkpoint::remove_stale_temps(run_dir);
        if opts.resume {
            let ck = checkpoint::load_restorable(run_dir, |ck| {
                if ck.config.model != cfg.model || ck.config.family != cfg.family {
                    return Err(TrainError::Checkpoint {
                        path: ck.dir.clone(),
                        msg: "the checkpoint was made with a different model config".into(),
                    });
                }
                run.rng = ck.restore(&run.params, &mut run.adam)?;
                let batches =
                    EpochPlan::new(run.splits.train.epoch_len(), t.batch_size, t.seed, 0, t.shuffle).num_batches();
                ck.check_counters(batches, t.batch_size)
            })?;
            if let (Some(sc), Some(state)) = (&mut run.scaler, ck.state.loss_scale) {
                *sc = LossScaler::from_state(state);
            }
            run.adam.set_lr(t.lr);
            run.epoch = ck.state.epoch;
            run.batch = ck.state.batch_in_epoch;
            run.step = ck.state.step;
            run.train_seconds = ck.state.train_seconds;
            run.sums = ck
                .state
                .epoch_sums
                .clone()
                .filter(|_| run.batch > 0)
                .unwrap_or_default();
            tracing::info!(
                "resuming {} from {} (epoch {}, batch {}, step {})",
                cfg.entry,
                ck.dir.display(),
                run.epoch + 1,
                run.batch,
                run.step
            );
        } else if checkpoint::latest(run_dir).is_some() {
            return Err(TrainError::Checkpoint {
                path: run_dir.clone(),
                msg: "this run folder already has checkpoints: pass --resume to continue it, or choose another --out"
                    .into(),
            });
        }
        let mut observers: Vec<Box<dyn Observer>> = vec![
            Box::new(ProgressBar::default()),
            Box::new(MetricsLog::open(run_dir, opts.resume.then_some(run.step))?),
        ];
        write_atomic(&run_dir.join("config.json"), cfg.to_json().as_bytes())?;
        let tensorboard = opts.tensorboard.then(|| TensorBoard::create(run_dir)).transpose()?;
        // The weights and checkpoint first: a failing picture or event file
        // never costs the epoch's checkpoint.
        observers.push(Box::new(Checkpoints));
        if let Some(tb) = tensorboard {
            observers.push(Box::new(tb));
        }
        if opts.plots {
            observers.push(Box::new(Pictures));
        }
        tracing::info!(
            "training {} ({}, {} parameters) for {} epochs, batch {}, lr {}, seed {}, {} → {}",
            cfg.entry,
            cfg.family,
            run.params.num_params(),
            t.epochs,
            t.batch_size,
            t.lr,
            t.seed,
            match compute {
                DType::F32 => "f32".to_string(),
                dt => format!("mixed precision ({dt:?} networks, f32 weights and loss)"),
            },
            run_dir.display()
        );
        Ok(Self {
            run,
            observers,
            compute,
            max_steps: opts.max_steps,
            stop: opts.stop.clone(),
            images_this_run: 0,
            seconds_this_run: 0.0,
            last_metrics: None,
        })
    }

    /// Adds an observer (called after the standard ones).
    pub fn observe(&mut self, o: Box<dyn Observer>) {
        self.observers.push(o);
    }

    /// The run's state.
    pub fn run(&self) -> &RunState {
        &self.run
    }

    fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
            || self.max_steps.is_some_and(|m| self.run.step >= m)
    }

    fn outcome(&self, completed: bool) -> TrainOutcome {
        TrainOutcome {
            run_dir: self.run.run_dir.clone(),
            completed,
            epochs_done: self.run.epoch,
            steps: self.run.step,
            metrics: self.last_metrics.clone(),
            train_images_per_s: self.images_this_run as f64 / self.seconds_this_run.max(1e-9),
            train_seconds: self.run.train_seconds,
            data: self.run.data.clone(),
            params: self.run.params.num_params(),
        }
    }

    /// Runs the remaining epochs (or until stopped) and returns the outcome.
    pub fn fit(mut self) -> Result<TrainOutcome> {
        let epochs = self.run.cfg.train.epochs;
        while self.run.epoch < epochs {
            if !self.run_epoch()? {
                tracing::info!(
                    "stopped at epoch {}, step {}; resume with --resume {}",
                    self.run.epoch + 1,
                    self.run.step,
                    self.run.run_dir.display()
                );
                return Ok(self.outcome(false));
            }
            self.end_epoch()?;
            if self.stop_requested() && self.run.epoch < epochs {
                tracing::info!(
                    "stopped after epoch {}; resume with --resume {}",
                    self.run.epoch,
                    self.run.run_dir.display()
                );
                return Ok(self.outcome(false));
            }
        }
        if self.last_metrics.is_none() {
            // Resumed a finished run: report the saved weights' metrics.
            let r = &self.run;
            let t = &r.cfg.train;
            self.last_metrics = Some(evaluate(
                r.model.as_ref(),
                &r.splits.test,
                t.eval_batch_size,
                r.cfg.data.noise,
                t.seed,
                &r.device,
            )?);
            r.params.save(&r.run_dir.join("model.safetensors"))?;
        }
        Ok(self.outcome(true))
    }

    /// The current epoch's remaining batches; false when the run stopped
    /// before its end (after a checkpoint). The observers hear the end of
    /// the batches whatever happened, an error included.
    pub fn run_epoch(&mut self) -> Result<bool> {
        let finished = self.run_batches();
        for o in &mut self.observers {
            o.on_batches_end(&self.run)?;
        }
        finished
    }

    fn run_batches(&mut self) -> Result<bool> {
        let t = self.run.cfg.train.clone();
        let epoch = self.run.epoch;
        self.run.adam.set_lr(t.lr_at(epoch));
        let plan = EpochPlan::new(
            self.run.splits.train.epoch_len(),
            t.batch_size,
            t.seed,
            epoch as u64,
            t.shuffle,
        );
        let nb = plan.num_batches();
        for o in &mut self.observers {
            o.on_epoch_start(&self.run, nb)?;
        }
        if self.run.batch == 0 {
            self.run.sums = EpochSums::default();
        }
        for bi in self.run.batch..nb {
            let t0 = Instant::now();
            let idx = plan.batch(bi);
            let (loss, terms) = self.step(epoch, bi, idx)?;
            let dt = t0.elapsed().as_secs_f64();
            self.run.train_seconds += dt;
            self.seconds_this_run += dt;
            self.images_this_run += idx.len();
            self.run.sums.add(loss, &terms, idx.len());
            self.run.batch = bi + 1;
            let stopping = self.stop_requested() && bi + 1 < nb;
            // The weights are checked where a checkpoint may follow and at
            // the logged steps: a diverging run stops before it is kept.
            let every = |n: usize| n > 0 && self.run.step.is_multiple_of(n as u64);
            if self.run.step == 1 || every(t.log_every) || every(t.checkpoint_every) || stopping || bi + 1 == nb {
                self.check_weights(epoch)?;
            }
            let ev = StepEvent {
                epoch,
                batch: bi,
                batches: nb,
                step: self.run.step,
                loss,
                terms: &terms,
                running_loss: self.run.sums.mean(),
                lr: self.run.adam.lr(),
                images: idx.len(),
                seconds: dt,
                stopping,
            };
            for o in &mut self.observers {
                o.on_step(&self.run, &ev)?;
            }
            if stopping {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Stops a run whose weights grew past [`WEIGHT_LIMIT`] (or are not
    /// finite), naming the step, the parameter and what is kept.
    fn check_weights(&self, epoch: usize) -> Result<()> {
        let r = &self.run;
        for (name, var) in r.params.vars() {
            let m = var
                .as_tensor()
                .abs()?
                .max_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if !(m <= WEIGHT_LIMIT) {
                return Err(TrainError::NonFinite {
                    epoch: epoch + 1,
                    step: r.step,
                    what: format!("the largest weight of `{name}` (limit {WEIGHT_LIMIT:e}; lower train.lr)"),
                    value: m as f32,
                    kept: r.kept(),
                });
            }
        }
        Ok(())
    }

    /// One optimiser step on batch `bi` of `epoch` (images `idx`): the loss
    /// and its terms.
    fn step(&mut self, epoch: usize, bi: usize, idx: &[usize]) -> Result<(f64, Vec<(String, f64)>)> {
        let r = &mut self.run;
        let (t, dev) = (&r.cfg.train, &r.device);
        // Random-crop folders: windows drawn from a stream fixed by (seed,
        // epoch, batch), so a resumed run cuts the same crops.
        let clean = if r.splits.train.has_crops() {
            let mut crop_rng = Rng::derived(t.seed, CROP_STREAM ^ ((epoch as u64) << 32 | bi as u64));
            r.splits.train.random_crops(idx, &mut crop_rng, dev)?
        } else {
            r.splits.train.batch(idx, dev)?
        };
        let batch = match &r.cfg.data.noise {
            Some(noise) => Batch {
                input: noise.apply(&clean, &mut r.rng)?,
                target: clean,
            },
            None => Batch::autoencode(clean),
        };
        let out = r
            .model
            .step(&batch, &mut StepCtx::train(&mut r.rng).computing_in(self.compute))?;
        let loss_v = scalar(&out.loss)?;
        if !loss_v.is_finite() {
            return Err(TrainError::NonFinite {
                epoch: epoch + 1,
                step: r.step + 1,
                what: "the loss".into(),
                value: loss_v,
                kept: r.kept(),
            });
        }
        match &mut r.scaler {
            None => r.adam.step(&out.loss.backward()?)?,
            Some(sc) => {
                let scale = sc.scale();
                let mut grads = sc.scale_loss(&out.loss)?.backward()?;
                if sc.unscale(&mut grads, &r.params.vars())? {
                    r.adam.step(&grads)?;
                } else {
                    tracing::warn!(
                        "step {}: f16 gradients overflowed at loss scale {scale}; step skipped, scale now {}",
                        r.step + 1,
                        sc.scale()
                    );
                }
            }
        }
        r.step += 1;
        let mut terms = Vec::with_capacity(out.terms.len());
        for (name, tv) in &out.terms {
            terms.push((name.to_string(), scalar(tv)? as f64));
        }
        Ok((loss_v as f64, terms))
    }

    /// Ends the epoch whose batches ran: evaluates on the test split, moves
    /// the schedule to the next epoch, and tells the observers (which write
    /// the log line, the weights and checkpoint, the pictures).
    pub fn end_epoch(&mut self) -> Result<()> {
        let te = Instant::now();
        let r = &self.run;
        let t = &r.cfg.train;
        let metrics = evaluate(
            r.model.as_ref(),
            &r.splits.test,
            t.eval_batch_size,
            r.cfg.data.noise,
            t.seed,
            &r.device,
        )?;
        let train_loss = self.run.sums.mean();
        let images_per_s = self.images_this_run as f64 / self.seconds_this_run.max(1e-9);
        tracing::info!(
            "epoch {}/{}: train loss {:.5}, test loss {:.5}, test MSE {:.5}, PSNR {:.2} dB, SSIM {:.4} ({:.0} img/s, eval {:.1}s)",
            r.epoch + 1,
            t.epochs,
            train_loss,
            metrics.loss,
            metrics.mse,
            metrics.psnr,
            metrics.ssim,
            images_per_s,
            te.elapsed().as_secs_f64()
        );
        self.run.epoch += 1;
        self.run.batch = 0;
        let train_terms = self.run.sums.term_means();
        let ev = EpochEvent {
            strip: std::cell::OnceCell::new(),
            epoch: self.run.epoch,
            step: self.run.step,
            train_loss,
            train_terms: &train_terms,
            metrics: &metrics,
            train_images_per_s: images_per_s,
            train_seconds: self.run.train_seconds,
        };
        for o in &mut self.observers {
            o.on_epoch_end(&self.run, &ev)?;
        }
        self.last_metrics = Some(metrics);
        Ok(())
    }
}

/// The loss curve of a run: training batches (smoothed) and test epochs.
pub fn draw_loss_series(entry: &str, steps: &[(f64, f64)], epochs: &[(f64, f64)], path: &Path) -> Result<()> {
    crate::plot::save_loss_plot(
        &format!("{entry} — loss"),
        &[
            crate::plot::Series {
                label: "train (batch, smoothed)",
                points: steps,
                color: plotters::style::RGBColor(66, 133, 244),
                smooth: true,
            },
            crate::plot::Series {
                label: "test (epoch)",
                points: epochs,
                color: plotters::style::RGBColor(219, 68, 55),
                smooth: false,
            },
        ],
        path,
    )
}

/// The file of per-epoch reconstructions in a run folder.
pub const PROGRESS_FILE: &str = "progress.safetensors";

/// Appends this epoch's reconstruction of the first test item to the run's
/// `progress.safetensors`: tensor `progress`, `(1 + epochs, 1, c, h, w)` —
/// the original first, then one reconstruction per epoch (metadata `epochs`
/// lists them). A resumed run drops the epochs it re-makes.
pub fn record_progress(
    run_dir: &Path,
    epoch: usize,
    model: &dyn Autoencoder,
    splits: &Splits,
    dev: &Device,
) -> Result<()> {
    let path = run_dir.join(PROGRESS_FILE);
    let x = splits.test.batch(&[0], dev)?;
    let y = model.reconstruct(&x)?.to_device(&Device::Cpu)?;
    let (mut frames, mut epochs) = (vec![x.to_device(&Device::Cpu)?], Vec::new());
    if path.is_file() {
        if let Ok((t, meta)) = crate::infer::load_tensor("progress", &path) {
            let old: Vec<usize> = meta
                .get("epochs")
                .map(|s| s.split(',').filter_map(|e| e.parse().ok()).collect())
                .unwrap_or_default();
            if t.dim(0)? == old.len() + 1 && t.dims()[1..] == x.dims()[..] {
                for (i, &e) in old.iter().enumerate() {
                    if e < epoch {
                        frames.push(t.get(i + 1)?);
                        epochs.push(e);
                    }
                }
            }
        }
    }
    frames.push(y);
    epochs.push(epoch);
    let all = Tensor::stack(&frames, 0)?;
    let list = epochs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",");
    crate::infer::save_tensor("progress", &all, &[("epochs", list)], &path)
}

/// The first test images above their reconstructions (with the noised inputs
/// between them for denoising entries), as PNG bytes.
pub fn recon_strip(
    cfg: &EntryConfig,
    model: &dyn Autoencoder,
    splits: &Splits,
    strip_idx: &[usize],
    dev: &Device,
) -> Result<(Vec<u8>, u32, u32)> {
    let originals = splits.test.batch(strip_idx, dev)?;
    let mut rows = vec![originals.clone()];
    let input = match &cfg.data.noise {
        Some(n) => {
            let noisy = n.apply(&originals, &mut Rng::derived(cfg.train.seed, crate::eval::EVAL_STREAM))?;
            rows.push(noisy.clone());
            noisy
        }
        None => originals,
    };
    rows.push(model.reconstruct(&input)?);
    crate::plot::rows_png(&rows, 3)
}
