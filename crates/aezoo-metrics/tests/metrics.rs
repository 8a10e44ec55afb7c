//! aezoo-metrics' tests: every loss and metric pinned to PyTorch or
//! scikit-image, and gradient-checked, since any of them can be a loss.
//!
//! The pinned values were printed by `python3 scripts/pins/metrics_ref.py`
//! (torch 2.x, scikit-image 0.26); the inputs below repeat its formulas:
//!
//!   i = arange(120)
//!   p  = 0.05 + 0.9 * ((i*37) % 101) / 100        reshaped (2,3,4,5)
//!   t  = ((i*53) % 97) / 96
//!   x  = -6 + 12 * ((i*29) % 89) / 88             (logits)
//!   mu = -2 + 4 * ((i*17) % 61) / 60              reshaped (2,60)
//!   lv = -3 + 4 * ((i*41) % 67) / 66
//!   F.mse_loss(p,t), F.l1_loss(p,t), F.binary_cross_entropy(p,t[,sum]),
//!   F.binary_cross_entropy_with_logits(x,t),
//!   -0.5*sum(1 + lv - mu² - exp(lv))
//!   structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
//!       use_sample_covariance=False, data_range=1.0)   on bundled Fashion-MNIST
//!   peak_signal_noise_ratio(a, b, data_range=1.0)       test images 0..9 / 255

use aezoo_data::{bundled, DatasetId};
use aezoo_metrics::*;
use aezoo_nn::gradcheck::{uniform_input, GradCheck};
use candle_core::{DType, Device, Tensor};

// ---------------------------------------------------------------- helpers

