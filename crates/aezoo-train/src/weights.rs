//! Trained weights on disk: a folder with `config.json` (the entry config that
//! made them) and `model.safetensors` (keys = `vb.pp` paths), the Hugging Face
//! layout. Loading is strict: a missing, extra or mis-shaped tensor is an
//! error naming the file and the tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aezoo_nn::{Autoencoder, ParamStore};
use candle_core::{DType, Device};

use crate::config::EntryConfig;
use crate::error::{io_err, Result, TrainError};
use crate::zoo::Zoo;

/// A model loaded for inference.
pub struct Loaded {
    pub dir: PathBuf,
    pub config: EntryConfig,
    pub model: Box<dyn Autoencoder>,
    pub params: ParamStore,
}

/// The entry config of a weights folder (`dir/config.json`), validated: an
/// aezoo config, or one an importer of the zoo reads (a diffusers folder).
pub fn read_config(dir: &Path, zoo: &Zoo) -> Result<EntryConfig> {
    Ok(open(dir, zoo, false)?.config)
}

/// What [`open`] found: the entry, the file its config came from, and the
/// weights file with its tensors under the family's names.
struct Opened {
    config: EntryConfig,
    config_origin: PathBuf,
    weights: PathBuf,
    params: Option<ParamStore>,
}

/// Reads a weights folder's config (aezoo's, or an importer's layout), or
/// a lone weights file an importer recognises; with `tensors`, also the
/// weights, renamed to the family's keys.
fn open(dir: &Path, zoo: &Zoo, tensors: bool) -> Result<Opened> {
    let ckpt = |path: &Path, msg: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let load = |st: &Path| {
        ParamStore::load(st, false).map_err(|e| TrainError::Checkpoint {
            path: st.to_path_buf(),
            msg: strip_path(&e.to_string(), st),
        })
    };
    if dir.is_file() {
        if let (Some(config), params) = open_file(dir, zoo)? {
            return Ok(Opened {
                config,
                config_origin: dir.to_path_buf(),
                weights: dir.to_path_buf(),
                params: Some(params),
            });
        }
        return Err(ckpt(
            dir,
            "a weights file without a config.json that no importer recognises: pass its folder (config.json + model.safetensors)".into(),
        ));
    }
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(ckpt(
            dir,
            "no config.json: not a weights folder (expected config.json and model.safetensors, or a diffusers folder)"
                .into(),
        ));
    }
    let origin = cfg_path.display().to_string();
    let text = aezoo_nn::limits::read_text(&cfg_path).map_err(io_err(&cfg_path))?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        for imp in zoo.importers {
            if let Some(cfg) = imp.import_config(&v, &origin) {
                let cfg = cfg?;
                let Some(st) = imp.weights_files().iter().map(|f| dir.join(f)).find(|p| p.is_file()) else {
                    return Err(ckpt(
                        dir,
                        format!(
                            "a {} folder without its weights ({})",
                            imp.name(),
                            imp.weights_files().join(" or ")
                        ),
                    ));
                };
                let params = if tensors {
                    Some(imp.rename(load(&st)?, &cfg)?)
                } else {
                    None
                };
                return Ok(Opened {
                    config: cfg,
                    config_origin: cfg_path,
                    weights: st,
                    params,
                });
            }
        }
    }
    let config = zoo.config_from_str(&text, &origin)?;
    let st = dir.join("model.safetensors");
    let params = if tensors { Some(load(&st)?) } else { None };
    Ok(Opened {
        config,
        config_origin: cfg_path,
        weights: st,
        params,
    })
}

/// A lone weights file, read once: the entry an importer of the zoo tells
/// from its tensors with the store renamed to the family's keys, else no
/// entry and the tensors as they are.
fn open_file(path: &Path, zoo: &Zoo) -> Result<(Option<EntryConfig>, ParamStore)> {
    let store = ParamStore::load(path, false).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg: strip_path(&e.to_string(), path),
    })?;
    let origin = path.display().to_string();
    for imp in zoo.importers {
        if let Some(imported) = imp.single_file(&store, &origin) {
            let (config, params) = imported?;
            return Ok((Some(config), params));
        }
    }
    Ok((None, store))
}

