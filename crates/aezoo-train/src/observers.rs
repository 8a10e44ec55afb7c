//! What a training run leaves besides its weights, one [`Observer`] each:
//! the progress bar ([`ProgressBar`]), `metrics.jsonl` ([`MetricsLog`]),
//! TensorBoard event files ([`TensorBoard`]), the weights and checkpoints
//! ([`Checkpoints`]) and the pictures ([`Pictures`]: `loss.png`,
//! `reconstructions.png`, `progress.safetensors`). The [`Learner`] calls
//! them in the order it holds them, after each step and each evaluated
//! epoch; an observer that fails stops the run with its error.
//!
//! [`Learner`]: crate::trainer::Learner

use std::path::Path;

use tracing_indicatif::span_ext::IndicatifSpanExt;

use crate::error::Result;
use crate::runlog::{EpochRecord, RunLog, StepRecord};
use crate::trainer::{draw_loss_series, record_progress, EpochEvent, RunState, StepEvent};

/// Told of a run's progress by the [`crate::trainer::Learner`].
pub trait Observer {
    /// An epoch's batches start (from `run.batch` on a resumed epoch).
    fn on_epoch_start(&mut self, run: &RunState, batches: usize) -> Result<()> {
        let _ = (run, batches);
        Ok(())
    }

    /// An optimiser step is done (`run` is the state after it).
    fn on_step(&mut self, run: &RunState, step: &StepEvent) -> Result<()> {
        let _ = (run, step);
        Ok(())
    }

    /// The epoch's batches are done, or the run stops inside the epoch.
    fn on_batches_end(&mut self, run: &RunState) -> Result<()> {
        let _ = run;
        Ok(())
    }

    /// The epoch is evaluated (`run.epoch` counts it already).
    fn on_epoch_end(&mut self, run: &RunState, epoch: &EpochEvent) -> Result<()> {
        let _ = (run, epoch);
        Ok(())
    }
}

/// The epoch's progress bar (indicatif, through tracing's span).
#[derive(Default)]
pub struct ProgressBar {
    span: Option<tracing::span::EnteredSpan>,
}

