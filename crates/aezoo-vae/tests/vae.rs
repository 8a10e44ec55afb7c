//! aezoo-vae's tests: the convolutional VAE's architecture (shapes, names,
//! parameter count equal to the PyTorch twin's 220,385), its loss against a
//! hand computation, a finite-difference check of the whole model, sampling.

use aezoo_metrics::{bce_with_logits, kld, Reduction};
use aezoo_nn::gradcheck::{uniform_input, values_f64, GradCheck};
use aezoo_nn::{Autoencoder, Batch, Family, ParamStore, Rng, StepCtx};
use aezoo_vae::{ConvVae, ConvVaeConfig, MlpVae, MlpVaeConfig};
use candle_core::{DType, Device, Tensor};

fn bench_cfg() -> ConvVaeConfig {
    ConvVaeConfig {
        image: [1, 28, 28],
        channels: vec![32, 64],
        latent: 16,
        beta: 1.0,
    }
}

/// Finite-difference check of a whole training step's loss with respect to
/// the input images (the sampling noise re-drawn from one seed each call).
fn assert_whole_model_gradient(what: &str, m: &dyn Autoencoder, x: Tensor) {
    let f = |a: &[Tensor]| {
        let out = m.step(&Batch::autoencode(a[0].clone()), &mut StepCtx::train(&mut Rng::new(0)))?;
        Ok(out.loss)
    };
    if let Err(e) = GradCheck::default().check(f, &[x]) {
        panic!("{what}: {e}");
    }
}

fn build(c: &ConvVaeConfig, dtype: DType) -> (ConvVae, ParamStore) {
    let store = ParamStore::init(5);
    let m = ConvVae::new(c, store.var_builder(dtype, &Device::Cpu)).unwrap();
    (m, store)
}

#[test]
fn architecture_matches_the_pytorch_twin() {
    // shared/bench/pytorch_ref.py's ConvVae: sum(p.numel()) = 220385.
    let (m, store) = build(&bench_cfg(), DType::F32);
    assert_eq!(store.num_params(), 220_385);
    let names: Vec<String> = store
        .tensors()
        .into_iter()
        .map(|(k, t)| format!("{k}{:?}", t.dims()))
        .collect();
    assert_eq!(
        names,
        [
            "decoder.deconv1.bias[32]",
            "decoder.deconv1.weight[64, 32, 4, 4]",
            "decoder.deconv2.bias[1]",
            "decoder.deconv2.weight[32, 1, 4, 4]",
            "decoder.fc.bias[3136]",
            "decoder.fc.weight[3136, 16]",
            "encoder.conv1.bias[32]",
            "encoder.conv1.weight[32, 1, 4, 4]",
            "encoder.conv2.bias[64]",
            "encoder.conv2.weight[64, 32, 4, 4]",
            "encoder.fc.bias[32]",
            "encoder.fc.weight[32, 3136]",
        ]
    );
    let x = Tensor::rand(0f32, 1f32, (2, 1, 28, 28), &Device::Cpu).unwrap();
    let (mu, lv) = m.encode_stats(&x).unwrap();
    assert_eq!((mu.dims(), lv.dims()), (&[2usize, 16][..], &[2usize, 16][..]));
    assert_eq!(m.decode_logits(&mu).unwrap().dims(), &[2, 1, 28, 28]);
    assert_eq!(m.latent_shape(), vec![16]);
}

#[test]
fn loss_is_bce_plus_beta_kld_per_sample() {
    let c = ConvVaeConfig {
        beta: 4.0,
        ..bench_cfg()
    };
    let (m, _) = build(&c, DType::F64);
    let x = uniform_input(&[3, 1, 28, 28], 0.0, 1.0, 1).unwrap();
    let out = m
        .step(&Batch::autoencode(x.clone()), &mut StepCtx::train(&mut Rng::new(9)))
        .unwrap();
    // Recompute with the same noise draw.
    let (mu, lv) = m.encode_stats(&x).unwrap();
    let eps = Rng::new(9).randn((3, 16), DType::F64, &Device::Cpu).unwrap();
    let z = (&mu + (lv.affine(0.5, 0.0).unwrap().exp().unwrap() * eps).unwrap()).unwrap();
    let rec = bce_with_logits(&m.decode_logits(&z).unwrap(), &x, Reduction::Sum)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        / 3.0;
    let kl = kld(&mu, &lv, Reduction::Sum).unwrap().to_scalar::<f64>().unwrap() / 3.0;
    let got = out.loss.to_scalar::<f64>().unwrap();
    assert!(
        (got - (rec + 4.0 * kl)).abs() < 1e-9 * got.abs(),
        "{got} vs {}",
        rec + 4.0 * kl
    );
    let names: Vec<&str> = out.terms.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["bce", "kld"]);
}

