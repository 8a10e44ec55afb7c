//! 3-D convolutions: both paths against each other, finite differences and
//! PyTorch's values; the straight-through scalar quantiser.

use super::*;
use aezoo_kernels::{conv3d_gemm, conv_transpose3d_gemm, Conv3dOpts};
use aezoo_nn::conv3d::{conv3d_taps, conv_transpose3d_taps};

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
    let levels = candle_core::Var::from_tensor(&Tensor::new(&[-1.0f64, 0.0, 0.5, 2.0], &Device::Cpu).unwrap()).unwrap();
    let x =
        candle_core::Var::from_tensor(&Tensor::new(&[[-3.0f64, 0.2, 0.3], [0.25, 1.2, 7.0]], &Device::Cpu).unwrap())
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

#[test]
fn a_kernel_as_large_as_the_clip_is_refused_before_allocating() {
    // 16 channels × 33³ taps by 8 clips × 20·32·32 positions: 9.4e10 column
    // values (an abort of 377 GB before the check).
    let x = Tensor::zeros((8, 16, 20, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let k = Tensor::zeros((1, 16, 33, 33, 33), DType::F32, &Device::Cpu).unwrap();
    let err = ops::conv3d(&x, &k, None, opts([1, 1, 1], [16; 3], [0; 3]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv3d") && err.contains("column buffer") && err.contains("smaller kernel"),
        "{err}"
    );
    let kt = Tensor::zeros((16, 1, 33, 33, 33), DType::F32, &Device::Cpu).unwrap();
    let y = Tensor::zeros((1, 16, 20, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let y = y.repeat((8, 1, 1, 1, 1)).unwrap();
    let err = ops::conv_transpose3d(&y, &kt, None, opts([1, 1, 1], [16; 3], [0; 3]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("conv_transpose3d") && err.contains("column buffer"),
        "{err}"
    );
}

#[test]
fn batches_past_the_column_budget_go_through_in_chunks() {
    // A budget of two samples' columns: a batch of 5 in chunks 2, 2, 1,
    // with the values of one pass, and its gradients but for the order the
    // weights' sums over the batch are added in.
    let (x, w, b) = (
        candle_core::Var::from_tensor(&filled(&[5, 2, 3, 6, 6], |i| ((i * 37) % 11) as f64 / 7.0 - 0.6)).unwrap(),
        candle_core::Var::from_tensor(&filled(&[3, 2, 3, 3, 3], |i| ((i * 13) % 7) as f64 / 9.0 - 0.3)).unwrap(),
        candle_core::Var::from_tensor(&filled(&[3], |i| i as f64 * 0.1)).unwrap(),
    );
    let o = opts([1, 2, 2], [1; 3], [0; 3]);
    let per_sample = aezoo_kernels::conv3d_columns_per_sample(x.as_tensor(), w.as_tensor(), o)
        .unwrap()
        .unwrap();
    let run = |budget: usize| {
        let y = ops::conv3d_within(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), o, budget).unwrap();
        let g = (&y * &y).unwrap().sum_all().unwrap().backward().unwrap();
        let grads: Vec<Vec<f64>> = [&x, &w, &b]
            .iter()
            .map(|v| g.get(v).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap())
            .collect();
        (y.flatten_all().unwrap().to_vec1::<f64>().unwrap(), grads)
    };
    let close = |a: &[f64], b: &[f64], what: &str| {
        assert_eq!(a.len(), b.len());
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(d < 1e-12, "{what}: differs by {d}");
    };
    let ((y1, g1), (y0, g0)) = (run(2 * per_sample), run(usize::MAX));
    assert_eq!(y1, y0, "conv3d in chunks: the same values");
    for (a, b) in g1.iter().zip(&g0) {
        close(a, b, "conv3d gradients");
    }
    let wt = candle_core::Var::from_tensor(&filled(&[2, 3, 3, 3, 3], |i| ((i * 5) % 9) as f64 / 8.0 - 0.5)).unwrap();
    let ot = opts([1, 2, 2], [1; 3], [0, 1, 1]);
    let per_sample = aezoo_kernels::conv_transpose3d_columns_per_sample(x.as_tensor(), wt.as_tensor())
        .unwrap()
        .unwrap();
    let run_t = |budget: usize| {
        let y = ops::conv_transpose3d_within(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor()), ot, budget).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        (
            y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            g.get(&wt).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        )
    };
    let ((y1, g1), (y0, g0)) = (run_t(2 * per_sample), run_t(usize::MAX));
    assert_eq!(y1, y0, "conv_transpose3d in chunks: the same values");
    close(&g1, &g0, "conv_transpose3d gradient");
}
