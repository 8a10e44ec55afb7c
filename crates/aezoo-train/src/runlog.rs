//! `metrics.jsonl`: one JSON object per line, `"kind": "step"` every
//! `log_every` steps and `"kind": "epoch"` after each evaluation. On resume,
//! lines past the checkpoint's step are dropped, so the log of a resumed run
//! reads as if it had never stopped.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use aezoo_nn::params::write_atomic;
use serde_json::{json, Map, Value};

use crate::error::{io_err, Result, TrainError};
use crate::eval::EvalMetrics;

/// A step line.
pub struct StepRecord {
    pub epoch: usize,
    pub step: u64,
    pub loss: f64,
    pub terms: Vec<(String, f64)>,
    pub lr: f64,
    pub images_per_s: f64,
}

/// An epoch line.
pub struct EpochRecord {
    pub epoch: usize,
    pub step: u64,
    pub train_loss: f64,
    pub train_terms: Vec<(String, f64)>,
    pub test: EvalMetrics,
    pub train_images_per_s: f64,
    pub train_seconds: f64,
}

/// The open log of a run.
pub struct RunLog {
    path: PathBuf,
    file: File,
}

fn terms_obj(terms: &[(String, f64)]) -> Value {
    Value::Object(terms.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>())
}

impl RunLog {
    /// Starts a new, empty log.
    pub fn create(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        write_atomic(&path, b"")?;
        Self::open(path)
    }

    /// Reopens a run's log, keeping only lines up to `step`.
    pub fn resume(run_dir: &Path, step: u64) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let mut kept = String::new();
        if path.exists() {
            let f = File::open(&path).map_err(io_err(&path))?;
            for (i, line) in BufReader::new(f).lines().enumerate() {
                let line = line.map_err(io_err(&path))?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&line).map_err(|e| TrainError::Checkpoint {
                    path: path.clone(),
                    msg: format!("line {}: not JSON ({e})", i + 1),
                })?;
                let s = v.get("step").and_then(Value::as_u64).unwrap_or(u64::MAX);
                if s > step {
                    continue;
                }
                kept.push_str(&line);
                kept.push('\n');
            }
        }
        write_atomic(&path, kept.as_bytes())?;
        Self::open(path)
    }

    fn open(path: PathBuf) -> Result<Self> {
        let file = File::options().append(true).open(&path).map_err(io_err(&path))?;
        Ok(Self { path, file })
    }

    fn write(&mut self, v: &Value) -> Result<()> {
        let mut line = serde_json::to_string(v).expect("json");
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(io_err(&self.path))?;
        self.file.flush().map_err(io_err(&self.path))
    }

    pub fn step(&mut self, r: &StepRecord) -> Result<()> {
        self.write(&json!({
            "kind": "step",
            "epoch": r.epoch,
            "step": r.step,
            "loss": r.loss,
            "terms": terms_obj(&r.terms),
            "lr": r.lr,
            "images_per_s": r.images_per_s,
        }))
    }

    pub fn epoch(&mut self, r: &EpochRecord) -> Result<()> {
        self.write(&json!({
            "kind": "epoch",
            "epoch": r.epoch,
            "step": r.step,
            "train_loss": r.train_loss,
            "train_terms": terms_obj(&r.train_terms),
            "test": r.test,
            "train_images_per_s": r.train_images_per_s,
            "train_seconds": r.train_seconds,
        }))
    }

    /// `(step, batch loss)` and `(step, test loss)` points of a run's
    /// `metrics.jsonl`, for the loss plot.
    pub fn read_series(run_dir: &Path) -> Result<(Vec<(f64, f64)>, Vec<(f64, f64)>)> {
        let path = run_dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let (mut steps, mut epochs) = (vec![], vec![]);
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                msg: format!("line {}: not JSON ({e})", i + 1),
            })?;
            record_point(&v, &mut steps, &mut epochs);
        }
        Ok((steps, epochs))
    }
}

fn record_point(v: &Value, steps: &mut Vec<(f64, f64)>, epochs: &mut Vec<(f64, f64)>) {
    let step = v.get("step").and_then(Value::as_f64);
    match (v.get("kind").and_then(Value::as_str), step) {
        (Some("step"), Some(s)) => {
            if let Some(l) = v.get("loss").and_then(Value::as_f64) {
                steps.push((s, l));
            }
        }
        (Some("epoch"), Some(s)) => {
            if let Some(l) = v.pointer("/test/loss").and_then(Value::as_f64) {
                epochs.push((s, l));
            }
        }
        _ => {}
    }
}
