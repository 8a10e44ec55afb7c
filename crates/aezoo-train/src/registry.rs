//! The zoo registry: family name → config struct → model, and the built-in
//! entries (`configs/*.json`, embedded at build time).
//!
//! Adding a family is one crate and one line in [`FAMILIES`] (image
//! autoencoders) or [`GRAPH_FAMILIES`] (graph autoencoders); nothing else in
//! the trainer, evaluator or CLI names a family.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use aezoo_graph::{GraphAutoencoder, GraphFamily};
use aezoo_nn::{Autoencoder, Family};
use candle_nn::VarBuilder;

use crate::config::{parse_value, EntryConfig};
use crate::error::{Result, TrainError};

include!(concat!(env!("OUT_DIR"), "/builtin_entries.rs"));

/// A family with its config type erased.
pub trait DynFamily: Send + Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    /// Parses the `model` section; returns the image shape it expects.
    fn check(&self, model: &serde_json::Value, origin: &str) -> Result<[usize; 3]>;
    /// Builds the model on `vb`.
    fn build(&self, model: &serde_json::Value, origin: &str, vb: VarBuilder) -> Result<Box<dyn Autoencoder>>;
}

struct Registered<F>(PhantomData<fn() -> F>);

impl<F: Family> DynFamily for Registered<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }
    fn about(&self) -> &'static str {
        F::ABOUT
    }
    fn check(&self, model: &serde_json::Value, origin: &str) -> Result<[usize; 3]> {
        let cfg: F::Config = parse_value(model, origin, "model")?;
        Ok(F::image_shape(&cfg))
    }
    fn build(&self, model: &serde_json::Value, origin: &str, vb: VarBuilder) -> Result<Box<dyn Autoencoder>> {
        let cfg: F::Config = parse_value(model, origin, "model")?;
        let m = F::new(&cfg, vb).map_err(|e| TrainError::Config {
            origin: origin.to_string(),
            msg: format!("model: {e}"),
        })?;
        Ok(Box::new(m))
    }
}

/// Every model family, one line each.
pub static FAMILIES: &[&dyn DynFamily] = &[
    &Registered::<aezoo_ae::MlpAe>(PhantomData),
    &Registered::<aezoo_ae::ConvAe>(PhantomData),
    &Registered::<aezoo_vae::MlpVae>(PhantomData),
    &Registered::<aezoo_vae::ConvVae>(PhantomData),
    &Registered::<aezoo_vae::FlexVae>(PhantomData),
    &Registered::<aezoo_video::VideoAe>(PhantomData),
    &Registered::<aezoo_compress::Codec>(PhantomData),
];

/// A graph family with its config type erased.
pub trait DynGraphFamily: Send + Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    /// Parses the `model` section; returns whether it reads node features.
    fn check(&self, model: &serde_json::Value, origin: &str) -> Result<bool>;
    /// Builds the model for inputs of width `in_dim` on `vb`.
    fn build(
        &self,
        model: &serde_json::Value,
        origin: &str,
        in_dim: usize,
        vb: VarBuilder,
    ) -> Result<Box<dyn GraphAutoencoder>>;
}

struct RegisteredGraph<F>(PhantomData<fn() -> F>);

impl<F: GraphFamily> DynGraphFamily for RegisteredGraph<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }
    fn about(&self) -> &'static str {
        F::ABOUT
    }
    fn check(&self, model: &serde_json::Value, origin: &str) -> Result<bool> {
        let cfg: F::Config = parse_value(model, origin, "model")?;
        Ok(F::uses_features(&cfg))
    }
    fn build(
        &self,
        model: &serde_json::Value,
        origin: &str,
        in_dim: usize,
        vb: VarBuilder,
    ) -> Result<Box<dyn GraphAutoencoder>> {
        let cfg: F::Config = parse_value(model, origin, "model")?;
        let m = F::new(&cfg, in_dim, vb).map_err(|e| TrainError::Config {
            origin: origin.to_string(),
            msg: format!("model: {e}"),
        })?;
        Ok(Box::new(m))
    }
}

/// Every graph autoencoder family, one line each.
pub static GRAPH_FAMILIES: &[&dyn DynGraphFamily] = &[
    &RegisteredGraph::<aezoo_graph::Gae>(PhantomData),
    &RegisteredGraph::<aezoo_graph::Vgae>(PhantomData),
];

/// The graph family called `name`, if it is one.
pub fn graph_family(name: &str) -> Option<&'static dyn DynGraphFamily> {
    GRAPH_FAMILIES.iter().copied().find(|f| f.name() == name)
}

/// The image family called `name`.
pub fn family(name: &str, origin: &str) -> Result<&'static dyn DynFamily> {
    if let Some(g) = graph_family(name) {
        return Err(TrainError::Config {
            origin: origin.to_string(),
            msg: format!(
                "`{}` is a graph autoencoder family: this command works on image entries; \
                 graph entries take `train`, `eval`, `encode-graph` and `compare --graphs`",
                g.name()
            ),
        });
    }
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.name() == name)
        .ok_or_else(|| TrainError::UnknownFamily {
            name: name.to_string(),
            origin: origin.to_string(),
            known: FAMILIES
                .iter()
                .map(|f| f.name())
                .chain(GRAPH_FAMILIES.iter().map(|f| f.name()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Names of the built-in entries.
pub fn entry_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
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

/// Resolves an entry: a path to a `.json` file, else `configs/<name>.json` in
/// the current folder (so edits in a checkout take effect), else the
/// built-in copy.
pub fn resolve_entry(name_or_path: &str) -> Result<(EntryConfig, ConfigOrigin)> {
    let p = Path::new(name_or_path);
    if name_or_path.ends_with(".json") || p.is_file() {
        let cfg = EntryConfig::from_file(p)?;
        return Ok((cfg, ConfigOrigin::File(p.to_path_buf())));
    }
    let local = Path::new("configs").join(format!("{name_or_path}.json"));
    if local.is_file() {
        let cfg = EntryConfig::from_file(&local)?;
        return Ok((cfg, ConfigOrigin::File(local)));
    }
    let (name, text) = BUILTIN
        .iter()
        .find(|(n, _)| *n == name_or_path)
        .ok_or_else(|| TrainError::UnknownEntry {
            name: name_or_path.to_string(),
            known: entry_names().join(", "),
        })?;
    let origin = ConfigOrigin::Builtin(name);
    let cfg = EntryConfig::from_str_named(text, &origin.to_string())?;
    Ok((cfg, origin))
}

/// The entries a name stands for: itself when it is an entry, else its rate
/// points `<name>-q<N>` in order of N (`codec-photo` → `codec-photo-q1`, …),
/// else itself (so the caller reports the unknown entry).
pub fn expand_group(name: &str) -> Vec<String> {
    if resolve_entry(name).is_ok() {
        return vec![name.to_string()];
    }
    let prefix = format!("{name}-q");
    let mut points: Vec<(u32, String)> = entry_names()
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
