//! The training loop: any registered family, one protocol.
//!
//! Per step: a seeded batch (optionally noised), the family's `step`, a
//! finite-loss check, backward, Adam. Per epoch: evaluation on the test split,
//! `metrics.jsonl` lines, `loss.png`, `reconstructions.png`, the run's weights
//! and a checkpoint. A run stopped at any step (Ctrl-C, `max_steps`, a kill)
//! and resumed from its last checkpoint ends with the same weights as a run
//! that was never stopped: the data order depends only on (seed, epoch), the
//! sampling generator's state and Adam's moments are checkpointed, and
//! evaluation draws from its own stream.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use aezoo_data::{DatasetId, EpochPlan, Locator, Splits};
use aezoo_nn::params::write_atomic;
use aezoo_nn::{Autoencoder, Batch, ParamStore, Rng, StepCtx};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use tracing_indicatif::span_ext::IndicatifSpanExt;

use crate::checkpoint::{self, OptimizerState, TrainerState, STATE_FORMAT};
use crate::config::EntryConfig;
use crate::error::{io_err, Result, TrainError};
use crate::eval::{evaluate, EvalMetrics};
use aezoo_nn::optim::Adam;
use crate::precision::LossScaler;
use crate::registry;
use crate::runlog::{EpochRecord, RunLog, StepRecord};

/// The RNG stream random crops are drawn from (apart from sampling's).
const CROP_STREAM: u64 = 0xc0_0000_0000_0000;

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
pub fn build_fresh(cfg: &EntryConfig, dev: &Device) -> Result<Built> {
    let params = ParamStore::init(cfg.train.seed);
    let vb = params.var_builder(DType::F32, dev);
    let model = registry::family(&cfg.family, &cfg.entry)?.build(&cfg.model, &cfg.entry, vb)?;
    Ok(Built { model, params })
}

