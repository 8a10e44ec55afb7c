//! Times the forward and backward pass (under a random cotangent) of the
//! zoo's convolution and linear layers at their training shapes — batch 128
//! (`vae-conv`, `ae-denoise`) or 64 (`codec-mnist`) — and `ae-mlp`'s
//! inference chain at the bench's batch of 1000 (forward only), f32, all of rayon's
//! threads, on a pool worker with the process tuned as the `aezoo` binary
//! tunes it (`src/process.rs`) — and prints the median
//! milliseconds and GFLOP/s (forward FLOPs, twice that for the backward). The figures in docs/perf.md's
//! fast-path table come from it; `AEZOO_NO_SGEMM=1` or `AEZOO_NO_FUSED=1`
//! times the slower paths; `--only <text>` times only the lines whose name
//! contains it. The `up+conv` lines count the FLOPs of the
//! upsampled conv they stand for (the sub-pixel form does 4/9 of them).
//!
//!     cargo run --release -p aezoo-cli --example layer_speed [vae|denoise|codec|mlp] [--only TEXT]

#[path = "../src/process.rs"]
mod process;

use aezoo_kernels::{self as fused, Act};
use candle_core::{Device, Tensor, Var};
use std::time::Instant;

/// The median of `v` (a shared machine's interference only slows single
/// calls).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `f` over `reps` calls, after 20 warm-up calls.
fn time_median(reps: usize, f: impl Fn()) -> f64 {
    (0..20).for_each(|_| f());
    median(
        (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// `--only TEXT`: time only the lines whose name contains it.
fn only() -> Option<&'static str> {
    static ONLY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ONLY.get_or_init(|| {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1).cloned())
    })
    .as_deref()
}

/// Median forward and backward milliseconds of `f` over `reps` calls.
fn bench(name: &str, flops_fwd: f64, f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>, x: &Var, reps: usize) {
    if only().is_some_and(|only| !name.contains(only)) {
        return;
    }
    let r = {
        let y = f(x.as_tensor()).unwrap();
        Tensor::randn(0f32, 1.0, y.dims(), &Device::Cpu).unwrap()
    };
    for _ in 0..3 {
        let y = f(x.as_tensor()).unwrap();
        let _ = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    }
    let (mut tf, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t0 = Instant::now();
        let y = f(x.as_tensor()).unwrap();
        let l = (y * &r).unwrap().sum_all().unwrap();
        let t1 = Instant::now();
        let _g = l.backward().unwrap();
        tf.push((t1 - t0).as_secs_f64());
        tb.push(t1.elapsed().as_secs_f64());
    }
    let (tf, tb) = (median(tf), median(tb));
    println!(
        "{name:<30} fwd {:7.3} ms ({:5.1} GFLOP/s)  bwd {:7.3} ms ({:5.1} GFLOP/s)",
        tf * 1e3,
        flops_fwd / tf / 1e9,
        tb * 1e3,
        2.0 * flops_fwd / tb / 1e9
    );
}

