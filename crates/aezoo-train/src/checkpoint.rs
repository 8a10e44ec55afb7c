//! Checkpoints that survive a kill at any moment.
//!
//! Layout of a run folder:
//! ```text
//! runs/<entry>/<stamp>/
//!   config.json  model.safetensors        final (or latest epoch's) weights
//!   metrics.jsonl  loss.png  reconstructions.png
//!   checkpoints/latest                    name of the newest complete checkpoint
//!   checkpoints/step-00000469/            model.safetensors, optimizer.safetensors,
//!                                         config.json, trainer_state.json
//! ```
//! A checkpoint is written into a fresh temp folder, synced, renamed into
//! place, and only then named in `latest` (itself replaced by rename), so the
//! previous checkpoint stays valid until the new one is whole. The two newest
//! are kept. Optimiser moments live in `optimizer.safetensors` (bit-exact,
//! compact); `trainer_state.json` holds the counters, the RNG state and the
//! optimiser's step count, and names that file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aezoo_nn::params::write_atomic;
use aezoo_nn::{ParamStore, Rng};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::EntryConfig;
use crate::error::{io_err, Result, TrainError};
use aezoo_nn::optim::Adam;

pub const STATE_FORMAT: u32 = 1;

/// Where the optimiser stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OptimizerState {
    pub kind: String,
    pub step: u64,
    pub lr: f64,
    /// File (in the checkpoint folder) with the moments `m.<param>`, `v.<param>`.
    pub moments_file: String,
}

/// `trainer_state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: u32,
    pub entry: String,
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// The next batch of that epoch.
    pub batch_in_epoch: usize,
    /// Optimiser steps done.
    pub step: u64,
    /// The run's sampling generator (noise, reparameterisation).
    pub rng: [u64; 4],
    pub optimizer: OptimizerState,
    /// Seconds of training so far (evaluation excluded).
    pub train_seconds: f64,
    /// The f16 loss scale (mixed precision with `"precision": "f16"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<crate::precision::LossScaleState>,
    /// The loss sums of the epoch in progress (a checkpoint inside an
    /// epoch), so a resumed epoch reports the mean over all its batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_sums: Option<EpochSums>,
}

/// The loss of an epoch's batches so far, summed over their images.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochSums {
    /// Σ loss · images.
    pub loss: f64,
    pub images: usize,
    /// Σ term · images, by term, in the order the family reports them.
    pub terms: Vec<(String, f64)>,
}

impl EpochSums {
    /// Adds a batch of `n` images.
    pub fn add(&mut self, loss: f64, terms: &[(String, f64)], n: usize) {
        self.loss += loss * n as f64;
        self.images += n;
        for (name, v) in terms {
            match self.terms.iter_mut().find(|(k, _)| k == name) {
                Some((_, s)) => *s += v * n as f64,
                None => self.terms.push((name.clone(), v * n as f64)),
            }
        }
    }

    /// The mean loss per image.
    pub fn mean(&self) -> f64 {
        self.loss / self.images.max(1) as f64
    }

    /// The mean of each term per image.
    pub fn term_means(&self) -> Vec<(String, f64)> {
        self.terms
            .iter()
            .map(|(k, s)| (k.clone(), s / self.images.max(1) as f64))
            .collect()
    }
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainerState,
    pub config: EntryConfig,
}

