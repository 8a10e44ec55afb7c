//! Codec entries as files: the full model or its halves loaded from a
//! weights folder, the decoder's fingerprint that `.aez` files carry, and the
//! export of `encoder.safetensors` / `decoder.safetensors` beside the full
//! model (each loadable alone: a decoder-only program needs no encoder
//! weights); compressing an image into `.aez` bytes and back. Compressing
//! needs the concrete codec, not the trait, so this module names the
//! `codec` family.

use std::path::{Path, PathBuf};

use aezoo_compress::{Codec, CodecConfig, Synthesis};
use aezoo_nn::params::save_safetensors_atomic;
use aezoo_nn::{Family, ParamStore};
use candle_core::{DType, Device, Tensor};

use aezoo_train::config::{parse_value, EntryConfig};
use aezoo_train::error::{Result, TrainError};
use aezoo_train::weights::read_config;

use crate::ZOO;

/// The file of the decoding half in an exported codec folder.
pub const DECODER_FILE: &str = "decoder.safetensors";
/// The file of the encoding half.
pub const ENCODER_FILE: &str = "encoder.safetensors";

fn is_encoder(name: &str) -> bool {
    name.starts_with("encoder.")
}

fn codec_config(dir: &Path) -> Result<(EntryConfig, CodecConfig)> {
    let config = read_config(dir, &ZOO)?;
    let origin = dir.join("config.json").display().to_string();
    if config.family != Codec::NAME {
        return Err(TrainError::Config {
            origin,
            msg: format!(
                "`{}` is a `{}` entry; compressing needs a `{}` entry such as codec-mnist",
                config.entry,
                config.family,
                Codec::NAME
            ),
        });
    }
    let cfg: CodecConfig = parse_value(&config.model, &origin, "model")?;
    Ok((config, cfg))
}

fn checkpoint_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// The decoder's identity: FNV-1a 64 of the decoder and entropy tensors.
pub fn fingerprint(params: &ParamStore) -> Result<u64> {
    let synth: Vec<(String, Tensor)> = params.tensors().into_iter().filter(|(n, _)| !is_encoder(n)).collect();
    aezoo_compress::aez::fingerprint(&synth).map_err(|e| TrainError::Other(e.to_string()))
}

/// A codec with its entry config, weights folder and fingerprint.
pub struct LoadedCodec {
    pub dir: PathBuf,
    pub config: EntryConfig,
    pub codec: Codec,
    pub params: ParamStore,
    pub fingerprint: u64,
}

/// The full codec of a weights folder (`model.safetensors`).
pub fn load_codec(dir: &Path, dev: &Device) -> Result<LoadedCodec> {
    let (config, cfg) = codec_config(dir)?;
    let st = dir.join("model.safetensors");
    let params = ParamStore::load(&st, false).map_err(|e| checkpoint_err(&st, e))?;
    let codec = Codec::new(&cfg, params.var_builder(DType::F32, dev)).map_err(|e| checkpoint_err(&st, e))?;
    params.finish().map_err(|e| checkpoint_err(&st, e))?;
    let fingerprint = fingerprint(&params)?;
    Ok(LoadedCodec {
        dir: dir.to_path_buf(),
        config,
        codec,
        params,
        fingerprint,
    })
}

/// The decoding half of a weights folder: `decoder.safetensors` where it is
/// (strict: exactly the decoder and entropy tensors), else the decoder and
/// entropy tensors of `model.safetensors`.
pub fn load_synthesis(dir: &Path, dev: &Device) -> Result<(EntryConfig, Synthesis, u64)> {
    let (config, cfg) = codec_config(dir)?;
    let half = dir.join(DECODER_FILE);
    let (st, strict) = if half.is_file() {
        (half, true)
    } else {
        (dir.join("model.safetensors"), false)
    };
    let params = ParamStore::load(&st, false).map_err(|e| checkpoint_err(&st, e))?;
    let synth = Synthesis::new(&cfg, params.var_builder(DType::F32, dev)).map_err(|e| checkpoint_err(&st, e))?;
    if strict {
        params.finish().map_err(|e| checkpoint_err(&st, e))?;
    }
    let fp = fingerprint(&params)?;
    Ok((config, synth, fp))
}

/// Writes `encoder.safetensors` (the `encoder.*` tensors) and
/// `decoder.safetensors` (`decoder.*`, `entropy.*`) into `dir`, atomically.
pub fn write_halves(params: &ParamStore, dir: &Path) -> Result<()> {
    let (enc, dec): (Vec<_>, Vec<_>) = params.tensors().into_iter().partition(|(n, _)| is_encoder(n));
    save_safetensors_atomic(&enc, &dir.join(ENCODER_FILE))?;
    save_safetensors_atomic(&dec, &dir.join(DECODER_FILE))?;
    Ok(())
}