fn seq(f: impl Fn(f64) -> f64, n: usize, shape: &[usize]) -> Tensor {
    let v: Vec<f64> = (0..n).map(|i| f(i as f64)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn inputs() -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
    let s = [2, 3, 4, 5];
    let p = seq(|i| 0.05 + 0.9 * ((i * 37.0) % 101.0) / 100.0, 120, &s);
    let t = seq(|i| ((i * 53.0) % 97.0) / 96.0, 120, &s);
    let x = seq(|i| -6.0 + 12.0 * ((i * 29.0) % 89.0) / 88.0, 120, &s);
    let mu = seq(|i| -2.0 + 4.0 * ((i * 17.0) % 61.0) / 60.0, 120, &[2, 60]);
    let lv = seq(|i| -3.0 + 4.0 * ((i * 41.0) % 67.0) / 66.0, 120, &[2, 60]);
    (p, t, x, mu, lv)
}

fn val(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

fn close(got: f64, want: f64, rtol: f64, what: &str) {
    assert!(
        (got - want).abs() <= rtol * want.abs().max(1e-12),
        "{what}: got {got:.15e}, reference {want:.15e}"
    );
}

/// Bundled Fashion-MNIST test image `i` as a `(1, 1, 28, 28)` tensor in [0, 1]
/// (`scale` = 255 keeps the byte values).
fn image(i: usize, scale: f64) -> Tensor {
    let splits = bundled::load(DatasetId::FashionMnist).unwrap();
    let v: Vec<f64> = splits.test.image(i).iter().map(|&p| p as f64 / scale).collect();
    Tensor::from_vec(v, (1, 1, 28, 28), &Device::Cpu).unwrap()
}

fn assert_grad(what: &str, f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>, inputs: &[Tensor]) {
    if let Err(e) = GradCheck::default().check(f, inputs) {
        panic!("{what}: {e}");
    }
}

// ---------------------------------------------------------------- values

#[test]
fn losses_match_pytorch() {
    let (p, t, x, mu, lv) = inputs();
    close(
        val(&mse(&p, &t, Reduction::Mean).unwrap()),
        1.397486267939815e-01,
        1e-12,
        "mse",
    );
    close(
        val(&mae(&p, &t, Reduction::Mean).unwrap()),
        3.073437500000001e-01,
        1e-12,
        "mae",
    );
    close(
        val(&bce(&p, &t, Reduction::Mean).unwrap()),
        8.507733867976870e-01,
        1e-12,
        "bce",
    );
    close(
        val(&bce(&p, &t, Reduction::Sum).unwrap()),
        1.020928064157224e+02,
        1e-12,
        "bce sum",
    );
    close(
        val(&bce_with_logits(&x, &t, Reduction::Mean).unwrap()),
        1.678662839519948e+00,
        1e-12,
        "bce_with_logits",
    );
    close(
        val(&kld(&mu, &lv, Reduction::Sum).unwrap()),
        1.243265284147673e+02,
        1e-12,
        "kld sum",
    );
    close(
        val(&kld(&mu, &lv, Reduction::BatchMean).unwrap()),
        6.216326420738367e+01,
        1e-12,
        "kld batch mean",
    );
}

#[test]
fn bce_with_logits_is_stable_where_candles_overflows() {
    let x = Tensor::new(&[-200f64, -50.0, 0.0, 50.0, 200.0], &Device::Cpu).unwrap();
    let t = Tensor::new(&[1f64, 0.0, 0.5, 1.0, 0.0], &Device::Cpu).unwrap();
    let ours = val(&bce_with_logits(&x, &t, Reduction::Sum).unwrap());
    close(ours, 4.006931471805599e+02, 1e-12, "extreme logits");
    // candle's sigmoid-then-log form loses it (log of an underflowed sigmoid).
    let theirs = candle_nn::loss::binary_cross_entropy_with_logit(&x, &t).unwrap();
    let theirs = val(&theirs) * 5.0;
    assert!(
        (theirs - ours).abs() > 1.0 || !theirs.is_finite(),
        "candle's form: {theirs}"
    );
    // Same for f32, where overflow comes sooner.
    let x32 = x.to_dtype(DType::F32).unwrap();
    let t32 = t.to_dtype(DType::F32).unwrap();
    close(
        val(&bce_with_logits(&x32, &t32, Reduction::Sum).unwrap()),
        4.006931471805599e+02,
        1e-6,
        "f32",
    );
}

#[test]
fn fused_bce_with_logits_matches_the_composite_in_value_and_gradients() {
    // The CPU's one-node form against the candle-op form: the loss and the
    // gradients for logits and targets, f64 and f32, logits from −40 to 40.
    for (dt, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-6)] {
        let x = seq(|i| -40.0 + 80.0 * (i * 0.618).fract() + i * 0.01, 210, &[2, 3, 7, 5]);
        let t = seq(|i| (i * 0.377).fract(), 210, &[2, 3, 7, 5]);
        let (x, t) = (x.to_dtype(dt).unwrap(), t.to_dtype(dt).unwrap());
        let run = |f: fn(&Tensor, &Tensor, Reduction) -> candle_core::Result<Tensor>| {
            let (xv, tv) = (
                candle_core::Var::from_tensor(&x).unwrap(),
                candle_core::Var::from_tensor(&t).unwrap(),
            );
            let l = f(xv.as_tensor(), tv.as_tensor(), Reduction::BatchMean).unwrap();
            let g = l.backward().unwrap();
            let grad = |v: &candle_core::Var| vals(&g.get(v.as_tensor()).unwrap().flatten_all().unwrap());
            (val(&l), grad(&xv), grad(&tv))
        };
        let (lf, gxf, gtf) = run(bce_with_logits);
        let (lc, gxc, gtc) = run(bce_with_logits_composite);
        close(lf, lc, tol, "fused loss");
        for (what, a, b) in [("d/dlogits", &gxf, &gxc), ("d/dtarget", &gtf, &gtc)] {
            for (i, (p, q)) in a.iter().zip(b.iter()).enumerate() {
                assert!(
                    (p - q).abs() <= tol * 20.0 * (1.0 + q.abs()),
                    "{dt:?} {what}[{i}]: {p} vs {q}"
                );
            }
        }
    }
}

#[test]
fn bce_clamps_log_like_pytorch() {
    // p = 0 and 1 exactly: PyTorch clamps log at -100, giving 100 per element.
    let p = Tensor::new(&[0f64, 1.0], &Device::Cpu).unwrap();
    let t = Tensor::new(&[1f64, 0.0], &Device::Cpu).unwrap();
    close(val(&bce(&p, &t, Reduction::Mean).unwrap()), 100.0, 1e-12, "clamped bce");
}

#[test]
fn ssim_matches_scikit_image() {
    let a = image(0, 255.0);
    let b = image(1, 255.0);
    let c = a.affine(0.8, 0.1).unwrap();
    let cfg = SsimConfig::default();
    close(
        vals(&ssim(&a, &b, cfg).unwrap())[0],
        2.287867945174082e-02,
        1e-9,
        "ssim(a, b)",
    );
    close(
        vals(&ssim(&a, &c, cfg).unwrap())[0],
        7.017446041176495e-01,
        1e-9,
        "ssim(a, 0.8a+0.1)",
    );
    close(vals(&ssim(&a, &a, cfg).unwrap())[0], 1.0, 1e-12, "ssim(a, a)");
    // Data range 255 on byte values.
    let cfg255 = SsimConfig {
        data_range: 255.0,
        ..cfg
    };
    close(
        vals(&ssim(&image(2, 1.0), &image(3, 1.0), cfg255).unwrap())[0],
        4.432223579967376e-01,
        1e-9,
        "ssim range 255",
    );
    // Three channels: the mean over channels, as skimage's channel_axis does.
    let rgb1 = Tensor::cat(&[image(4, 255.0), image(5, 255.0), image(6, 255.0)], 1).unwrap();
    let rgb2 = Tensor::cat(&[image(7, 255.0), image(8, 255.0), image(9, 255.0)], 1).unwrap();
    close(
        vals(&ssim(&rgb1, &rgb2, cfg).unwrap())[0],
        2.949585750477435e-02,
        1e-9,
        "ssim 3 channels",
    );
    // A batch gives one value per image, in order.
    let batch_x = Tensor::cat(&[a.clone(), a.clone()], 0).unwrap();
    let batch_y = Tensor::cat(&[b, c], 0).unwrap();
    let v = vals(&ssim(&batch_x, &batch_y, cfg).unwrap());
    close(v[0], 2.287867945174082e-02, 1e-9, "batch[0]");
    close(v[1], 7.017446041176495e-01, 1e-9, "batch[1]");
    // f32 agrees to f32 precision.
    let a32 = a.to_dtype(DType::F32).unwrap();
    let c32 = a32.affine(0.8, 0.1).unwrap();
    close(
        vals(&ssim(&a32, &c32, cfg).unwrap())[0],
        7.017446041176495e-01,
        1e-5,
        "ssim f32",
    );
    // Too small for the window: an error, not a panic.
    let tiny = Tensor::zeros((1, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
    assert!(ssim(&tiny, &tiny, cfg).is_err());
}

#[test]
fn psnr_matches_scikit_image() {
    let a = image(0, 255.0);
    let b = image(1, 255.0);
    let c = a.affine(0.8, 0.1).unwrap();
    close(
        vals(&psnr(&a, &b, 1.0).unwrap())[0],
        4.919017805253346e+00,
        1e-12,
        "psnr(a, b)",
    );
    close(
        vals(&psnr(&a, &c, 1.0).unwrap())[0],
        2.134921394779131e+01,
        1e-12,
        "psnr(a, c)",
    );
    close(
        vals(&psnr(&image(2, 1.0), &image(3, 1.0), 255.0).unwrap())[0],
        1.223677218080608e+01,
        1e-12,
        "psnr 255",
    );
    assert!(vals(&psnr(&a, &a, 1.0).unwrap())[0].is_infinite());
}

#[test]
fn shape_mismatch_is_an_error() {
    let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
    let e = mse(&a, &b, Reduction::Mean).unwrap_err().to_string();
    assert!(e.contains("mse") && e.contains("[2, 3]"), "{e}");
}

// ---------------------------------------------------------------- gradients

#[test]
fn grad_losses() {
    let p = uniform_input(&[2, 3, 4], 0.05, 0.95, 1).unwrap();
    let t = uniform_input(&[2, 3, 4], 0.0, 1.0, 2).unwrap();
    let x = uniform_input(&[2, 3, 4], -4.0, 4.0, 3).unwrap();
    assert_grad("mse", |a| mse(&a[0], &a[1], Reduction::Mean), &[p.clone(), t.clone()]);
    assert_grad("mae", |a| mae(&a[0], &a[1], Reduction::Sum), &[p.clone(), t.clone()]);
    assert_grad("bce", |a| bce(&a[0], &a[1], Reduction::Mean), &[p.clone(), t.clone()]);
    assert_grad(
        "bce_with_logits",
        |a| bce_with_logits(&a[0], &a[1], Reduction::BatchMean),
        &[x.clone(), t.clone()],
    );
    let mu = uniform_input(&[3, 5], -2.0, 2.0, 4).unwrap();
    let lv = uniform_input(&[3, 5], -2.0, 1.0, 5).unwrap();
    assert_grad("kld", |a| kld(&a[0], &a[1], Reduction::BatchMean), &[mu, lv]);
    assert_grad("l1_sparsity", |a| l1_sparsity(&a[0]), &[x]);
    assert_grad("psnr", |a| psnr(&a[0], &a[1], 1.0), &[p, t]);
}

#[test]
fn grad_ssim_both_arguments() {
    let x = uniform_input(&[2, 2, 13, 12], 0.0, 1.0, 6).unwrap();
    let y = uniform_input(&[2, 2, 13, 12], 0.0, 1.0, 7).unwrap();
    assert_grad("ssim", |a| ssim(&a[0], &a[1], SsimConfig::default()), &[x, y]);
    // As a loss on a real image pair.
    assert_grad(
        "1 - ssim",
        |a| ssim(&a[0], &a[1], SsimConfig::default())?.affine(-1.0, 1.0),
        &[image(0, 255.0), image(1, 255.0)],
    );
}

#[test]
fn fused_ssim_matches_the_composite_in_value_and_gradients() {
    // On the CPU `ssim` is one node (aezoo_nn::ops::ssim_planes_fused); `ssim_composite` is
    // the candle-op form it replaced. Both arguments carry gradients.
    for (shape, seed) in [([3usize, 2, 13, 12], 40u64), ([2, 1, 28, 28], 42), ([1, 3, 11, 17], 44)] {
        let x = candle_core::Var::from_tensor(&uniform_input(&shape, 0.0, 1.0, seed).unwrap()).unwrap();
        let y = candle_core::Var::from_tensor(&uniform_input(&shape, 0.0, 1.0, seed + 1).unwrap()).unwrap();
        let cfg = SsimConfig::default();
        let (f, c) = (
            ssim(x.as_tensor(), y.as_tensor(), cfg).unwrap(),
            ssim_composite(x.as_tensor(), y.as_tensor(), cfg).unwrap(),
        );
        let d = vals(&(&f - &c).unwrap().abs().unwrap())
            .into_iter()
            .fold(0f64, f64::max);
        assert!(d < 1e-12, "{shape:?}: values differ by {d}");
        let r = uniform_input(&[shape[0]], -1.0, 1.0, seed + 2).unwrap();
        let gf = (&f * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&c * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &y] {
            let diff = (gf.get(v.as_tensor()).unwrap() - gc.get(v.as_tensor()).unwrap()).unwrap();
            let d = vals(&diff.abs().unwrap().flatten_all().unwrap())
                .into_iter()
                .fold(0f64, f64::max);
            assert!(d < 1e-12, "{shape:?}: gradients differ by {d}");
        }
    }
}

// ---------------------------------------------------------------- ranking

#[test]
fn roc_auc_and_average_precision_match_scikit_learn_with_ties() {
    use aezoo_metrics::ranking::{average_precision, roc_auc};
    // python3 scripts/pins/graph_ref.py (scikit-learn 1.9.1: roc_auc_score, average_precision_score)
    let scores = [0.9, 0.8, 0.8, 0.7, 0.6, 0.6, 0.6, 0.5, 0.3, 0.3, 0.2, 0.1];
    let labels = [1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 0, 0].map(|y| y == 1);
    assert!((roc_auc(&scores, &labels).unwrap() - 7.222222222222222e-01).abs() < 1e-15);
    assert!((average_precision(&scores, &labels).unwrap() - 7.021825396825397e-01).abs() < 1e-15);
    let tied = [0.5; 6];
    let labels = [1, 0, 1, 0, 0, 1].map(|y| y == 1);
    assert_eq!(roc_auc(&tied, &labels), Some(0.5));
    assert_eq!(average_precision(&tied, &labels), Some(0.5));
    // Perfect and reversed rankings; undefined cases.
    let s = [4.0, 3.0, 2.0, 1.0];
    let l = [true, true, false, false];
    assert_eq!((roc_auc(&s, &l), average_precision(&s, &l)), (Some(1.0), Some(1.0)));
    let r = [false, false, true, true];
    assert_eq!(roc_auc(&s, &r), Some(0.0));
    assert_eq!(roc_auc(&s, &[true; 4]), None);
    assert_eq!(average_precision(&s, &[false; 4]), None);
    assert_eq!(roc_auc(&[f64::NAN, 1.0], &[true, false]), None);
}

#[test]
fn bd_rate_matches_the_vceg_m33_reference() {
    // python3 scripts/pins/bd_rate_ref.py (numpy polyfit / polyint)
    use aezoo_metrics::rd::bd_rate;
    let pts = |r: &[f64], d: &[f64]| r.iter().copied().zip(d.iter().copied()).collect::<Vec<_>>();
    let jpeg = pts(&[0.25, 0.5, 0.75, 1.0, 1.5], &[26.1, 29.4, 31.3, 32.6, 34.5]);
    let ours = pts(&[0.2, 0.4, 0.7, 1.1], &[27.0, 30.1, 32.4, 34.0]);
    let cases = [
        (jpeg.clone(), ours.clone(), -29.275713189189634),
        (
            pts(&[0.3, 0.6, 1.2], &[27.0, 30.0, 33.5]),
            pts(&[0.25, 0.5, 1.0], &[27.2, 30.4, 33.0]),
            -21.174789364170543,
        ),
        (
            pts(&[0.5, 1.0], &[30.0, 33.0]),
            pts(&[0.6, 1.1], &[30.5, 33.5]),
            3.101348686054206,
        ),
    ];
    for (a, t, want) in cases {
        let got = bd_rate(&a, &t).unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs numpy {want}");
    }
    // The same curve: 0 %; no common PSNR range or too few points: none.
    assert!(bd_rate(&jpeg, &jpeg).unwrap().abs() < 1e-9);
    assert!(bd_rate(&pts(&[0.1, 0.2], &[20.0, 22.0]), &pts(&[0.1, 0.2], &[30.0, 32.0])).is_none());
    assert!(bd_rate(&jpeg, &pts(&[0.5], &[30.0])).is_none());
}

#[test]
fn ms_ssim_matches_pytorch_msssim() {
    // pip install pytorch-msssim; python3 scripts/pins/ms_ssim_ref.py (float64)
    use aezoo_metrics::{ms_ssim, SsimConfig};
    let n = 2 * 3 * 177 * 190;
    let x: Vec<f64> = (0..n)
        .map(|i| 0.5 + 0.5 * (0.013 * i as f64).cos() * (0.007 * i as f64).sin())
        .collect();
    let y: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| (v + 0.08 * (0.31 * i as f64).sin()).clamp(0.0, 1.0))
        .collect();
    let dev = Device::Cpu;
    let xt = Tensor::from_vec(x, (2, 3, 177, 190), &dev).unwrap();
    let yt = Tensor::from_vec(y, (2, 3, 177, 190), &dev).unwrap();
    let got: Vec<f64> = ms_ssim(&xt, &yt, SsimConfig::default()).unwrap().to_vec1().unwrap();
    // pytorch_msssim builds its Gaussian window in float32 before casting it
    // to the images' float64: to that precision against the stock package,
    // to 1e-12 with its window built in float64 (as ours is).
    for (g, w) in got.iter().zip([0.9905073203586942, 0.9905099640169266]) {
        assert!((g - w).abs() < 1e-7, "{g} vs pytorch_msssim {w}");
    }
    for (g, w) in got.iter().zip([0.9905072976824663, 0.9905099411045487]) {
        assert!((g - w).abs() < 1e-12, "{g} vs pytorch_msssim (float64 window) {w}");
    }
    // Too small for five scales: an error naming the sizes.
    let small = Tensor::zeros((1, 1, 150, 300), DType::F64, &dev).unwrap();
    let e = ms_ssim(&small, &small, SsimConfig::default()).unwrap_err().to_string();
    assert!(e.contains("150x300") && e.contains("160"), "{e}");
}

#[test]
fn grad_ms_ssim_both_arguments() {
    // 161 × 170: the smallest sizes with five scales, odd and even sides;
    // a seeded sample of elements of each input (GradCheck::max_elems).
    use aezoo_metrics::{ms_ssim, SsimConfig};
    let x = uniform_input(&[1, 1, 161, 170], 0.2, 0.8, 8).unwrap();
    let y = (&x + uniform_input(&[1, 1, 161, 170], -0.1, 0.1, 9).unwrap()).unwrap();
    let f = |a: &[Tensor]| ms_ssim(&a[0], &a[1], SsimConfig::default());
    let r = GradCheck {
        max_elems: 40,
        ..GradCheck::default()
    }
    .check(f, &[x, y])
    .unwrap_or_else(|e| panic!("ms_ssim: {e}"));
    assert!(r.checked == 80 && r.max_abs_grad > 0.0, "{r:?}");
}

#[test]
fn candle_avg_pool2d_backward_is_wrong_with_a_remainder() {
    // Exact multiples of the window: right. A row and a column left over
    // (7 × 9 by 2 × 2): wrong, which is why ms_ssim trims them first.
    let even = uniform_input(&[1, 1, 6, 8], 0.0, 1.0, 8).unwrap();
    assert_grad("avg_pool2d 6x8", |a| a[0].avg_pool2d(2)?.sqr()?.sum_all(), &[even]);
    let odd = uniform_input(&[1, 1, 7, 9], 0.0, 1.0, 8).unwrap();
    let f = |a: &[Tensor]| a[0].avg_pool2d(2)?.sqr()?.sum_all();
    assert!(GradCheck::default().check(f, std::slice::from_ref(&odd)).is_err());
    let trimmed = |a: &[Tensor]| a[0].narrow(2, 0, 6)?.narrow(3, 0, 8)?.avg_pool2d(2)?.sqr()?.sum_all();
    assert_grad("trimmed avg_pool2d 7x9", trimmed, &[odd]);
}

#[test]
fn psnr_and_ssim_in_bands_equal_the_whole_image_figures() {
    // A 3 × 70 × 53 image pair: bands of 8 rows (several bands, a last
    // partial one, each reading window − 1 rows past its end) against the
    // whole-image metrics; and an image smaller than the window.
    let n = 3 * 70 * 53;
    let x = seq(|i| ((i * 37.0) % 101.0) / 100.0, n, &[1, 3, 70, 53])
        .to_dtype(DType::F32)
        .unwrap();
    let y = seq(
        |i| (((i * 53.0) % 97.0) / 96.0) * 0.3 + ((i * 37.0) % 101.0) / 100.0 * 0.7,
        n,
        &[1, 3, 70, 53],
    )
    .to_dtype(DType::F32)
    .unwrap();
    let cfg = SsimConfig::default();
    let (p, s) = psnr_ssim_in_bands(&y, &x, cfg, 8).unwrap();
    close(p, vals(&psnr(&y, &x, 1.0).unwrap())[0], 1e-6, "banded PSNR");
    close(s.unwrap(), vals(&ssim(&y, &x, cfg).unwrap())[0], 1e-5, "banded SSIM");
    let (_, s) = psnr_ssim_in_bands(&y.narrow(2, 0, 9).unwrap(), &x.narrow(2, 0, 9).unwrap(), cfg, 8).unwrap();
    assert!(s.is_none());
}
