//! diffusers' VAEs through the binary: folders, the hf-hub cache, native sizes, tiles, fine-tuning and export.

use super::*;

/// A diffusers model folder saved by `scripts/pins/diffusers_vae_ref.py`.
fn diffusers_fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../aezoo-diffusers/tests/fixtures")
        .join(name)
}

/// A smooth RGB picture of `w`×`h` with a little texture.
fn photo_like(path: &Path, w: u32, h: u32, seed: u32) {
    image::RgbImage::from_fn(w, h, |x, y| {
        let t = ((x * 7 + y * 13 + seed * 31) % 17) as u8;
        image::Rgb([
            (x * 255 / w) as u8 ^ t,
            (y * 255 / h) as u8,
            ((seed * 40) as u8).wrapping_add(t),
        ])
    })
    .save(path)
    .unwrap();
}

fn png_size(path: &Path) -> (u32, u32) {
    let i = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (i.width(), i.height())
}

/// The PSNR figures `aezoo reconstruct` printed, one per image.
fn psnrs(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains('→'))
        .filter_map(|l| {
            l.split("PSNR ")
                .nth(1)
                .map(|r| r.split(' ').next().unwrap().to_string())
        })
        .collect()
}

/// A latents file's tensors as `(name, shape, values)` in name order, and
/// its metadata (read by aezoo's own loader).
fn latents_file(
    path: &Path,
) -> (
    Vec<(String, Vec<usize>, Vec<f32>)>,
    std::collections::HashMap<String, String>,
) {
    let (tensors, meta) = aezoo_train::infer::load_tensors(path).unwrap();
    let out = tensors
        .into_iter()
        .map(|(name, t)| {
            let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (name, t.dims().to_vec(), values)
        })
        .collect();
    (out, meta)
}

