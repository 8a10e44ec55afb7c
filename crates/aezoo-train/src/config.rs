//! `configs/<entry>.json`: one zoo entry's model, data and training settings.
//!
//! Every struct refuses unknown keys, and every error names the file and the
//! JSON path of the field (`configs/vae-conv.json: train.lr: invalid type…`).
//! The `model` section is kept as JSON here and parsed by the family's own
//! config struct through the [`crate::zoo::Zoo`], so this file knows no family.

use std::path::Path;

use aezoo_data::GaussianNoise;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};
use crate::precision::Precision;
use aezoo_nn::optim::AdamConfig;

/// One zoo entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    /// The entry's name (`vae-conv`), also the default run folder name.
    pub entry: String,
    /// The model family that builds it (a key of the `Zoo`'s tables).
    pub family: String,
    /// One line for listings: what it is and its source.
    #[serde(default)]
    pub about: String,
    /// The family's own config (parsed by the family, unknown keys refused).
    pub model: serde_json::Value,
    pub data: DataConfig,
    pub train: TrainConfig,
}

/// Which data and how it is presented.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `mnist`, `fashion-mnist`, `folder` (PNG/JPEG files: `data.folder`,
    /// the folder from `--data DIR` or `data.folder.path`), `moving-mnist`
    /// (clips: `data.moving_mnist`; generated, or `mnist_test_seq.npy`
    /// from `--data`), or for graph
    /// entries a graph name.
    pub dataset: String,
    /// How an image folder is read (with `"dataset": "folder"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<aezoo_data::FolderConfig>,
    /// How Moving MNIST clips are generated or held out (with `"dataset": "moving-mnist"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_mnist: Option<aezoo_data::MovingMnistConfig>,
    /// Use only the first N training images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_limit: Option<usize>,
    /// Corrupt inputs with Gaussian noise (targets stay clean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<GaussianNoise>,
}

fn default_eval_batch() -> usize {
    1000
}
fn default_log_every() -> usize {
    10
}
fn default_checkpoint_every() -> usize {
    200
}
/// The `data.dataset` value of an image-folder entry.
pub const FOLDER: &str = "folder";
/// The `data.dataset` value of a Moving MNIST entry.
pub const MOVING_MNIST: &str = "moving-mnist";

fn is_zero(v: &usize) -> bool {
    *v == 0
}
fn default_shuffle() -> bool {
    true
}

/// The optimisation protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Images per step (image entries; graph entries train full-batch and omit it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// A step decay: from epoch `epoch` (0-based: after that many epochs)
    /// on, the rate is `lr × factor` (CompressAI's plateau drop, fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_decay: Option<LrDecay>,
    /// Seeds init, shuffling and all sampling.
    pub seed: u64,
    /// Adam's other settings (PyTorch's defaults when absent).
    #[serde(default)]
    pub optimizer: AdamConfig,
    #[serde(default = "default_shuffle")]
    pub shuffle: bool,
    /// Batch size of evaluation passes.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Write a `metrics.jsonl` step line every N steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Write a checkpoint every N steps (and at every epoch end); 0 = epoch ends only.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Mixed precision: `auto` (bf16 on CUDA for families that support it,
    /// f32 elsewhere), `f32`, `bf16` or `f16` (with dynamic loss scaling).
    #[serde(default, skip_serializing_if = "is_auto")]
    pub precision: Precision,
}

fn is_auto(p: &Precision) -> bool {
    *p == Precision::Auto
}

/// `train.lr_decay`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrDecay {
    pub epoch: usize,
    pub factor: f64,
}

impl TrainConfig {
    /// The learning rate of epoch `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.lr_decay {
            Some(d) if epoch >= d.epoch => self.lr * d.factor,
            _ => self.lr,
        }
    }
}

/// Parses JSON text into `T`, with errors that name `origin` and the field path.
pub fn parse_json<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        TrainError::Config {
            origin: origin.to_string(),
            msg: if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            },
        }
    })
}

/// Parses a JSON value (a config section) into `T`; `section` prefixes the path.
pub fn parse_value<T: DeserializeOwned>(v: &serde_json::Value, origin: &str, section: &str) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        TrainError::Config {
            origin: origin.to_string(),
            msg: if path == "." || path.is_empty() {
                format!("{section}: {inner}")
            } else {
                format!("{section}.{path}: {inner}")
            },
        }
    })
}

