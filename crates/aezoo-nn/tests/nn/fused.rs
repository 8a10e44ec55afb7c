//! The fused CPU layers (`aezoo-kernels`) against their composites and
//! finite differences, in f64 and f32, at every SIMD level, and the same
//! bits in every run.

use super::*;
use aezoo_kernels::{self as fused, Act};
use aezoo_nn::layers::apply_act;

/// The composite reference of a fused conv: candle's conv, the bias
/// broadcast over its channels, the activation.
pub(crate) fn plain_conv(x: &Tensor, wt: &Tensor, bias: &Tensor, p: usize, s: usize, dl: usize, act: Act) -> Tensor {
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
pub(crate) fn plain_up_conv(x: &Tensor, f: usize, wt: &Tensor, bias: &Tensor, p: usize, act: Act) -> Tensor {
    plain_conv(&ops::upsample_nearest2d(x, f, f).unwrap(), wt, bias, p, 1, 1, act)
}

#[test]
fn upsample_conv2d_in_sub_pixel_form_matches_upsample_then_conv() {
    use aezoo_nn::ops as subpixel;
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
            !fused::subpixel_enabled() || fused::upsample_conv2d_applies(&x, f, &wt, p),
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
    assert!(!fused::upsample_conv2d_applies(&x, 1, &wt, 1));
    let y = subpixel::upsample_conv2d(&x, 1, &wt, &bias, 1, Act::Relu).unwrap();
    assert!(max_abs_diff(&y, &plain_up_conv(&x, 1, &wt, &bias, 1, Act::Relu)) < 1e-12);
    // A non-square kernel: the two axes' plans pad differently (0 and 1).
    let (x, wt, bias) = (u(&[2, 2, 3, 4], 329), u(&[3, 2, 1, 4], 330), u(&[3], 331));
    assert!(!fused::subpixel_enabled() || fused::upsample_conv2d_applies(&x, 2, &wt, 0));
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
        let y = ops::upsample_conv2d(x32, f, w32, b32, 1, Act::Relu).unwrap();
        let plain = plain_up_conv(x64, f, w64, b64, 1, Act::Relu);
        let what = format!("f32 upsample×{f} conv b{b} c{c} o{o} {h}x{h}");
        compare_f32_with_f64(&what, &y, &plain, &v);
    }
}

#[test]
fn f32_convs_through_sgemm_match_the_f64_composite() {
    // Sixteen or more outputs and K ≥ 64: in f32 with AVX2 the forward is
    // yᵀ = colsᵀ·Wᵀ through aezoo_kernels::sgemm, stored transposed; values
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
    use aezoo_kernels::simd;
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
            let layers = as_layers(&params, dtype);
            let chain: Vec<_> = layers.iter().zip(dims).map(|(l, &(_, _, a))| (l, a)).collect();
            let got = layers::linear_chain(&xs, &chain).unwrap();
            let want = chain_by_layers(&xs, &links);
            assert_eq!(got.dims(), want.dims(), "stack {k} {dtype:?}");
            let (g, w) = (values_f64(&got).unwrap(), values_f64(&want).unwrap());
            // The same products, blocks and epilogue: the same bits.
            assert_eq!(g, w, "stack {k} {dtype:?}");
            // f32 with AVX2 takes the one-region kernel, f64 the layers.
            let fast = fused::linear_chain(&xs, &links).unwrap().is_some();
            assert_eq!(
                fast,
                dtype == DType::F32 && aezoo_kernels::sgemm::available(),
                "stack {k} {dtype:?}"
            );
        }
    }
    // Widths that do not follow each other are refused, naming the layer.
    let xs = u(&[4, 10], 1);
    let (w0, b0) = layer_params(8, 10, 1, DType::F32);
    let (w1, b1) = layer_params(3, 9, 2, DType::F32);
    let layers = as_layers(&[(w0, b0), (w1, b1)], DType::F32);
    let err = layers::linear_chain(&xs, &[(&layers[0], Act::Relu), (&layers[1], Act::None)]).unwrap_err();
    assert!(err.to_string().contains("layer 1"), "{err}");
    let err = layers::linear_chain(&xs, &[(&layers[1], Act::None)]).unwrap_err();
    assert!(err.to_string().contains("layer 0"), "{err}");
}

/// `(w, b)` pairs as linear layers `l0, l1, …` of the given dtype.
fn as_layers(params: &[(Tensor, Tensor)], dtype: DType) -> Vec<layers::Linear> {
    let mut map = std::collections::HashMap::new();
    for (l, (w, b)) in params.iter().enumerate() {
        map.insert(format!("l{l}.weight"), w.clone());
        map.insert(format!("l{l}.bias"), b.clone());
    }
    let vb = candle_nn::VarBuilder::from_tensors(map, dtype, &Device::Cpu);
    params
        .iter()
        .enumerate()
        .map(|(l, (w, _))| {
            let (o, i) = w.dims2().unwrap();
            layers::linear(i, o, LinearConfig::default(), vb.pp(format!("l{l}"))).unwrap()
        })
        .collect()
}