fn ckpt_root(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes a checkpoint of the current state.
pub fn save(
    run_dir: &Path,
    params: &ParamStore,
    adam: &Adam,
    config: &EntryConfig,
    state: &TrainerState,
) -> Result<PathBuf> {
    let root = ckpt_root(run_dir);
    std::fs::create_dir_all(&root).map_err(io_err(&root))?;
    let name = format!("step-{:08}", state.step);
    let dir = root.join(&name);
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    params.save(&tmp.join("model.safetensors"))?;
    aezoo_nn::params::save_safetensors_atomic(&adam.state_tensors()?, &tmp.join("optimizer.safetensors"))?;
    write_atomic(&tmp.join("config.json"), config.to_json().as_bytes())?;
    let state_json = serde_json::to_string_pretty(state).expect("state serialises") + "\n";
    write_atomic(&tmp.join("trainer_state.json"), state_json.as_bytes())?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    if let Ok(d) = std::fs::File::open(&root) {
        let _ = d.sync_all();
    }
    write_atomic(&root.join("latest"), format!("{name}\n").as_bytes())?;
    prune(&root, 2)?;
    Ok(dir)
}

fn step_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("step-"))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let dirs = step_dirs(root);
    if dirs.len() > keep {
        for d in &dirs[..dirs.len() - keep] {
            std::fs::remove_dir_all(d).map_err(io_err(d))?;
        }
    }
    // Temp folders of killed writers.
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.filter_map(|e| e.ok()) {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(".step-") && !n.ends_with(&format!("-{}", std::process::id())) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

fn complete(dir: &Path) -> bool {
    [
        "model.safetensors",
        "optimizer.safetensors",
        "config.json",
        "trainer_state.json",
    ]
    .iter()
    .all(|f| dir.join(f).is_file())
}

/// The complete checkpoint folders of a run, newest (highest step) first.
/// A step folder is renamed into place whole, so one that exists is newer
/// than `latest` says when a kill came between the rename and `latest`'s
/// update; `latest` is kept for people and older tools.
pub fn complete_checkpoints(run_dir: &Path) -> Vec<PathBuf> {
    step_dirs(&ckpt_root(run_dir))
        .into_iter()
        .rev()
        .filter(|d| complete(d))
        .collect()
}

/// The newest complete checkpoint folder of a run, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    complete_checkpoints(run_dir).into_iter().next()
}

/// Loads the newest checkpoint of `run_dir`.
pub fn load(run_dir: &Path) -> Result<Checkpoint> {
    let dir = latest(run_dir).ok_or_else(|| no_checkpoint(run_dir))?;
    open(dir)
}

fn no_checkpoint(run_dir: &Path) -> TrainError {
    TrainError::Checkpoint {
        path: run_dir.to_path_buf(),
        msg: "no complete checkpoint to resume from (expected checkpoints/step-*/)".into(),
    }
}

/// The newest checkpoint of `run_dir` that `restore` accepts: a damaged one
/// (unreadable state, config or tensors) is reported and the one before it
/// is tried, so a run loses at most one checkpoint interval to a torn file.
pub fn load_restorable(run_dir: &Path, mut restore: impl FnMut(&Checkpoint) -> Result<()>) -> Result<Checkpoint> {
    let mut first_err = None;
    for dir in complete_checkpoints(run_dir) {
        match open(dir.clone()).and_then(|ck| restore(&ck).map(|_| ck)) {
            Ok(ck) => {
                if let Some(e) = &first_err {
                    tracing::warn!("resuming from {} instead: {e}", ck.dir.display());
                }
                return Ok(ck);
            }
            Err(e) => {
                tracing::warn!("checkpoint {} is damaged: {e}", dir.display());
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| no_checkpoint(run_dir)))
}

/// Reads one checkpoint folder's state and config.
fn open(dir: PathBuf) -> Result<Checkpoint> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let state: TrainerState = crate::config::parse_json(&text, &state_path.display().to_string())?;
    if state.format != STATE_FORMAT {
        return Err(TrainError::Checkpoint {
            path: state_path,
            msg: format!("format {} is not supported (expected {STATE_FORMAT})", state.format),
        });
    }
    let config = EntryConfig::read(&dir.join("config.json"))?;
    let ck = Checkpoint { dir, state, config };
    ck.check_state()
        .map_err(|msg| TrainError::Checkpoint { path: state_path, msg })?;
    Ok(ck)
}

/// Removes what writers killed mid-write left in a run folder: temp files
/// (`<name>.<pid>.tmp`) of other processes beside the run's files and its
/// checkpoints, and their half-written checkpoint folders.
pub fn remove_stale_temps(run_dir: &Path) {
    let own = format!(".{}.tmp", std::process::id());
    for dir in [run_dir.to_path_buf(), ckpt_root(run_dir)] {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let temp_file = name.ends_with(".tmp") && !name.ends_with(&own) && e.path().is_file();
            let temp_dir = name.starts_with(".step-") && e.path().is_dir();
            if temp_file || temp_dir && !name.ends_with(&format!("-{}", std::process::id())) {
                let removed = if temp_dir {
                    std::fs::remove_dir_all(e.path())
                } else {
                    std::fs::remove_file(e.path())
                };
                match removed {
                    Ok(()) => tracing::info!("removed {}, left by a writer that was killed", e.path().display()),
                    Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
                }
            }
        }
    }
}