fn main() {
    process::tune(false);
    let which = std::env::args().nth(1).unwrap_or_default();
    aezoo_nn::runtime::on_worker(|| {
        let dev = Device::Cpu;
        let var = |s: &[usize]| Var::from_tensor(&Tensor::randn(0f32, 0.1, s, &dev).unwrap()).unwrap();
        let conv = |c: usize, o: usize, k: usize| (var(&[o, c, k, k]), var(&[o]));
        let flops = |b: usize, o: usize, l: usize, k: usize| 2.0 * (b * o * l * k) as f64;
        let reps = 20;
        if which.is_empty() || which == "vae" {
            let b = 128;
            let (x, (w, bb)) = (var(&[b, 1, 28, 28]), conv(1, 32, 4));
            bench(
                "vae-conv conv 1->32 k4 s2",
                flops(b, 32, 196, 16),
                &|x| fused::conv2d(x, w.as_tensor(), bb.as_tensor(), 1, 2, 1, Act::Relu),
                &x,
                reps,
            );
            let (x, (w, bb)) = (var(&[b, 32, 14, 14]), conv(32, 64, 4));
            bench(
                "vae-conv conv 32->64 k4 s2",
                flops(b, 64, 49, 512),
                &|x| fused::conv2d(x, w.as_tensor(), bb.as_tensor(), 1, 2, 1, Act::Relu),
                &x,
                reps,
            );
            let (x, w, bb) = (var(&[b, 64, 7, 7]), var(&[64, 32, 4, 4]), var(&[32]));
            bench(
                "vae-conv convT 64->32 k4 s2",
                flops(b, 64, 49, 512),
                &|x| fused::conv_transpose2d(x, w.as_tensor(), bb.as_tensor(), 1, 0, 2, 1, Act::Relu),
                &x,
                reps,
            );
            let (x, w, bb) = (var(&[b, 32, 14, 14]), var(&[32, 1, 4, 4]), var(&[1]));
            bench(
                "vae-conv convT 32->1 k4 s2",
                flops(b, 32, 196, 16),
                &|x| fused::conv_transpose2d(x, w.as_tensor(), bb.as_tensor(), 1, 0, 2, 1, Act::None),
                &x,
                reps,
            );
            let (x, w, bb) = (var(&[b, 3136]), var(&[32, 3136]), var(&[32]));
            bench(
                "vae-conv linear 3136->32",
                flops(b, 32, 1, 3136),
                &|x| fused::linear(x, w.as_tensor(), bb.as_tensor(), Act::None),
                &x,
                reps,
            );
            let (x, w, bb) = (var(&[b, 16]), var(&[3136, 16]), var(&[3136]));
            bench(
                "vae-conv linear 16->3136",
                flops(b, 3136, 1, 16),
                &|x| fused::linear(x, w.as_tensor(), bb.as_tensor(), Act::Relu),
                &x,
                reps,
            );
        }
        if which.is_empty() || which == "denoise" {
            let b = 128;
            let (x, (w, bb)) = (var(&[b, 1, 28, 28]), conv(1, 32, 3));
            bench(
                "ae-denoise conv+pool 1->32",
                flops(b, 32, 784, 9),
                &|x| fused::conv2d_pool2(x, w.as_tensor(), bb.as_tensor(), 1, 1, 1, Act::Relu),
                &x,
                reps,
            );
            let (x, (w, bb)) = (var(&[b, 32, 14, 14]), conv(32, 32, 3));
            bench(
                "ae-denoise conv+pool 32->32 14",
                flops(b, 32, 196, 288),
                &|x| fused::conv2d_pool2(x, w.as_tensor(), bb.as_tensor(), 1, 1, 1, Act::Relu),
                &x,
                reps,
            );
            bench(
                "ae-denoise conv 32->32 14x14",
                flops(b, 32, 196, 288),
                &|x| fused::conv2d(x, w.as_tensor(), bb.as_tensor(), 1, 1, 1, Act::Relu),
                &x,
                reps,
            );
            let (x, (w, bb)) = (var(&[b, 32, 28, 28]), conv(32, 32, 3));
            bench(
                "ae-denoise conv 32->32 28x28",
                flops(b, 32, 784, 288),
                &|x| fused::conv2d(x, w.as_tensor(), bb.as_tensor(), 1, 1, 1, Act::Relu),
                &x,
                reps / 2,
            );
            // The decoder's blocks as they run: 2× upsampling into the conv,
            // in sub-pixel form (`AEZOO_NO_FUSED=1`: upsample, then conv).
            for (hw, name) in [
                (7, "ae-denoise up+conv 32->32 7->14"),
                (14, "ae-denoise up+conv 32->32 14->28"),
            ] {
                let (x, (w, bb)) = (var(&[b, 32, hw, hw]), conv(32, 32, 3));
                let l = 4 * hw * hw;
                bench(
                    name,
                    flops(b, 32, l, 288),
                    &|x| aezoo_nn::ops::upsample_conv2d(x, 2, w.as_tensor(), bb.as_tensor(), 1, Act::Relu),
                    &x,
                    reps / 2,
                );
            }
            let (x, (w, bb)) = (var(&[b, 32, 28, 28]), conv(32, 1, 3));
            bench(
                "ae-denoise head 32->1 28x28",
                flops(b, 1, 784, 288),
                &|x| fused::conv2d(x, w.as_tensor(), bb.as_tensor(), 1, 1, 1, Act::Sigmoid),
                &x,
                reps / 2,
            );
        }
        if which.is_empty() || which == "mlp" {
            // ae-mlp's inference chain at the bench's batch of 1000, forward only.
            let b = 1000;
            let dims = [
                (784, 128, Act::Relu),
                (128, 64, Act::None),
                (64, 128, Act::Relu),
                (128, 784, Act::Sigmoid),
            ];
            // The identity and ReLU twins of the sigmoid layer; `ae-sparse`'s and `vae-mlp`'s layers.
            let extra = [
                (128, 784, Act::None),
                (128, 784, Act::Relu),
                (784, 64, Act::Relu),
                (64, 784, Act::Sigmoid),
                (784, 400, Act::Relu),
                (400, 784, Act::Sigmoid),
            ];
            let layers: Vec<_> = dims.iter().map(|&(i, o, a)| (var(&[o, i]), var(&[o]), a)).collect();
            let x = Tensor::rand(0f32, 1.0, (b, 784), &dev).unwrap();
            let total: f64 = dims.iter().map(|&(i, o, _)| 2.0 * (b * i * o) as f64).sum();
            let chain = |x: &Tensor| {
                let mut h = x.clone();
                for (w, bb, a) in &layers {
                    h = fused::linear(&h, w.as_tensor(), bb.as_tensor(), *a).unwrap();
                }
                h
            };
            let reps = 400;
            let t = time_median(reps, || {
                chain(&x);
            });
            println!(
                "{:<30} fwd {:7.3} ms ({:5.1} GFLOP/s, {:.0} img/s)",
                "ae-mlp chain n=1000",
                t * 1e3,
                total / t / 1e9,
                b as f64 / t
            );
            let xi = Tensor::rand(0f32, 1.0, (b, 784), &dev).unwrap();
            let t = time_median(reps, || {
                fused::sigmoid(&xi).unwrap();
            });
            println!("{:<30} fwd {:7.3} ms", "  sigmoid 1000x784", t * 1e3);
            for &(i, o, a) in dims.iter().chain(&extra) {
                let (w, bb) = (var(&[o, i]), var(&[o]));
                let xi = Tensor::rand(0f32, 1.0, (b, i), &dev).unwrap();
                let t = time_median(reps, || {
                    fused::linear(&xi, w.as_tensor(), bb.as_tensor(), a).unwrap();
                });
                println!(
                    "{:<30} fwd {:7.3} ms ({:5.1} GFLOP/s)",
                    format!("  linear {i}->{o} {a:?}"),
                    t * 1e3,
                    2.0 * (b * i * o) as f64 / t / 1e9
                );
            }
        }
        if which.is_empty() || which == "codec" {
            let b = 64;
            let (x, (w, bb)) = (var(&[b, 1, 28, 28]), conv(1, 32, 3));
            bench(
                "codec-mnist conv 1->32 k3 s2",
                flops(b, 32, 196, 9),
                &|x| fused::conv2d(x, w.as_tensor(), bb.as_tensor(), 1, 2, 1, Act::Relu),
                &x,
                reps,
            );
            let (x, (w, bb)) = (var(&[b, 32, 14, 14]), conv(32, 64, 3));
            bench(
                "codec-mnist conv 32->64 k3 s2",
                flops(b, 64, 49, 288),
                &|x| fused::conv2d(x, w.as_tensor(), bb.as_tensor(), 1, 2, 1, Act::Relu),
                &x,
                reps,
            );
            let (x, w, bb) = (var(&[b, 64, 7, 7]), var(&[64, 32, 3, 3]), var(&[32]));
            bench(
                "codec-mnist convT 64->32 k3 s2",
                flops(b, 64, 49, 288),
                &|x| fused::conv_transpose2d(x, w.as_tensor(), bb.as_tensor(), 1, 1, 2, 1, Act::Relu),
                &x,
                reps,
            );
            let (x, w, bb) = (var(&[b, 32, 14, 14]), var(&[32, 1, 3, 3]), var(&[1]));
            bench(
                "codec-mnist convT 32->1 k3 s2",
                flops(b, 32, 196, 9),
                &|x| fused::conv_transpose2d(x, w.as_tensor(), bb.as_tensor(), 1, 1, 2, 1, Act::Sigmoid),
                &x,
                reps,
            );
        }
    });
}
