//! Reading what people have on disk: a diffusers `config.json` into a
//! family's `model` section, the safetensors keys of older layouts into
//! diffusers' (the legacy attention names `query`/`key`/`value`/`proj_attn`,
//! and the original LDM single-file names with their `first_stage_model.` or
//! `vae.` prefix and 1 × 1-conv attention weights), and the config of a
//! lone checkpoint file from its tensor shapes.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};
use serde_json::{Map, Value};

/// The weights file of a diffusers folder, in the order it is looked for.
pub const WEIGHTS_FILES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
];

/// A diffusers config read into an aezoo family's `model` section.
#[derive(Clone, Debug)]
pub struct ImportedConfig {
    /// `vae-kl` or `vae-tiny`.
    pub family: &'static str,
    /// diffusers' `_class_name`.
    pub class: String,
    /// The `model` section: the fields the family knows.
    pub model: Value,
    /// Fields the family does not know (named in a warning by the caller).
    pub unknown: Vec<String>,
}

const KL_FIELDS: &[&str] = &[
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "act_fn",
    "latent_channels",
    "norm_num_groups",
    "sample_size",
    "scaling_factor",
    "shift_factor",
    "latents_mean",
    "latents_std",
    "force_upcast",
    "use_quant_conv",
    "use_post_quant_conv",
    "mid_block_add_attention",
];

const TINY_FIELDS: &[&str] = &[
    "in_channels",
    "out_channels",
    "encoder_block_out_channels",
    "decoder_block_out_channels",
    "act_fn",
    "upsample_fn",
    "latent_channels",
    "upsampling_scaling_factor",
    "num_encoder_blocks",
    "num_decoder_blocks",
    "latent_magnitude",
    "latent_shift",
    "force_upcast",
    "scaling_factor",
    "shift_factor",
];

/// Fields diffusers writes about the file itself, or that describe the
/// model for its own pipelines (dropped without a word).
const METADATA: &[&str] = &[
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "_use_default_values",
];

/// The family and `model` section of a diffusers config (`None` when `v`
/// is not one: no `_class_name` of a VAE aezoo reads).
pub fn import_config(v: &Value) -> Option<ImportedConfig> {
    let class = v.get("_class_name")?.as_str()?.to_string();
    let (family, fields) = match class.as_str() {
        "AutoencoderKL" => ("vae-kl", KL_FIELDS),
        "AutoencoderTiny" => ("vae-tiny", TINY_FIELDS),
        _ => return None,
    };
    let obj = v.as_object()?;
    let mut model = Map::new();
    let mut unknown = Vec::new();
    for (k, x) in obj {
        if fields.contains(&k.as_str()) {
            // diffusers writes `null` for an unset optional field.
            if !x.is_null() {
                model.insert(k.clone(), x.clone());
            }
        } else if k == "block_out_channels" && family == "vae-tiny" || METADATA.contains(&k.as_str()) {
            // AutoencoderTiny registers its decoder widths again under this name.
        } else {
            unknown.push(k.clone());
        }
    }
    Some(ImportedConfig {
        family,
        class,
        model: Value::Object(model),
        unknown,
    })
}

/// A diffusers `config.json` for a `model` section of `family` (what
/// `aezoo export` writes beside `diffusion_pytorch_model.safetensors`).
pub fn export_config(family: &str, model: &Value) -> Option<Value> {
    let (class, fields) = match family {
        "vae-kl" => ("AutoencoderKL", KL_FIELDS),
        "vae-tiny" => ("AutoencoderTiny", TINY_FIELDS),
        _ => return None,
    };
    let mut out = Map::new();
    out.insert("_class_name".into(), class.into());
    for (k, x) in model.as_object()? {
        if fields.contains(&k.as_str()) {
            out.insert(k.clone(), x.clone());
        }
    }
    Some(Value::Object(out))
}

