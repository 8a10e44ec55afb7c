//! aezoo-compress's tests: the entropy model's interval masses against SciPy
//! (also in single precision, where a naive 1 − F cancels), masses summing to
//! one, finite-difference checks of the rate and of the whole codec, the
//! integer latent, the loss, refused configs.

use aezoo_compress::{Codec, CodecConfig, EntropyModel, Quantization};
use aezoo_nn::gradcheck::{uniform_input, GradCheck};
use aezoo_nn::{Autoencoder, Batch, Family, ParamStore, Rng, StepCtx};
use candle_core::{DType, Device, Tensor, Var};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// An entropy model of 3 channels with the pinned (loc, scale).
fn pinned_model(dtype: DType) -> (EntropyModel, ParamStore) {
    let store = ParamStore::init(0);
    let m = EntropyModel::new(3, store.var_builder(dtype, &Device::Cpu)).unwrap();
    let vars: std::collections::BTreeMap<String, Var> = store.vars().into_iter().collect();
    vars["loc"]
        .set(
            &Tensor::new(&[0.0f64, 0.3, -1.2], &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
    let log_s: Vec<f64> = [1.0f64, 0.5, 3.0].iter().map(|s| s.ln()).collect();
    vars["log_scale"]
        .set(&Tensor::new(log_s, &Device::Cpu).unwrap().to_dtype(dtype).unwrap())
        .unwrap();
    (m, store)
}

#[test]
fn interval_masses_match_scipy_even_in_the_far_tail() {
    // python3 scripts/pins/codec_ref.py (scipy): −log₂ P per value.
    let values = [[0.0, 1.0, -2.0, 15.0], [0.0, 2.0, -1.0, 7.0], [-1.0, 5.0, -30.0, 0.0]];
    let want = [
        [
            1.3456768717052028,
            2.383075878073449,
            3.8257709189624127,
            22.58080645051894,
        ],
        [
            0.8265099409942905,
            4.672255372679431,
            3.518099339968261,
            19.099205781569065,
        ],
        [
            2.7213109581275012,
            5.559859281691638,
            16.42816192305516,
            3.1553675468766995,
        ],
    ];
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
        let (m, _) = pinned_model(dtype);
        // (b, C, n) = (1, 3, 4)
        let y = Tensor::new(&values, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let p = m
            .likelihood(&y)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let got: Vec<Vec<f64>> = p.to_vec2().unwrap();
        for c in 0..3 {
            for i in 0..4 {
                let bits = -got[c][i].log2();
                assert!(
                    (bits - want[c][i]).abs() <= tol * want[c][i],
                    "{dtype:?} channel {c} value {}: {bits} bits, SciPy {}",
                    values[c][i],
                    want[c][i]
                );
            }
        }
    }
}

#[test]
fn masses_over_the_integers_sum_to_one() {
    let (m, _) = pinned_model(DType::F64);
    let ys: Vec<f64> = (-200..=200).map(|v| v as f64).collect();
    let n = ys.len();
    let y = Tensor::new(ys, &Device::Cpu).unwrap().reshape((1, 1, n)).unwrap();
    let y = y.broadcast_as((1, 3, n)).unwrap().contiguous().unwrap();
    let sums: Vec<f64> = m
        .likelihood(&y)
        .unwrap()
        .sum(2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // The floor (MIN_LIKELIHOOD per far-out value) adds at most n · 1e-9.
    for s in sums {
        assert!(
            s >= 1.0 - 1e-12 && s - 1.0 <= n as f64 * aezoo_compress::MIN_LIKELIHOOD,
            "{s}"
        );
    }
}

#[test]
fn rate_gradient_checks() {
    let (m, store) = pinned_model(DType::F64);
    // With respect to the latent values (off the interval kinks)…
    let y = uniform_input(&[2, 3, 5], -4.0, 4.0, 3).unwrap();
    GradCheck::default()
        .check(|a| m.bits(&a[0]), std::slice::from_ref(&y))
        .unwrap_or_else(|e| panic!("bits(ŷ): {e}"));
    // …and to the model's parameters.
    let vars: Vec<Var> = store.vars().into_iter().map(|(_, v)| v).collect();
    let grads = m.bits(&y).unwrap().backward().unwrap();
    let eps = 1e-6;
    for v in &vars {
        let g: Vec<f64> = grads.get(v).unwrap().to_vec1().unwrap();
        let base: Vec<f64> = v.to_vec1().unwrap();
        for i in 0..base.len() {
            let mut plus = base.clone();
            plus[i] += eps;
            v.set(&Tensor::new(plus, &Device::Cpu).unwrap()).unwrap();
            let fp = m.bits(&y).unwrap().to_scalar::<f64>().unwrap();
            let mut minus = base.clone();
            minus[i] -= eps;
            v.set(&Tensor::new(minus, &Device::Cpu).unwrap()).unwrap();
            let fm = m.bits(&y).unwrap().to_scalar::<f64>().unwrap();
            v.set(&Tensor::new(base.clone(), &Device::Cpu).unwrap()).unwrap();
            let fd = (fp - fm) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() < 1e-5 * fd.abs().max(1.0),
                "param {i}: {} vs {fd}",
                g[i]
            );
        }
    }
}

fn tiny(quantization: Quantization) -> CodecConfig {
    CodecConfig {
        image: [1, 12, 12],
        encoder: strings(&["C2d_1_3_3_2_1", "ReLU", "C2d_3_2_3_2_1"]),
        decoder: strings(&["CT2d_2_3_3_2_1_1", "ReLU", "CT2d_3_1_3_2_1_1", "Sigm"]),
        alpha: 0.75,
        lambda: 0.05,
        quantization,
        tile: None,
        prior_gain: None,
    }
}

fn build(c: &CodecConfig, dtype: DType) -> candle_core::Result<Codec> {
    let store = ParamStore::init(2);
    Codec::new(c, store.var_builder(dtype, &Device::Cpu))
}

fn step(m: &Codec, x: &Tensor, train: bool) -> aezoo_nn::StepOutput {
    m.step(
        &Batch::autoencode(x.clone()),
        &mut StepCtx {
            train,
            rng: &mut Rng::new(0),
            compute: None,
        },
    )
    .unwrap()
}

#[test]
fn latents_are_integers_and_the_loss_is_the_configured_sum() {
    let m = build(&tiny(Quantization::Noise), DType::F64).unwrap();
    let x = uniform_input(&[3, 1, 12, 12], 0.0, 1.0, 5).unwrap();
    let z = m.encode(&x).unwrap();
    assert_eq!(z.dims(), &[3, 2, 3, 3]);
    for v in z.flatten_all().unwrap().to_vec1::<f64>().unwrap() {
        assert_eq!(v, v.round());
    }
    assert_eq!(m.reconstruct(&x).unwrap().dims(), &[3, 1, 12, 12]);
    for train in [true, false] {
        let out = step(&m, &x, train);
        let names: Vec<&str> = out.terms.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["one_minus_ssim", "l1", "bpp"]);
        let t: Vec<f64> = out.terms.iter().map(|(_, v)| v.to_scalar::<f64>().unwrap()).collect();
        let loss = out.loss.to_scalar::<f64>().unwrap();
        assert!((loss - (0.75 * t[0] + 0.25 * t[1] + 0.05 * t[2])).abs() < 1e-12);
        assert!(t[2] > 0.0);
    }
    // Evaluation (train = false) decodes the rounded latent: what a file holds.
    let eval = step(&m, &x, false).recon;
    let diff = (eval - m.decode(&z).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0);
}

#[test]
fn whole_codec_gradient_check() {
    // Noise quantisation with the same seeded noise each call: differentiable.
    let m = build(&tiny(Quantization::Noise), DType::F64).unwrap();
    let x = uniform_input(&[2, 1, 12, 12], 0.05, 0.95, 6).unwrap();
    GradCheck::default()
        .check(|a| Ok(step(&m, &a[0], true).loss), &[x])
        .unwrap_or_else(|e| panic!("codec: {e}"));
}

#[test]
fn a_prior_gain_scales_the_stored_prior_and_keeps_gradients_right() {
    // Stored (loc, log_scale) = (0.1, −0.2) with gain 10 is the prior (1, −2).
    let store = ParamStore::init(0);
    let vb = store.var_builder(DType::F64, &Device::Cpu);
    let gained = EntropyModel::with_gain(2, 10.0, vb.pp("g")).unwrap();
    for (name, var) in store.vars() {
        let v = if name.ends_with("loc") { 0.1 } else { -0.2 };
        var.set(&Tensor::new(&[v, v], &Device::Cpu).unwrap()).unwrap();
    }
    let (loc, scale) = gained.params().unwrap();
    assert!(
        (loc[0] - 1.0).abs() < 1e-12 && (scale[1] - (-2.0f64).exp()).abs() < 1e-12,
        "{loc:?} {scale:?}"
    );
    let mut c = tiny(Quantization::Noise);
    c.prior_gain = Some(10.0);
    let m = build(&c, DType::F64).unwrap();
    let x = uniform_input(&[2, 1, 12, 12], 0.05, 0.95, 6).unwrap();
    GradCheck::default()
        .check(|a| Ok(step(&m, &a[0], true).loss), &[x])
        .unwrap_or_else(|e| panic!("codec with a prior gain: {e}"));
}

#[test]
fn bad_configs_are_refused() {
    let err = |c: CodecConfig| build(&c, DType::F32).err().expect("refused").to_string();
    let mut c = tiny(Quantization::Ste);
    c.lambda = 0.0;
    assert!(err(c).contains("lambda must be a number > 0"));
    let mut c = tiny(Quantization::Ste);
    c.alpha = 1.5;
    assert!(err(c).contains("alpha must be in [0, 1]"));
    let mut c = tiny(Quantization::Ste);
    c.prior_gain = Some(0.0);
    assert!(err(c).contains("prior_gain must be in [0.01, 1000]"));
    let mut c = tiny(Quantization::Ste);
    c.decoder = strings(&["CT2d_2_1_3_2_1_1"]);
    let e = err(c);
    assert!(
        e.contains("decoder: gives (1, 6, 6)") && e.contains("(1, 12, 12)"),
        "{e}"
    );
}

// ---------------------------------------------------------------- .aez files

mod aez_files {
    use super::*;
    use aezoo_compress::aez::{compress, decompress, fingerprint, read, AezError, MAGIC};

    fn tiny_codec() -> (Codec, u64) {
        let store = ParamStore::init(9);
        let m = Codec::new(&tiny(Quantization::Noise), store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let synth: Vec<(String, Tensor)> = store
            .tensors()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("encoder."))
            .collect();
        (m, fingerprint(&synth).unwrap())
    }

    fn picture(h: usize, w: usize) -> Tensor {
        let v: Vec<f32> = (0..h * w)
            .map(|i| ((i % w) as f32 * 0.3).sin() * ((i / w) as f32 * 0.2).cos() * 0.5 + 0.5)
            .collect();
        Tensor::from_vec(v, (1, 1, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn any_size_round_trips_deterministically_and_the_header_says_what_it_is() {
        let (m, fp) = tiny_codec();
        for (h, w) in [(12, 12), (30, 17), (1, 40), (5, 3)] {
            let img = picture(h, w);
            let bytes = compress(&m, "tiny", fp, &img).unwrap();
            let again = compress(&m, "tiny", fp, &img).unwrap();
            assert_eq!(bytes, again, "{h}x{w}: not deterministic");
            assert_eq!(&bytes[..4], &MAGIC);
            let (hd, _) = read(&bytes).unwrap();
            assert_eq!(
                (
                    hd.model.as_str(),
                    hd.fingerprint,
                    hd.channels,
                    hd.height,
                    hd.width,
                    hd.tile
                ),
                // A fully convolutional codec: one tile padded to the stride (4), at most 12×12.
                (
                    "tiny",
                    fp,
                    1,
                    h as u32,
                    w as u32,
                    [(h.div_ceil(4) * 4).min(12) as u16, (w.div_ceil(4) * 4).min(12) as u16]
                )
            );
            let out = decompress(m.synthesis(), "tiny", fp, &bytes).unwrap();
            assert_eq!(out.dims(), &[1, 1, h, w]);
            let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
                (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let out2 = decompress(m.synthesis(), "tiny", fp, &bytes).unwrap();
            assert_eq!(max_diff(&out, &out2), 0.0, "{h}x{w}: two decodes differ");
            if (h, w) == (12, 12) {
                // One whole tile: the file decodes to decode(round(encode(x))).
                assert_eq!(max_diff(&out, &m.reconstruct(&img).unwrap()), 0.0);
            }
        }
    }

    #[test]
    fn a_fully_convolutional_codec_codes_in_larger_tiles() {
        // Trained on 12×12, coded in tiles of at most 24×20: an image within
        // that is one tile padded to the stride (4); a larger one is cut into
        // 24×20 tiles; one whole tile decodes to decode(round(encode(x))).
        let mut cfg = tiny(Quantization::Noise);
        cfg.tile = Some([24, 20]);
        let store = ParamStore::init(9);
        let m = Codec::new(&cfg, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        assert_eq!(m.synthesis().tile(), [24, 20]);
        for ((h, w), tile) in [
            ((24, 20), [24, 20]),
            ((30, 17), [24, 20]),
            ((50, 41), [24, 20]),
            ((13, 9), [16, 12]),
        ] {
            let img = picture(h, w);
            let bytes = compress(&m, "tiny", 7, &img).unwrap();
            assert_eq!(read(&bytes).unwrap().0.tile, tile, "{h}x{w}");
            let out = decompress(m.synthesis(), "tiny", 7, &bytes).unwrap();
            assert_eq!(out.dims(), &[1, 1, h, w]);
            if (h, w) == (24, 20) {
                let d = (out - m.reconstruct(&img).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
            }
        }
        // The same file under the codec limited to 12×12 tiles is refused, naming the tiles.
        let (plain, _) = tiny_codec();
        let bytes = compress(&m, "tiny", 7, &picture(30, 17)).unwrap();
        let e = decompress(plain.synthesis(), "tiny", 7, &bytes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tile 24x20") && e.contains("12x12"), "{e}");
        // A codec with a Linear layer cannot take another tile size.
        let mut lin = tiny(Quantization::Noise);
        lin.encoder = strings(&["C2d_1_3_3_2_1", "Flat", "Lin_108_18", "Unflat_2_3_3"]);
        lin.tile = Some([24, 24]);
        let e = build(&lin, DType::F32).err().expect("refused").to_string();
        assert!(e.contains("tile 24x24") && e.contains("fully convolutional"), "{e}");
    }

    #[test]
    fn the_rate_model_predicts_the_file_size() {
        // The coded bits equal −Σ log₂ P(ŷ) under the entropy model, up to the
        // coder's fixed-point rounding and its last words.
        let (m, fp) = tiny_codec();
        let img = picture(48, 48);
        let bytes = compress(&m, "tiny", fp, &img).unwrap();
        let tiles = img
            .reshape((1, 1, 4, 12, 4, 12))
            .unwrap()
            .permute((2, 4, 0, 1, 3, 5))
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((16, 1, 12, 12))
            .unwrap();
        let y_hat = m.encode(&tiles).unwrap();
        let est = m.entropy().bits(&y_hat).unwrap().to_scalar::<f32>().unwrap() as f64;
        let (_, words) = read(&bytes).unwrap();
        let coded = 32.0 * words.len() as f64;
        assert!(
            coded >= est - 1.0 && coded <= est * 1.01 + 64.0,
            "coded {coded} bits, model {est}"
        );
    }

    #[test]
    fn damaged_or_foreign_files_are_errors_never_panics() {
        let (m, fp) = tiny_codec();
        let bytes = compress(&m, "tiny", fp, &picture(30, 17)).unwrap();
        let s = m.synthesis();
        for cut in 0..bytes.len() {
            let e = decompress(s, "tiny", fp, &bytes[..cut]).unwrap_err();
            assert!(
                matches!(e, AezError::Truncated(_) | AezError::Magic | AezError::Checksum { .. }),
                "cut at {cut}: {e}"
            );
        }
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        assert!(matches!(
            decompress(s, "tiny", fp, &flipped),
            Err(AezError::Checksum { .. })
        ));
        let e = decompress(s, "other", fp, &bytes).unwrap_err().to_string();
        assert!(
            e.contains("made by model `tiny`") && e.contains("not by `other`"),
            "{e}"
        );
        assert!(matches!(
            decompress(s, "tiny", fp ^ 1, &bytes),
            Err(AezError::Model { .. })
        ));
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert!(matches!(read(&v2), Err(AezError::Version(2))));
        assert!(matches!(read(b"PNG\x0d\x0a\x1a\x0a........"), Err(AezError::Magic)));
        // A model id that is no entry name (a newline, found by `aezoo
        // fuzz`; a path): refused, quoted on one line.
        for (at, byte) in [(7, b'\n'), (6, b'/')] {
            let mut m2 = bytes.clone();
            m2[at] = byte;
            let n = m2.len() - 4;
            let crc = crc32(&m2[..n]);
            m2[n..].copy_from_slice(&crc.to_le_bytes());
            let e = read(&m2).unwrap_err().to_string();
            assert!(e.contains("is not an entry name") && !e.contains('\n'), "{e}");
        }
        // Mutations with a valid checksum reach the header checks and the
        // entropy decoder: errors or images, never a panic.
        let mut rng = Rng::new(1);
        for _ in 0..3000 {
            let mut m2 = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below((bytes.len() - 4) as u64) as usize;
                m2[i] ^= 1 << rng.below(8);
            }
            let n = m2.len() - 4;
            let crc = crc32(&m2[..n]);
            m2[n..].copy_from_slice(&crc.to_le_bytes());
            if let Ok((hd, _)) = read(&m2) {
                if hd.height as u64 * hd.width as u64 > 4096 {
                    continue; // a valid but large image: decoding it is slow, not wrong
                }
            }
            let _ = decompress(s, "tiny", fp, &m2);
        }
    }

    /// CRC-32 (IEEE), bitwise: the test's own, independent of the crate's.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
            }
        }
        !c
    }
}
