//! `metrics.jsonl`: one JSON object per line, `"kind": "step"` every
//! `log_every` steps and `"kind": "epoch"` after each evaluation. On resume,
//! lines past the checkpoint's step are dropped, so the log of a resumed run
//! reads as if it had never stopped.

use std::fs::File;
use std::io::Write;
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
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            for (i, v) in parse_lines(&text, &path)? {
                let line = text.lines().nth(i).unwrap_or_default();
                let s = v.get("step").and_then(Value::as_u64).unwrap_or(u64::MAX);
                if s > step {
                    continue;
                }
                kept.push_str(line);
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
        for (_, v) in parse_lines(&text, &path)? {
            record_point(&v, &mut steps, &mut epochs);
        }
        Ok((steps, epochs))
    }
}

/// The JSON lines of a log with their line indices. A last line that does
/// not parse is the torn write of a killed run: dropped, with a warning; a
/// broken line before the last is an error naming it.
fn parse_lines(text: &str, path: &Path) -> Result<Vec<(usize, Value)>> {
    let lines: Vec<(usize, &str)> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (k, &(i, line)) in lines.iter().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => out.push((i, v)),
            Err(e) if k + 1 == lines.len() => {
                tracing::warn!("{}: line {} is torn ({e}); dropped", path.display(), i + 1);
            }
            Err(e) => {
                return Err(TrainError::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!("line {}: not JSON ({e})", i + 1),
                })
            }
        }
    }
    Ok(out)
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