/// What an older layout's key is in diffusers' `AutoencoderKL`, with the
/// tensor reshaped where the layout differs (LDM's attention is 1 × 1
/// convs); `levels` is the number of resolution levels (LDM numbers the
/// decoder's from the bottom). Keys already in diffusers' layout come back
/// as they are; keys of the rest of a whole Stable Diffusion checkpoint
/// (outside the VAE) come back `None`.
pub fn diffusers_key(name: &str, t: &Tensor, levels: usize) -> Result<Option<(String, Tensor)>> {
    let (mut n, ldm) = match strip_ldm(name) {
        Some(rest) => (rest.to_string(), true),
        None => (name.to_string(), false),
    };
    if !(n.starts_with("encoder.")
        || n.starts_with("decoder.")
        || n.starts_with("quant_conv.")
        || n.starts_with("post_quant_conv."))
    {
        return Ok(if ldm { None } else { Some((n, t.clone())) });
    }
    // Legacy attention names (diffusers before 0.14).
    for (old, new) in [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ] {
        n = n.replace(old, new);
    }
    let parts: Vec<&str> = n.split('.').collect();
    let ldm_layout = parts
        .get(1)
        .is_some_and(|p| matches!(*p, "down" | "up" | "mid" | "norm_out"));
    if !ldm_layout {
        return Ok(Some((n, t.clone())));
    }
    let mut out: Vec<String> = Vec::new();
    let side = parts[0];
    let rest = &parts[1..];
    let mut tensor = t.clone();
    match rest {
        ["down", i, "block", j, tail @ ..] => {
            out.extend([format!("{side}.down_blocks.{i}.resnets.{j}")]);
            out.extend(tail.iter().map(|s| s.to_string()));
        }
        ["down", i, "downsample", tail @ ..] => {
            out.push(format!("{side}.down_blocks.{i}.downsamplers.0"));
            out.extend(tail.iter().map(|s| s.to_string()));
        }
        ["up", i, kind, tail @ ..] => {
            let i: usize = i
                .parse()
                .map_err(|_| candle_core::Error::Msg(format!("{name}: not an LDM level number")))?;
            if i >= levels {
                candle_core::bail!("{name}: level {i} of an LDM decoder with {levels} levels");
            }
            let k = levels - 1 - i;
            match (*kind, tail) {
                ("block", [j, tail @ ..]) => {
                    out.push(format!("{side}.up_blocks.{k}.resnets.{j}"));
                    out.extend(tail.iter().map(|s| s.to_string()));
                }
                ("upsample", tail) => {
                    out.push(format!("{side}.up_blocks.{k}.upsamplers.0"));
                    out.extend(tail.iter().map(|s| s.to_string()));
                }
                _ => candle_core::bail!("{name}: not an LDM decoder key"),
            }
        }
        ["mid", block, tail @ ..] => {
            match *block {
                "block_1" => out.push(format!("{side}.mid_block.resnets.0")),
                "block_2" => out.push(format!("{side}.mid_block.resnets.1")),
                "attn_1" => {
                    out.push(format!("{side}.mid_block.attentions.0"));
                    let (field, leaf) = match tail {
                        [f, l] => (*f, *l),
                        _ => candle_core::bail!("{name}: not an LDM attention key"),
                    };
                    let renamed = match field {
                        "norm" => "group_norm",
                        "q" => "to_q",
                        "k" => "to_k",
                        "v" => "to_v",
                        "proj_out" => "to_out.0",
                        other => other,
                    };
                    out.push(format!("{renamed}.{leaf}"));
                    if leaf == "weight" && field != "norm" && tensor.rank() == 4 {
                        let (o, i, _, _) = tensor.dims4()?;
                        tensor = tensor.reshape((o, i))?;
                    }
                    return Ok(Some((out.join("."), tensor)));
                }
                _ => candle_core::bail!("{name}: not an LDM mid-block key"),
            }
            out.extend(tail.iter().map(|s| s.to_string()));
        }
        ["norm_out", tail @ ..] => {
            out.push(format!("{side}.conv_norm_out"));
            out.extend(tail.iter().map(|s| s.to_string()));
        }
        _ => return Ok(Some((n, tensor))),
    }
    let joined = out.join(".").replace("nin_shortcut", "conv_shortcut");
    Ok(Some((joined, tensor)))
}

