//! The catalogue the trainer reaches families through: a [`Zoo`] is data
//! (family tables, built-in entry configs, compare protocols) that the
//! `aezoo-zoo` crate fills and every command passes in, so this crate names
//! no family and depends on no family crate.
//!
//! A family of image autoencoders is a [`DynFamily`] — any `F:
//! aezoo_nn::Family` through [`Registered`] — which parses and checks its
//! `model` section, builds the model, and answers capability questions (a
//! resizable codebook). Other pipelines (graph autoencoders) are
//! [`Pipeline`]s with families of their own: named here so that image
//! commands refuse their entries with a pointer, validated by the pipeline.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use aezoo_nn::{Autoencoder, Family};
use candle_nn::VarBuilder;

use crate::config::{check_image_shape, check_sizes, parse_value, EntryConfig};
use crate::error::{Result, TrainError};

/// An image family with its config type erased.
pub trait DynFamily: Send + Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    /// Parses the `model` section; returns the image shape it expects.
    fn check(&self, model: &serde_json::Value, origin: &str) -> Result<[usize; 3]>;
    /// Builds the model on `vb`.
    fn build(&self, model: &serde_json::Value, origin: &str, vb: VarBuilder) -> Result<Box<dyn Autoencoder>>;
    /// The `model` section with its codebook resized to `levels` (its new
    /// levels spread over `init_range` when given): an error naming the
    /// family when it has no codebook ([`aezoo_nn::model::Codebook`]).
    fn with_codebook(
        &self,
        model: &serde_json::Value,
        origin: &str,
        levels: usize,
        init_range: Option<(f64, f64)>,
    ) -> Result<serde_json::Value>;
}

/// `F` as a [`DynFamily`] (one line of a family table:
/// `&Registered::<aezoo_vae::ConvVae>::NEW`).
pub struct Registered<F>(PhantomData<fn() -> F>);

impl<F> Registered<F> {
    pub const NEW: Self = Self(PhantomData);
}

/// A family's `model` section, every size in it within the budget.
pub fn parse_model<T: serde::de::DeserializeOwned>(model: &serde_json::Value, origin: &str) -> Result<T> {
    check_sizes(model, origin, "model")?;
    parse_value(model, origin, "model")
}

fn model_err(origin: &str, e: impl std::fmt::Display) -> TrainError {
    TrainError::Config {
        origin: origin.to_string(),
        msg: format!("model: {e}"),
    }
}

impl<F: Family> DynFamily for Registered<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }
    fn about(&self) -> &'static str {
        F::ABOUT
    }
    fn check(&self, model: &serde_json::Value, origin: &str) -> Result<[usize; 3]> {
        let cfg: F::Config = parse_model(model, origin)?;
        let shape = F::image_shape(&cfg);
        check_image_shape(shape, origin, "model: the images")?;
        Ok(shape)
    }
    fn build(&self, model: &serde_json::Value, origin: &str, vb: VarBuilder) -> Result<Box<dyn Autoencoder>> {
        self.check(model, origin)?;
        let cfg: F::Config = parse_model(model, origin)?;
        let m = F::new(&cfg, vb).map_err(|e| model_err(origin, e))?;
        Ok(Box::new(m))
    }
    fn with_codebook(
        &self,
        model: &serde_json::Value,
        origin: &str,
        levels: usize,
        init_range: Option<(f64, f64)>,
    ) -> Result<serde_json::Value> {
        let mut cfg: F::Config = parse_model(model, origin)?;
        let before = serde_json::to_value(&cfg).expect("family configs serialise");
        let Some(cb) = F::codebook(&mut cfg) else {
            return Err(TrainError::Config {
                origin: origin.to_string(),
                msg: format!("model.codebook: family `{}` has no codebook to resize", F::NAME),
            });
        };
        cb.set_levels(levels, init_range).map_err(|e| model_err(origin, e))?;
        // The section as written, with only what the capability changed:
        // defaults the user left out stay out.
        let after = serde_json::to_value(&cfg).expect("family configs serialise");
        let mut out = model.clone();
        if let Some(patch) = changed(&before, &after) {
            crate::compare::merge(&mut out, &patch);
        }
        Ok(out)
    }
}

/// What of `b` differs from `a`: the objects' differing keys, recursively;
/// `b` itself for any other difference; `None` when they are equal.
fn changed(a: &serde_json::Value, b: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match (a, b) {
        _ if a == b => None,
        (Value::Object(x), Value::Object(y)) => {
            let diff: serde_json::Map<String, Value> = y
                .iter()
                .filter_map(|(k, v)| match x.get(k) {
                    Some(old) => changed(old, v).map(|d| (k.clone(), d)),
                    None => Some((k.clone(), v.clone())),
                })
                .collect();
            (!diff.is_empty()).then_some(Value::Object(diff))
        }
        _ => Some(b.clone()),
    }
}

