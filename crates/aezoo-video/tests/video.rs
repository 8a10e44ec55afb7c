//! aezoo-video's tests: the video autoencoder's shapes and parameter names
//! (the seed's residual stacks), the codebook (codewords, not distances; its
//! levels kept when loaded), a finite-difference check of the whole model,
//! and refused configs.

use aezoo_nn::gradcheck::{uniform_input, GradCheck};
use aezoo_nn::{Autoencoder, Batch, Family, ParamStore, Rng, StepCtx};
use aezoo_video::{CodebookConfig, ResStack, VideoAe, VideoAeConfig};
use candle_core::{DType, Device, Tensor};

fn cfg(
    clip: [usize; 3],
    channels: [usize; 2],
    latent: usize,
    residual: ResStack,
    levels: Option<usize>,
) -> VideoAeConfig {
    VideoAeConfig {
        clip,
        channels,
        latent_channels: latent,
        kernel: 3,
        residual,
        codebook: levels.map(|k| CodebookConfig {
            levels: k,
            commitment: 0.25,
            init_range: [-1.0, 1.0],
        }),
    }
}

fn build(c: &VideoAeConfig, dtype: DType) -> candle_core::Result<(VideoAe, ParamStore)> {
    let store = ParamStore::init(1);
    let m = VideoAe::new(c, store.var_builder(dtype, &Device::Cpu))?;
    Ok((m, store))
}

fn step(m: &VideoAe, x: &Tensor) -> aezoo_nn::StepOutput {
    m.step(&Batch::autoencode(x.clone()), &mut StepCtx::train(&mut Rng::new(0)))
        .unwrap()
}

#[test]
fn shapes_time_kept_space_divided_by_eight_and_the_seed_stacks() {
    // The full entry's sizes: (b, 1, 20, 64, 64) -> (b, 128, 20, 8, 8), built
    // at small widths here (the shapes do not depend on them).
    let c = cfg([20, 64, 64], [4, 6], 5, ResStack::C, Some(8));
    let (m, store) = build(&c, DType::F32).unwrap();
    let x = uniform_input(&[2, 20, 64, 64], 0.0, 1.0, 1)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let z = m.encode(&x).unwrap();
    assert_eq!(z.dims(), &[2, 5, 20, 8, 8]);
    assert_eq!(m.latent_shape(), vec![5, 20, 8, 8]);
    assert_eq!(m.decode(&z).unwrap().dims(), &[2, 20, 64, 64]);
    // resblock_c = 5 × resblock_b (3 × resblock_a each) + 1 × resblock_a, on
    // each side: 16 resblock_a = 32 convs per side.
    let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
    let res_convs = names
        .iter()
        .filter(|n| n.contains(".res.") && n.ends_with(".weight"))
        .count();
    assert_eq!(res_convs, 2 * 32);
    for n in [
        "encoder.conv1.weight",
        "encoder.res.blocks.4.blocks.2.conv2.bias",
        "encoder.res.blocks.5.conv1.weight",
        "codebook.levels",
        "decoder.deconv1.weight",
        "decoder.res.blocks.0.blocks.0.conv1.weight",
        "decoder.deconv3.bias",
    ] {
        assert!(names.iter().any(|x| x == n), "missing {n}");
    }
    // Conv3d weights keep PyTorch's layout: (out, in, kt, kh, kw) and (in, out, …).
    let vars: std::collections::BTreeMap<String, candle_core::Var> = store.vars().into_iter().collect();
    assert_eq!(vars["encoder.conv1.weight"].dims(), &[4, 1, 3, 3, 3]);
    assert_eq!(vars["decoder.deconv3.weight"].dims(), &[4, 1, 3, 3, 3]);
}

