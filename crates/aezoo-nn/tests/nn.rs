//! aezoo-nn's tests: a finite-difference gradient check (f64) for every op and
//! layer the zoo uses, the candle 0.11 ops we replaced failing that same check,
//! TensorFlow SAME padding, the RNG, PyTorch-style init and the parameter store.

use aezoo_nn::gradcheck::{distinct_input, uniform_input, values_f64, GradCheck};
use aezoo_nn::layers::{self, Conv2dConfig, ConvTranspose2dConfig, GroupNormConfig, LinearConfig};
use aezoo_nn::same_pad::{same_out_len, same_pad, same_pad_amounts};
use aezoo_nn::{ops, ParamStore, Rng};
use candle_core::{DType, Device, Module, Result, Tensor, D};

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
    std::fs::remove_dir_all(&dir).unwrap();
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

// ---------------------------------------------------------------- fused layers

use aezoo_nn::fused::{self, Act, Float};
use aezoo_nn::layers::apply_act;

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

/// The composite reference of a fused conv: candle's conv, the bias
/// broadcast over its channels, the activation.
fn plain_conv(x: &Tensor, wt: &Tensor, bias: &Tensor, p: usize, s: usize, dl: usize, act: Act) -> Tensor {
    let b = bias.reshape((1, bias.elem_count(), 1, 1)).unwrap();
    apply_act(
        ops::conv2d_candle(x, wt, p, s, dl, 1)
            .unwrap()
            .broadcast_add(&b)
            .unwrap(),
        act,
    )
    .unwrap()
}

/// … and of a fused transposed conv (dilation 1).
fn plain_convt(x: &Tensor, wt: &Tensor, bias: &Tensor, p: usize, op: usize, s: usize, act: Act) -> Tensor {
    let b = bias.reshape((1, bias.elem_count(), 1, 1)).unwrap();
    apply_act(
        x.conv_transpose2d(wt, p, op, s, 1).unwrap().broadcast_add(&b).unwrap(),
        act,
    )
    .unwrap()
}

#[test]
fn fused_conv2d_matches_composite_and_finite_differences() {
    // Batch 1 (threaded GEMMs) and 6 (one image per task) take different paths.
    for (b, h, w, k, s, p, dl) in [
        (1, 7, 6, 3, 2, 1, 1),
        (6, 6, 6, 4, 2, 1, 1),
        (2, 5, 5, 3, 1, 2, 2),
        (5, 8, 7, 1, 1, 0, 1),
        // Narrow outputs unfold into channels-last patch rows (c·kw ≥ ow),
        // wide ones into plane rows, whose strides 2 and 3 split each row
        // into phases and stride 9 gathers with strided loads.
        (2, 11, 10, 3, 3, 1, 1),
        (3, 9, 13, 4, 3, 2, 1),
        (1, 20, 19, 2, 9, 0, 1),
        (2, 6, 31, 3, 2, 1, 1),
        (1, 7, 40, 3, 3, 1, 1),
        (1, 5, 80, 2, 9, 0, 1),
    ] {
        for act in [Act::None, Act::Relu, Act::Sigmoid] {
            let (x, wt, bias) = (u(&[b, 3, h, w], 300), u(&[4, 3, k, k], 301), u(&[4], 302));
            let fused = fused::conv2d(&x, &wt, &bias, p, s, dl, act).unwrap();
            let plain = plain_conv(&x, &wt, &bias, p, s, dl, act);
            let what = format!("fused conv2d b{b} {h}x{w} k{k} s{s} p{p} d{dl} {act:?}");
            assert!(max_abs_diff(&fused, &plain) < 1e-12, "{what}: forward differs");
            let f = move |a: &[Tensor]| fused::conv2d(&a[0], &a[1], &a[2], p, s, dl, act);
            assert_grad(&what, f, &[x, wt, bias]);
        }
    }
}

