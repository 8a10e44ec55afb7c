//! Times Conv3d / ConvTranspose3d forward + backward on the layer shapes of
//! `video-ae-small` (batch 8 clips of 20 × 64 × 64), for the plain path (2-D
//! convs per temporal tap) and the fast path (vol2col + GEMM), and prints
//! GFLOP/s per layer.
//!
//!     cargo run --release -p aezoo-cli --example conv3d_speed [-- BATCH]

use std::time::Instant;

use aezoo_kernels::{conv3d_gemm, conv_transpose3d_gemm, Conv3dOpts};
use aezoo_nn::conv3d::{conv3d_taps, conv_transpose3d_taps};
use candle_core::{Device, Result, Tensor, Var};

type Conv = fn(&Tensor, &Tensor, Option<&Tensor>, Conv3dOpts) -> Result<Tensor>;

fn time(conv: Conv, x: &[usize], k: &[usize], oc: usize, o: Conv3dOpts) -> Result<(f64, f64, Vec<usize>)> {
    let dev = Device::Cpu;
    let xv = Var::from_tensor(&Tensor::randn(0f32, 1.0, x, &dev)?)?;
    let kv = Var::from_tensor(&(Tensor::randn(0f32, 1.0, k, &dev)? * 0.05)?)?;
    let bv = Var::zeros(oc, candle_core::DType::F32, &dev)?;
    let mut best = (f64::INFINITY, f64::INFINITY);
    let mut shape = vec![];
    for _ in 0..3 {
        let t0 = Instant::now();
        let y = conv(xv.as_tensor(), kv.as_tensor(), Some(bv.as_tensor()), o)?;
        let _ = y.flatten_all()?.get(0)?.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let _g = y.sqr()?.mean_all()?.backward()?;
        let t2 = Instant::now();
        shape = y.dims().to_vec();
        best.0 = best.0.min((t1 - t0).as_secs_f64());
        best.1 = best.1.min((t2 - t1).as_secs_f64());
    }
    Ok((best.0, best.1, shape))
}

fn main() -> Result<()> {
    let b: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let down = Conv3dOpts {
        stride: [1, 2, 2],
        padding: [1, 1, 1],
        ..Default::default()
    };
    let same = Conv3dOpts {
        padding: [1; 3],
        ..Default::default()
    };
    let up = Conv3dOpts {
        stride: [1, 2, 2],
        padding: [1; 3],
        output_padding: [0, 1, 1],
    };
    // (name, transposed, input, kernel, out channels, opts)
    let layers: [(&str, bool, [usize; 5], [usize; 5], usize, Conv3dOpts); 6] = [
        ("enc conv1 1→16", false, [b, 1, 20, 64, 64], [16, 1, 3, 3, 3], 16, down),
        (
            "enc conv2 16→32",
            false,
            [b, 16, 20, 32, 32],
            [32, 16, 3, 3, 3],
            32,
            down,
        ),
        (
            "res conv 32→32",
            false,
            [b, 32, 20, 16, 16],
            [32, 32, 3, 3, 3],
            32,
            same,
        ),
        ("dec deconv1 8→32", true, [b, 8, 20, 8, 8], [8, 32, 3, 3, 3], 32, up),
        (
            "dec deconv2 32→16",
            true,
            [b, 32, 20, 16, 16],
            [32, 16, 3, 3, 3],
            16,
            up,
        ),
        ("dec deconv3 16→1", true, [b, 16, 20, 32, 32], [16, 1, 3, 3, 3], 1, up),
    ];
    println!("batch {b} clips; best of 3; GFLOP/s counts 2·MACs, backward = 2× forward");
    println!(
        "{:<20} {:>26} {:>26}",
        "layer", "plain fwd / bwd (ms)", "fast fwd / bwd (ms)"
    );
    for (name, transposed, x, k, oc, o) in layers {
        let (plain, fast): (Conv, Conv) = if transposed {
            (conv_transpose3d_taps, conv_transpose3d_gemm)
        } else {
            (conv3d_taps, conv3d_gemm)
        };
        let (pf, pb, ys) = time(plain, &x, &k, oc, o)?;
        let (ff, fb, _) = time(fast, &x, &k, oc, o)?;
        // MACs: every (input voxel, kernel tap, out channel) for transposed;
        // every (output voxel, kernel tap, in channel) for direct.
        let taps: usize = k[2..].iter().product();
        let macs = if transposed {
            x.iter().product::<usize>() * taps * k[1]
        } else {
            ys.iter().product::<usize>() * taps * k[1]
        } as f64;
        let gf = |s: f64, m: f64| 2.0 * macs * m / s / 1e9;
        println!(
            "{name:<20} {:>8.1} / {:>8.1} ({:>4.1} GF/s) {:>8.1} / {:>8.1} ({:>4.1} GF/s)",
            pf * 1e3,
            pb * 1e3,
            gf(pf + pb, 3.0),
            ff * 1e3,
            fb * 1e3,
            gf(ff + fb, 3.0)
        );
    }
    Ok(())
}