#[test]
fn the_codebook_returns_codewords_and_rate_is_log2_k_per_value() {
    let c = cfg([4, 16, 16], [3, 4], 2, ResStack::A, Some(5));
    let (m, _) = build(&c, DType::F32).unwrap();
    let levels: Vec<f32> = m.levels().unwrap().to_vec1().unwrap();
    assert_eq!(levels, vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
    let x = uniform_input(&[3, 4, 16, 16], 0.0, 1.0, 2)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let z = m.encode(&x).unwrap();
    let zc = m.encode_continuous(&x).unwrap();
    for (q, v) in z
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .zip(zc.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    {
        // The quantised value is the nearest level itself.
        assert!(levels.contains(q), "{q} is not a level");
        let best = levels.iter().map(|l| (l - v).abs()).fold(f32::MAX, f32::min);
        assert_eq!((q - v).abs(), best);
    }
    // The loss: reconstruction + codebook + β·commitment, each logged.
    let out = step(&m, &x);
    let names: Vec<&str> = out.terms.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["mse", "codebook", "commit"]);
    let t: Vec<f32> = out.terms.iter().map(|(_, v)| v.to_scalar::<f32>().unwrap()).collect();
    let loss = out.loss.to_scalar::<f32>().unwrap();
    assert!((loss - (t[0] + t[1] + 0.25 * t[2])).abs() < 1e-6, "{loss} vs {t:?}");
    // Gradients reach the levels (straight through the decoder) and the encoder.
    let store_vars = {
        let (m2, store) = build(&c, DType::F32).unwrap();
        let g = step(&m2, &x).loss.backward().unwrap();
        store
            .vars()
            .into_iter()
            .filter(|(n, _)| n == "codebook.levels" || n == "encoder.conv1.weight")
            .map(|(n, v)| {
                (
                    n,
                    g.get(&v)
                        .map(|t| t.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()),
                )
            })
            .collect::<Vec<_>>()
    };
    for (n, g) in store_vars {
        assert!(g.is_some_and(|g| g > 0.0), "{n}: no gradient");
    }
}

#[test]
fn loaded_levels_are_kept() {
    let c = cfg([2, 8, 8], [2, 2], 1, ResStack::None, Some(3));
    let (_, store) = build(&c, DType::F32).unwrap();
    let mut tensors: std::collections::BTreeMap<String, Tensor> = store.tensors().into_iter().collect();
    tensors.insert(
        "codebook.levels".into(),
        Tensor::new(&[-0.3f32, 0.1, 0.7], &Device::Cpu).unwrap(),
    );
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("m.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect(), &path).unwrap();
    let loaded = ParamStore::load(&path, false).unwrap();
    let m = VideoAe::new(&c, loaded.var_builder(DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(m.levels().unwrap().to_vec1::<f32>().unwrap(), vec![-0.3, 0.1, 0.7]);
}

#[test]
fn whole_model_gradient_check() {
    // Continuous latent (the codebook's straight-through gradient is not a
    // derivative; it has its own test in aezoo-nn), residual stack b.
    let c = cfg([3, 8, 8], [2, 3], 2, ResStack::B, None);
    let (m, _) = build(&c, DType::F64).unwrap();
    let x = uniform_input(&[2, 3, 8, 8], 0.05, 0.95, 4).unwrap();
    let f = |a: &[Tensor]| Ok(step(&m, &a[0]).loss);
    if let Err(e) = GradCheck::default().check(f, &[x]) {
        panic!("video-ae: {e}");
    }
}

#[test]
fn bad_configs_are_refused() {
    let err = |c: VideoAeConfig| build(&c, DType::F32).err().expect("refused").to_string();
    let e = err(cfg([20, 60, 64], [2, 2], 1, ResStack::None, None));
    assert!(e.contains("divisible by 8"), "{e}");
    let e = err(cfg([20, 64, 64], [2, 2], 1, ResStack::None, Some(1)));
    assert!(e.contains("between 2 and 128"), "{e}");
    let e = err(cfg([20, 64, 64], [2, 2], 1, ResStack::None, Some(129)));
    assert!(e.contains("between 2 and 128"), "{e}");
    let mut c = cfg([20, 64, 64], [2, 2], 1, ResStack::None, None);
    c.kernel = 4;
    assert!(err(c).contains("must be odd"));
    let mut c = cfg([20, 64, 64], [2, 2], 1, ResStack::None, None);
    c.kernel = 65;
    assert!(err(c).contains("too large for the clip"));
    let e =
        serde_json::from_str::<VideoAeConfig>(r#"{"clip":[20,64,64],"channels":[2,2],"latent_channels":1,"depth":3}"#)
            .unwrap_err()
            .to_string();
    assert!(e.contains("unknown field `depth`"), "{e}");
}