/// The tensors of a weights folder or file under the family's names (for
/// `--init`): a folder's weights file (aezoo's or an importer's layout,
/// renamed), a lone file an importer recognises (renamed), else the file as
/// it is; with the path of the file read.
pub fn weight_tensors(path: &Path, zoo: &Zoo) -> Result<(PathBuf, BTreeMap<String, candle_core::Tensor>)> {
    if path.is_file() {
        return Ok((path.to_path_buf(), open_file(path, zoo)?.1.file_tensors()));
    }
    let o = open(path, zoo, true)?;
    Ok((o.weights, o.params.expect("open with tensors").file_tensors()))
}

/// Loads a weights folder (`dir/config.json` and `dir/model.safetensors`,
/// or a folder or lone file in a layout one of the zoo's importers reads).
pub fn load(dir: &Path, zoo: &Zoo, dev: &Device) -> Result<Loaded> {
    let Opened {
        config,
        config_origin: cfg_path,
        weights: st,
        params,
    } = open(dir, zoo, true)?;
    let params = params.expect("open with tensors");
    let vb = params.var_builder(DType::F32, dev);
    let fam = zoo.family(&config.family, &cfg_path.display().to_string())?;
    // What the weights file got wrong (a missing or mis-shaped tensor: the
    // parameter store names the file) is blamed on it; what the config got
    // wrong stays on config.json.
    let st_name = st.display().to_string();
    let model = fam
        .build(&config.model, &cfg_path.display().to_string(), vb)
        .map_err(|e| match e {
            TrainError::Config { msg, .. } if msg.contains(&st_name) => TrainError::Checkpoint {
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

/// `user/repo[/subfolder][@revision]` on the Hugging Face Hub (a
/// subfolder: the `vae/` of a whole diffusers pipeline repository).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSpec {
    pub repo: String,
    pub subfolder: Option<String>,
    pub revision: String,
}

impl HubSpec {
    pub fn parse(spec: &str) -> Result<Self> {
        let (path, revision) = match spec.split_once('@') {
            Some((r, v)) => (r, v),
            None => (spec, "main"),
        };
        let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let parts: Vec<&str> = path.split('/').collect();
        let good_rev = !revision.is_empty() && !revision.contains(['/', '\\']) && revision != "..";
        match parts.as_slice() {
            [u, n, rest @ ..]
                if ok(u) && ok(n) && good_rev && rest.len() <= 3 && rest.iter().all(|p| ok(p) && *p != "..") =>
            {
                Ok(Self {
                    repo: format!("{u}/{n}"),
                    subfolder: (!rest.is_empty()).then(|| rest.join("/")),
                    revision: revision.to_string(),
                })
            }
            _ => Err(TrainError::Other(format!(
                "--hub {spec}: expected user/repo, user/repo/subfolder or either @revision"
            ))),
        }
    }
}

/// Fetches a weights folder of a model repository through hf-hub,
/// honouring its cache (`HF_HUB_CACHE`, `HF_HOME`) and `HF_HUB_OFFLINE`:
/// `config.json`, then the weights file its layout names
/// (`model.safetensors`, or an importer's: `diffusion_pytorch_model.safetensors`),
/// and `metrics.json` when the repository has one; returns the snapshot
/// folder, a weights folder for [`load`].
pub fn from_hub(spec: &HubSpec, zoo: &Zoo) -> Result<PathBuf> {
    let client = hf_hub::HFClient::builder()
        .build_sync()
        .map_err(|e| TrainError::Other(format!("Hugging Face Hub: cannot create a client: {e}")))?;
    let offline = aezoo_env::flag("HF_HUB_OFFLINE");
    let (owner, name) = hf_hub::split_id(&spec.repo);
    let repo = client.model(owner, name);
    let cache = hf_hub::resolve_cache_dir();
    let shown = match &spec.subfolder {
        Some(sub) => format!("{}/{sub}@{}", spec.repo, spec.revision),
        None => format!("{}@{}", spec.repo, spec.revision),
    };
    let in_repo = |file: &str| match &spec.subfolder {
        Some(sub) => format!("{sub}/{file}"),
        None => file.to_string(),
    };
    let get = |file: &str| {
        repo.download_file()
            .filename(in_repo(file))
            .revision(spec.revision.as_str())
            .local_files_only(offline)
            .send()
    };
    let why = |file: &str, e: hf_hub::HFError| {
        let why = match &e {
            hf_hub::HFError::LocalEntryNotFound { .. } if offline => format!(
                "not in the hf-hub cache at {} and HF_HUB_OFFLINE is set",
                cache.display()
            ),
            hf_hub::HFError::Request { .. } | hf_hub::HFError::LocalEntryNotFound { .. } => format!(
                "cannot reach the Hub (offline?) and it is not in the hf-hub cache at {}",
                cache.display()
            ),
            _ => e.to_string(),
        };
        TrainError::Other(format!("--hub {shown}: {}: {why}", in_repo(file)))
    };
    let config = get("config.json").map_err(|e| why("config.json", e))?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| TrainError::Other(format!("--hub {shown}: no snapshot folder")))?;
    // The weights file the config's layout names.
    let text = aezoo_nn::limits::read_text(&config).map_err(io_err(&config))?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let candidates: Vec<&str> = zoo
        .importers
        .iter()
        .find(|imp| imp.recognises(&v))
        .map_or(vec!["model.safetensors"], |imp| imp.weights_files().to_vec());
    let mut first_err = None;
    for file in &candidates {
        match get(file) {
            Ok(_) => {
                first_err = None;
                break;
            }
            Err(e) => {
                first_err.get_or_insert(why(file, e));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    // Optional: the metrics the weights were published with.
    let _ = get("metrics.json");
    Ok(dir)
}

/// `metrics.json` of a weights folder or run folder: test metrics and
/// provenance, written (`train`, `export`) and read (`eval --check`,
/// `export`) through this one struct. A run folder's also says how the run
/// went (`completed`, `steps`, throughput); shipped weights omit those.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WeightsMetrics {
    pub entry: String,
    pub family: String,
    pub params: usize,
    /// Test metrics as the entry is meant to be used (noised inputs for denoisers).
    pub test: crate::eval::EvalMetrics,
    /// Test metrics on clean inputs, for entries trained on noised inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_clean: Option<crate::eval::EvalMetrics>,
    /// The data set and the link of the chain it came from.
    pub data: String,
    pub epochs: usize,
    pub seed: u64,
    pub batch_size: usize,
    pub lr: f64,
    /// The commit that trained them (from the run), if known.
    pub git_commit: Option<String>,
    /// A run folder's: all epochs done (shipped weights omit the run fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    /// A run folder's: optimiser steps taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// A run folder's: training throughput of its last process (evaluation excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_images_per_s: Option<f64>,
    /// A run folder's: training time over the whole run, resumes included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
}

impl WeightsMetrics {
    /// Reads `dir/metrics.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.json");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        crate::config::parse_json(&text, &path.display().to_string())
    }

    /// Writes `dir/metrics.json` atomically: fields in the struct's order
    /// (a weights folder's, as `export` writes it), or with `sorted` keys
    /// at every level (a run folder's, as `train` has always written it).
    pub fn write(&self, dir: &Path, sorted: bool) -> Result<()> {
        let json = if sorted {
            // A `Value`'s maps are ordered by key.
            let v = serde_json::to_value(self).expect("metrics serialise");
            serde_json::to_string_pretty(&v)
        } else {
            serde_json::to_string_pretty(self)
        }
        .expect("metrics serialise")
            + "\n";
        aezoo_nn::params::write_atomic(&dir.join("metrics.json"), json.as_bytes())?;
        Ok(())
    }
}

/// Evaluates a loaded model on its entry's data and records provenance.
pub fn measure(
    loaded: &Loaded,
    zoo: &Zoo,
    locator: &aezoo_data::Locator,
    dev: &Device,
    git_commit: Option<String>,
) -> Result<WeightsMetrics> {
    let cfg = &loaded.config;
    let splits = crate::trainer::load_data(cfg, zoo, locator)?;
    let (test, test_clean) = crate::eval::evaluate_entry(loaded.model.as_ref(), &splits.test, cfg, dev)?;
    Ok(WeightsMetrics {
        entry: cfg.entry.clone(),
        family: cfg.family.clone(),
        params: loaded.params.num_params(),
        test,
        test_clean,
        data: splits.describe(),
        epochs: cfg.train.epochs,
        seed: cfg.train.seed,
        batch_size: cfg.train.batch_size,
        lr: cfg.train.lr,
        git_commit,
        completed: None,
        steps: None,
        train_images_per_s: None,
        train_seconds: None,
    })
}

/// Whether two metric sets agree to 4 decimal places (|Δ| < 5e-5) on MSE,
/// PSNR, SSIM and the loss; the first disagreement otherwise.
pub fn agree(a: &crate::eval::EvalMetrics, b: &crate::eval::EvalMetrics) -> std::result::Result<(), String> {
    for (name, x, y) in [
        ("mse", a.mse, b.mse),
        ("psnr", a.psnr, b.psnr),
        ("ssim", a.ssim, b.ssim),
        ("loss", a.loss, b.loss),
    ] {
        if !((x - y).abs() < 5e-5) {
            return Err(format!("{name}: {x:.6} vs {y:.6}"));
        }
    }
    if a.images != b.images {
        return Err(format!("images: {} vs {}", a.images, b.images));
    }
    Ok(())
}

/// Writes a weights folder ready to upload to the Hub: `config.json`,
/// `model.safetensors`, `metrics.json` and a `README.md` model card.
pub fn export(loaded: &Loaded, metrics: &WeightsMetrics, dir: &Path, zoo: &Zoo) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // A family another project's layout exists for is written in it (a
    // folder diffusers' `from_pretrained` loads, which aezoo reads back).
    let files = match zoo.importers.iter().find_map(|imp| imp.export_layout(&loaded.config)) {
        Some((config, weights)) => {
            loaded.params.save(&dir.join(weights))?;
            aezoo_nn::params::write_atomic(&dir.join("config.json"), &config)?;
            format!("`config.json` (the model's config, with aezoo's entry under `_aezoo`), `{weights}`")
        }
        None => {
            let src = loaded.dir.join("model.safetensors");
            let dst = dir.join("model.safetensors");
            if src != dst {
                let bytes = std::fs::read(&src).map_err(io_err(&src))?;
                aezoo_nn::params::write_atomic(&dst, &bytes)?;
            }
            aezoo_nn::params::write_atomic(&dir.join("config.json"), loaded.config.to_json().as_bytes())?;
            "`config.json` (the aezoo entry config), `model.safetensors` (keys = parameter paths)".to_string()
        }
    };
    metrics.write(dir, false)?;
    let cfg = &loaded.config;
    let m = &metrics.test;
    let card = format!(
        "---\nlibrary_name: aezoo\ntags:\n- autoencoder\n- {family}\n- candle\ndatasets:\n- {dataset}\n---\n\n# aezoo `{entry}`\n\n{about}\n\nTrained by aezoo, a Rust autoencoder zoo on candle ({epochs} epochs, batch {bs}, Adam lr {lr}, seed {seed}{commit}).\n\n| test images | MSE | PSNR (dB) | SSIM |\n|---:|---:|---:|---:|\n| {n} | {mse:.4} | {psnr:.2} | {ssim:.4} |\n\nData: {data}.\n\n```sh\naezoo eval {entry} --hub USER/REPO\naezoo reconstruct {entry} --hub USER/REPO image.png\n```\n\nFiles: {files}, `metrics.json`.\n",
        family = cfg.family,
        // The Hub's id of the data set, for the card's metadata.
        dataset = aezoo_data::DatasetId::parse(&cfg.data.dataset)
            .map(|d| d.hub_files().0.to_string())
            .unwrap_or_else(|_| cfg.data.dataset.clone()),
        entry = cfg.entry,
        about = cfg.about,
        epochs = metrics.epochs,
        bs = metrics.batch_size,
        lr = metrics.lr,
        seed = metrics.seed,
        commit = metrics.git_commit.as_ref().map(|c| format!(", commit `{c}`")).unwrap_or_default(),
        n = m.images,
        mse = m.mse,
        psnr = m.psnr,
        ssim = m.ssim,
        data = metrics.data,
        files = files,
    );
    aezoo_nn::params::write_atomic(&dir.join("README.md"), card.as_bytes())?;
    Ok(())
}
