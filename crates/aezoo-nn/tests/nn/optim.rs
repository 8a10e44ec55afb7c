//! Adam against PyTorch's update (plain, L2, decoupled decay) and the same
//! bits at every SIMD level.

use super::*;
use aezoo_nn::optim::{Adam, AdamConfig};
use candle_core::Var;

fn adam_run(cfg: AdamConfig) -> Vec<f64> {
    let dev = Device::Cpu;
    let w = Var::new(&[0.5f64, -1.5, 2.0, 0.0], &dev).unwrap();
    let b = Var::new(&[1.0f64, -0.25], &dev).unwrap();
    let c = Tensor::new(&[1.0f64, -2.0, 0.5, 3.0], &dev).unwrap();
    let d = Tensor::new(&[0.1f64, 0.2, 0.3, 0.4], &dev).unwrap();
    let mut opt = Adam::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], 0.1, cfg).unwrap();
    for _ in 0..5 {
        let loss = ((w.as_tensor() * &c).unwrap().sum_all().unwrap()
            + (w.as_tensor().sqr().unwrap() * &d).unwrap().sum_all().unwrap())
        .unwrap();
        let loss = (loss
            + b.as_tensor()
                .powf(3.0)
                .unwrap()
                .affine(1.0 / 3.0, 0.0)
                .unwrap()
                .sum_all()
                .unwrap())
        .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let mut v: Vec<f64> = w.as_tensor().to_vec1().unwrap();
    v.extend(b.as_tensor().to_vec1::<f64>().unwrap());
    v
}

/// Three Adam steps on a 40,001-element f32 parameter (three parallel
/// chunks and a remainder) under fixed gradients; the parameter and the
/// saved moments, flattened.
fn adam_large_f32(cfg: AdamConfig) -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(7);
    let p = Var::from_tensor(&rng.rand_uniform(40_001, -1.0, 1.0, DType::F32, &dev).unwrap()).unwrap();
    let mut opt = Adam::new(vec![("p".into(), p.clone())], 1e-2, cfg).unwrap();
    for _ in 0..3 {
        let c = rng.rand_uniform(40_001, -1.0, 1.0, DType::F32, &dev).unwrap();
        let loss = (p.as_tensor() * &c).unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let mut out = vec![p.as_tensor().to_vec1::<f32>().unwrap()];
    for (_, t) in opt.state_tensors().unwrap() {
        out.push(t.to_vec1::<f32>().unwrap());
    }
    out
}

#[test]
fn adam_update_is_the_same_at_every_simd_level() {
    // The one-pass update's AVX-512, AVX2 + FMA and baseline versions (each
    // this CPU has) must agree to the bit, with plain and decoupled decay.
    use aezoo_kernels::simd;
    let cfgs = [
        AdamConfig::default(),
        AdamConfig {
            weight_decay: 0.1,
            decoupled: true,
            ..AdamConfig::default()
        },
    ];
    for cfg in cfgs {
        simd::set_cap(0);
        let base = adam_large_f32(cfg.clone());
        for level in 1..=simd::detected() {
            simd::set_cap(level);
            let got = adam_large_f32(cfg.clone());
            simd::set_cap(u8::MAX);
            for (i, (g, b)) in got.iter().zip(&base).enumerate() {
                let same = g.len() == b.len() && g.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{cfg:?}, SIMD level {level}: array {i} differs from the baseline's"
                );
            }
        }
    }
    simd::set_cap(u8::MAX);
}

// Values from `python3 scripts/pins/adam_ref.py` (torch.optim.Adam / AdamW, lr 0.1, 5 steps).
#[test]
fn adam_matches_pytorch() {
    let cases = [
        (
            AdamConfig::default(),
            [
                8.835034131929737e-04,
                -1.000734602194083e+00,
                1.501907020555956e+00,
                -4.986339112346717e-01,
                5.199626078996121e-01,
                -7.304908071981784e-01,
            ],
        ),
        (
            AdamConfig {
                weight_decay: 0.1,
                ..Default::default()
            },
            [
                1.331597416656130e-03,
                -1.000883500645713e+00,
                1.502009698938585e+00,
                -4.984311037012086e-01,
                5.185497590704340e-01,
                -7.227645990813035e-01,
            ],
        ),
        (
            AdamConfig {
                weight_decay: 0.1,
                decoupled: true,
                ..Default::default()
            },
            [
                -1.369038602733876e-02,
                -9.372254484594928e-01,
                1.414219681507031e+00,
                -4.887617054997625e-01,
                4.836612330007301e-01,
                -7.096210092368277e-01,
            ],
        ),
    ];
    for (cfg, want) in cases {
        let got = adam_run(cfg.clone());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{cfg:?}: got {got:?}, torch {want:?}");
        }
    }
    assert_eq!(
        AdamConfig::default().weight_decay,
        0.0,
        "torch's Adam has no weight decay"
    );
}