/// The key map of one file's tensors (see [`diffusers_key`]): the levels
/// counted from its names, and, for a whole Stable Diffusion checkpoint
/// (VAE keys under `first_stage_model.` or `vae.`), everything else dropped.
pub fn renamer<'a>(
    names: impl IntoIterator<Item = &'a String>,
) -> impl FnMut(&str, &Tensor) -> Result<Option<(String, Tensor)>> {
    let names: Vec<&String> = names.into_iter().collect();
    let levels = kl_levels(names.iter().copied());
    let whole = names.iter().any(|n| is_prefixed(n));
    move |n, t| {
        if whole && !is_prefixed(n) {
            return Ok(None);
        }
        diffusers_key(n, t, levels)
    }
}

/// Where a whole Stable Diffusion checkpoint keeps its VAE.
const LDM_PREFIXES: [&str; 2] = ["first_stage_model.", "vae."];

/// A key of a whole checkpoint's VAE without its prefix.
fn strip_ldm(n: &str) -> Option<&str> {
    LDM_PREFIXES.iter().find_map(|p| n.strip_prefix(p))
}

fn is_prefixed(n: &str) -> bool {
    strip_ldm(n).is_some()
}

/// The number of resolution levels of a KL VAE's tensors (diffusers or
/// LDM names): one more than the highest encoder level index.
pub fn kl_levels<'a>(names: impl IntoIterator<Item = &'a String>) -> usize {
    let mut levels = 0;
    for n in names {
        let n = strip_ldm(n).unwrap_or(n);
        let rest = n
            .strip_prefix("encoder.down_blocks.")
            .or_else(|| n.strip_prefix("encoder.down."));
        if let Some(i) = rest
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
        {
            levels = levels.max(i + 1);
        }
    }
    levels
}

/// The `model` section of a KL VAE checkpoint that comes without a config
/// (an LDM or diffusers single file): the widths, depth, latent and I/O
/// channels read from the tensor shapes; the rest diffusers' defaults for
/// Stable Diffusion (32 groups, scaling factor 0.18215, sample size 512).
pub fn infer_kl_config(tensors: &BTreeMap<String, Tensor>) -> Result<Value> {
    let levels = kl_levels(tensors.keys());
    let dims = |key: &str| -> Result<Vec<usize>> {
        tensors
            .get(key)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{key}`: not a KL VAE checkpoint")))
    };
    if levels == 0 {
        candle_core::bail!("no encoder levels (encoder.down_blocks.N… or encoder.down.N…): not a KL VAE checkpoint");
    }
    let mut widths = Vec::new();
    for i in 0..levels {
        widths.push(dims(&format!("encoder.down_blocks.{i}.resnets.0.conv1.weight"))?[0]);
    }
    let layers = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("encoder.down_blocks.0.resnets."))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(1, |m| m + 1);
    let conv_in = dims("encoder.conv_in.weight")?;
    let conv_out = dims("encoder.conv_out.weight")?;
    let dec_out = dims("decoder.conv_out.weight")?;
    let attention = tensors.keys().any(|k| k.starts_with("encoder.mid_block.attentions."));
    Ok(serde_json::json!({
        "in_channels": conv_in[1],
        "out_channels": dec_out[0],
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "block_out_channels": widths,
        "layers_per_block": layers,
        "latent_channels": conv_out[0] / 2,
        "sample_size": 512,
        "use_quant_conv": tensors.contains_key("quant_conv.weight"),
        "use_post_quant_conv": tensors.contains_key("post_quant_conv.weight"),
        "mid_block_add_attention": attention,
    }))
}