#[test]
fn fused_conv2d_pool2_matches_conv_then_max_pool_and_finite_differences() {
    // Even and odd (floored) outputs, both batch paths, every activation.
    for (b, h, w, k, s, p) in [(1, 6, 8, 3, 1, 1), (6, 7, 7, 3, 1, 1), (2, 9, 6, 4, 2, 1)] {
        for act in [Act::None, Act::Relu, Act::Sigmoid] {
            let (x, wt, bias) = (u(&[b, 2, h, w], 340), u(&[3, 2, k, k], 341), u(&[3], 342));
            let composite = move |a: &[Tensor]| {
                let y = ops::conv2d_candle(&a[0], &a[1], p, s, 1, 1)?.broadcast_add(&a[2].reshape((1, 3, 1, 1))?)?;
                ops::max_pool2d(&apply_act(y, act)?, 2, 2)
            };
            let fused = move |a: &[Tensor]| fused::conv2d_pool2(&a[0], &a[1], &a[2], p, s, 1, act);
            let what = format!("fused conv2d+pool b{b} {h}x{w} k{k} s{s} p{p} {act:?}");
            let args = [x, wt, bias];
            assert!(
                max_abs_diff(&fused(&args).unwrap(), &composite(&args).unwrap()) < 1e-12,
                "{what}: forward differs"
            );
            // The gradients of both paths under the same random cotangent.
            let vars: Vec<candle_core::Var> = args.iter().map(|t| candle_core::Var::from_tensor(t).unwrap()).collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let (yf, yc) = (fused(&ts).unwrap(), composite(&ts).unwrap());
            let r = u(yf.dims(), 343);
            let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (&yc * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for t in &ts {
                let d = max_abs_diff(gf.get(t).unwrap(), gc.get(t).unwrap());
                assert!(d < 1e-12, "{what}: gradient differs by {d}");
            }
            assert_grad(&what, fused, &args);
        }
    }
    // A window whose maximum is tied routes the gradient to the first one, as the plain pool does.
    let x = Tensor::zeros((1, 1, 4, 4), DType::F64, &Device::Cpu).unwrap();
    let (wt, bias) = (
        Tensor::ones((1, 1, 1, 1), DType::F64, &Device::Cpu).unwrap(),
        u(&[1], 344).abs().unwrap(),
    );
    let xv = candle_core::Var::from_tensor(&x).unwrap();
    let g = fused::conv2d_pool2(xv.as_tensor(), &wt, &bias, 0, 1, 1, Act::Relu)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let dx: Vec<f64> = g.get(xv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(dx, [1., 0., 1., 0., 0., 0., 0., 0., 1., 0., 1., 0., 0., 0., 0., 0.]);
    // Too small an output for the window is an error, not a panic.
    let err = fused::conv2d_pool2(
        &u(&[1, 1, 3, 3], 345),
        &u(&[1, 1, 3, 3], 346),
        &u(&[1], 347),
        0,
        1,
        1,
        Act::Relu,
    );
    assert!(err.unwrap_err().to_string().contains("smaller than the 2x2 window"));
}

#[test]
fn fused_conv_transpose2d_matches_composite_and_finite_differences() {
    for (b, h, w, k, s, p, op) in [
        (1, 3, 4, 4, 2, 1, 0),
        (6, 3, 3, 2, 2, 0, 0),
        (2, 4, 3, 3, 2, 1, 1),
        (5, 3, 3, 3, 1, 1, 0),
        (2, 3, 4, 3, 3, 1, 2),
        (1, 2, 3, 3, 9, 0, 4),
        (1, 2, 13, 4, 2, 1, 0),
        (1, 2, 11, 3, 3, 1, 2),
        (1, 2, 10, 2, 9, 0, 4),
    ] {
        for act in [Act::None, Act::Relu, Act::Sigmoid] {
            let (x, wt, bias) = (u(&[b, 3, h, w], 310), u(&[3, 2, k, k], 311), u(&[2], 312));
            let fused = fused::conv_transpose2d(&x, &wt, &bias, p, op, s, 1, act).unwrap();
            let plain = plain_convt(&x, &wt, &bias, p, op, s, act);
            let what = format!("fused conv_transpose2d b{b} {h}x{w} k{k} s{s} p{p} op{op} {act:?}");
            assert!(max_abs_diff(&fused, &plain) < 1e-12, "{what}: forward differs");
            let f = move |a: &[Tensor]| fused::conv_transpose2d(&a[0], &a[1], &a[2], p, op, s, 1, act);
            assert_grad(&what, f, &[x, wt, bias]);
        }
    }
}

#[test]
fn fused_convs_with_one_output_channel_take_the_direct_kernels_and_match() {
    // One output channel (and a transposed conv with one input channel):
    // the direct kernels of every stride they take, against candle's convs
    // and finite differences.
    for (b, c, h, w, k, s, p) in [
        (2, 3, 7, 6, 3, 1, 1),
        (3, 2, 8, 9, 4, 2, 1),
        (1, 4, 9, 7, 3, 3, 2),
        (2, 2, 9, 10, 5, 4, 2),
        (6, 3, 5, 5, 1, 1, 0),
    ] {
        for act in [Act::None, Act::Relu, Act::Sigmoid] {
            let (x, wt, bias) = (u(&[b, c, h, w], 380), u(&[1, c, k, k], 381), u(&[1], 382));
            let fused = fused::conv2d(&x, &wt, &bias, p, s, 1, act).unwrap();
            let plain = plain_conv(&x, &wt, &bias, p, s, 1, act);
            let what = format!("direct conv2d b{b} c{c} {h}x{w} k{k} s{s} p{p} {act:?}");
            assert!(max_abs_diff(&fused, &plain) < 1e-12, "{what}: forward differs");
            let f = move |a: &[Tensor]| fused::conv2d(&a[0], &a[1], &a[2], p, s, 1, act);
            assert_grad(&what, f, &[x.clone(), wt.clone(), bias.clone()]);
            if s == 1 && h >= 2 && w >= 2 {
                let pooled = fused::conv2d_pool2(&x, &wt, &bias, p, s, 1, act).unwrap();
                assert!(
                    max_abs_diff(&pooled, &ops::max_pool2d(&plain, 2, 2).unwrap()) < 1e-12,
                    "{what}: pooled forward differs"
                );
            }
            // conv_transpose2d(x with one channel): the adjoint kernel forward.
            let (xt, wtt, bt) = (u(&[b, 1, h, w], 383), u(&[1, c, k, k], 384), u(&[c], 385));
            let op = if s > 1 { 1 } else { 0 };
            let ft = fused::conv_transpose2d(&xt, &wtt, &bt, p.min(k - 1), op, s, 1, act).unwrap();
            let pt = plain_convt(&xt, &wtt, &bt, p.min(k - 1), op, s, act);
            assert!(max_abs_diff(&ft, &pt) < 1e-12, "{what}: transposed forward differs");
            let pp = p.min(k - 1);
            let f = move |a: &[Tensor]| fused::conv_transpose2d(&a[0], &a[1], &a[2], pp, op, s, 1, act);
            assert_grad(&format!("{what} transposed"), f, &[xt, wtt, bt]);
        }
    }
}

/// The composite reference of an upsample-then-conv block: nearest
/// upsampling by `f`, then [`plain_conv`] at stride 1.
fn plain_up_conv(x: &Tensor, f: usize, wt: &Tensor, bias: &Tensor, p: usize, act: Act) -> Tensor {
    plain_conv(&ops::upsample_nearest2d(x, f, f).unwrap(), wt, bias, p, 1, 1, act)
}

#[test]
fn upsample_conv2d_in_sub_pixel_form_matches_upsample_then_conv() {
    use aezoo_nn::subpixel;
    // Factors 2, 3 and 4; odd and even kernels; paddings 0 to k − 1; odd
    // sizes; one output channel and several.
    for (b, c, o, h, w, f, k, p) in [
        (2, 3, 4, 5, 4, 2, 3, 1),
        (1, 3, 4, 4, 5, 2, 5, 2),
        (2, 2, 3, 3, 3, 2, 1, 0),
        (1, 2, 3, 4, 3, 2, 4, 1),
        (1, 2, 1, 3, 4, 2, 3, 1),
        (1, 2, 3, 3, 4, 3, 3, 0),
        (1, 3, 2, 3, 3, 4, 3, 1),
        (1, 2, 2, 2, 3, 2, 3, 2),
    ] {
        let (x, wt, bias) = (u(&[b, c, h, w], 320), u(&[o, c, k, k], 321), u(&[o], 322));
        let what = format!("upsample×{f} conv b{b} c{c} o{o} {h}x{w} k{k} p{p}");
        // (Under AEZOO_NO_SUBPIXEL=1 every case is the fallback, still checked.)
        assert!(
            !subpixel::enabled() || subpixel::applies(&x, f, &wt, p),
            "{what}: takes the fallback"
        );
        for act in [Act::None, Act::Relu, Act::Sigmoid] {
            let fast = subpixel::upsample_conv2d(&x, f, &wt, &bias, p, act).unwrap();
            let plain = plain_up_conv(&x, f, &wt, &bias, p, act);
            assert!(max_abs_diff(&fast, &plain) < 1e-12, "{what} {act:?}: forward differs");
            let g = move |a: &[Tensor]| subpixel::upsample_conv2d(&a[0], f, &a[1], &a[2], p, act);
            assert_grad(&format!("{what} {act:?}"), g, &[x.clone(), wt.clone(), bias.clone()]);
        }
    }
    // Factor 1 is no upsampling: the fallback, still the same function.
    let (x, wt, bias) = (u(&[1, 2, 4, 4], 323), u(&[3, 2, 3, 3], 324), u(&[3], 325));
    assert!(!subpixel::applies(&x, 1, &wt, 1));
    let y = subpixel::upsample_conv2d(&x, 1, &wt, &bias, 1, Act::Relu).unwrap();
    assert!(max_abs_diff(&y, &plain_up_conv(&x, 1, &wt, &bias, 1, Act::Relu)) < 1e-12);
    // A non-square kernel: the two axes' plans pad differently (0 and 1).
    let (x, wt, bias) = (u(&[2, 2, 3, 4], 329), u(&[3, 2, 1, 4], 330), u(&[3], 331));
    assert!(!subpixel::enabled() || subpixel::applies(&x, 2, &wt, 0));
    let y = subpixel::upsample_conv2d(&x, 2, &wt, &bias, 0, Act::Relu).unwrap();
    assert!(
        max_abs_diff(&y, &plain_up_conv(&x, 2, &wt, &bias, 0, Act::Relu)) < 1e-12,
        "1x4 kernel differs"
    );
    let g = |a: &[Tensor]| subpixel::upsample_conv2d(&a[0], 2, &a[1], &a[2], 0, Act::Relu);
    assert_grad("upsample×2 conv 1x4 kernel", g, &[x, wt, bias]);
    // The layer method takes it too (`UpS_2` then a conv).
    let x = u(&[1, 2, 4, 4], 323);
    let store = ParamStore::init(9);
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let conv = layers::conv2d(2, 3, 3, cfg, store.var_builder(DType::F64, &Device::Cpu).pp("c")).unwrap();
    let y = conv.forward_up_act(&x, 2, Act::Sigmoid).unwrap();
    let z = ops::sigmoid(&conv.forward(&ops::upsample_nearest2d(&x, 2, 2).unwrap()).unwrap()).unwrap();
    assert!(max_abs_diff(&y, &z) < 1e-12, "Conv2d::forward_up_act differs");
}

#[test]
fn upsample_conv2d_in_f32_through_sgemm_matches_the_f64_composite() {
    // ae-denoise's decoder block: 32 → 32 channels, 3 × 3 after 2×
    // upsampling of 7 × 7 (the phase conv has 128 outputs and K = 128: the
    // implicit GEMM), at batch 2 (one image per product) and 12 (several:
    // ~512 output pixels a product), and vae-flex-sd's 4× factor.
    for (b, c, o, h, f) in [(2, 32, 32, 7, 2), (12, 32, 32, 7, 2), (2, 16, 16, 3, 4)] {
        // The kernel at PyTorch's init scale (bound 1/√(c·9)): the f32 sums'
        // rounding stays below the shared absolute tolerance (with u(−1, 1)
        // weights the outputs reach ~30 and differ by ~1.4e-5 through the
        // `gemm` crate's summation order, the simd test's baseline level).
        let bound = 1.0 / ((c * 9) as f64).sqrt();
        let (x, bias) = (u(&[b, c, h, h], 326), u(&[o], 328));
        let wt = (u(&[o, c, 3, 3], 327) * bound).unwrap();
        let v = twin_vars([&x, &wt, &bias]);
        let [x32, w32, b32] = v.each_ref().map(|(a, _)| a.as_tensor());
        let [x64, w64, b64] = v.each_ref().map(|(_, a)| a.as_tensor());
        let y = aezoo_nn::subpixel::upsample_conv2d(x32, f, w32, b32, 1, Act::Relu).unwrap();
        let plain = plain_up_conv(x64, f, w64, b64, 1, Act::Relu);
        let what = format!("f32 upsample×{f} conv b{b} c{c} o{o} {h}x{h}");
        compare_f32_with_f64(&what, &y, &plain, &v);
    }
}

#[test]
fn f32_convs_through_sgemm_match_the_f64_composite() {
    // Sixteen or more outputs and K ≥ 64: in f32 with AVX2 the forward is
    // yᵀ = colsᵀ·Wᵀ through aezoo_nn::sgemm, stored transposed; values
    // and gradients against candle's f64 conv.
    for (b, c, o, h, w, k, s, p) in [
        (3, 8, 16, 9, 8, 3, 1, 1),
        (2, 4, 32, 10, 11, 4, 2, 1),
        (1, 16, 24, 6, 6, 3, 2, 1),
        // Sixteen inputs at strides 2 and 3 (dx unfolded, through sgemm
        // with the kernel packed once), odd sizes, and k < s.
        (2, 16, 16, 9, 7, 4, 2, 1),
        (1, 16, 16, 8, 8, 2, 3, 0),
    ] {
        let (x, wt, bias) = (u(&[b, c, h, w], 390), u(&[o, c, k, k], 391), u(&[o], 392));
        let v = twin_vars([&x, &wt, &bias]);
        let [x32, w32, b32] = v.each_ref().map(|(a, _)| a.as_tensor());
        let [x64, w64, b64] = v.each_ref().map(|(_, a)| a.as_tensor());
        let y = fused::conv2d(x32, w32, b32, p, s, 1, Act::Relu).unwrap();
        let plain = ops::conv2d_candle(x64, w64, p, s, 1, 1)
            .unwrap()
            .broadcast_add(&b64.reshape((1, o, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        let what = format!("f32 conv2d b{b} c{c} o{o} {h}x{w} k{k} s{s} p{p}");
        compare_f32_with_f64(&what, &y, &plain, &v);
        // The transposed conv back to c channels: its forward, dx and dW
        // through sgemm with the kernel packed once.
        let (xt, wt2, bt) = (u(&[b, o, h, w], 394), u(&[o, c + 16, k, k], 395), u(&[c + 16], 396));
        let vt = twin_vars([&xt, &wt2, &bt]);
        let [xt32, wt32, bt32] = vt.each_ref().map(|(a, _)| a.as_tensor());
        let [xt64, wt64, bt64] = vt.each_ref().map(|(_, a)| a.as_tensor());
        // An output padding where the stride is 3.
        let op = usize::from(s == 3);
        let yt = fused::conv_transpose2d(xt32, wt32, bt32, p, op, s, 1, Act::Relu).unwrap();
        let pt = xt64
            .conv_transpose2d(wt64, p, op, s, 1)
            .unwrap()
            .broadcast_add(&bt64.reshape((1, c + 16, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        compare_f32_with_f64(&format!("{what} transposed"), &yt, &pt, &vt);
    }
}

#[test]
fn conv_weight_gradients_are_the_same_bits_in_every_run() {
    // A seeded training run is one result: the per-task partial sums of a
    // conv's weight and bias gradients are grouped by the job count alone,
    // not by which rayon worker stole which images (rayon's fold + reduce
    // had changed the f32 sums, and `vae-beta`'s test MSE, between runs).
    // Batches of 64 so the jobs split across the threads; each case's
    // gradients, repeated, must equal the first run's bit for bit.
    type Case = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;
    let cases: Vec<(&str, Vec<usize>, Vec<usize>, usize, Case)> = vec![
        // stride 1, 32 outputs, K = 144: the implicit GEMM's backward
        (
            "conv2d s1",
            vec![64, 16, 14, 14],
            vec![32, 16, 3, 3],
            32,
            Box::new(|a| fused::conv2d(&a[0], &a[1], &a[2], 1, 1, 1, Act::Relu)),
        ),
        // stride 2: per-image unfolding
        (
            "conv2d s2",
            vec![64, 8, 28, 28],
            vec![16, 8, 3, 3],
            16,
            Box::new(|a| fused::conv2d(&a[0], &a[1], &a[2], 1, 2, 1, Act::Relu)),
        ),
        (
            "conv2d + pool",
            vec![64, 8, 14, 14],
            vec![16, 8, 3, 3],
            16,
            Box::new(|a| fused::conv2d_pool2(&a[0], &a[1], &a[2], 1, 1, 1, Act::Relu)),
        ),
        (
            "conv_transpose2d s2",
            vec![64, 32, 7, 7],
            vec![32, 16, 4, 4],
            16,
            Box::new(|a| fused::conv_transpose2d(&a[0], &a[1], &a[2], 1, 0, 2, 1, Act::Relu)),
        ),
    ];
    for (what, xs_shape, w_shape, o, f) in &cases {
        for dtype in [DType::F32, DType::F64] {
            let vars: Vec<candle_core::Var> = [(xs_shape.clone(), 400), (w_shape.clone(), 401), (vec![*o], 402)]
                .into_iter()
                .map(|(shape, seed)| candle_core::Var::from_tensor(&u(&shape, seed).to_dtype(dtype).unwrap()).unwrap())
                .collect();
            let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let grads = || -> Vec<Vec<f64>> {
                let ys = f(&inputs).unwrap();
                let cot = u(ys.dims(), 403).to_dtype(dtype).unwrap();
                let g = (ys * cot).unwrap().sum_all().unwrap().backward().unwrap();
                vars.iter().map(|v| values_f64(g.get(v).unwrap()).unwrap()).collect()
            };
            let first = grads();
            for rep in 1..8 {
                let again = grads();
                for (name, (a, b)) in ["dx", "dW", "db"].iter().zip(first.iter().zip(&again)) {
                    let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same, "{what} {dtype:?}: {name} of run {rep} differs from run 0's");
                }
            }
        }
    }
}

/// Each of `ts` (f64) as an f32 variable and an f64 variable: the pairs
/// [`compare_f32_with_f64`] checks.
fn twin_vars<const N: usize>(ts: [&Tensor; N]) -> [(candle_core::Var, candle_core::Var); N] {
    let var = |t: Tensor| candle_core::Var::from_tensor(&t).unwrap();
    ts.map(|t| (var(t.to_dtype(DType::F32).unwrap()), var(t.clone())))
}

/// An f32 result and its f64 twin agree in value, and in the gradients of
/// each `(f32, f64)` pair of variables under one random cotangent.
fn compare_f32_with_f64(what: &str, y32: &Tensor, y64: &Tensor, vars: &[(candle_core::Var, candle_core::Var)]) {
    let d = max_abs_diff(&y32.to_dtype(DType::F64).unwrap(), y64);
    assert!(d < 1e-5, "{what}: forward differs by {d}");
    let r = u(y32.dims(), 393);
    let g32 = (y32 * &r.to_dtype(DType::F32).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g64 = (y64 * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (v32, v64) in vars {
        let a = g32.get(v32.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
        let d = max_abs_diff(&a, g64.get(v64.as_tensor()).unwrap());
        assert!(d < 1e-4, "{what}: gradient differs by {d}");
    }
}

#[test]
fn fused_linear_matches_composite_and_finite_differences() {
    for n in [1, 7] {
        for act in [Act::None, Act::Relu, Act::Sigmoid] {
            let (x, wt, bias) = (u(&[n, 5], 320), u(&[4, 5], 321), u(&[4], 322));
            let fused = fused::linear(&x, &wt, &bias, act).unwrap();
            let plain = apply_act(x.matmul(&wt.t().unwrap()).unwrap().broadcast_add(&bias).unwrap(), act).unwrap();
            let what = format!("fused linear n{n} {act:?}");
            assert!(max_abs_diff(&fused, &plain) < 1e-12, "{what}: forward differs");
            assert_grad(
                &what,
                move |a: &[Tensor]| fused::linear(&a[0], &a[1], &a[2], act),
                &[x, wt, bias],
            );
        }
    }
}

#[test]
fn fused_linear_reads_flattened_inputs_and_shapes_its_output() {
    // (3, 2, 2, 2) read as (3, 8), the (3, 6) output as (3, 1, 2, 3): the
    // composite flatten → linear → reshape in value and gradients.
    for act in [Act::None, Act::Relu, Act::Sigmoid] {
        let (x, wt, bias) = (u(&[3, 2, 2, 2], 325), u(&[6, 8], 326), u(&[6], 327));
        let out = || Some(candle_core::Shape::from((3, 1, 2, 3)));
        let fused = fused::linear_shaped(&x, &wt, &bias, act, out()).unwrap();
        assert_eq!(fused.dims(), &[3, 1, 2, 3]);
        let flat = x.flatten_from(1).unwrap();
        let plain = apply_act(
            flat.matmul(&wt.t().unwrap()).unwrap().broadcast_add(&bias).unwrap(),
            act,
        )
        .unwrap()
        .reshape((3, 1, 2, 3))
        .unwrap();
        assert!(
            max_abs_diff(&fused, &plain) < 1e-12,
            "shaped linear {act:?}: forward differs"
        );
        assert_grad(
            &format!("shaped linear {act:?}"),
            move |a: &[Tensor]| fused::linear_shaped(&a[0], &a[1], &a[2], act, out()),
            &[x, wt, bias],
        );
    }
    // A shape of the wrong size is an error, not a panic; so is a rank-3
    // input to the plain linear (it does not flatten silently).
    let (x, wt, bias) = (u(&[3, 8], 328), u(&[6, 8], 326), u(&[6], 327));
    assert!(fused::linear_shaped(&x, &wt, &bias, Act::None, Some((3, 5).into())).is_err());
    assert!(fused::linear(&u(&[3, 1, 8], 329), &wt, &bias, Act::None).is_err());
    // The layer, in f32 (the sgemm path) and f64, with and without a bias
    // (the composite path): the same as flatten → forward_act → reshape.
    for (dt, bias) in [(DType::F32, true), (DType::F64, true), (DType::F32, false)] {
        let store = ParamStore::init(3);
        let vb = store.var_builder(dt, &Device::Cpu);
        let layer = layers::linear(8, 6, LinearConfig { bias }, vb.pp("l")).unwrap();
        let x = u(&[3, 2, 2, 2], 330).to_dtype(dt).unwrap();
        let got = layer
            .forward_shaped(&x, Act::Sigmoid, Some((3, 1, 2, 3).into()))
            .unwrap();
        let want = layer
            .forward_act(&x.flatten_from(1).unwrap(), Act::Sigmoid)
            .unwrap()
            .reshape((3, 1, 2, 3))
            .unwrap();
        let d = max_abs_diff(&got.to_dtype(DType::F64).unwrap(), &want.to_dtype(DType::F64).unwrap());
        assert!(d < 1e-6, "forward_shaped {dt:?} bias {bias}: differs by {d}");
        assert_eq!(layer.forward_shaped(&x, Act::None, None).unwrap().dims(), &[3, 6]);
    }
}

#[test]
fn fused_linear_parallel_epilogue_matches_the_composite_on_large_batches() {
    // n·o = 256·160 ≥ 2^15: the bias/activation pass and its backward run on
    // all threads, and the GEMMs split into blocks of rows; with 64 × 512
    // inputs and 24 outputs the weight gradient (24 × 512) splits by columns.
    for ((n, i, o), act) in [(256, 24, 160), (64, 512, 24)]
        .into_iter()
        .flat_map(|s| [Act::None, Act::Relu, Act::Sigmoid].map(|a| (s, a)))
    {
        let (x, wt, bias) = (u(&[n, i], 330), u(&[o, i], 331), u(&[o], 332));
        let vars: Vec<candle_core::Var> = [&x, &wt, &bias]
            .iter()
            .map(|t| candle_core::Var::from_tensor(t).unwrap())
            .collect();
        let (xv, wv, bv) = (vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
        let r = u(&[n, o], 333);
        let fused = fused::linear(xv, wv, bv, act).unwrap();
        let plain = apply_act(xv.matmul(&wv.t().unwrap()).unwrap().broadcast_add(bv).unwrap(), act).unwrap();
        assert!(max_abs_diff(&fused, &plain) < 1e-12, "{act:?}: forward differs");
        let gf = (&fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [xv, wv, bv] {
            let d = max_abs_diff(gf.get(v).unwrap(), gp.get(v).unwrap());
            assert!(d < 1e-10, "{act:?}: gradient differs by {d}");
        }
    }
}

#[test]
fn fused_layers_accumulate_with_other_gradients_and_run_in_f32() {
    // The input also feeds a second branch; and the f32 kernels agree with f64.
    let f = |a: &[Tensor]| {
        let y = fused::conv2d(&a[0], &a[1], &a[2], 1, 1, 1, Act::Relu)?;
        y.sum_all()? + a[0].sqr()?.sum_all()?
    };
    assert_grad(
        "fused conv2d + second use",
        f,
        &[u(&[2, 2, 5, 5], 330), u(&[3, 2, 3, 3], 331), u(&[3], 332)],
    );
    let (x, wt, bias) = (u(&[3, 2, 6, 6], 333), u(&[4, 2, 3, 3], 334), u(&[4], 335));
    let y64 = fused::conv2d(&x, &wt, &bias, 1, 1, 1, Act::Sigmoid).unwrap();
    let to32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let y32 = fused::conv2d(&to32(&x), &to32(&wt), &to32(&bias), 1, 1, 1, Act::Sigmoid).unwrap();
    assert!(max_abs_diff(&y64, &y32.to_dtype(DType::F64).unwrap()) < 1e-5);
}

/// Values and gradients (under a fixed cotangent) of every fused op whose
/// element-wise kernels are multiversioned, in f32, flattened.
fn fused_outputs_and_grads() -> Vec<Vec<f32>> {
    let f32s = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let var = |shape: &[usize], seed: u64| {
        candle_core::Var::from_tensor(&u(shape, seed).to_dtype(DType::F32).unwrap()).unwrap()
    };
    let mut out = Vec::new();
    let mut record = |y: Tensor, vars: &[&candle_core::Var], seed: u64| {
        let r = u(y.dims(), seed).to_dtype(DType::F32).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        out.push(f32s(&y));
        for v in vars {
            out.push(f32s(g.get(v.as_tensor()).unwrap()));
        }
    };
    for act in [Act::None, Act::Relu, Act::Sigmoid] {
        // Lengths off a multiple of 16 (remainders) and past the parallel threshold.
        let (x, w, b) = (var(&[300, 20], 350), var(&[151, 20], 351), var(&[151], 352));
        let y = fused::linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), act).unwrap();
        record(y, &[&x, &w, &b], 353);
        let (x, w, b) = (var(&[3, 2, 9, 11], 354), var(&[5, 2, 3, 3], 355), var(&[5], 356));
        let y = fused::conv2d(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1, 1, 1, act).unwrap();
        record(y, &[&x, &w, &b], 357);
        let y = fused::conv2d_pool2(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1, 1, 1, act).unwrap();
        record(y, &[&x, &w, &b], 358);
        let wt = var(&[2, 4, 3, 3], 359);
        let y = fused::conv_transpose2d(
            x.as_tensor(),
            wt.as_tensor(),
            &b.as_tensor().narrow(0, 0, 4).unwrap(),
            1,
            1,
            2,
            1,
            act,
        );
        record(y.unwrap(), &[&x, &wt], 360);
    }
    let x = var(&[70_001], 364);
    record(ops::sigmoid(&(x.as_tensor() * 20.0).unwrap()).unwrap(), &[&x], 365);
    let (x, t) = (var(&[70_001], 361), var(&[70_001], 362));
    let t01 = candle_core::Var::from_tensor(&((t.as_tensor() + 1.0).unwrap() * 0.5).unwrap()).unwrap();
    let y = fused::bce_with_logits(&(x.as_tensor() * 9.0).unwrap(), t01.as_tensor()).unwrap();
    record(y, &[&x, &t01], 363);
    out
}

#[test]
fn simd_versions_of_the_fused_kernels_compute_the_same_bits() {
    // The element-wise kernels run the same arithmetic at every level
    // (AVX-512, AVX2 + FMA, the baseline): the outputs and gradients of the
    // sigmoid and the BCE (the last five tensors) are equal to the bit. The
    // products run on aezoo's sgemm from AVX2 up, whose sums have the same
    // order at every vector width, and on the gemm crate at the baseline:
    // the levels from AVX2 up are equal to the bit, the baseline within
    // rounding.
    use aezoo_nn::simd;
    simd::set_cap(0);
    let base = fused_outputs_and_grads();
    let elementwise = base.len() - 5;
    let mut fma: Option<Vec<Vec<f32>>> = None;
    for level in 1..=simd::detected() {
        simd::set_cap(level);
        let got = fused_outputs_and_grads();
        simd::set_cap(u8::MAX);
        assert_eq!(got.len(), base.len());
        let same =
            |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        for (i, (g, b)) in got.iter().zip(&base).enumerate() {
            if i >= elementwise {
                assert!(
                    same(g, b),
                    "SIMD level {level}: element-wise tensor {i} differs from the baseline's"
                );
            } else {
                let d = g
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
                    .fold(0f32, f32::max);
                assert!(d < 1e-5, "SIMD level {level}: tensor {i} is {d} from the baseline's");
            }
        }
        match &fma {
            None => fma = Some(got),
            Some(first) => {
                for (i, (g, f)) in got.iter().zip(first).enumerate() {
                    assert!(same(g, f), "SIMD level {level}: tensor {i} differs from AVX2's");
                }
            }
        }
    }
    simd::set_cap(u8::MAX);
}

// ---------------------------------------------------------------- the layer grammar

mod grammar {
    use super::*;
    use aezoo_nn::spec::{parse_list, FeatShape, LayerSpec, Sequential};

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// The FlexVAE "basic" lists (its README), as in `configs/vae-flex-sd.json`.
    const ENCODER: &[&str] = &[
        "C2d_3_128_3_1_1",
        "2*VAERB_128_128",
        "C2d_128_128_3_4_0",
        "VAERB_128_256",
        "VAERB_256_256",
        "C2d_256_256_3_4_0",
        "3*VAERB_256_256",
        "VAEA_256",
        "VAERB_256_256",
        "GN_32_256",
        "SiLU",
        "C2d_256_8_3_1_1",
        "C2d_8_8_1_1_0",
    ];
    const DECODER: &[&str] = &[
        "C2d_4_4_1_1_0",
        "C2d_4_512_3_1_1",
        "VAERB_512_512",
        "VAEA_512",
        "4*VAERB_512_512",
        "UpS_4",
        "C2d_512_512_3_1_1",
        "VAERB_512_256",
        "2*VAERB_256_256",
        "UpS_4",
        "C2d_256_256_3_1_1",
        "VAERB_256_128",
        "2*VAERB_128_128",
        "GN_32_128",
        "SiLU",
        "C2d_128_3_3_1_1",
    ];

    /// The error of building `items` from `input`, as text.
    fn build_err(items: &[&str], input: FeatShape) -> String {
        let store = ParamStore::init(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        Sequential::new("encoder", &strings(items), input, vb)
            .unwrap_err()
            .to_string()
    }

    fn map(c: usize, h: usize, w: usize) -> FeatShape {
        FeatShape::Map { c, h, w }
    }

    #[test]
    fn upsampling_into_a_conv_in_a_list_equals_the_layers_one_at_a_time() {
        // `UpS_2` then a conv (with and without its activation) runs in
        // sub-pixel form (`Sequential::forward`): against upsample, conv and
        // activation applied by hand with the list's own parameters.
        for (items, act) in [
            (&["UpS_2", "C2d_2_3_3_1_1", "ReLU"][..], Act::Relu),
            (&["UpS_2", "C2d_2_3_3_1_1"][..], Act::None),
            (&["UpS_2", "C2d_2_3_3_1_1", "Sigm", "UpS_2"][..], Act::Sigmoid),
        ] {
            let store = ParamStore::init(3);
            let seq = Sequential::new(
                "decoder",
                &strings(items),
                map(2, 5, 4),
                store.var_builder(DType::F64, &Device::Cpu),
            )
            .unwrap();
            let x = u(&[2, 2, 5, 4], 332);
            let vars: std::collections::BTreeMap<String, Tensor> = store.tensors().into_iter().collect();
            let mut want = plain_up_conv(&x, 2, &vars["1.weight"], &vars["1.bias"], 1, act);
            if items.len() == 4 {
                want = ops::upsample_nearest2d(&want, 2, 2).unwrap();
            }
            let got = seq.forward(&x).unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-12, "{items:?}: differs");
        }
    }

    #[test]
    fn gdn_layers_in_lists() {
        // A Ballé-style analysis/synthesis pair: GDN keeps the shape, names
        // its parameters `beta` / `gamma`, and a channel mismatch is an error.
        let store = ParamStore::init(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let enc = Sequential::new(
            "encoder",
            &strings(&["C2d_3_8_5_2_2", "GDN_8", "C2d_8_4_5_2_2"]),
            map(3, 16, 16),
            vb.pp("encoder"),
        )
        .unwrap();
        let dec = Sequential::new(
            "decoder",
            &strings(&["CT2d_4_8_5_2_2_1", "IGDN_8", "CT2d_8_3_5_2_2_1"]),
            enc.output_shape(),
            vb.pp("decoder"),
        )
        .unwrap();
        assert_eq!(dec.output_shape(), map(3, 16, 16));
        let x = Tensor::rand(0f32, 1f32, (2, 3, 16, 16), &Device::Cpu).unwrap();
        assert_eq!(dec.forward(&enc.forward(&x).unwrap()).unwrap().dims(), &[2, 3, 16, 16]);
        let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
        for n in ["encoder.1.beta", "encoder.1.gamma", "decoder.1.beta", "decoder.1.gamma"] {
            assert!(names.iter().any(|m| m == n), "{n} not in {names:?}");
        }
        let e = build_err(&["C2d_3_8_3_1_1", "GDN_4"], map(3, 8, 8));
        assert!(e.contains("encoder[1]") && e.contains("GDN_4"), "{e}");
        let e = build_err(&["GDN_0"], map(3, 8, 8));
        assert!(e.contains("channels must be >= 1"), "{e}");
    }

    #[test]
    fn twenty_malformed_layer_lists_each_name_the_fault() {
        let m = map(3, 32, 32);
        let cases: [(&[&str], &[&str]); 20] = [
            (
                &["C2d_3_8_3_1_1", "Conv_8_8"],
                &["encoder[1]", "`Conv_8_8`", "unknown layer `Conv`", "C2d"],
            ),
            (&["C2d_3_x_3"], &["encoder[0]", "argument 2 `x`", "C2d_in_out_kernel"]),
            (&["C2d_3_8"], &["takes 3 to 5 arguments, got 2"]),
            (&["C2d_3_8_3_1_1_7"], &["takes 3 to 5 arguments, got 6"]),
            (&["C2d_3_8_0"], &["kernel must be >= 1"]),
            (&["C2d_3_8_3_0_1"], &["stride must be >= 1"]),
            (
                &["C2d_3_32_3_1_1", "VAERB_64_64"],
                &["encoder[1]", "`VAERB_64_64`", "expects 64 input channels", "gives 32"],
            ),
            (
                &["C2d_3_48_3_1_1", "VAERB_48_48"],
                &["encoder[1]", "GroupNorm(32) needs a multiple of 32"],
            ),
            (
                &["C2d_3_32_3_1_1", "VAEA_64"],
                &["encoder[1]", "expects 64 input channels"],
            ),
            (
                &["C2d_3_32_3_1_1", "GN_5_32"],
                &["32 channels cannot be split into 5 groups"],
            ),
            (&["0*SiLU"], &["repeat count 0"]),
            (&["x*SiLU"], &["repeat count `x`"]),
            (&["2*"], &["empty layer string"]),
            (&["SiLU_3"], &["`SiLU_3`", "takes 0 arguments, got 1"]),
            (
                &["C2d_3_8_3_1_1", "MaxP_64"],
                &["encoder[1]", "a 64×64 pool does not fit a 32×32 input"],
            ),
            (
                &["C2d_3_8_33_1_0"],
                &["kernel 33 with padding 0 does not fit a 32×32 input"],
            ),
            (&["Lin_10_4"], &["needs a flat vector", "add `Flat` before it"]),
            (
                &["Flat", "Lin_100_4"],
                &["encoder[1]", "expects 100 inputs", "gives 3072"],
            ),
            (&["Flat", "Unflat_3_16_16"], &["3·16·16 = 768 is not the 3072 inputs"]),
            (
                &["CT2d_3_8_3_2_1_2"],
                &["output padding 2 must be smaller than the stride 2"],
            ),
        ];
        for (items, needles) in cases {
            let e = build_err(items, m);
            assert!(!e.contains('\n'), "one line: {e}");
            for n in needles {
                assert!(e.contains(n), "{items:?}: `{n}` not in: {e}");
            }
        }
        let e = build_err(&[], m);
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn repeats_expand_and_shapes_follow_the_flexvae_basic_lists() {
        let enc = parse_list("encoder", &strings(ENCODER)).unwrap();
        assert_eq!(enc.specs.len(), 16, "13 strings, 2* and 3* expanded");
        assert_eq!(enc.specs[1], LayerSpec::ResBlock { cin: 128, cout: 128 });
        assert_eq!(enc.specs[2], enc.specs[1]);
        let shapes = enc.infer_shapes(map(3, 64, 64)).unwrap();
        assert_eq!(*shapes.last().unwrap(), map(8, 4, 4), "÷16, 2 × 4 latent channels");
        let dec = parse_list("decoder", &strings(DECODER)).unwrap();
        assert_eq!(*dec.infer_shapes(map(4, 4, 4)).unwrap().last().unwrap(), map(3, 64, 64));
        // A mismatch after a repeat names the string as written.
        let mut bad = strings(ENCODER);
        bad[6] = "3*VAERB_128_128".into();
        let e = parse_list("encoder", &bad)
            .unwrap()
            .infer_shapes(map(3, 64, 64))
            .unwrap_err();
        assert_eq!((e.index, e.item.as_str()), (6, "3*VAERB_128_128"));
    }

    #[test]
    fn flexvae_basic_lists_have_the_reference_parameter_count() {
        // python3 scripts/pins/flexvae_ref.py: encoder 8440272, decoder 32965399
        for (items, input, want) in [
            (ENCODER, map(3, 64, 64), 8_440_272),
            (DECODER, map(4, 4, 4), 32_965_399),
        ] {
            let store = ParamStore::init(0);
            Sequential::new("x", &strings(items), input, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
            assert_eq!(store.num_params(), want);
        }
    }

    /// Sets every parameter by name as the reference script does:
    /// sin(0.1·i + 0.7·len(name))·0.2.
    fn fill_by_name(store: &ParamStore) {
        for (name, var) in store.vars() {
            let n = var.elem_count();
            let v: Vec<f64> = (0..n)
                .map(|i| (0.1 * i as f64 + 0.7 * name.len() as f64).sin() * 0.2)
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }

    fn pinned_input(c: usize, h: usize, w: usize) -> Tensor {
        let v: Vec<f64> = (0..c * h * w).map(|i| (0.05 * i as f64).cos()).collect();
        Tensor::from_vec(v, (1, c, h, w), &Device::Cpu).unwrap()
    }

    fn assert_row(t: &Tensor, c: usize, y: usize, want: &[f64]) {
        let got: Vec<f64> = t.get(0).unwrap().get(c).unwrap().get(y).unwrap().to_vec1().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn residual_and_attention_blocks_match_pytorch() {
        // python3 scripts/pins/flexvae_ref.py (torch, float64)
        let store = ParamStore::init(0);
        let rb = aezoo_nn::spec::res_block(32, 64, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
        fill_by_name(&store);
        let y = rb.forward(&pinned_input(32, 3, 4)).unwrap();
        assert_row(
            &y,
            5,
            1,
            &[
                2.348445724265675e-01,
                1.850484150454773e-01,
                2.016710623941815e-01,
                2.823470327116546e-01,
            ],
        );
        let store = ParamStore::init(0);
        let ab = aezoo_nn::spec::attention_block(32, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
        fill_by_name(&store);
        let y = ab.forward(&pinned_input(32, 3, 4)).unwrap();
        assert_row(
            &y,
            7,
            2,
            &[
                2.095143291862463e-01,
                2.593170585686813e-01,
                3.092752814969235e-01,
                3.592641295307757e-01,
            ],
        );
    }

    #[test]
    fn every_grammar_block_gradient_checks() {
        let store = ParamStore::init(3);
        let vb = store.var_builder(DType::F64, &Device::Cpu);
        let rb = aezoo_nn::spec::res_block(32, 64, vb.pp("rb")).unwrap();
        assert_grad("VAERB_32_64", |a| rb.forward(&a[0]), &[u(&[2, 32, 3, 3], 300)]);
        let same = aezoo_nn::spec::res_block(32, 32, vb.pp("rb2")).unwrap();
        assert_grad("VAERB_32_32", |a| same.forward(&a[0]), &[u(&[1, 32, 2, 3], 301)]);
        let ab = aezoo_nn::spec::attention_block(32, vb.pp("ab")).unwrap();
        assert_grad("VAEA_32", |a| ab.forward(&a[0]), &[u(&[2, 32, 2, 3], 302)]);
        // Every other token, in one list: conv, transposed conv, pool, upsampling,
        // norm, activations, flatten, linear, unflatten.
        let items = strings(&[
            "C2d_2_4_3_1_1",
            "GN_2_4",
            "SiLU",
            "MaxP_2",
            "CT2d_4_3_3_2_1_1",
            "ReLU",
            "UpS_2",
            "Flat",
            "Lin_192_12",
            "Sigm",
            "Unflat_3_2_2",
        ]);
        let seq = Sequential::new("list", &items, map(2, 4, 4), vb.pp("seq")).unwrap();
        assert_eq!(seq.output_shape(), map(3, 2, 2));
        assert_grad("every token", |a| seq.forward(&a[0]), &[d(&[2, 2, 4, 4], 303)]);
    }
}

// ---------------------------------------------------------------- conv3d

mod conv3d {
    use super::*;
    use aezoo_nn::conv3d::{conv3d_gemm, conv3d_taps, conv_transpose3d_gemm, conv_transpose3d_taps, Conv3dOpts};

    type Conv = fn(&Tensor, &Tensor, Option<&Tensor>, Conv3dOpts) -> Result<Tensor>;

    fn filled(shape: &[usize], f: impl Fn(usize) -> f64) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(f).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
    }

    fn opts(stride: [usize; 3], padding: [usize; 3], output_padding: [usize; 3]) -> Conv3dOpts {
        Conv3dOpts {
            stride,
            padding,
            output_padding,
        }
    }

    /// What `scripts/pins/conv3d_ref.py` prints for one case.
    struct Pin {
        shape: [usize; 5],
        sum_y: f64,
        loss: f64,
        head: [f64; 4],
        probe_gx: f64,
        probe_gw: f64,
        probe_gb: f64,
    }

    fn probe(t: &Tensor) -> f64 {
        let n = t.elem_count();
        let p = filled(&[n], |i| (0.03 * i as f64).cos());
        (t.flatten_all().unwrap() * p)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    fn close(what: &str, got: f64, want: f64) {
        assert!(
            (got - want).abs() <= 1e-10 * want.abs().max(1.0),
            "{what}: got {got}, PyTorch {want}"
        );
    }

    fn check_pin(what: &str, conv: Conv, xs: &[usize], ks: &[usize], transposed: bool, o: Conv3dOpts, pin: &Pin) {
        let x = candle_core::Var::from_tensor(&filled(xs, |i| (0.05 * i as f64).cos())).unwrap();
        let w = candle_core::Var::from_tensor(&filled(ks, |i| (0.1 * i as f64 + 0.3).sin() * 0.2)).unwrap();
        let oc = if transposed { ks[1] } else { ks[0] };
        let b = candle_core::Var::from_tensor(&filled(&[oc], |i| 0.1 * i as f64 - 0.05)).unwrap();
        let y = conv(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), o).unwrap();
        assert_eq!(y.dims(), &pin.shape, "{what}: shape");
        let r = filled(y.dims(), |i| (0.07 * i as f64).sin());
        let loss = (&y * r).unwrap().sum_all().unwrap();
        close(
            &format!("{what} sum_y"),
            y.sum_all().unwrap().to_scalar().unwrap(),
            pin.sum_y,
        );
        close(&format!("{what} loss"), loss.to_scalar().unwrap(), pin.loss);
        let head: Vec<f64> = y.flatten_all().unwrap().narrow(0, 0, 4).unwrap().to_vec1().unwrap();
        for (g, p) in head.iter().zip(pin.head) {
            close(&format!("{what} head"), *g, p);
        }
        let grads = loss.backward().unwrap();
        close(&format!("{what} dL/dx"), probe(grads.get(&x).unwrap()), pin.probe_gx);
        close(&format!("{what} dL/dw"), probe(grads.get(&w).unwrap()), pin.probe_gw);
        close(&format!("{what} dL/db"), probe(grads.get(&b).unwrap()), pin.probe_gb);
    }

    #[test]
    fn conv3d_matches_pytorch_forward_and_both_gradients() {
        // python3 scripts/pins/conv3d_ref.py (torch 2.15, float64)
        let pins = [
            (
                [2, 3, 5, 6, 7],
                [4, 3, 3, 3, 3],
                opts([2, 2, 2], [1, 1, 1], [0; 3]),
                Pin {
                    shape: [2, 4, 3, 3, 4],
                    sum_y: 3.816552467999663,
                    loss: -6.303691560329264,
                    head: [
                        -0.5281495048085504,
                        -0.8834908491681983,
                        -0.9779206726391374,
                        -0.734292971891741,
                    ],
                    probe_gx: -1.4435838475719107,
                    probe_gw: -52.33118868469661,
                    probe_gb: 10.078655719855394,
                },
                true,
            ),
            (
                [1, 2, 6, 7, 7],
                [3, 2, 3, 3, 3],
                opts([1, 2, 2], [0, 1, 1], [0; 3]),
                Pin {
                    shape: [1, 3, 4, 4, 4],
                    sum_y: 33.43020803367719,
                    loss: 1.473643287907431,
                    head: [
                        -0.18095056269918547,
                        -0.35252431153701924,
                        -0.3769598711430223,
                        -0.3220474402392894,
                    ],
                    probe_gx: -35.95493467415467,
                    probe_gw: 0.33353655309837027,
                    probe_gb: 4.763986542248734,
                },
                true,
            ),
            (
                [2, 2, 6, 7, 6],
                [3, 2, 5, 3, 2],
                opts([1, 2, 1], [2, 0, 1], [0; 3]),
                Pin {
                    shape: [2, 3, 6, 3, 7],
                    sum_y: 33.09543470899632,
                    loss: -0.2538587995667998,
                    head: [
                        0.008690178984480906,
                        0.06742805059976761,
                        0.06392017718396288,
                        0.06012756265367995,
                    ],
                    probe_gx: -12.045011250056262,
                    probe_gw: 559.0383858896234,
                    probe_gb: 26.6345827809861,
                },
                false, // unequal spatial stride: the fast path only
            ),
        ];
        for (xs, ks, o, pin, taps_too) in &pins {
            check_pin(&format!("conv3d gemm {o:?}"), conv3d_gemm, xs, ks, false, *o, pin);
            if *taps_too {
                check_pin(&format!("conv3d taps {o:?}"), conv3d_taps, xs, ks, false, *o, pin);
            } else {
                let x = filled(xs, |i| i as f64);
                let err = conv3d_taps(&x, &filled(ks, |i| i as f64), None, *o)
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("equal in h and w"), "{err}");
            }
        }
    }

    #[test]
    fn conv_transpose3d_matches_pytorch_forward_and_both_gradients() {
        // python3 scripts/pins/conv3d_ref.py (torch 2.15, float64)
        let pins = [
            (
                [2, 3, 3, 4, 5],
                [3, 4, 3, 3, 3],
                opts([2, 2, 2], [1, 1, 1], [1, 1, 1]),
                Pin {
                    shape: [2, 4, 6, 8, 10],
                    sum_y: 423.1960751353692,
                    loss: -20.62027685302983,
                    head: [
                        0.0031119443580854486,
                        0.05346466023335543,
                        0.0006671387411343807,
                        0.04840580833369991,
                    ],
                    probe_gx: 5.004605929454483,
                    probe_gw: -10.345817371512293,
                    probe_gb: 11.977858577148838,
                },
            ),
            (
                [1, 4, 5, 4, 4],
                [4, 2, 5, 5, 5],
                opts([1, 2, 2], [2, 2, 2], [0, 1, 1]),
                Pin {
                    shape: [1, 2, 5, 8, 8],
                    sum_y: -195.02002446232996,
                    loss: -2.9968249179747195,
                    head: [
                        -0.4198719363463971,
                        -0.4123796841181939,
                        -0.6073519720450419,
                        -0.4367311307313984,
                    ],
                    probe_gx: 0.15899588387791064,
                    probe_gw: 578.4423978006733,
                    probe_gb: 4.159640553675061,
                },
            ),
        ];
        for (xs, ks, o, pin) in &pins {
            check_pin(
                &format!("conv_transpose3d gemm {o:?}"),
                conv_transpose3d_gemm,
                xs,
                ks,
                true,
                *o,
                pin,
            );
            check_pin(
                &format!("conv_transpose3d taps {o:?}"),
                conv_transpose3d_taps,
                xs,
                ks,
                true,
                *o,
                pin,
            );
        }
    }

    #[test]
    fn both_conv3d_paths_gradient_check() {
        let cases: [(Conv, Conv3dOpts, [usize; 5], [usize; 5]); 6] = [
            (
                conv3d_gemm,
                opts([1, 1, 1], [1, 1, 1], [0; 3]),
                [2, 2, 4, 4, 5],
                [3, 2, 3, 3, 3],
            ),
            (
                conv3d_gemm,
                opts([2, 2, 1], [0, 1, 0], [0; 3]),
                [1, 2, 5, 5, 4],
                [2, 2, 2, 3, 2],
            ),
            (
                conv3d_taps,
                opts([2, 2, 2], [1, 1, 1], [0; 3]),
                [2, 2, 5, 5, 5],
                [3, 2, 3, 3, 3],
            ),
            (
                conv_transpose3d_gemm,
                opts([2, 2, 1], [1, 1, 0], [1, 1, 0]),
                [2, 3, 3, 3, 4],
                [3, 2, 3, 3, 2],
            ),
            (
                conv_transpose3d_taps,
                opts([2, 2, 2], [1, 1, 1], [1, 1, 1]),
                [1, 3, 3, 3, 3],
                [3, 2, 3, 3, 3],
            ),
            (
                conv_transpose3d_taps,
                opts([1, 2, 2], [1, 0, 0], [0, 1, 1]),
                [2, 2, 4, 3, 3],
                [2, 3, 3, 2, 2],
            ),
        ];
        for (i, (conv, o, xs, ks)) in cases.into_iter().enumerate() {
            let oc = if i >= 3 { ks[1] } else { ks[0] };
            assert_grad(
                &format!("conv3d case {i} {o:?}"),
                move |a: &[Tensor]| conv(&a[0], &a[1], Some(&a[2]), o),
                &[u(&xs, 40 + i as u64), u(&ks, 50 + i as u64), u(&[oc], 60 + i as u64)],
            );
        }
    }

    #[test]
    fn layers_build_with_pytorch_shapes_and_padding_follows_tensorflow_same() {
        let store = ParamStore::init(0);
        let vb = store.var_builder(DType::F64, &Device::Cpu);
        let stride = [1, 2, 2];
        let c = layers::conv3d(
            1,
            4,
            [5, 5, 5],
            Conv3dOpts {
                stride,
                ..Default::default()
            },
            vb.pp("c"),
        )
        .unwrap();
        let t = layers::conv_transpose3d(4, 1, [5, 5, 5], opts(stride, [2, 2, 2], [0, 1, 1]), vb.pp("t")).unwrap();
        assert_eq!(store.num_params(), 4 * 125 + 4 + 4 * 125 + 1);
        // (b, c, t, h, w) = (1, 1, 20, 16, 16): SAME keeps time, halves space.
        let x = u(&[1, 1, 20, 16, 16], 7);
        let z = c.forward(&same_pad(&x, &[5, 5, 5], &stride).unwrap()).unwrap();
        assert_eq!(z.dims(), &[1, 4, 20, 8, 8]);
        assert_eq!(t.forward(&z).unwrap().dims(), &[1, 1, 20, 16, 16]);
        assert_grad(
            "same_pad + conv3d layer",
            |a: &[Tensor]| c.forward(&same_pad(&a[0], &[5, 5, 5], &stride)?),
            &[u(&[1, 1, 6, 5, 5], 8)],
        );
    }

    #[test]
    fn scalar_quantize_returns_codewords_with_a_straight_through_gradient() {
        let levels =
            candle_core::Var::from_tensor(&Tensor::new(&[-1.0f64, 0.0, 0.5, 2.0], &Device::Cpu).unwrap()).unwrap();
        let x = candle_core::Var::from_tensor(
            &Tensor::new(&[[-3.0f64, 0.2, 0.3], [0.25, 1.2, 7.0]], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let (q, idx) = ops::scalar_quantize(x.as_tensor(), levels.as_tensor()).unwrap();
        assert_eq!(
            q.to_vec2::<f64>().unwrap(),
            vec![vec![-1.0, 0.0, 0.5], vec![0.0, 0.5, 2.0]]
        );
        // 0.25 is a tie between 0.0 and 0.5: the lower index.
        assert_eq!(idx.to_vec2::<u32>().unwrap(), vec![vec![0, 1, 2], vec![1, 2, 3]]);
        let g = filled(&[2, 3], |i| (i + 1) as f64);
        let grads = (q * &g).unwrap().sum_all().unwrap().backward().unwrap();
        // Straight through to x; each level gets the sum over its positions.
        assert_eq!(
            grads.get(&x).unwrap().to_vec2::<f64>().unwrap(),
            g.to_vec2::<f64>().unwrap()
        );
        assert_eq!(
            grads.get(&levels).unwrap().to_vec1::<f64>().unwrap(),
            vec![1.0, 2.0 + 4.0, 3.0 + 5.0, 6.0]
        );
    }
}

#[test]
fn exp_f32_is_within_2_ulp() {
    // Against f64's exp rounded to f32, on a dense grid over f32's range.
    let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
    let mut worst = (0i64, 0f32);
    let n = 400_000;
    for i in 0..=n {
        let x = -87.0 + 175.0 * i as f32 / n as f32;
        let d = ulps(fused::exp_f32(x), (x as f64).exp() as f32);
        if d > worst.0 {
            worst = (d, x);
        }
    }
    assert!(worst.0 <= 2, "exp_f32 is {} ulp off at {}", worst.0, worst.1);
    // Clamped outside the range, never NaN or 0 for finite input.
    assert!(fused::exp_f32(-1000.0) > 0.0 && fused::exp_f32(1000.0).is_finite());
    assert!((Float::sigmoid(0.0f32) - 0.5).abs() < 1e-7);
}

#[test]
fn ln_1p_unit_f32_is_within_3_ulp() {
    // Against f64's ln_1p rounded to f32, over [0, 1] and down to tiny e.
    let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
    let n = 200_000;
    let grid = (0..=n)
        .map(|i| i as f32 / n as f32)
        .chain((1..40).map(|k| 2f32.powi(-k)));
    let mut worst = (0i64, 0f32);
    for e in grid {
        let d = ulps(fused::ln_1p_unit_f32(e), (e as f64).ln_1p() as f32);
        if d > worst.0 {
            worst = (d, e);
        }
    }
    assert!(worst.0 <= 3, "ln_1p_unit_f32 is {} ulp off at {}", worst.0, worst.1);
    assert_eq!(fused::ln_1p_unit_f32(0.0), 0.0);
}

// ---------------------------------------------------------------- the f32 GEMM

/// `C = act([C +] A·B + biases)` in f64, element `(i, j)` at `i·c_rs + j·c_cs`.
#[allow(clippy::too_many_arguments)]
fn reference_gemm(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    c: &mut [f32],
    (c_rs, c_cs): (usize, usize),
    epi: &aezoo_nn::sgemm::Epilogue,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s: f64 = (0..k)
                .map(|p| a[i * a_rs + p * a_cs] as f64 * b[p * b_rs + j * b_cs] as f64)
                .sum();
            if epi.accumulate {
                s += c[i * c_rs + j * c_cs] as f64;
            }
            s += epi.row_bias.map_or(0.0, |v| v[i] as f64) + epi.col_bias.map_or(0.0, |v| v[j] as f64);
            c[i * c_rs + j * c_cs] = match epi.act {
                Act::None => s,
                Act::Relu => s.max(0.0),
                Act::Sigmoid => 1.0 / (1.0 + (-s).exp()),
            } as f32;
        }
    }
}

#[test]
fn sgemm_transpose_matches_the_element_by_element_transpose() {
    // Full 8 × 8 blocks, edges on either side, and added into a target.
    for (rows, cols) in [(1, 1), (7, 9), (8, 8), (17, 33), (49, 64), (64, 49)] {
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
        let base: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32).collect();
        for add in [false, true] {
            let mut got = base.clone();
            aezoo_nn::sgemm::transpose(&src, rows, cols, &mut got, add);
            for i in 0..rows {
                for j in 0..cols {
                    let want = src[i * cols + j] + if add { base[j * rows + i] } else { 0.0 };
                    assert_eq!(
                        got[j * rows + i],
                        want,
                        "transpose {rows}x{cols} add {add} at ({i}, {j})"
                    );
                }
            }
        }
    }
}

#[test]
fn sgemm_matches_a_reference_product_for_every_layout_and_epilogue() {
    use aezoo_nn::sgemm::{self, Epilogue, PackedB, Strided};
    if !sgemm::available() {
        eprintln!("sgemm: this CPU has no AVX2 + FMA; the gemm crate serves f32 here");
        return;
    }
    let vals = |len: usize, seed: u64| -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect()
    };
    // Edges of tiles and panels, several k blocks (k > 256), k = 0, and
    // enough rows for the parallel split.
    let shapes = [
        (1, 1, 1),
        (7, 37, 5),
        (13, 16, 300),
        (64, 49, 257),
        (6, 33, 600),
        (9, 20, 0),
        (200, 40, 30),
    ];
    let mut checked = 0;
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        let (a, b) = (vals(m * k, 10 + si as u64), vals(k * n, 20 + si as u64));
        let (row_bias, col_bias, c0) = (vals(m, 30), vals(n, 31), vals(m * n, 32));
        for (a_t, b_t, c_t) in (0..8).map(|l| (l & 1 == 1, l & 2 == 2, l & 4 == 4)) {
            let a_s = if a_t { (1, m) } else { (k, 1) };
            let b_s = if b_t { (1, k) } else { (n, 1) };
            let c_s = if c_t { (1, m) } else { (n, 1) };
            let pb = PackedB::pack(k, n, Strided::new(&b, b_s.0, b_s.1));
            for e in 0..24 {
                let epi = Epilogue {
                    accumulate: e & 1 == 1,
                    row_bias: (e & 2 == 2).then_some(&row_bias[..]),
                    col_bias: (e & 4 == 4).then_some(&col_bias[..]),
                    act: [Act::None, Act::Relu, Act::Sigmoid][e / 8],
                };
                let parallel = (e + si) % 2 == 0;
                let (mut got, mut want) = (c0.clone(), c0.clone());
                sgemm::gemm_packed(m, Strided::new(&a, a_s.0, a_s.1), &pb, &mut got, c_s, &epi, parallel);
                reference_gemm((m, n, k), &a, a_s, &b, b_s, &mut want, c_s, &epi);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
                    .fold(0f32, f32::max);
                assert!(
                    err < 2e-6 * (k as f32).sqrt().max(1.0),
                    "sgemm ({m}, {n}, {k}) A{a_s:?} B{b_s:?} C{c_s:?} {epi:?} parallel {parallel}: error {err}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, shapes.len() * 8 * 24);
    // The sigmoid epilogue (vector code on the tile's registers) gives the
    // bits of `Float::sigmoid` over f32's range and past the clamp (steps of
    // 0.77 out to ±100), densely over [−20, 20] (steps of 1/64), at ±∞,
    // NaN and tiny values, at the tile and panel edges (n = 37).
    let mut a: Vec<f32> = (0..260).map(|i| (i as f32 - 130.0) * 0.77).collect();
    a.extend((-1280..=1280).map(|i| i as f32 / 64.0));
    a.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-30,
        -1e-30,
        f32::MAX,
        f32::MIN,
    ]);
    let (m, n) = (a.len(), 37);
    let b: Vec<f32> = (0..n)
        .map(|j| if j == 0 { -0.0 } else { j as f32 * 0.013 - 0.2 })
        .collect();
    let pb = PackedB::pack(1, n, Strided::new(&vec![1.0; n], n, 1));
    let epi = Epilogue {
        col_bias: Some(&b),
        act: Act::Sigmoid,
        ..Epilogue::default()
    };
    // y[i][j] = σ(a[i] · 1 + b[j]).
    let mut got = vec![0f32; m * n];
    sgemm::gemm_packed(m, Strided::new(&a, 1, 1), &pb, &mut got, (n, 1), &epi, false);
    for (i, g) in got.iter().enumerate() {
        let z = a[i / n] + b[i % n];
        let want = z.sigmoid();
        assert!(
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
            "sgemm sigmoid of {z}: {g} against Float::sigmoid's {want}"
        );
    }
}

/// Polls `pool::lingerers()` until it is 0, for up to `secs` seconds.
fn lingerers_end_within(secs: u64) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs() < secs {
        if aezoo_nn::pool::lingerers() == 0 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

#[test]
fn lingering_workers_stay_bounded_never_hold_a_job_and_end() {
    use rayon::prelude::*;
    let workers = rayon::current_num_threads();
    aezoo_nn::pool::keep_warm();
    assert!(aezoo_nn::pool::lingerers() <= workers.saturating_sub(1));
    if aezoo_nn::pool::lingering() && workers > 1 {
        // Queued or running right after the call (other tests may have
        // queued them already; none run past their slice uncounted).
        assert!(aezoo_nn::pool::lingerers() >= 1);
    }
    // Nested regions on a worker while linger jobs are queued: every one
    // completes (a linger job picked up inside a join gives its slot back)
    // and computes what the serial loop does.
    let sums = aezoo_nn::pool::on_worker(|| {
        (0..200u64)
            .map(|r| {
                aezoo_nn::pool::keep_warm();
                (0..10_000u64)
                    .into_par_iter()
                    .map(|i| (0..4u64).into_par_iter().map(|j| (i * j) ^ r).sum::<u64>())
                    .sum::<u64>()
            })
            .collect::<Vec<_>>()
    });
    for (r, s) in sums.iter().enumerate() {
        let want: u64 = (0..10_000u64)
            .map(|i| (0..4u64).map(|j| (i * j) ^ r as u64).sum::<u64>())
            .sum();
        assert_eq!(*s, want, "round {r}");
    }
    assert!(aezoo_nn::pool::lingerers() <= workers.saturating_sub(1));
    // With no region started for the blocktime (30 ms), they end; other
    // tests of this binary start regions of their own, hence the long bound.
    assert!(lingerers_end_within(120), "linger jobs still queued after 120 s");
}

/// `(w (o × i), b (o))` from the test generator.
fn layer_params(o: usize, i: usize, seed: u64, dtype: DType) -> (Tensor, Tensor) {
    let w = (u(&[o, i], seed) - 0.5).unwrap().to_dtype(dtype).unwrap();
    let b = (u(&[o], seed + 1) - 0.5).unwrap().to_dtype(dtype).unwrap();
    (w, b)
}

/// The stack one layer at a time through `fused::linear`, a layer that
/// reads fewer columns than the one before gives it reading a narrowed copy.
fn chain_by_layers(xs: &Tensor, layers: &[(&Tensor, Option<&Tensor>, Act)]) -> Tensor {
    let mut h = xs.flatten_from(1).unwrap();
    for (w, b, act) in layers {
        let i = w.dim(1).unwrap();
        let input = h.narrow(1, 0, i).unwrap().contiguous().unwrap();
        h = fused::linear(&input, w, b.expect("a bias"), *act).unwrap();
    }
    h
}

#[test]
fn linear_chain_matches_the_layers_one_by_one() {
    use Act;
    // (input shape, [(out, in, act)]): ae-mlp's stack at small widths, a
    // VAE whose decoder reads the first half of its statistics, one layer;
    // row counts below, at and past a register tile and a task.
    let stacks: Vec<(Vec<usize>, Vec<(usize, usize, Act)>)> = vec![
        (
            vec![1, 1, 7, 5],
            vec![
                (16, 35, Act::Relu),
                (8, 16, Act::None),
                (16, 8, Act::Relu),
                (35, 16, Act::Sigmoid),
            ],
        ),
        (
            vec![13, 1, 7, 5],
            vec![
                (40, 35, Act::Relu),
                (12, 40, Act::None),
                (40, 6, Act::Relu),
                (35, 40, Act::Sigmoid),
            ],
        ),
        (vec![257, 300], vec![(70, 300, Act::Relu), (9, 70, Act::Sigmoid)]),
        (vec![6, 20], vec![(33, 20, Act::None)]),
    ];
    for (k, (shape, dims)) in stacks.iter().enumerate() {
        for dtype in [DType::F32, DType::F64] {
            let xs = u(shape, 40 + k as u64).to_dtype(dtype).unwrap();
            let params: Vec<_> = dims
                .iter()
                .enumerate()
                .map(|(l, &(o, i, _))| layer_params(o, i, 100 * k as u64 + 2 * l as u64, dtype))
                .collect();
            let links: Vec<_> = params
                .iter()
                .zip(dims)
                .map(|((w, b), &(_, _, a))| (w, Some(b), a))
                .collect();
            let got = fused::linear_chain(&xs, &links).unwrap();
            let want = chain_by_layers(&xs, &links);
            assert_eq!(got.dims(), want.dims(), "stack {k} {dtype:?}");
            let (g, w) = (values_f64(&got).unwrap(), values_f64(&want).unwrap());
            // The same products, blocks and epilogue: the same bits.
            assert_eq!(g, w, "stack {k} {dtype:?}");
        }
    }
    // Widths that do not follow each other are refused, naming the layer.
    let xs = u(&[4, 10], 1);
    let (w0, b0) = layer_params(8, 10, 1, DType::F32);
    let (w1, b1) = layer_params(3, 9, 2, DType::F32);
    let err = fused::linear_chain(&xs, &[(&w0, Some(&b0), Act::Relu), (&w1, Some(&b1), Act::None)]).unwrap_err();
    assert!(err.to_string().contains("layer 1"), "{err}");
    let err = fused::linear_chain(&xs, &[(&w1, Some(&b1), Act::None)]).unwrap_err();
    assert!(err.to_string().contains("layer 0"), "{err}");
}
