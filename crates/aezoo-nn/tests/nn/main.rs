//! aezoo-nn's tests: a finite-difference gradient check (f64) for every op and
//! layer the zoo uses, the candle 0.11 ops we replaced failing that same check,
//! TensorFlow SAME padding, the RNG, PyTorch-style init and the parameter store;
//! in the modules, the fused CPU layers against their composites, the layer
//! grammar, 3-D convolutions and Adam.

use aezoo_nn::gradcheck::{distinct_input, uniform_input, values_f64, GradCheck};
use aezoo_nn::layers::{self, Conv2dConfig, ConvTranspose2dConfig, GroupNormConfig, LinearConfig};
use aezoo_nn::same_pad::{same_out_len, same_pad, same_pad_amounts};
use aezoo_nn::{ops, ParamStore, Rng};
use candle_core::{DType, Device, Module, Result, Tensor, D};

mod conv3d;
mod fused;
mod grammar;
mod optim;

// ---------------------------------------------------------------- helpers

fn gc() -> GradCheck {
    GradCheck::default()
}

/// Runs a gradient check and fails the test with its message.
fn assert_grad<F: Fn(&[Tensor]) -> Result<Tensor>>(what: &str, f: F, inputs: &[Tensor]) {
    match gc().check(f, inputs) {
        Ok(r) => assert!(r.checked > 0 && r.max_abs_grad > 0.0, "{what}: nothing checked ({r:?})"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// A gradient check that must fail (an op we know to be wrong in candle).
fn assert_grad_wrong<F: Fn(&[Tensor]) -> Result<Tensor>>(what: &str, f: F, inputs: &[Tensor]) {
    assert!(
        gc().check(f, inputs).is_err(),
        "{what}: expected the gradient check to fail"
    );
}

fn u(shape: &[usize], seed: u64) -> Tensor {
    uniform_input(shape, -1.0, 1.0, seed).unwrap()
}

fn d(shape: &[usize], seed: u64) -> Tensor {
    distinct_input(shape, 0.01, seed).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

// ---------------------------------------------------------------- ops

#[test]
fn grad_linear() {
    // y = x Wᵀ + b through our layer's forward, with W and b as inputs.
    let f = |a: &[Tensor]| {
        let y = a[0].matmul(&a[1].t()?)?;
        y.broadcast_add(&a[2])
    };
    assert_grad("linear", f, &[u(&[3, 5], 1), u(&[4, 5], 2), u(&[4], 3)]);
}

#[test]
fn grad_conv2d_stride_and_padding() {
    for (k, s, p) in [(3, 1, 1), (3, 2, 1), (4, 2, 1), (3, 1, 0), (2, 2, 0)] {
        for (h, w) in [(7, 6), (8, 8)] {
            let f = move |a: &[Tensor]| ops::conv2d(&a[0], &a[1], None, p, s, 1, 1);
            assert_grad(
                &format!("conv2d k{k} s{s} p{p} on {h}x{w}"),
                f,
                &[u(&[2, 3, h, w], 10 + k as u64), u(&[4, 3, k, k], 20 + s as u64)],
            );
        }
    }
    // Dilation and groups.
    let f = |a: &[Tensor]| ops::conv2d(&a[0], &a[1], None, 2, 1, 2, 1);
    assert_grad("conv2d dilation 2", f, &[u(&[1, 2, 7, 7], 15), u(&[3, 2, 3, 3], 16)]);
    let f = |a: &[Tensor]| ops::conv2d(&a[0], &a[1], None, 1, 1, 1, 2);
    assert_grad("conv2d groups 2", f, &[u(&[1, 4, 5, 5], 17), u(&[4, 2, 3, 3], 18)]);
}

#[test]
fn candle_conv2d_backward_fails_when_the_stride_leaves_a_remainder() {
    // 6 wide, k 3, s 2, p 1: candle 0.11's backward errors (shape mismatch).
    let f = |a: &[Tensor]| a[0].conv2d(&a[1], 1, 2, 1, 1);
    assert_grad_wrong("candle conv2d", f, &[u(&[1, 2, 7, 6], 19), u(&[2, 2, 3, 3], 20)]);
    // Same forward values as ours.
    let (x, k) = (u(&[1, 2, 7, 6], 19), u(&[2, 2, 3, 3], 20));
    let a = x.conv2d(&k, 1, 2, 1, 1).unwrap();
    let b = ops::conv2d(&x, &k, None, 1, 2, 1, 1).unwrap();
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(diff < 1e-12, "{diff}");
}

#[test]
fn grad_conv2d_layer_with_bias() {
    for (h, w) in [(6, 6), (7, 6)] {
        let f = |a: &[Tensor]| ops::conv2d(&a[0], &a[1], Some(&a[2]), 1, 2, 1, 1);
        assert_grad(
            "conv2d+bias",
            f,
            &[u(&[2, 2, h, w], 4), u(&[4, 2, 4, 4], 5), u(&[4], 6)],
        );
        let f = |a: &[Tensor]| ops::conv_transpose2d(&a[0], &a[1], Some(&a[2]), 1, 0, 2, 1);
        assert_grad(
            "conv_transpose2d+bias",
            f,
            &[u(&[2, 2, h, w], 7), u(&[2, 4, 4, 4], 8), u(&[4], 9)],
        );
    }
    // The candle path (used off the CPU), remainder fix included.
    let f = |a: &[Tensor]| ops::conv2d_candle(&a[0], &a[1], 1, 2, 1, 1);
    assert_grad("conv2d_candle", f, &[u(&[2, 2, 7, 6], 4), u(&[4, 2, 3, 3], 5)]);
}

#[test]
fn grad_conv_transpose2d() {
    for (k, s, p, op) in [(2, 2, 0, 0), (4, 2, 1, 0), (3, 1, 1, 0), (3, 2, 1, 0), (3, 2, 1, 1)] {
        let f = move |a: &[Tensor]| ops::conv_transpose2d(&a[0], &a[1], None, p, op, s, 1);
        assert_grad(
            &format!("conv_transpose2d k{k} s{s} p{p} op{op}"),
            f,
            &[u(&[2, 3, 4, 5], 30 + k as u64), u(&[3, 2, k, k], 40 + s as u64)],
        );
    }
}

#[test]
fn grad_max_pool2d_ours() {
    for (k, s) in [(2, 2), (3, 2), (2, 1), (3, 3)] {
        let f = move |a: &[Tensor]| ops::max_pool2d(&a[0], k, s);
        assert_grad(&format!("max_pool2d k{k} s{s}"), f, &[d(&[2, 3, 7, 8], 50 + k as u64)]);
    }
    // The device-agnostic composite, too.
    let f = |a: &[Tensor]| ops::max_pool2d_composite(&a[0], 2);
    assert_grad("max_pool2d composite", f, &[d(&[2, 3, 6, 8], 55)]);
}

#[test]
fn max_pool2d_matches_candle_forward_and_fixes_its_backward() {
    let x = d(&[2, 3, 8, 6], 60);
    let ours = ops::max_pool2d(&x, 2, 2).unwrap();
    let theirs = x.max_pool2d(2).unwrap();
    let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0);
    // candle 0.11's backward scales the gradient by 1/k²: the check must catch it.
    assert_grad_wrong("candle max_pool2d", |a: &[Tensor]| a[0].max_pool2d(2), &[x]);
}

#[test]
fn max_pool2d_gradient_goes_to_first_max_on_ties() {
    // A window of equal values (e.g. ReLU zeros): PyTorch routes the gradient
    // to the first element only.
    let x = Tensor::zeros((1, 1, 2, 2), DType::F64, &Device::Cpu).unwrap();
    let v = candle_core::Var::from_tensor(&x).unwrap();
    let y = ops::max_pool2d(v.as_tensor(), 2, 2).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let gx: Vec<f64> = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(gx, vec![1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn max_pool2d_composite_matches_the_kernel_on_ties() {
    // The path GPUs take: the same values and the same first-maximum
    // gradient as the CPU kernel, on windows that tie in every pattern (all
    // equal, as a conv's bias over an image's zero pixels; two equal maxima
    // in each order; a tie below the maximum), with ±inf and NaN.
    let windows: [[f64; 4]; 10] = [
        [0.25, 0.25, 0.25, 0.25],
        [1.0, 3.0, 3.0, 0.0],
        [0.0, 0.0, 2.0, 2.0],
        [2.0, 0.0, 0.0, 2.0],
        [0.0, 2.0, 2.0, 0.0],
        [1.0, 1.0, 0.5, 3.0],
        [-1.0, f64::NEG_INFINITY, -2.0, -1.0],
        [f64::INFINITY, 0.0, f64::INFINITY, 1.0],
        [0.0, f64::NAN, 5.0, f64::NAN],
        [-0.5, 0.75, -0.25, 0.125],
    ];
    // Lay the windows out as 2×2 blocks of a (1, 1, 2, 20) image.
    let mut v = vec![0f64; 2 * 20];
    for (i, win) in windows.iter().enumerate() {
        for (j, x) in win.iter().enumerate() {
            v[(j / 2) * 20 + 2 * i + j % 2] = *x;
        }
    }
    let x = Tensor::from_vec(v, (1, 1, 2, 20), &Device::Cpu).unwrap();
    let r = d(&[1, 1, 1, 10], 57);
    let run = |pool: &dyn Fn(&Tensor) -> Result<Tensor>| {
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let y = pool(var.as_tensor()).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gx: Vec<f64> = g
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (y.flatten_all().unwrap().to_vec1::<f64>().unwrap(), gx)
    };
    let same = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(p, q)| p == q || (p.is_nan() && q.is_nan()));
    let kernel = run(&|t| ops::max_pool2d(t, 2, 2));
    let composite = run(&|t| ops::max_pool2d_composite(t, 2));
    assert!(
        same(&kernel.0, &composite.0),
        "values: {:?} vs {:?}",
        kernel.0,
        composite.0
    );
    assert!(
        same(&kernel.1, &composite.1),
        "gradients: {:?} vs {:?}",
        kernel.1,
        composite.1
    );
    // One element per window takes the gradient: the first maximum.
    assert_eq!(composite.1.iter().filter(|g| **g != 0.0).count(), 10);
    let first = |i: usize, j: usize| composite.1[(j / 2) * 20 + 2 * i + j % 2] != 0.0;
    assert!(first(1, 1) && first(2, 2) && first(3, 0) && first(4, 1) && first(7, 0) && first(8, 1));
}

/// The first-maximum rule, written out: expected pooled values and input
/// gradient of `sum(pool(x) · r)` (NaN wins, the first NaN).
fn pool_by_hand(x: &[f32], (p, h, w): (usize, usize, usize), k: usize, s: usize, r: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let (mut y, mut g) = (vec![0f32; p * oh * ow], vec![0f32; p * h * w]);
    for pl in 0..p {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = pl * h * w + oy * s * w + ox * s;
                'win: for dy in 0..k {
                    for dx in 0..k {
                        let i = pl * h * w + (oy * s + dy) * w + ox * s + dx;
                        if x[best].is_nan() {
                            break 'win;
                        }
                        if x[i] > x[best] || x[i].is_nan() {
                            best = i;
                        }
                    }
                }
                let o = pl * oh * ow + oy * ow + ox;
                y[o] = x[best];
                g[best] += r[o];
            }
        }
    }
    (y, g)
}

#[test]
fn max_pool2d_matches_the_first_max_rule_with_ties_and_nan() {
    // Values in {0, 1, 2} make ties everywhere (as after a ReLU); two NaNs;
    // big enough that the planes are split across threads; odd sizes leave
    // a row and a column that no 2×2 window reads.
    let (b, c, h, w) = (4, 9, 13, 15);
    let mut rng = Rng::new(81);
    let mut x: Vec<f32> = (0..b * c * h * w)
        .map(|_| (rng.uniform() * 3.0).floor() as f32)
        .collect();
    x[5 * h * w + 2 * w + 3] = f32::NAN;
    x[17 * h * w + 7 * w + 8] = f32::NAN;
    for (k, s) in [(2, 2), (3, 2), (2, 1)] {
        let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
        let r: Vec<f32> = (0..b * c * oh * ow).map(|_| rng.uniform() as f32 - 0.5).collect();
        let (want_y, want_g) = pool_by_hand(&x, (b * c, h, w), k, s, &r);
        let v = candle_core::Var::from_vec(x.clone(), (b, c, h, w), &Device::Cpu).unwrap();
        let y = ops::max_pool2d(v.as_tensor(), k, s).unwrap();
        let rt = Tensor::from_vec(r, (b, c, oh, ow), &Device::Cpu).unwrap();
        let g = (&y * rt).unwrap().sum_all().unwrap().backward().unwrap();
        let got_y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let got_g: Vec<f32> = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p == q || (p.is_nan() && q.is_nan()));
        assert!(same(&got_y, &want_y), "k{k} s{s}: pooled values differ");
        assert!(got_y.iter().any(|v| v.is_nan()), "k{k} s{s}: NaN must come through");
        assert!(same(&got_g, &want_g), "k{k} s{s}: gradient routed elsewhere");
    }
}

#[test]
fn grad_upsample_nearest2d() {
    let f = |a: &[Tensor]| ops::upsample_nearest2d(&a[0], 2, 2);
    assert_grad("upsample x2", f, &[u(&[2, 3, 3, 4], 70)]);
    let f = |a: &[Tensor]| ops::upsample_nearest2d(&a[0], 2, 3);
    assert_grad("upsample 2x3", f, &[u(&[1, 2, 3, 2], 71)]);
    // The input also feeds another branch: gradients must add up.
    let f = |a: &[Tensor]| {
        let up = ops::upsample_nearest2d(&a[0], 2, 2)?;
        let skip = a[0].sqr()?.sum_all()?;
        up.sum_all()? + skip
    };
    assert_grad("upsample + second use", f, &[u(&[1, 2, 3, 3], 72)]);
    // The CPU op equals the broadcast formulation.
    let x = u(&[2, 3, 3, 4], 74);
    let a = ops::upsample_nearest2d(&x, 2, 3).unwrap();
    let b = x
        .reshape((2, 3, 3, 1, 4, 1))
        .unwrap()
        .broadcast_as((2, 3, 3, 2, 4, 3))
        .unwrap()
        .reshape((2, 3, 6, 12))
        .unwrap();
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert_eq!(d, 0.0);
}

#[test]
fn candle_upsample_drops_other_gradients() {
    // candle 0.11 overwrites the accumulated gradient of the upsampled input.
    let f = |a: &[Tensor]| {
        let skip = (&a[0] * 3.0)?.upsample_nearest2d(6, 6)?.sum_all()?;
        let up = a[0].upsample_nearest2d(6, 6)?.sum_all()?;
        let other = a[0].sqr()?.sum_all()?;
        (up + skip)? + other
    };
    assert_grad_wrong("candle upsample", f, &[u(&[1, 2, 3, 3], 73)]);
}

#[test]
fn grad_activations() {
    let x = d(&[3, 7], 80);
    assert_grad("relu", |a: &[Tensor]| ops::relu(&a[0]), &[x]);
    assert_grad("silu", |a: &[Tensor]| ops::silu(&a[0]), &[u(&[3, 7], 81)]);
    assert_grad("sigmoid", |a: &[Tensor]| ops::sigmoid(&a[0]), &[u(&[3, 7], 82)]);
    // The fused sigmoid (CPU) against candle's, far into both tails, f64 and f32;
    // a transposed (non-contiguous) input too.
    let x = (u(&[5, 40_000], 87) * 40.0).unwrap();
    for dt in [DType::F64, DType::F32] {
        let x = x.to_dtype(dt).unwrap();
        let d = max_abs_diff(&ops::sigmoid(&x).unwrap(), &candle_nn::ops::sigmoid(&x).unwrap());
        assert!(
            d < if dt == DType::F64 { 1e-15 } else { 3e-7 },
            "{dt:?}: sigmoid differs from candle's by {d}"
        );
    }
    let xt = x.t().unwrap();
    assert!(max_abs_diff(&ops::sigmoid(&xt).unwrap(), &candle_nn::ops::sigmoid(&xt).unwrap()) < 1e-15);
    assert_grad(
        "softmax dim 1",
        |a: &[Tensor]| ops::softmax(&a[0], 1),
        &[u(&[3, 7], 83)],
    );
    assert_grad(
        "softmax last",
        |a: &[Tensor]| ops::softmax_last_dim(&a[0]),
        &[u(&[2, 3, 5], 84)],
    );
    assert_grad(
        "softmax dim 0",
        |a: &[Tensor]| ops::softmax(&a[0], 0),
        &[u(&[4, 3], 85)],
    );
}

#[test]
fn candle_softmax_last_dim_has_no_gradient() {
    let f = |a: &[Tensor]| candle_nn::ops::softmax_last_dim(&a[0]);
    assert_grad_wrong("candle softmax_last_dim", f, &[u(&[3, 5], 86)]);
    // The composite one the project uses is right.
    assert_grad(
        "softmax(D::Minus1)",
        |a: &[Tensor]| candle_nn::ops::softmax(&a[0], D::Minus1),
        &[u(&[3, 5], 86)],
    );
}

#[test]
fn gdn_matches_the_compressai_formula() {
    // Pins from `python3 scripts/pins/gdn_ref.py` (torch 2.15, f64; CompressAI's
    // GDN forward: x / sqrt(conv2d(x², γ, β)), or x · sqrt(…) for IGDN).
    let (b, c, h, w) = (2, 3, 2, 2);
    let x: Vec<f64> = (0..b * c * h * w)
        .map(|i| ((i * 37) % 23) as f64 / 11.0 - 1.0)
        .collect();
    let x = Tensor::from_vec(x, (b, c, h, w), &Device::Cpu).unwrap();
    let beta = Tensor::new(&[1.0f64, 0.5, 2.0], &Device::Cpu).unwrap();
    let gamma = Tensor::new(
        &[[0.1f64, 0.02, 0.0], [0.03, 0.2, 0.01], [0.0, 0.05, 0.3]],
        &Device::Cpu,
    )
    .unwrap();
    for (inverse, sum, first) in [
        (
            false,
            -0.639561287041997,
            [
                -0.953390962262113,
                0.269516651028463,
                -0.536828127095019,
                0.707383156722286,
            ],
        ),
        (
            true,
            -1.484619417608594,
            [
                -1.048887643771342,
                0.275976141011789,
                -0.554219583774461,
                0.747721535080830,
            ],
        ),
    ] {
        let y = ops::gdn(&x, &beta, &gamma, inverse).unwrap();
        let got_sum = y.sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(
            (got_sum - sum).abs() < 1e-12,
            "inverse {inverse}: sum {got_sum} vs {sum}"
        );
        let got: Vec<f64> = y.flatten_all().unwrap().narrow(0, 0, 4).unwrap().to_vec1().unwrap();
        for (g, e) in got.iter().zip(first) {
            assert!((g - e).abs() < 1e-12, "inverse {inverse}: {got:?} vs {first:?}");
        }
    }
}

#[test]
fn grad_gdn_and_igdn() {
    // The op with x, β and γ as inputs (β, γ kept positive), then the layer
    // with its squared parametrisation: the gradient reaches beta and gamma.
    for inverse in [false, true] {
        let f = move |a: &[Tensor]| ops::gdn(&a[0], &a[1], &a[2], inverse);
        let beta = (u(&[3], 120).abs().unwrap() + 0.5).unwrap();
        let gamma = (u(&[3, 3], 121).abs().unwrap() * 0.3).unwrap();
        assert_grad(
            &format!("gdn inverse={inverse}"),
            f,
            &[u(&[2, 3, 3, 2], 122), beta, gamma],
        );
        let store = ParamStore::init(5);
        let layer = layers::gdn(3, inverse, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
        assert_grad(
            &format!("Gdn layer inverse={inverse}"),
            |a: &[Tensor]| layer.forward(&a[0]),
            &[u(&[2, 3, 3, 2], 123)],
        );
        let loss = layer
            .forward(&u(&[2, 3, 3, 2], 124))
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in store.vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let m = g.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(m > 0.0, "{name}: zero gradient");
        }
        // At initialisation: β = 1 + 10⁻⁶, γ ≈ 0.1·I.
        let (b, g) = layer.effective().unwrap();
        let b: Vec<f64> = b.to_vec1().unwrap();
        let g: Vec<Vec<f64>> = g.to_vec2().unwrap();
        assert!(
            (b[0] - 1.000001).abs() < 1e-12 && (g[1][1] - 0.1).abs() < 1e-3 && g[0][1] < 1e-5,
            "{b:?} {g:?}"
        );
    }
}

#[test]
fn grad_group_norm() {
    // GroupNorm(2 groups, 4 channels) with affine weight and bias as inputs.
    let f = |a: &[Tensor]| {
        let gn = candle_nn::GroupNorm::new(a[1].clone(), a[2].clone(), 4, 2, 1e-5)?;
        gn.forward(&a[0])
    };
    assert_grad("group_norm", f, &[u(&[2, 4, 3, 3], 90), u(&[4], 91), u(&[4], 92)]);
}

#[test]
fn grad_layers_built_through_the_store() {
    // Every layer type, built by our constructors, with the parameters as
    // checked inputs: the layer forward is what the models run.
    let store = ParamStore::init(7);
    let vb = store.var_builder(DType::F64, &Device::Cpu);
    let lin = layers::linear(5, 3, LinearConfig::default(), vb.pp("lin")).unwrap();
    let conv = layers::conv2d(
        2,
        3,
        4,
        Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        },
        vb.pp("c"),
    )
    .unwrap();
    let tconv = layers::conv_transpose2d(
        3,
        2,
        4,
        ConvTranspose2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        },
        vb.pp("t"),
    )
    .unwrap();
    let gn = layers::group_norm(1, 3, GroupNormConfig::default(), vb.pp("gn")).unwrap();
    assert_grad("Linear layer", |a: &[Tensor]| lin.forward(&a[0]), &[u(&[4, 5], 100)]);
    assert_grad(
        "Conv2d → GroupNorm → ConvTranspose2d",
        |a: &[Tensor]| tconv.forward(&gn.forward(&conv.forward(&a[0])?)?),
        &[u(&[2, 2, 6, 6], 101)],
    );
    // And the gradient reaches the parameters themselves.
    let x = u(&[2, 2, 6, 6], 102);
    let loss = tconv
        .forward(&ops::relu(&conv.forward(&x).unwrap()).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in store.vars() {
        if name.starts_with("gn") || name.starts_with("lin") {
            continue;
        }
        assert!(grads.get(var.as_tensor()).is_some(), "no gradient for {name}");
    }
}