#[test]
fn diffusers_vaes_run_from_folders_and_the_hub_cache_and_fine_tune() {
    let d = tempfile::tempdir().unwrap();
    let kl = diffusers_fixture("kl-small");
    let (a, b) = (d.path().join("a.png"), d.path().join("b.png"));
    // Sizes that are not multiples of the model's factor (4), and one past
    // its 32-pixel tile: padded, tiled, cropped back.
    photo_like(&a, 45, 38, 1);
    photo_like(&b, 70, 52, 2);
    let (sa, sb) = (a.to_str().unwrap(), b.to_str().unwrap());
    let out = d.path().join("recon");
    let o = aezoo(
        d.path(),
        &[
            "reconstruct",
            "vae-kl-sd",
            sa,
            sb,
            "--weights",
            kl.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        png_size(&out.join("a.recon.png")),
        (45, 38),
        "each image at its own size"
    );
    assert_eq!(png_size(&out.join("b.recon.png")), (70, 52));
    let by_folder = psnrs(&o);
    assert_eq!(by_folder.len(), 2);
    // What the tiles cost, against the whole image; a tile that is not a
    // multiple of the factor is refused.
    let w = kl.to_str().unwrap();
    let o = aezoo(
        d.path(),
        &[
            "reconstruct",
            "vae-kl-sd",
            sb,
            "--weights",
            w,
            "-o",
            out.to_str().unwrap(),
            "--seam",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("tiled vs whole: PSNR") && !text.contains("one tile"),
        "{text}"
    );
    let o = aezoo(
        d.path(),
        &[
            "reconstruct",
            "vae-kl-sd",
            sb,
            "--weights",
            w,
            "-o",
            out.to_str().unwrap(),
            "--seam",
            "--tile",
            "0",
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(one tile)"),
        "{}",
        stderr(&o)
    );
    let o = aezoo(
        d.path(),
        &["reconstruct", "vae-kl-sd", sb, "--weights", w, "--tile", "30"],
    );
    assert_one_line_error(&o, &["--tile 30", "multiple", "factor 4"]);

    // Encode → decode: one latent per size, decoded to the sizes encoded.
    let lat = d.path().join("lat.safetensors");
    let o = aezoo(
        d.path(),
        &[
            "encode",
            "vae-kl-sd",
            sa,
            sb,
            "--weights",
            kl.to_str().unwrap(),
            "-o",
            lat.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (scaled, meta) = latents_file(&lat);
    let shapes: Vec<_> = scaled.iter().map(|t| (t.0.as_str(), t.1.clone())).collect();
    assert_eq!(
        shapes,
        [("latents.0", vec![1, 4, 10, 12]), ("latents.1", vec![1, 4, 13, 18])],
        "latents of the padded sizes / 4"
    );
    assert_eq!(meta["image_sizes"], "[[38,45],[52,70]]");
    let dec = d.path().join("dec");
    let o = aezoo(
        d.path(),
        &[
            "decode",
            "vae-kl-sd",
            lat.to_str().unwrap(),
            "--weights",
            kl.to_str().unwrap(),
            "-o",
            dec.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_size(&dec.join("a.png")), (45, 38));
    assert_eq!(png_size(&dec.join("b.png")), (70, 52));

    // Latents are what a diffusion model expects: (mean − shift_factor) ·
    // scaling_factor. The same weights with factor 1 and shift 0 give the
    // posterior mean itself.
    let raw = d.path().join("kl-raw");
    std::fs::create_dir(&raw).unwrap();
    std::fs::copy(
        kl.join("diffusion_pytorch_model.safetensors"),
        raw.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let kl_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kl.join("config.json")).unwrap()).unwrap();
    let mut cfg = kl_config.clone();
    let (scale, shift) = (
        cfg["scaling_factor"].as_f64().unwrap() as f32,
        cfg["shift_factor"].as_f64().unwrap() as f32,
    );
    assert!(scale != 1.0 && shift != 0.0, "the fixture scales and shifts");
    cfg["scaling_factor"] = 1.0.into();
    cfg["shift_factor"] = 0.0.into();
    std::fs::write(raw.join("config.json"), cfg.to_string()).unwrap();
    let lat_raw = d.path().join("raw.safetensors");
    let o = aezoo(
        d.path(),
        &[
            "encode",
            "vae-kl-sd",
            sa,
            sb,
            "--weights",
            raw.to_str().unwrap(),
            "-o",
            lat_raw.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (mean, _) = latents_file(&lat_raw);
    for (s, m) in scaled.iter().zip(&mean) {
        for (x, y) in s.2.iter().zip(&m.2) {
            assert!(
                (x - (y - shift) * scale).abs() < 1e-5,
                "{x} vs ({y} − {shift}) · {scale}"
            );
        }
    }

    // The hf-hub cache: a VAE in a pipeline's `vae/` subfolder, and TAESD
    // at a repository's top level.
    let weights_of = |dir: &Path, sub: &str| -> Vec<(String, std::path::PathBuf)> {
        ["config.json", "diffusion_pytorch_model.safetensors"]
            .iter()
            .map(|f| (format!("{sub}{f}"), dir.join(f)))
            .collect()
    };
    let hf = d.path().join(".hf");
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    fake_hub_files(&hf, "acme/diffusion", "main", commit, &weights_of(&kl, "vae/"));
    let o = aezoo(
        d.path(),
        &[
            "reconstruct",
            "vae-kl-sd",
            sa,
            sb,
            "--hub",
            "acme/diffusion/vae",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(psnrs(&o), by_folder, "the same model from the cache");
    let o = aezoo(d.path(), &["reconstruct", "vae-kl-sd", sa, "--hub", "acme/diffusion"]);
    assert_one_line_error(&o, &["acme/diffusion", "config.json"]);
    let tiny = diffusers_fixture("tiny-small");
    fake_hub_files(&hf, "acme/taesd", "main", commit, &weights_of(&tiny, ""));
    let o = aezoo(
        d.path(),
        &[
            "reconstruct",
            "vae-tiny",
            sb,
            "--hub",
            "acme/taesd",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(png_size(&out.join("b.recon.png")), (70, 52));

    // A config diffusers would refuse: one line naming the file and field.
    let bad = d.path().join("kl-bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(
        kl.join("diffusion_pytorch_model.safetensors"),
        bad.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    cfg["norm_num_groups"] = 5.into();
    std::fs::write(bad.join("config.json"), cfg.to_string()).unwrap();
    let o = aezoo(
        d.path(),
        &["reconstruct", "vae-kl-sd", sa, "--weights", bad.to_str().unwrap()],
    );
    assert_one_line_error(&o, &["config.json", "norm_num_groups"]);

    // Fine-tuning from the diffusers folder, then `export` writes a diffusers
    // folder that loads back as the run does.
    let photos = d.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for i in 0..8 {
        photo_like(&photos.join(format!("p{i}.png")), 40 + i, 36, i);
    }
    // The model section: diffusers' fields (not its `_class_name` and such).
    let mut model = kl_config;
    model.as_object_mut().unwrap().retain(|k, _| !k.starts_with('_'));
    let model = model.to_string();
    let train_cfg = d.path().join("kl-tune.json");
    std::fs::write(
        &train_cfg,
        format!(
            r#"{{"entry": "kl-tune", "family": "vae-kl", "model": {},
  "data": {{"dataset": "folder", "folder": {{"val_fraction": 0.25}}}},
  "train": {{"epochs": 1, "batch_size": 2, "lr": 0.0001, "seed": 0}}}}"#,
            model.trim_end().trim_end_matches('}').to_string()
                + r#", "loss": {"reconstruction": "mse", "kld_weight": 1e-6, "ssim": true, "beta": 0.2}}"#
        ),
    )
    .unwrap();
    let run = d.path().join("run");
    let o = aezoo(
        d.path(),
        &[
            "train",
            "--config",
            train_cfg.to_str().unwrap(),
            "--data",
            photos.to_str().unwrap(),
            "--init",
            kl.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let exported = d.path().join("export");
    let o = aezoo(
        d.path(),
        &[
            "export",
            "kl-tune",
            exported.to_str().unwrap(),
            "--weights",
            run.to_str().unwrap(),
            "--data",
            photos.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let ecfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap()).unwrap();
    assert_eq!(ecfg["_class_name"], "AutoencoderKL");
    assert_eq!(ecfg["block_out_channels"], serde_json::json!([8, 16, 16]));
    assert!(exported.join("diffusion_pytorch_model.safetensors").is_file());
    assert!(!exported.join("model.safetensors").exists(), "diffusers' layout only");
    let recon = |w: &Path| {
        let o = aezoo(
            d.path(),
            &[
                "reconstruct",
                "kl-tune",
                sa,
                sb,
                "--weights",
                w.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        psnrs(&o)
    };
    let (of_run, of_export) = (recon(&run), recon(&exported));
    assert_eq!(of_run, of_export, "the exported folder is the run's model");
    assert_ne!(of_run, by_folder, "one epoch of fine-tuning moved the weights");
}