impl Checkpoint {
    /// What a state file cannot hold whatever the run: a moments file
    /// outside its folder, a step other than its folder's, an epoch past the
    /// run's, a learning rate, time or loss sum that is not a finite number,
    /// the all-zero generator state.
    fn check_state(&self) -> std::result::Result<(), String> {
        let s = &self.state;
        let m = Path::new(&s.optimizer.moments_file);
        let plain =
            m.components().count() == 1 && matches!(m.components().next(), Some(std::path::Component::Normal(_)));
        if !plain || !s.optimizer.moments_file.ends_with(".safetensors") {
            return Err(format!(
                "optimizer.moments_file {:?}: expected a .safetensors file name inside the checkpoint folder",
                s.optimizer.moments_file
            ));
        }
        let folder = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if folder != format!("step-{:08}", s.step) {
            return Err(format!("step {} does not match its folder {folder}", s.step));
        }
        if s.epoch > self.config.train.epochs {
            return Err(format!(
                "epoch {} is past the run's {} epochs",
                s.epoch, self.config.train.epochs
            ));
        }
        if !(s.optimizer.lr.is_finite() && s.optimizer.lr > 0.0) {
            return Err(format!("optimizer.lr {}: expected a positive number", s.optimizer.lr));
        }
        if s.optimizer.step > s.step {
            return Err(format!(
                "optimizer.step {} is past the run's step {}",
                s.optimizer.step, s.step
            ));
        }
        if !(s.train_seconds.is_finite() && s.train_seconds >= 0.0) {
            return Err(format!(
                "train_seconds {}: expected a number of seconds",
                s.train_seconds
            ));
        }
        if s.rng == [0; 4] {
            return Err("rng: the all-zero state is not one a generator reaches".into());
        }
        if let Some(sums) = &s.epoch_sums {
            if !sums.loss.is_finite() || sums.terms.iter().any(|(_, v)| !v.is_finite()) {
                return Err("epoch_sums: a loss sum that is not a finite number".into());
            }
        }
        Ok(())
    }

    /// Checks the position against the epoch it resumes: the next batch
    /// within the epoch's `batches`, and the summed images within those
    /// batches (an error naming `trainer_state.json` otherwise).
    pub fn check_counters(&self, batches: usize, batch_size: usize) -> Result<()> {
        let s = &self.state;
        let bad = |msg: String| TrainError::Checkpoint {
            path: self.dir.join("trainer_state.json"),
            msg,
        };
        if s.batch_in_epoch > batches {
            return Err(bad(format!(
                "batch_in_epoch {} is past the {batches} batches of an epoch",
                s.batch_in_epoch
            )));
        }
        if let Some(sums) = &s.epoch_sums {
            if sums.images > s.batch_in_epoch.saturating_mul(batch_size) {
                return Err(bad(format!(
                    "epoch_sums.images {} is more than {} batches of {batch_size} hold",
                    sums.images, s.batch_in_epoch
                )));
            }
        }
        Ok(())
    }

    /// Restores the parameters into `params` and the moments into `adam`.
    pub fn restore(&self, params: &ParamStore, adam: &mut Adam) -> Result<Rng> {
        let model_path = self.dir.join("model.safetensors");
        params.set_values(&read_tensors(&model_path)?, &model_path)?;
        let opt_path = self.dir.join(&self.state.optimizer.moments_file);
        adam.load_state(&read_tensors(&opt_path)?, self.state.optimizer.step)
            .map_err(|e| TrainError::Checkpoint {
                path: opt_path.clone(),
                msg: e.to_string(),
            })?;
        adam.set_lr(self.state.optimizer.lr);
        Ok(Rng::from_state(self.state.rng))
    }
}

/// Reads every tensor of a safetensors file: float tensors of finite values
/// only (`aezoo_nn::params::checked_load`), with a clear error for a broken
/// file.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    aezoo_nn::params::check_file_size(path)?;
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg: format!("not a valid safetensors file ({e}); truncated or corrupted?"),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        out.insert(name.clone(), aezoo_nn::params::checked_load(&view, &name, path)?);
    }
    Ok(out)
}