impl Observer for ProgressBar {
    fn on_epoch_start(&mut self, run: &RunState, batches: usize) -> Result<()> {
        let span = tracing::info_span!(
            "epoch",
            "indicatif.pb_show" = tracing::field::Empty,
            epoch = %format_args!("{}/{}", run.epoch + 1, run.cfg.train.epochs)
        );
        span.pb_set_style(
            &indicatif::ProgressStyle::with_template(
                "{span_fields} {wide_bar:.cyan/blue} {pos}/{len} batches {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        span.pb_set_length(batches as u64);
        span.pb_set_position(run.batch as u64);
        self.span = Some(span.entered());
        Ok(())
    }

    fn on_step(&mut self, _run: &RunState, s: &StepEvent) -> Result<()> {
        tracing::Span::current().pb_inc(1);
        if s.step.is_multiple_of(10) || s.ends_epoch() {
            tracing::Span::current().pb_set_message(&format!("loss {:.4}", s.running_loss));
        }
        Ok(())
    }

    fn on_batches_end(&mut self, _run: &RunState) -> Result<()> {
        self.span = None;
        Ok(())
    }
}

/// Whether step `step` is logged (`train.log_every`, and the first step).
fn logged(run: &RunState, step: u64) -> bool {
    let every = run.cfg.train.log_every;
    every > 0 && (step.is_multiple_of(every as u64) || step == 1)
}

/// `metrics.jsonl`: a line every `train.log_every` steps and one per epoch.
pub struct MetricsLog {
    log: RunLog,
}

impl MetricsLog {
    /// A new log in `run_dir`, or (resuming at `step`) the run's log with
    /// the lines past `step` dropped.
    pub fn open(run_dir: &Path, resume_at: Option<u64>) -> Result<Self> {
        let log = match resume_at {
            Some(step) => RunLog::resume(run_dir, step)?,
            None => RunLog::create(run_dir)?,
        };
        Ok(Self { log })
    }
}

impl Observer for MetricsLog {
    fn on_step(&mut self, run: &RunState, s: &StepEvent) -> Result<()> {
        if logged(run, s.step) {
            self.log.step(&StepRecord {
                epoch: s.epoch + 1,
                step: s.step,
                loss: s.loss,
                terms: s.terms.to_vec(),
                lr: s.lr,
                images_per_s: s.images as f64 / s.seconds,
            })?;
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, _run: &RunState, e: &EpochEvent) -> Result<()> {
        self.log.epoch(&EpochRecord {
            epoch: e.epoch,
            step: e.step,
            train_loss: e.train_loss,
            train_terms: e.train_terms.to_vec(),
            test: e.metrics.clone(),
            train_images_per_s: e.train_images_per_s,
            train_seconds: e.train_seconds,
        })
    }
}

/// TensorBoard event files in `<run>/tensorboard/`: the logged steps'
/// scalars, each epoch's test metrics and reconstruction strip.
pub struct TensorBoard {
    events: crate::tensorboard::EventWriter,
}

impl TensorBoard {
    pub fn create(run_dir: &Path) -> Result<Self> {
        let events = crate::tensorboard::EventWriter::create(&run_dir.join("tensorboard"))?;
        tracing::info!("TensorBoard events: {}", events.path().display());
        Ok(Self { events })
    }
}

impl Observer for TensorBoard {
    fn on_step(&mut self, run: &RunState, s: &StepEvent) -> Result<()> {
        if logged(run, s.step) {
            let mut v = vec![
                ("train/loss".to_string(), s.loss),
                ("train/lr".to_string(), s.lr),
                ("train/images_per_s".to_string(), s.images as f64 / s.seconds),
            ];
            v.extend(s.terms.iter().map(|(k, x)| (format!("train/loss/{k}"), *x)));
            self.events.scalars(s.step, &v)?;
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, run: &RunState, e: &EpochEvent) -> Result<()> {
        let m = e.metrics;
        let mut v = vec![
            ("epoch/train_loss".to_string(), e.train_loss),
            ("test/loss".to_string(), m.loss),
            ("test/mse".to_string(), m.mse),
            ("test/psnr".to_string(), m.psnr),
            ("test/ssim".to_string(), m.ssim),
        ];
        v.extend(m.terms.iter().map(|(k, x)| (format!("test/loss/{k}"), *x)));
        self.events.scalars(e.step, &v)?;
        let (png, width, height) = e.strip(run)?;
        let image = crate::tensorboard::Summary::Image {
            tag: "reconstructions",
            png,
            height: *height,
            width: *width,
            channels: 3,
        };
        self.events.write(e.step, &[image])
    }
}

/// The weights and checkpoints: a checkpoint every `train.checkpoint_every`
/// steps and when the run stops inside an epoch; `model.safetensors` and a
/// checkpoint after every evaluated epoch.
pub struct Checkpoints;

impl Observer for Checkpoints {
    fn on_step(&mut self, run: &RunState, s: &StepEvent) -> Result<()> {
        let every = run.cfg.train.checkpoint_every;
        let periodic = every > 0 && s.step.is_multiple_of(every as u64);
        if (s.stopping || periodic) && !s.ends_epoch() {
            run.checkpoint()?;
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, run: &RunState, _e: &EpochEvent) -> Result<()> {
        run.params.save(&run.run_dir.join("model.safetensors"))?;
        run.checkpoint()?;
        Ok(())
    }
}

/// The pictures of a run folder, after every epoch: `reconstructions.png`,
/// `loss.png` (from `metrics.jsonl`) and the first test item's
/// reconstruction appended to `progress.safetensors`.
pub struct Pictures;

impl Observer for Pictures {
    fn on_epoch_end(&mut self, run: &RunState, e: &EpochEvent) -> Result<()> {
        let (png, ..) = e.strip(run)?;
        aezoo_nn::params::write_atomic(&run.run_dir.join("reconstructions.png"), png)?;
        let (steps, epochs) = RunLog::read_series(&run.run_dir)?;
        draw_loss_series(&run.cfg.entry, &steps, &epochs, &run.run_dir.join("loss.png"))?;
        record_progress(&run.run_dir, run.epoch, run.model.as_ref(), &run.splits, &run.device)
    }
}