/// Refuses any integer of a config section above
/// [`aezoo_nn::limits::MAX_CONFIG_SIZE`], naming its JSON path: sizes
/// become allocations, and a width of 2⁴⁰ must be an error, not an abort.
pub fn check_sizes(v: &serde_json::Value, origin: &str, path: &str) -> Result<()> {
    use serde_json::Value;
    let limit = aezoo_nn::limits::MAX_CONFIG_SIZE;
    match v {
        Value::Number(n) => {
            let big = match (n.as_u64(), n.as_f64()) {
                (Some(u), _) => u > limit,
                (None, Some(f)) => f.abs() > limit as f64 && f.fract() == 0.0,
                _ => false,
            };
            if big {
                return Err(TrainError::Config {
                    origin: origin.to_string(),
                    msg: format!("{path}: {n} is above the limit of {limit} (aezoo_nn::limits)"),
                });
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                check_sizes(x, origin, &format!("{path}[{i}]"))?;
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                check_sizes(x, origin, &format!("{path}.{k}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Refuses images beyond the budget (channels, sides, pixels), naming `what`.
pub fn check_image_shape(shape: [usize; 3], origin: &str, what: &str) -> Result<()> {
    use aezoo_nn::limits::{MAX_CHANNELS, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE};
    let [c, h, w] = shape;
    let bad = if c == 0 || h == 0 || w == 0 {
        Some("has a zero size".to_string())
    } else if c > MAX_CHANNELS {
        Some(format!("has {c} channels, above the limit of {MAX_CHANNELS}"))
    } else if h > MAX_IMAGE_SIDE || w > MAX_IMAGE_SIDE {
        Some(format!("has a side above the limit of {MAX_IMAGE_SIDE}"))
    } else if h * w > MAX_IMAGE_PIXELS {
        Some(format!("has {} pixels, above the limit of {MAX_IMAGE_PIXELS}", h * w))
    } else {
        None
    };
    match bad {
        Some(m) => Err(TrainError::Config {
            origin: origin.to_string(),
            msg: format!("{what} of shape {shape:?} {m} (aezoo_nn::limits)"),
        }),
        None => Ok(()),
    }
}

impl EntryConfig {
    /// Reads and parses a config file (serde's checks only: a [`crate::zoo::Zoo`]
    /// validates it, knowing its family).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text (serde's checks only); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        parse_json(text, origin)
    }

    /// Checks the values serde cannot, for an image entry (the family's
    /// `model` section is checked by the family: [`crate::zoo::Zoo::validate`]).
    pub fn validate_image(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| TrainError::Config {
            origin: origin.to_string(),
            msg,
        };
        let t = &self.train;
        if t.batch_size == 0 {
            return Err(bad("train.batch_size: required for image entries, must be >= 1".into()));
        }
        if t.eval_batch_size == 0 {
            return Err(bad("train.eval_batch_size: must be >= 1".into()));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(bad(format!("train.lr: must be a positive number, got {}", t.lr)));
        }
        if let Some(d) = t.lr_decay {
            if !(d.factor.is_finite() && d.factor > 0.0 && d.factor <= 1.0) || d.epoch == 0 {
                return Err(bad(format!(
                    "train.lr_decay: epoch must be >= 1 and factor in (0, 1], got epoch {} factor {}",
                    d.epoch, d.factor
                )));
            }
        }
        t.optimizer
            .validate()
            .map_err(|m| bad(format!("train.optimizer.{m}")))?;
        if self.data.dataset == FOLDER {
            let f = self.data.folder.clone().unwrap_or_default();
            if !(f.val_fraction >= 0.0 && f.val_fraction < 1.0) {
                return Err(bad(format!(
                    "data.folder.val_fraction: must be in [0, 1), got {}",
                    f.val_fraction
                )));
            }
        } else {
            if self.data.folder.is_some() {
                return Err(bad(format!(
                    "data.folder: only with \"dataset\": \"folder\", not `{}`",
                    self.data.dataset
                )));
            }
            if self.data.dataset != MOVING_MNIST {
                aezoo_data::DatasetId::parse(&self.data.dataset).map_err(|e| {
                    bad(format!(
                        "data.dataset: {e}, {FOLDER} (an image folder) or {MOVING_MNIST}"
                    ))
                })?;
            }
        }
        if self.data.moving_mnist.is_some() && self.data.dataset != MOVING_MNIST {
            return Err(bad(format!(
                "data.moving_mnist: only with \"dataset\": \"{MOVING_MNIST}\", not `{}`",
                self.data.dataset
            )));
        }
        if let Some(n) = &self.data.noise {
            if !(n.std.is_finite() && n.std >= 0.0) {
                return Err(bad(format!("data.noise.std: must be >= 0, got {}", n.std)));
            }
        }
        Ok(())
    }

    /// Pretty JSON, as written to `config.json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises") + "\n"
    }
}