#[test]
fn whole_model_gradient_check() {
    let c = ConvVaeConfig {
        image: [1, 8, 8],
        channels: vec![3, 4],
        latent: 3,
        beta: 1.0,
    };
    let (m, _) = build(&c, DType::F64);
    let x = uniform_input(&[2, 1, 8, 8], 0.05, 0.95, 2).unwrap();
    assert_whole_model_gradient("vae-conv", &m, x);
}

#[test]
fn samples_are_images_and_seeded() {
    let (m, _) = build(&bench_cfg(), DType::F32);
    assert!(m.is_generative());
    let a = m.sample(4, &mut Rng::new(1)).unwrap();
    let b = m.sample(4, &mut Rng::new(1)).unwrap();
    assert_eq!(a.dims(), &[4, 1, 28, 28]);
    let (va, vb): (Vec<f32>, Vec<f32>) = (
        a.flatten_all().unwrap().to_vec1().unwrap(),
        b.flatten_all().unwrap().to_vec1().unwrap(),
    );
    assert_eq!(va, vb);
    assert!(va.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn bad_configs_are_refused() {
    let store = ParamStore::init(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let odd = ConvVaeConfig {
        image: [1, 30, 30],
        ..bench_cfg()
    };
    let e = ConvVae::new(&odd, vb.clone()).err().unwrap().to_string();
    assert!(e.contains("divisible"), "{e}");
    let none = ConvVaeConfig {
        channels: vec![],
        ..bench_cfg()
    };
    assert!(ConvVae::new(&none, vb).is_err());
}

// ---------------------------------------------------------------- vae-mlp

#[test]
fn mlp_vae_architecture_and_gradient() {
    // 784 → 400 → 2×32 → 400 → 784: 314,000 + 25,664 + 13,200 + 314,384 = 667,248 parameters.
    let cfg = MlpVaeConfig {
        image: [1, 28, 28],
        hidden: vec![400],
        latent: 32,
        beta: 1.0,
    };
    let store = ParamStore::init(1);
    let m = MlpVae::new(&cfg, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(store.num_params(), 667_248);
    let names: Vec<String> = store.tensors().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "decoder.fc1.bias",
            "decoder.fc1.weight",
            "decoder.out.bias",
            "decoder.out.weight",
            "encoder.fc1.bias",
            "encoder.fc1.weight",
            "encoder.stats.bias",
            "encoder.stats.weight",
        ]
    );
    let s = m.sample(3, &mut Rng::new(2)).unwrap();
    assert_eq!(s.dims(), &[3, 1, 28, 28]);
    assert!(m.is_generative());
    // Whole-model gradient check on a small one.
    let small = MlpVaeConfig {
        image: [1, 4, 5],
        hidden: vec![6],
        latent: 3,
        beta: 2.0,
    };
    let store = ParamStore::init(4);
    let m = MlpVae::new(&small, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
    let x = uniform_input(&[2, 1, 4, 5], 0.05, 0.95, 5).unwrap();
    let f = |a: &[Tensor]| {
        Ok(
            m.step(&Batch::autoencode(a[0].clone()), &mut StepCtx::train(&mut Rng::new(0)))?
                .loss,
        )
    };
    if let Err(e) = GradCheck::default().check(f, &[x]) {
        panic!("vae-mlp: {e}");
    }
}

// ---------------------------------------------------------------- vae-flex

mod flex {
    use super::*;
    use aezoo_vae::{FlexVae, FlexVaeConfig};

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn small_cfg() -> FlexVaeConfig {
        serde_json::from_value(serde_json::json!({
            "image": [1, 12, 12],
            "encoder": ["C2d_1_32_3_2_1", "VAERB_32_32", "VAEA_32", "GN_32_32", "SiLU", "C2d_32_4_3_1_1"],
            "decoder": ["C2d_2_32_3_1_1", "VAERB_32_32", "UpS_2", "C2d_32_1_3_1_1"],
            "latent_channels": 2,
            "loss": {"alpha": 0.7, "kld_weight": 0.01, "ssim": true, "beta": 0.3, "sparse": true, "lambda": 0.05}
        }))
        .unwrap()
    }

    fn build_flex(c: &FlexVaeConfig, dtype: DType) -> candle_core::Result<(FlexVae, ParamStore)> {
        let store = ParamStore::init(5);
        let m = FlexVae::new(c, store.var_builder(dtype, &Device::Cpu))?;
        Ok((m, store))
    }

    #[test]
    fn the_shipped_sd_config_is_the_flexvae_basic_architecture() {
        // python3 scripts/pins/flexvae_ref.py: 8440272 + 32965399 parameters.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/vae-flex-sd.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cfg: FlexVaeConfig = serde_json::from_value(v["model"].clone()).unwrap();
        let (m, store) = build_flex(&cfg, DType::F32).unwrap();
        assert_eq!(store.num_params(), 41_405_671);
        assert_eq!(m.latent_shape(), vec![4, 16, 16], "256 / 16, 4 latent channels");
    }

    #[test]
    fn flex_loss_is_the_configured_weighted_sum_and_the_model_gradient_checks() {
        let c = small_cfg();
        let (m, _) = build_flex(&c, DType::F64).unwrap();
        let x = uniform_input(&[2, 1, 12, 12], 0.05, 0.95, 4).unwrap();
        let out = m
            .step(&Batch::autoencode(x.clone()), &mut StepCtx::train(&mut Rng::new(1)))
            .unwrap();
        let t: Vec<(&str, f64)> = out
            .terms
            .iter()
            .map(|(n, v)| (*n, v.to_scalar::<f64>().unwrap()))
            .collect();
        assert_eq!(
            t.iter().map(|p| p.0).collect::<Vec<_>>(),
            ["mse", "kld", "1-ssim", "sparse"]
        );
        let want = 0.7 * t[0].1 + 0.01 * t[1].1 + 0.3 * t[2].1 + 0.05 * t[3].1;
        assert!((out.loss.to_scalar::<f64>().unwrap() - want).abs() < 1e-12);
        assert_eq!(m.latent_shape(), vec![2, 6, 6]);
        assert_whole_model_gradient("vae-flex", &m, x);
        let s = m.sample(3, &mut Rng::new(2)).unwrap();
        assert_eq!(s.dims(), &[3, 1, 12, 12]);
        let (lo, hi) = (
            s.min_all().unwrap().to_scalar::<f64>().unwrap(),
            s.max_all().unwrap().to_scalar::<f64>().unwrap(),
        );
        assert!(lo >= 0.0 && hi <= 1.0);
    }

    /// The loss and every parameter's gradient of one step with the networks
    /// in `compute` (same seed, so the same reparameterisation noise).
    fn step_in(m: &FlexVae, store: &ParamStore, x: &Tensor, compute: DType) -> (f64, Tensor, Vec<Tensor>) {
        let out = m
            .step(
                &Batch::autoencode(x.clone()),
                &mut StepCtx::train(&mut Rng::new(1)).computing_in(compute),
            )
            .unwrap();
        let grads = out.loss.backward().unwrap();
        let g = store
            .vars()
            .iter()
            .map(|(k, v)| {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{compute:?}: no gradient for {k}"));
                assert_eq!(g.dtype(), DType::F32, "{compute:?}: `{k}`'s gradient is not f32");
                g.flatten_all().unwrap()
            })
            .collect();
        (out.loss.to_scalar::<f32>().unwrap() as f64, out.recon, g)
    }

    #[test]
    fn mixed_precision_steps_follow_the_f32_step_with_f32_loss_and_gradients() {
        // Networks in bf16 / f16 (autocast), parameters, loss and gradients in
        // f32: the loss within half precision's rounding of the f32 one, each
        // parameter's gradient pointing the same way (cosine > 0.99).
        let c = small_cfg();
        let (m, store) = build_flex(&c, DType::F32).unwrap();
        assert!(m.mixed_precision());
        let x = uniform_input(&[4, 1, 12, 12], 0.05, 0.95, 4)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let (l32, r32, g32) = step_in(&m, &store, &x, DType::F32);
        // (dtype, loss rel. tolerance, gradient rel. tolerance); measured here:
        // bf16 3.2e-4 / 4.8e-3, f16 1.0e-4 / 1.0e-3.
        for (compute, tol, gtol) in [(DType::BF16, 3e-3, 3e-2), (DType::F16, 1e-3, 5e-3)] {
            let (l, r, g) = step_in(&m, &store, &x, compute);
            assert_eq!(r.dtype(), DType::F32);
            assert!((l - l32).abs() <= tol * l32.abs(), "{compute:?}: loss {l} vs f32 {l32}");
            let dr = (r - &r32)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // Really computed in half precision, and close.
            assert!(
                dr > 0.0 && dr < 10.0 * tol as f32,
                "{compute:?}: reconstructions differ by {dr}"
            );
            // All gradients as one vector: the same direction and length;
            // no parameter's gradient off by more than 5 % of the whole.
            let cat = |g: &[Tensor]| Tensor::cat(g, 0).unwrap();
            let (a, b) = (cat(&g), cat(&g32));
            let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            let cos = (&a * &b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() / (norm(&a) * norm(&b));
            let rel = norm(&(&a - &b).unwrap()) / norm(&b);
            assert!(rel < gtol, "{compute:?}: gradients off by {rel} of their norm");
            assert!(
                cos > 1.0 - gtol * gtol,
                "{compute:?}: gradient cosine {cos} to the f32 one"
            );
            for (i, (gi, gi32)) in g.iter().zip(&g32).enumerate() {
                let d = norm(&(gi - gi32).unwrap());
                assert!(
                    d <= gtol * norm(&b),
                    "{compute:?}: parameter {i}'s gradient is off by {d}"
                );
            }
        }
    }

    #[test]
    fn flex_configs_refuse_lists_that_do_not_fit() {
        let mut c = small_cfg();
        c.encoder = strings(&["C2d_1_32_3_2_1", "C2d_32_6_3_1_1"]);
        let e = build_flex(&c, DType::F32).err().unwrap().to_string();
        assert!(e.contains("2 × latent_channels = 4"), "{e}");
        let mut c = small_cfg();
        c.decoder = strings(&["C2d_2_32_3_1_1", "C2d_32_1_3_1_1"]);
        let e = build_flex(&c, DType::F32).err().unwrap().to_string();
        assert!(
            e.contains("decoder: gives (1, 6, 6)") && e.contains("(1, 12, 12)"),
            "{e}"
        );
        let mut c = small_cfg();
        c.decoder[1] = "VAERB_64_64".into();
        let e = build_flex(&c, DType::F32).err().unwrap().to_string();
        assert!(
            e.contains("decoder[1] `VAERB_64_64`") && e.contains("expects 64 input channels"),
            "{e}"
        );
        let e = serde_json::from_value::<FlexVaeConfig>(serde_json::json!({
            "image": [1, 12, 12], "encoder": [], "decoder": [], "latent_channels": 2, "loss": {"gamma": 1}
        }))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `gamma`"), "{e}");
    }
}

#[test]
fn mlp_vae_reconstruct_in_one_chain_is_decode_of_the_mean() {
    // reconstruct reads the posterior mean as the first columns of the
    // statistics layer inside one fused stack: the bits of decode(encode).
    for hidden in [vec![20], vec![]] {
        let cfg = MlpVaeConfig {
            image: [1, 5, 6],
            hidden: hidden.clone(),
            latent: 3,
            beta: 1.0,
        };
        for dtype in [DType::F32, DType::F64] {
            let store = ParamStore::init(5);
            let m = MlpVae::new(&cfg, store.var_builder(dtype, &Device::Cpu)).unwrap();
            let x = uniform_input(&[9, 1, 5, 6], 0.0, 1.0, 3)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let got = m.reconstruct(&x).unwrap();
            let want = m.decode(&m.encode(&x).unwrap()).unwrap();
            assert_eq!(got.dims(), [9, 1, 5, 6]);
            let v = |t: &Tensor| values_f64(t).unwrap();
            assert_eq!(v(&got), v(&want), "hidden {hidden:?} {dtype:?}");
        }
    }
}