// ---------------------------------------------------------------- same_pad

// Expected values from TensorFlow's SAME rule, computed with this script:
//
//   def tf_same(n, k, s, d=1):
//       out = -(-n // s)                      # ceil(n / s)
//       eff = (k - 1) * d + 1
//       total = max((out - 1) * s + eff - n, 0)
//       return total // 2, total - total // 2
//   for case in [(28,3,1),(28,3,2),(27,3,2),(28,4,2),(27,4,2),(5,1,2),(5,2,3),
//                (64,5,2),(8,3,1,2),(7,2,2),(6,5,4),(1,3,1)]:
//       print(case, tf_same(*case))
//
// and cross-checked against `tf.nn.conv2d(..., padding="SAME")` output sizes
// in `same_pad_matches_tensorflow_outputs` below.
#[test]
fn same_pad_amounts_follow_tensorflow() {
    let cases: &[((usize, usize, usize, usize), (usize, usize))] = &[
        ((28, 3, 1, 1), (1, 1)),
        ((28, 3, 2, 1), (0, 1)),
        ((27, 3, 2, 1), (1, 1)),
        ((28, 4, 2, 1), (1, 1)),
        ((27, 4, 2, 1), (1, 2)),
        ((5, 1, 2, 1), (0, 0)),
        ((5, 2, 3, 1), (0, 0)), // kernel < stride
        ((64, 5, 2, 1), (1, 2)),
        ((8, 3, 1, 2), (2, 2)), // dilation 2
        ((7, 2, 2, 1), (0, 1)),
        ((6, 5, 4, 1), (1, 2)),
        ((1, 3, 1, 1), (1, 1)),
    ];
    for &((n, k, s, dl), want) in cases {
        assert_eq!(same_pad_amounts(n, k, s, dl), want, "n={n} k={k} s={s} d={dl}");
    }
}