/// Another training pipeline and its families (graph autoencoders train
/// full-batch on one graph): named here so that image commands refuse its
/// entries with a pointer, and validated by the pipeline itself.
pub trait Pipeline: Send + Sync {
    /// The pipeline's name (`graph`).
    fn name(&self) -> &'static str;
    /// What its models are, for messages (`graph autoencoder`).
    fn kind(&self) -> &'static str;
    /// The commands that take its entries, for messages.
    fn commands(&self) -> &'static str;
    /// Its families: `(name, one line for aezoo list)`.
    fn families(&self) -> Vec<(&'static str, &'static str)>;
    /// Validates an entry of one of its families.
    fn validate(&self, cfg: &EntryConfig, origin: &str) -> Result<()>;
}

/// Weights in another project's layout (diffusers' folders, LDM single
/// files) read as an entry of one of the zoo's families: its config turned
/// into an [`EntryConfig`], its tensors renamed to the family's keys.
pub trait Importer: Send + Sync {
    /// What it reads, for messages (`diffusers`).
    fn name(&self) -> &'static str;
    /// Whether a parsed `config.json` is in this importer's layout.
    fn recognises(&self, config: &serde_json::Value) -> bool;
    /// The entry a folder's parsed `config.json` stands for, when the file
    /// is in this importer's layout (`None`: another layout).
    fn import_config(&self, config: &serde_json::Value, origin: &str) -> Option<Result<EntryConfig>>;
    /// The weights files such a folder may hold, in the order they are looked for.
    fn weights_files(&self) -> &'static [&'static str];
    /// A weights file's tensors under the family's parameter names.
    fn rename(&self, store: aezoo_nn::ParamStore, cfg: &EntryConfig) -> Result<aezoo_nn::ParamStore>;
    /// The entry of a lone weights file (no `config.json`), when this
    /// importer can tell it from the tensors, and the store renamed to the
    /// family's keys (renamed once: `store` shares its tensors).
    fn single_file(
        &self,
        store: &aezoo_nn::ParamStore,
        origin: &str,
    ) -> Option<Result<(EntryConfig, aezoo_nn::ParamStore)>>;
    /// How `aezoo export` writes an entry of one of its families in this
    /// layout: the bytes of its `config.json` and the name of its weights
    /// file (`None`: not one of its families).
    fn export_layout(&self, cfg: &EntryConfig) -> Option<(Vec<u8>, &'static str)>;
}

/// Where an entry's config came from.
#[derive(Clone, Debug)]
pub enum ConfigOrigin {
    File(PathBuf),
    Builtin(&'static str),
}

impl std::fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigOrigin::File(p) => write!(f, "{}", p.display()),
            ConfigOrigin::Builtin(n) => write!(f, "<built-in>/configs/{n}.json"),
        }
    }
}

/// The catalogue: every family, built-in entry and compare protocol.
pub struct Zoo {
    /// Image autoencoder families, one line each.
    pub families: &'static [&'static dyn DynFamily],
    /// Other pipelines, each with its own families.
    pub pipelines: &'static [&'static dyn Pipeline],
    /// Built-in entries: (name, config JSON).
    pub entries: &'static [(&'static str, &'static str)],
    /// Compare protocols: (name, protocol JSON).
    pub protocols: &'static [(&'static str, &'static str)],
    /// Readers of other projects' weights folders.
    pub importers: &'static [&'static dyn Importer],
}

