//! The zoo's importers: diffusers' VAE folders (`config.json` +
//! `diffusion_pytorch_model.safetensors`, with diffusers', legacy or LDM
//! key names) and lone LDM / diffusers KL checkpoints, read as `vae-kl` and
//! `vae-tiny` entries. An imported folder becomes the built-in entry of its
//! family (`vae-kl-sd`, `vae-tiny`) with the folder's `model` section, so
//! every command takes it as it takes that entry's own weights.

use aezoo_diffusers::import::{export_config, import_config, infer_kl_config, kl_levels, renamer, WEIGHTS_FILES};
use aezoo_nn::ParamStore;
use aezoo_train::{EntryConfig, Importer, Result, TrainError};

/// The built-in entry an imported model of each family stands in for.
pub const TEMPLATES: &[(&str, &str)] = &[("vae-kl", "vae-kl-sd"), ("vae-tiny", "vae-tiny")];

/// The key of aezoo's entry (all but the model's diffusers fields) in a
/// `config.json` that `aezoo export` wrote.
const ENTRY_KEY: &str = "_aezoo";

fn exported_entry(
    entry: &serde_json::Value,
    family: &str,
    model: serde_json::Value,
    origin: &str,
) -> Result<EntryConfig> {
    let (mut e, mut model) = (entry.clone(), model);
    if let Some(o) = e.as_object_mut() {
        // aezoo keeps the training loss in the model section.
        if let (Some(loss), Some(m)) = (o.remove("loss"), model.as_object_mut()) {
            m.insert("loss".into(), loss);
        }
        o.insert("family".into(), family.into());
        o.insert("model".into(), model);
    }
    let cfg: EntryConfig = aezoo_train::config::parse_value(&e, origin, ENTRY_KEY)?;
    crate::ZOO.validate(&cfg, origin)?;
    Ok(cfg)
}

/// diffusers' layouts.
pub struct Diffusers;

/// The built-in entry an imported model of `family` starts from.
fn template(family: &str, origin: &str) -> Result<EntryConfig> {
    let entry = TEMPLATES
        .iter()
        .find(|(f, _)| *f == family)
        .map(|(_, e)| *e)
        .expect("every importable family has a template entry");
    let (name, text) = crate::ZOO
        .builtin(entry)
        .ok_or_else(|| TrainError::Other(format!("{origin}: the built-in entry `{entry}` is missing")))?;
    EntryConfig::parse(text, name)
}

fn with_model(family: &str, model: serde_json::Value, about: String, origin: &str) -> Result<EntryConfig> {
    let mut cfg = template(family, origin)?;
    // The template's training loss stays unless the folder names one.
    if let (Some(loss), serde_json::Value::Object(m)) = (cfg.model.get("loss").cloned(), &model) {
        let mut m = m.clone();
        m.entry("loss").or_insert(loss);
        cfg.model = serde_json::Value::Object(m);
    } else {
        cfg.model = model;
    }
    cfg.about = about;
    crate::ZOO.validate(&cfg, origin)?;
    Ok(cfg)
}

impl Importer for Diffusers {
    fn name(&self) -> &'static str {
        "diffusers"
    }

    fn recognises(&self, config: &serde_json::Value) -> bool {
        import_config(config).is_some()
    }

    fn import_config(&self, config: &serde_json::Value, origin: &str) -> Option<Result<EntryConfig>> {
        let imported = import_config(config)?;
        if !imported.unknown.is_empty() {
            tracing::warn!(
                "{origin}: {} field(s) aezoo does not read, ignored: {}",
                imported.class,
                imported.unknown.join(", ")
            );
        }
        // A folder aezoo exported: its own entry back (`_aezoo`).
        if let Some(entry) = config.get(ENTRY_KEY) {
            return Some(exported_entry(entry, imported.family, imported.model, origin));
        }
        let about = format!("diffusers {} from {origin}", imported.class);
        Some(with_model(imported.family, imported.model, about, origin))
    }

    fn weights_files(&self) -> &'static [&'static str] {
        WEIGHTS_FILES
    }

    fn rename(&self, store: ParamStore, cfg: &EntryConfig) -> Result<ParamStore> {
        if cfg.family != "vae-kl" {
            return Ok(store);
        }
        let tensors = store.file_tensors();
        Ok(store.renamed(renamer(tensors.keys()))?)
    }

    fn single_file(&self, store: &ParamStore, origin: &str) -> Option<Result<(EntryConfig, ParamStore)>> {
        let names: Vec<String> = store.file_tensors().into_keys().collect();
        if kl_levels(&names) == 0 {
            return None;
        }
        let import = || -> Result<(EntryConfig, ParamStore)> {
            let renamed = store.clone().renamed(renamer(&names))?;
            let model = infer_kl_config(&renamed.file_tensors()).map_err(|e| TrainError::Checkpoint {
                path: origin.into(),
                msg: e.to_string(),
            })?;
            tracing::info!(
                "{origin}: a KL VAE checkpoint without a config; its shape read from the tensors, the rest Stable Diffusion's (scaling factor 0.18215)"
            );
            let about = format!("a KL VAE checkpoint, {origin}");
            Ok((with_model("vae-kl", model, about, origin)?, renamed))
        };
        Some(import())
    }

    fn export_layout(&self, cfg: &EntryConfig) -> Option<(Vec<u8>, &'static str)> {
        let mut v = export_config(&cfg.family, &cfg.model)?;
        // What diffusers has no field for rides along under a private key
        // (diffusers drops keys starting with `_`): the entry, its loss,
        // data and training protocol.
        let mut entry = serde_json::to_value(cfg).ok()?;
        let loss = cfg.model.get("loss").cloned();
        if let Some(o) = entry.as_object_mut() {
            o.remove("model");
            o.remove("family");
            if let Some(l) = loss {
                o.insert("loss".into(), l);
            }
        }
        v.as_object_mut()?.insert(ENTRY_KEY.into(), entry);
        let mut text = serde_json::to_string_pretty(&v).ok()?;
        text.push('\n');
        Some((text.into_bytes(), WEIGHTS_FILES[0]))
    }
}