/// Loads the entry's data through the chain, applies the config's limits and
/// checks the image shape against the model's.
pub fn load_data(cfg: &EntryConfig, locator: &Locator) -> Result<Splits> {
    let mut splits = if cfg.data.dataset == crate::config::FOLDER {
        load_folder(cfg, locator)?.splits
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
    let want = registry::family(&cfg.family, &cfg.entry)?.check(&cfg.model, &cfg.entry)?;
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

/// An image-folder entry's data: the folder of `data.folder.path`, else
/// `--data DIR`, at the model's image shape, split by `train.seed`.
pub fn load_folder(cfg: &EntryConfig, locator: &Locator) -> Result<aezoo_data::FolderSet> {
    let fcfg = cfg.data.folder.clone().unwrap_or_default();
    let dir = fcfg
        .path
        .clone()
        .or_else(|| locator.explicit.clone())
        .ok_or_else(|| TrainError::Config {
            origin: cfg.entry.clone(),
            msg: "data.dataset is \"folder\": give the folder with --data DIR (or data.folder.path)".into(),
        })?;
    let shape = registry::family(&cfg.family, &cfg.entry)?.check(&cfg.model, &cfg.entry)?;
    Ok(aezoo_data::folder::load_folder(&dir, shape, &fcfg, cfg.train.seed)?)
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

/// Copies every tensor of `path` whose name and shape match a parameter of
/// `params` into it; logs what was kept fresh and what was not used.
pub fn init_from(params: &ParamStore, path: &Path) -> Result<()> {
    let src = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg: format!("not a readable safetensors file ({e})"),
    })?;
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
/// `opts.resume`).
pub fn train(cfg: &EntryConfig, opts: &TrainOptions) -> Result<TrainOutcome> {
    let run_dir = &opts.run_dir;
    let dev = &opts.device;
    let t = &cfg.train;

    let splits = load_data(cfg, &opts.locator)?;
    let data_desc = splits.describe();
    if splits.source.is_bundled() {
        // A bundled source that is not an IDX set by name is Moving MNIST
        // generated from the bundled MNIST digits: the hint is MNIST's.
        let id = DatasetId::parse(&cfg.data.dataset).unwrap_or(DatasetId::Mnist);
        tracing::warn!("data: {data_desc}; a small real subset. For {}", id.how_to_get_full());
    } else {
        tracing::info!("data: {data_desc}");
    }

    let Built { model, params } = build_fresh(cfg, dev)?;
    if let (Some(path), false) = (&opts.init_from, opts.resume) {
        init_from(&params, path)?;
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
    let vars = params.vars();
    let mut adam = Adam::new(vars.clone(), t.lr, t.optimizer.clone())?;
    let mut scaler = (compute == DType::F16).then(LossScaler::new);
    let nparams = params.num_params();

    let (mut epoch, mut start_batch, mut step, mut rng, mut train_seconds);
    let mut log;
    if opts.resume {
        let ck = checkpoint::load(run_dir)?;
        if ck.config.model != cfg.model || ck.config.family != cfg.family {
            return Err(TrainError::Checkpoint {
                path: ck.dir.clone(),
                msg: "the checkpoint was made with a different model config".into(),
            });
        }
        rng = ck.restore(&params, &mut adam)?;
        if let (Some(sc), Some(state)) = (&mut scaler, ck.state.loss_scale) {
            *sc = LossScaler::from_state(state);
        }
        adam.set_lr(t.lr);
        epoch = ck.state.epoch;
        start_batch = ck.state.batch_in_epoch;
        step = ck.state.step;
        train_seconds = ck.state.train_seconds;
        log = RunLog::resume(run_dir, step)?;
        tracing::info!(
            "resuming {} from {} (epoch {}, batch {}, step {step})",
            cfg.entry,
            ck.dir.display(),
            epoch + 1,
            start_batch
        );
    } else {
        if checkpoint::latest(run_dir).is_some() {
            return Err(TrainError::Checkpoint {
                path: run_dir.clone(),
                msg: "this run folder already has checkpoints: pass --resume to continue it, or choose another --out"
                    .into(),
            });
        }
        rng = Rng::derived(t.seed, 1);
        epoch = 0;
        start_batch = 0;
        step = 0;
        train_seconds = 0.0;
        log = RunLog::create(run_dir)?;
    }
    write_atomic(&run_dir.join("config.json"), cfg.to_json().as_bytes())?;
    let mut tb = if opts.tensorboard {
        let w = crate::tensorboard::EventWriter::create(&run_dir.join("tensorboard"))?;
        tracing::info!("TensorBoard events: {}", w.path().display());
        Some(w)
    } else {
        None
    };
    tracing::info!(
        "training {} ({}, {nparams} parameters) for {} epochs, batch {}, lr {}, seed {}, {} → {}",
        cfg.entry,
        cfg.family,
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

    let n = splits.train.epoch_len();
    let strip_idx: Vec<usize> = (0..STRIP_IMAGES.min(splits.test.len())).collect();
    let mut last_metrics: Option<EvalMetrics> = None;
    let mut images_seen_this_run = 0usize;
    let mut seconds_this_run = 0f64;

    let outcome = |completed: bool,
                   epochs_done: usize,
                   steps: u64,
                   metrics: Option<EvalMetrics>,
                   images: usize,
                   seconds: f64,
                   train_seconds: f64| TrainOutcome {
        run_dir: run_dir.clone(),
        completed,
        epochs_done,
        steps,
        metrics,
        train_images_per_s: images as f64 / seconds.max(1e-9),
        train_seconds,
        data: data_desc.clone(),
        params: nparams,
    };
    let stop_requested = || opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
    let state_at =
        |epoch: usize, batch: usize, step: u64, rng: &Rng, adam: &Adam, scaler: &Option<LossScaler>, secs: f64| {
            TrainerState {
                format: STATE_FORMAT,
                entry: cfg.entry.clone(),
                epoch,
                batch_in_epoch: batch,
                step,
                rng: rng.state(),
                optimizer: OptimizerState {
                    kind: "adam".into(),
                    step: adam.step_count(),
                    lr: adam.lr(),
                    moments_file: "optimizer.safetensors".into(),
                },
                train_seconds: secs,
                loss_scale: scaler.as_ref().map(LossScaler::state),
            }
        };

    while epoch < t.epochs {
        adam.set_lr(t.lr_at(epoch));
        let plan = EpochPlan::new(n, t.batch_size, t.seed, epoch as u64, t.shuffle);
        let nb = plan.num_batches();
        let span = tracing::info_span!(
            "epoch",
            "indicatif.pb_show" = tracing::field::Empty,
            epoch = %format_args!("{}/{}", epoch + 1, t.epochs)
        );
        span.pb_set_style(
            &indicatif::ProgressStyle::with_template(
                "{span_fields} {wide_bar:.cyan/blue} {pos}/{len} batches {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        span.pb_set_length(nb as u64);
        span.pb_set_position(start_batch as u64);
        let entered = span.enter();
        let (mut loss_sum, mut loss_n) = (0f64, 0usize);
        let mut term_sums: Vec<(String, f64)> = Vec::new();

        for bi in start_batch..nb {
            let t0 = Instant::now();
            let idx = plan.batch(bi);
            // Random-crop folders: windows drawn from a stream fixed by (seed, epoch, batch),
            // so a resumed run cuts the same crops.
            let clean = if splits.train.has_crops() {
                let mut crop_rng = Rng::derived(t.seed, CROP_STREAM ^ ((epoch as u64) << 32 | bi as u64));
                splits.train.random_crops(idx, &mut crop_rng, dev)?
            } else {
                splits.train.batch(idx, dev)?
            };
            let batch = match &cfg.data.noise {
                Some(noise) => Batch {
                    input: noise.apply(&clean, &mut rng)?,
                    target: clean,
                },
                None => Batch::autoencode(clean),
            };
            let out = model.step(&batch, &mut StepCtx::train(&mut rng).computing_in(compute))?;
            let loss_v = scalar(&out.loss)?;
            if !loss_v.is_finite() {
                return Err(TrainError::NonFinite {
                    epoch: epoch + 1,
                    step: step + 1,
                    what: "the loss".into(),
                    value: loss_v,
                });
            }
            match &mut scaler {
                None => adam.step(&out.loss.backward()?)?,
                Some(sc) => {
                    let scale = sc.scale();
                    let mut grads = sc.scale_loss(&out.loss)?.backward()?;
                    if sc.unscale(&mut grads, &vars)? {
                        adam.step(&grads)?;
                    } else {
                        tracing::warn!(
                            "step {}: f16 gradients overflowed at loss scale {scale}; step skipped, scale now {}",
                            step + 1,
                            sc.scale()
                        );
                    }
                }
            }
            step += 1;
            let dt = t0.elapsed().as_secs_f64();
            train_seconds += dt;
            seconds_this_run += dt;
            images_seen_this_run += idx.len();
            loss_sum += loss_v as f64 * idx.len() as f64;
            loss_n += idx.len();
            let mut terms = Vec::with_capacity(out.terms.len());
            for (name, tv) in &out.terms {
                let v = scalar(tv)? as f64;
                terms.push((name.to_string(), v));
                match term_sums.iter_mut().find(|(k, _)| k == name) {
                    Some((_, s)) => *s += v * idx.len() as f64,
                    None => term_sums.push((name.to_string(), v * idx.len() as f64)),
                }
            }
            tracing::Span::current().pb_inc(1);
            if step % 10 == 0 || bi + 1 == nb {
                tracing::Span::current().pb_set_message(&format!("loss {:.4}", loss_sum / loss_n as f64));
            }
            if t.log_every > 0 && (step % t.log_every as u64 == 0 || step == 1) {
                if let Some(tb) = &mut tb {
                    let mut v = vec![
                        ("train/loss".to_string(), loss_v as f64),
                        ("train/lr".to_string(), adam.lr()),
                        ("train/images_per_s".to_string(), idx.len() as f64 / dt),
                    ];
                    v.extend(terms.iter().map(|(k, x)| (format!("train/loss/{k}"), *x)));
                    tb.scalars(step, &v)?;
                }
                log.step(&StepRecord {
                    epoch: epoch + 1,
                    step,
                    loss: loss_v as f64,
                    terms,
                    lr: adam.lr(),
                    images_per_s: idx.len() as f64 / dt,
                })?;
            }
            let stop_now = stop_requested() || opts.max_steps.is_some_and(|m| step >= m);
            let periodic = t.checkpoint_every > 0 && step % t.checkpoint_every as u64 == 0;
            if (stop_now || periodic) && bi + 1 < nb {
                checkpoint::save(
                    run_dir,
                    &params,
                    &adam,
                    cfg,
                    &state_at(epoch, bi + 1, step, &rng, &adam, &scaler, train_seconds),
                )?;
            }
            if stop_now && bi + 1 < nb {
                drop(entered);
                tracing::info!(
                    "stopped at epoch {}, step {step}; resume with --resume {}",
                    epoch + 1,
                    run_dir.display()
                );
                return Ok(outcome(
                    false,
                    epoch,
                    step,
                    last_metrics,
                    images_seen_this_run,
                    seconds_this_run,
                    train_seconds,
                ));
            }
        }
        drop(entered);
        drop(span);

        // End of epoch: evaluate, log, draw, save.
        let te = Instant::now();
        let metrics = evaluate(
            model.as_ref(),
            &splits.test,
            t.eval_batch_size,
            cfg.data.noise,
            t.seed,
            dev,
        )?;
        let train_loss = loss_sum / loss_n.max(1) as f64;
        tracing::info!(
            "epoch {}/{}: train loss {:.5}, test loss {:.5}, test MSE {:.5}, PSNR {:.2} dB, SSIM {:.4} ({:.0} img/s, eval {:.1}s)",
            epoch + 1,
            t.epochs,
            train_loss,
            metrics.loss,
            metrics.mse,
            metrics.psnr,
            metrics.ssim,
            images_seen_this_run as f64 / seconds_this_run.max(1e-9),
            te.elapsed().as_secs_f64()
        );
        log.epoch(&EpochRecord {
            epoch: epoch + 1,
            step,
            train_loss,
            train_terms: term_sums
                .iter()
                .map(|(k, s)| (k.clone(), s / loss_n.max(1) as f64))
                .collect(),
            test: metrics.clone(),
            train_images_per_s: images_seen_this_run as f64 / seconds_this_run.max(1e-9),
            train_seconds,
        })?;
        epoch += 1;
        start_batch = 0;
        params.save(&run_dir.join("model.safetensors"))?;
        checkpoint::save(
            run_dir,
            &params,
            &adam,
            cfg,
            &state_at(epoch, 0, step, &rng, &adam, &scaler, train_seconds),
        )?;
        if let Some(tb) = &mut tb {
            let mut v = vec![
                ("epoch/train_loss".to_string(), train_loss),
                ("test/loss".to_string(), metrics.loss),
                ("test/mse".to_string(), metrics.mse),
                ("test/psnr".to_string(), metrics.psnr),
                ("test/ssim".to_string(), metrics.ssim),
            ];
            v.extend(metrics.terms.iter().map(|(k, x)| (format!("test/loss/{k}"), *x)));
            tb.scalars(step, &v)?;
        }
        if opts.plots || tb.is_some() {
            let (png, w, h) = recon_strip(cfg, model.as_ref(), &splits, &strip_idx, dev)?;
            if opts.plots {
                write_atomic(&run_dir.join("reconstructions.png"), &png)?;
                draw_loss(run_dir, cfg, &log)?;
                record_progress(run_dir, epoch, model.as_ref(), &splits, dev)?;
            }
            if let Some(tb) = &mut tb {
                let image = crate::tensorboard::Summary::Image {
                    tag: "reconstructions",
                    png: &png,
                    height: h,
                    width: w,
                    channels: 3,
                };
                tb.write(step, &[image])?;
            }
        }
        last_metrics = Some(metrics);
        if (stop_requested() || opts.max_steps.is_some_and(|m| step >= m)) && epoch < t.epochs {
            tracing::info!(
                "stopped after epoch {epoch}; resume with --resume {}",
                run_dir.display()
            );
            return Ok(outcome(
                false,
                epoch,
                step,
                last_metrics,
                images_seen_this_run,
                seconds_this_run,
                train_seconds,
            ));
        }
    }
    if last_metrics.is_none() {
        // Resumed a finished run: report the saved weights' metrics.
        last_metrics = Some(evaluate(
            model.as_ref(),
            &splits.test,
            t.eval_batch_size,
            cfg.data.noise,
            t.seed,
            dev,
        )?);
        params.save(&run_dir.join("model.safetensors"))?;
    }
    Ok(outcome(
        true,
        epoch,
        step,
        last_metrics,
        images_seen_this_run,
        seconds_this_run,
        train_seconds,
    ))
}

fn draw_loss(run_dir: &Path, cfg: &EntryConfig, log: &RunLog) -> Result<()> {
    let (steps, epochs) = log.loss_series();
    draw_loss_series(&cfg.entry, &steps, &epochs, &run_dir.join("loss.png"))
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