#[test]
fn same_pad_2d_and_3d_shapes() {
    // 2-D: (b, c, h, w), odd and even sizes, stride 2 kernel 3.
    let x = Tensor::ones((1, 1, 7, 8), DType::F32, &Device::Cpu).unwrap();
    let p = same_pad(&x, &[3, 3], &[2, 2]).unwrap();
    assert_eq!(p.dims(), &[1, 1, 9, 9]); // h: (1,1); w: (0,1)
    let w = Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let y = p.conv2d(&w, 0, 2, 1, 1).unwrap();
    assert_eq!(y.dims(), &[1, 1, same_out_len(7, 2), same_out_len(8, 2)]);
    // Zero padding goes after when odd: the last column is padding.
    let col: Vec<f32> = p.narrow(3, 8, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(col.iter().all(|&v| v == 0.0));
    // 3-D: (b, c, t, h, w) with kernel 3x4x4, stride 1x2x2 (the video model's).
    let v = Tensor::ones((1, 2, 20, 64, 63), DType::F32, &Device::Cpu).unwrap();
    let p = same_pad(&v, &[3, 4, 4], &[1, 2, 2]).unwrap();
    assert_eq!(p.dims(), &[1, 2, 22, 66, 66]); // w 63: out 32, needs 66
                                               // Wrong ranks are an error, not a panic.
    assert!(same_pad(&x, &[3, 3, 3], &[1, 1, 1]).is_err());
    assert!(same_pad(&x, &[3, 3], &[1]).is_err());
}

// TensorFlow itself: `python3 scripts/pins/same_pad_tf.py` (tensorflow-cpu 2.21)
// printed these `tf.nn.conv2d(padding="SAME")` outputs for
// x[i, j] = ((7i + 3j) % 11) / 10 and w[a, b] = ((5a + 2b) % 7) / 6 - 0.5,
// and these `tf.nn.conv3d(padding="SAME")` output shapes.
#[test]
fn same_pad_then_valid_conv_equals_tensorflow_same() {
    let cases: &[((usize, usize, usize, usize), &[f64])] = &[
        (
            (7, 8, 3, 2),
            &[
                -1.666666666666664e-02,
                -5.000000000000000e-01,
                -4.333333333333333e-01,
                -6.666666666666665e-02,
                -1.016666666666667e+00,
                4.000000000000000e-01,
                -9.333333333333333e-01,
                2.833333333333334e-01,
                -9.500000000000001e-01,
                -8.166666666666667e-01,
                -5.000000000000000e-01,
                -6.000000000000001e-01,
                1.333333333333333e-01,
                -7.333333333333334e-01,
                4.999999999999999e-02,
                -7.000000000000002e-01,
            ],
        ),
        (
            (8, 7, 2, 3),
            &[
                -3.166666666666667e-01,
                -7.000000000000000e-01,
                -2.500000000000000e-01,
                -7.833333333333333e-01,
                -6.166666666666667e-01,
                -2.333333333333333e-01,
                -7.000000000000000e-01,
                -7.166666666666666e-01,
                -2.166666666666667e-01,
            ],
        ),
        (
            (6, 6, 4, 2),
            &[
                -5.000000000000000e-01,
                -1.016666666666667e+00,
                6.500000000000001e-01,
                4.500000000000000e-01,
                -1.000000000000000e+00,
                -6.166666666666667e-01,
                -6.333333333333334e-01,
                4.666666666666666e-01,
                -9.333333333333333e-01,
            ],
        ),
        (
            (5, 9, 3, 1),
            &[
                -3.166666666666667e-01,
                -1.666666666666664e-02,
                -5.333333333333333e-01,
                -5.000000000000000e-01,
                4.500000000000001e-01,
                -4.333333333333333e-01,
                -5.833333333333333e-01,
                -5.500000000000000e-01,
                5.333333333333334e-01,
                -6.666666666666665e-01,
                -5.000000000000000e-01,
                3.000000000000001e-01,
                -9.166666666666667e-01,
                -8.500000000000001e-01,
                -5.000000000000010e-02,
                -1.666666666666667e-01,
                -1.016666666666667e+00,
                -6.166666666666666e-01,
                3.333333333333330e-02,
                -1.016666666666667e+00,
                -9.500000000000001e-01,
                4.000000000000000e-01,
                -8.166666666666667e-01,
                -9.333333333333333e-01,
                -5.000000000000000e-01,
                3.000000000000001e-01,
                -6.000000000000001e-01,
                -7.333333333333334e-01,
                3.000000000000001e-01,
                -9.166666666666667e-01,
                -8.500000000000001e-01,
                -5.000000000000010e-02,
                -1.666666666666667e-01,
                -1.016666666666667e+00,
                -9.500000000000001e-01,
                3.333333333333334e-01,
                -5.833333333333334e-01,
                -7.166666666666667e-01,
                1.333333333333333e-01,
                -6.666666666666666e-01,
                -7.333333333333334e-01,
                -2.500000000000001e-01,
                4.999999999999999e-02,
                -7.500000000000001e-01,
                -7.000000000000000e-01,
            ],
        ),
    ];
    for &((h, w, k, s), want) in cases {
        let x: Vec<f64> = (0..h * w)
            .map(|n| ((7 * (n / w) + 3 * (n % w)) % 11) as f64 / 10.0)
            .collect();
        let kv: Vec<f64> = (0..k * k)
            .map(|n| ((5 * (n / k) + 2 * (n % k)) % 7) as f64 / 6.0 - 0.5)
            .collect();
        let x = Tensor::from_vec(x, (1, 1, h, w), &Device::Cpu).unwrap();
        let kt = Tensor::from_vec(kv, (1, 1, k, k), &Device::Cpu).unwrap();
        let y = ops::conv2d(&same_pad(&x, &[k, k], &[s, s]).unwrap(), &kt, None, 0, s, 1, 1).unwrap();
        assert_eq!(
            y.dims(),
            &[1, 1, same_out_len(h, s), same_out_len(w, s)],
            "h={h} w={w} k={k} s={s}"
        );
        let got: Vec<f64> = y.flatten_all().unwrap().to_vec1().unwrap();
        for (g, t) in got.iter().zip(want) {
            assert!((g - t).abs() < 1e-12, "h={h} w={w} k={k} s={s}: {got:?} vs TF {want:?}");
        }
    }
    // 3-D: padded sizes give TF's SAME output shapes under a valid conv.
    for (input, kernel, stride, tf_out) in [
        ([20, 64, 64], [3, 4, 4], [1, 2, 2], [20, 32, 32]),
        ([5, 7, 6], [3, 4, 4], [1, 2, 2], [5, 4, 3]),
        ([9, 9, 9], [2, 2, 2], [3, 3, 3], [3, 3, 3]),
    ] {
        let v = Tensor::zeros((1, 1, input[0], input[1], input[2]), DType::F32, &Device::Cpu).unwrap();
        let p = same_pad(&v, &kernel, &stride).unwrap();
        for i in 0..3 {
            let valid = (p.dim(2 + i).unwrap() - kernel[i]) / stride[i] + 1;
            assert_eq!(
                valid, tf_out[i],
                "3-D axis {i}: input {input:?} kernel {kernel:?} stride {stride:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- RNG, init, store

#[test]
fn rng_is_seeded_and_resumable() {
    let mut a = Rng::new(42);
    let mut b = Rng::new(42);
    let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
    let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
    assert_eq!(xs, ys);
    let saved = a.state();
    let next = a.next_u64();
    assert_eq!(Rng::from_state(saved).next_u64(), next);
    assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    // Permutations are permutations; normals have the right moments.
    let mut p = Rng::new(3).permutation(1000);
    p.sort_unstable();
    assert_eq!(p, (0..1000).collect::<Vec<_>>());
    let mut v = vec![0f64; 200_000];
    Rng::new(4).fill_normal(&mut v);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.01, "mean {mean} var {var}");
}

#[test]
fn init_matches_pytorch_bounds() {
    // PyTorch: U(±1/√fan_in); fan_in of ConvTranspose2d is out·k·k.
    let store = ParamStore::init(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let _ = layers::linear(784, 64, LinearConfig::default(), vb.pp("l")).unwrap();
    let _ = layers::conv2d(32, 64, 4, Conv2dConfig::default(), vb.pp("c")).unwrap();
    let _ = layers::conv_transpose2d(64, 32, 4, ConvTranspose2dConfig::default(), vb.pp("t")).unwrap();
    for (name, t) in store.tensors() {
        let fan_in = match name.as_str() {
            n if n.starts_with("l.") => 784.0,
            n if n.starts_with("c.") => 32.0 * 16.0,
            _ => 32.0 * 16.0,
        };
        let bound = 1.0 / f64::sqrt(fan_in);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let max = v.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
        assert!(max <= bound, "{name}: max {max} > bound {bound}");
        if v.len() > 1000 {
            let std = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            let want = bound / 3f64.sqrt();
            assert!((std - want).abs() < 0.03 * want, "{name}: std {std} vs {want}");
        }
    }
    // Same seed, same weights.
    let again = ParamStore::init(0);
    let vb = again.var_builder(DType::F32, &Device::Cpu);
    let _ = layers::linear(784, 64, LinearConfig::default(), vb.pp("l")).unwrap();
    let pick = |s: &ParamStore| -> Vec<f32> {
        let t = s.tensors().into_iter().find(|(n, _)| n == "l.weight").unwrap().1;
        t.flatten_all().unwrap().to_vec1().unwrap()
    };
    assert!(pick(&store) == pick(&again), "same seed gave different weights");
}

#[test]
fn store_load_is_strict() {
    let dir = std::env::temp_dir().join(format!("aezoo-nn-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    let store = ParamStore::init(1);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let _ = layers::linear(4, 3, LinearConfig::default(), vb.pp("enc")).unwrap();
    store.save(&path).unwrap();

    // Round trip.
    let back = ParamStore::load(&path, false).unwrap();
    let vb = back.var_builder(DType::F32, &Device::Cpu);
    let _ = layers::linear(4, 3, LinearConfig::default(), vb.pp("enc")).unwrap();
    back.finish().unwrap();
    assert_eq!(back.tensors().len(), 2);

    // A model with another tensor name: missing tensor, named.
    let other = ParamStore::load(&path, false).unwrap();
    let vb = other.var_builder(DType::F32, &Device::Cpu);
    let e = layers::linear(4, 3, LinearConfig::default(), vb.pp("dec"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("missing tensor `dec.weight`") && e.contains("w.safetensors"),
        "{e}"
    );

    // Wrong shape, named.
    let other = ParamStore::load(&path, false).unwrap();
    let vb = other.var_builder(DType::F32, &Device::Cpu);
    let e = layers::linear(5, 3, LinearConfig::default(), vb.pp("enc"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("enc.weight") && e.contains("[3, 4]"), "{e}");

    // Extra tensors in the file: refused by finish().
    let other = ParamStore::load(&path, false).unwrap();
    let vb = other.var_builder(DType::F32, &Device::Cpu);
    let _ = layers::linear(4, 3, LinearConfig { bias: false }, vb.pp("enc")).unwrap();
    let e = other.finish().err().unwrap().to_string();
    assert!(e.contains("enc.bias"), "{e}");

    // Truncated file.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = ParamStore::load(&path, false).err().unwrap().to_string();
    assert!(e.contains("not a valid safetensors file"), "{e}");

    // An f32 tensor relabelled I32 or U32 (the same bytes), and weights
    // holding NaN or Inf: refused, naming the file and the tensor.
    store.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + header_len]).unwrap();
    for int in ["I32", "U32"] {
        let relabelled = header.replace("\"F32\"", &format!("\"{int}\""));
        assert_ne!(relabelled, header);
        std::fs::write(
            &path,
            [&good[..8], relabelled.as_bytes(), &good[8 + header_len..]].concat(),
        )
        .unwrap();
        let e = ParamStore::load(&path, false).err().unwrap().to_string();
        assert!(
            e.contains("w.safetensors") && e.contains(&format!("dtype {int}")) && e.contains("float"),
            "{e}"
        );
    }
    for bad in [f32::NAN, f32::INFINITY] {
        let mut m = good.clone();
        let at = 8 + header_len + 4; // the second value of the first tensor
        m[at..at + 4].copy_from_slice(&bad.to_le_bytes());
        std::fs::write(&path, &m).unwrap();
        let e = ParamStore::load(&path, false).err().unwrap().to_string();
        assert!(
            e.contains("w.safetensors") && e.contains("NaN or Inf") && e.contains("index 1"),
            "{e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sizes_beyond_the_budget_are_errors_not_aborts() {
    // A parameter of 2^40 values is refused before anything is drawn.
    let store = ParamStore::init(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let e = layers::linear(1 << 20, 1 << 20, LinearConfig::default(), vb.pp("enc"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("enc.weight") && e.contains("1099511627776") && e.contains("limit"),
        "{e}"
    );
    // Tensors each within the per-tensor limit, but past the model's.
    let store = ParamStore::init(0).with_param_budget(1000);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let mut e = None;
    for i in 0..8 {
        if let Err(x) = vb.get_with_hints((10, 30), &format!("w{i}"), candle_nn::Init::Const(0.0)) {
            e = Some(x.to_string());
            break;
        }
    }
    let e = e.expect("the budget refuses the 4th 300-value tensor");
    assert!(
        e.contains("parameter count") && e.contains("w3") && e.contains("1200"),
        "{e}"
    );
    // A layer list whose sizes or shapes are beyond the budget.
    let e = aezoo_nn::spec::parse_list("encoder", &["C2d_3_99999999999_3".to_string()]).unwrap_err();
    assert!(e.to_string().contains("above the limit"), "{e}");
    let list = aezoo_nn::spec::parse_list(
        "decoder",
        &["Lin_4_16777216".to_string(), "Lin_16777216_64".to_string()],
    )
    .unwrap();
    let e = list.infer_shapes(aezoo_nn::spec::FeatShape::Flat { d: 4 }).unwrap();
    assert_eq!(e.len(), 2, "the sizes themselves are within it");
    let list = aezoo_nn::spec::parse_list("decoder", &["Unflat_16777216_16777216_16777216".to_string()]).unwrap();
    let e = list.infer_shapes(aezoo_nn::spec::FeatShape::Flat { d: 4 }).unwrap_err();
    assert!(e.to_string().contains("= more than a usize is not the 4 inputs"), "{e}");
    let list = aezoo_nn::spec::parse_list("decoder", &["4*UpS_64".to_string()]).unwrap();
    let e = list
        .infer_shapes(aezoo_nn::spec::FeatShape::Map { c: 3, h: 8, w: 8 })
        .unwrap_err();
    assert!(e.to_string().contains("above the limit"), "{e}");
}

#[test]
fn gemm_convs_match_candle_forward() {
    let maxdiff = |a: Tensor, b: Tensor| -> f64 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for (k, s, p, dl) in [
        (3, 1, 1, 1),
        (4, 2, 1, 1),
        (3, 2, 0, 1),
        (3, 1, 2, 2),
        (1, 1, 0, 1),
        (5, 3, 2, 1),
    ] {
        let x = u(&[3, 4, 9, 8], 200);
        let w = u(&[5, 4, k, k], 201);
        let ours = ops::conv2d(&x, &w, None, p, s, dl, 1).unwrap();
        let theirs = x.conv2d(&w, p, s, dl, 1).unwrap();
        assert!(maxdiff(ours, theirs) < 1e-12, "conv2d k{k} s{s} p{p} d{dl}");
        let wt = u(&[4, 5, k, k], 202);
        for op in 0..s.min(2) {
            let ours = ops::conv_transpose2d(&x, &wt, None, p, op, s, dl).unwrap();
            let theirs = x.conv_transpose2d(&wt, p, op, s, dl).unwrap();
            assert!(
                maxdiff(ours, theirs) < 1e-12,
                "conv_transpose2d k{k} s{s} p{p} op{op} d{dl}"
            );
        }
    }
    // f32 too.
    let x = u(&[2, 3, 8, 8], 203).to_dtype(DType::F32).unwrap();
    let w = u(&[4, 3, 3, 3], 204).to_dtype(DType::F32).unwrap();
    let b = u(&[4], 205).to_dtype(DType::F32).unwrap();
    let ours = ops::conv2d(&x, &w, Some(&b), 1, 1, 1, 1).unwrap();
    let theirs = x
        .conv2d(&w, 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
        .unwrap();
    let d = (ours - theirs)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5, "{d}");
}
