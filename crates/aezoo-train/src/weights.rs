//! Trained weights on disk: a folder with `config.json` (the entry config that
//! made them) and `model.safetensors` (keys = `vb.pp` paths), the Hugging Face
//! layout. Loading is strict: a missing, extra or mis-shaped tensor is an
//! error naming the file and the tensor.

use std::path::{Path, PathBuf};

use aezoo_nn::{Autoencoder, ParamStore};
use candle_core::{DType, Device};

use crate::config::EntryConfig;
use crate::error::{io_err, Result, TrainError};
use crate::registry;

/// A model loaded for inference.
pub struct Loaded {
    pub dir: PathBuf,
    pub config: EntryConfig,
    pub model: Box<dyn Autoencoder>,
    pub params: ParamStore,
}

/// Loads `dir/config.json` and `dir/model.safetensors`.
pub fn load(dir: &Path, dev: &Device) -> Result<Loaded> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            msg: "no config.json: not a weights folder (expected config.json and model.safetensors)".into(),
        });
    }
    let config = EntryConfig::from_file(&cfg_path)?;
    let st = dir.join("model.safetensors");
    let params = ParamStore::load(&st, false).map_err(|e| TrainError::Checkpoint {
        path: st.clone(),
        msg: strip_path(&e.to_string(), &st),
    })?;
    let vb = params.var_builder(DType::F32, dev);
    let fam = registry::family(&config.family, &cfg_path.display().to_string())?;
    let model = fam
        .build(&config.model, &cfg_path.display().to_string(), vb)
        .map_err(|e| match e {
            TrainError::Config { msg, .. } => TrainError::Checkpoint {
                path: st.clone(),
                msg: strip_path(msg.trim_start_matches("model: "), &st),
            },
            other => other,
        })?;
    params.finish().map_err(|e| TrainError::Checkpoint {
        path: st.clone(),
        msg: strip_path(&e.to_string(), &st),
    })?;
    Ok(Loaded {
        dir: dir.to_path_buf(),
        config,
        model,
        params,
    })
}

fn strip_path(msg: &str, p: &Path) -> String {
    let prefix = format!("{}: ", p.display());
    msg.strip_prefix(&prefix).unwrap_or(msg).to_string()
}

/// `runs/<entry>`.
pub fn runs_root(entry: &str) -> PathBuf {
    Path::new("runs").join(entry)
}

/// Records `run_dir` as the newest run of its entry (`runs/<entry>/latest`).
pub fn mark_latest(entry: &str, run_dir: &Path) -> Result<()> {
    let root = runs_root(entry);
    std::fs::create_dir_all(&root).map_err(io_err(&root))?;
    let abs = std::fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    aezoo_nn::params::write_atomic(&root.join("latest"), format!("{}\n", abs.display()).as_bytes())?;
    Ok(())
}

/// The newest run folder of `entry`, if one was recorded.
pub fn latest_run(entry: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(runs_root(entry).join("latest")).ok()?;
    let p = PathBuf::from(text.trim());
    p.is_dir().then_some(p)
}

/// The weights `eval` and `sample` use when none are given: the shipped
/// `weights/<entry>`, else the newest run of the entry.
pub fn default_dir(entry: &str) -> Result<PathBuf> {
    let shipped = Path::new("weights").join(entry);
    if shipped.join("model.safetensors").is_file() {
        return Ok(shipped);
    }
    if let Some(run) = latest_run(entry) {
        if run.join("model.safetensors").is_file() {
            return Ok(run);
        }
    }
    Err(TrainError::Other(format!(
        "no weights for `{entry}`: none shipped in weights/{entry}/ and no finished epoch under runs/{entry}/; train first (`cargo xtask train {entry}`) or pass --weights DIR"
    )))
}
