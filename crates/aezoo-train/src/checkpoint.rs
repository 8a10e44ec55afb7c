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
use candle_core::{Device, Tensor};
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

/// The newest complete checkpoint folder of a run, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    let root = ckpt_root(run_dir);
    if let Ok(name) = std::fs::read_to_string(root.join("latest")) {
        let dir = root.join(name.trim());
        if complete(&dir) {
            return Some(dir);
        }
    }
    step_dirs(&root).into_iter().rev().find(|d| complete(d))
}

/// Loads the newest checkpoint of `run_dir`.
pub fn load(run_dir: &Path) -> Result<Checkpoint> {
    let dir = latest(run_dir).ok_or_else(|| TrainError::Checkpoint {
        path: run_dir.to_path_buf(),
        msg: "no complete checkpoint to resume from (expected checkpoints/latest or checkpoints/step-*/)".into(),
    })?;
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
    Ok(Checkpoint { dir, state, config })
}

impl Checkpoint {
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

/// Reads every tensor of a safetensors file, with a clear error for a broken one.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg: format!("not a valid safetensors file ({e}); truncated or corrupted?"),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, &Device::Cpu).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            msg: format!("tensor `{name}`: {e}"),
        })?;
        out.insert(name, t);
    }
    Ok(out)
}