impl Zoo {
    /// The pipeline whose family is called `name`, if another one's.
    pub fn pipeline_with(&self, name: &str) -> Option<&'static dyn Pipeline> {
        self.pipelines
            .iter()
            .copied()
            .find(|p| p.families().iter().any(|(f, _)| *f == name))
    }

    /// The name of the pipeline an entry belongs to, when it is not the
    /// image trainer's.
    pub fn pipeline_of(&self, cfg: &EntryConfig) -> Option<&'static str> {
        self.pipeline_with(&cfg.family).map(|p| p.name())
    }

    /// The image family called `name`.
    pub fn family(&self, name: &str, origin: &str) -> Result<&'static dyn DynFamily> {
        if let Some(p) = self.pipeline_with(name) {
            return Err(TrainError::Config {
                origin: origin.to_string(),
                msg: format!(
                    "`{name}` is a {} family: this command works on image entries; {} entries take {}",
                    p.kind(),
                    p.name(),
                    p.commands()
                ),
            });
        }
        self.families
            .iter()
            .copied()
            .find(|f| f.name() == name)
            .ok_or_else(|| TrainError::UnknownFamily {
                name: name.to_string(),
                origin: origin.to_string(),
                known: self
                    .families
                    .iter()
                    .map(|f| f.name())
                    .chain(self.pipelines.iter().flat_map(|p| p.families()).map(|(f, _)| f))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The image family of an entry.
    pub fn family_of(&self, cfg: &EntryConfig) -> Result<&'static dyn DynFamily> {
        self.family(&cfg.family, &cfg.entry)
    }

    /// `(channels, height, width)` of an image entry's images.
    pub fn image_shape(&self, cfg: &EntryConfig) -> Result<[usize; 3]> {
        self.family_of(cfg)?.check(&cfg.model, &cfg.entry)
    }

    /// Checks an entry: its pipeline's rules, or the image rules and the
    /// family's `model` section.
    pub fn validate(&self, cfg: &EntryConfig, origin: &str) -> Result<()> {
        if let Some(p) = self.pipeline_with(&cfg.family) {
            return p.validate(cfg, origin);
        }
        cfg.validate_image(origin)?;
        self.family(&cfg.family, origin)?.check(&cfg.model, origin)?;
        Ok(())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn config_from_str(&self, text: &str, origin: &str) -> Result<EntryConfig> {
        let cfg = EntryConfig::parse(text, origin)?;
        self.validate(&cfg, origin)?;
        Ok(cfg)
    }

    /// Reads, parses and validates a config file.
    pub fn config_from_file(&self, path: &Path) -> Result<EntryConfig> {
        let cfg = EntryConfig::read(path)?;
        self.validate(&cfg, &path.display().to_string())?;
        Ok(cfg)
    }

    /// Names of the built-in entries.
    pub fn entry_names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|(n, _)| *n).collect()
    }

    /// The built-in entry `name`: its name and config text.
    pub fn builtin(&self, name: &str) -> Option<(&'static str, &'static str)> {
        self.entries.iter().find(|(n, _)| *n == name).copied()
    }

    /// Resolves an entry: a path to a `.json` file, else
    /// `configs/<name>.json` in the current folder (so edits in a checkout
    /// take effect), else the built-in copy.
    pub fn resolve_entry(&self, name_or_path: &str) -> Result<(EntryConfig, ConfigOrigin)> {
        let p = Path::new(name_or_path);
        if name_or_path.ends_with(".json") || p.is_file() {
            let cfg = self.config_from_file(p)?;
            return Ok((cfg, ConfigOrigin::File(p.to_path_buf())));
        }
        let local = Path::new("configs").join(format!("{name_or_path}.json"));
        if local.is_file() {
            let cfg = self.config_from_file(&local)?;
            return Ok((cfg, ConfigOrigin::File(local)));
        }
        let (name, text) = self.builtin(name_or_path).ok_or_else(|| TrainError::UnknownEntry {
            name: name_or_path.to_string(),
            known: self.entry_names().join(", "),
        })?;
        let origin = ConfigOrigin::Builtin(name);
        let cfg = self.config_from_str(text, &origin.to_string())?;
        Ok((cfg, origin))
    }

    /// The entries a name stands for: itself when it is an entry, else its
    /// rate points `<name>-q<N>` in order of N (`codec-photo` →
    /// `codec-photo-q1`, …), else itself (so the caller reports the unknown
    /// entry).
    pub fn expand_group(&self, name: &str) -> Vec<String> {
        if self.resolve_entry(name).is_ok() {
            return vec![name.to_string()];
        }
        let prefix = format!("{name}-q");
        let mut points: Vec<(u32, String)> = self
            .entry_names()
            .into_iter()
            .filter_map(|e| {
                let n = e.strip_prefix(&prefix)?;
                Some((n.parse().ok()?, e.to_string()))
            })
            .collect();
        points.sort();
        if points.is_empty() {
            vec![name.to_string()]
        } else {
            points.into_iter().map(|(_, e)| e).collect()
        }
    }

    /// The built-in compare protocol called `name`.
    pub fn protocol(&self, name: &str) -> Option<(&'static str, &'static str)> {
        self.protocols.iter().copied().find(|(n, _)| *n == name)
    }

    /// Names of the built-in compare protocols.
    pub fn protocol_names(&self) -> Vec<&'static str> {
        self.protocols.iter().map(|(n, _)| *n).collect()
    }
}
