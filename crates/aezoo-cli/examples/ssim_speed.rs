//! Times `1 − mean SSIM` of a `codec-mnist` batch (64 images of 28 × 28)
//! forward and backward: the fused CPU node (`aezoo_kernels::ssim_planes`, behind
//! `ssim`) against the composite of candle ops (`ssim_composite`).
//!
//!     cargo run --release -p aezoo-cli --example ssim_speed

#[path = "../src/process.rs"]
mod process;

use aezoo_metrics::{ssim, ssim_composite, SsimConfig};
use candle_core::{Device, Result, Tensor, Var};
use std::time::Instant;

fn main() {
    process::tune(false);
    aezoo_nn::runtime::on_worker(|| {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::rand(0f32, 1.0, (64, 1, 28, 28), &dev).unwrap()).unwrap();
        let y = Tensor::rand(0f32, 1.0, (64, 1, 28, 28), &dev).unwrap();
        let paths: [(&str, fn(&Tensor, &Tensor, SsimConfig) -> Result<Tensor>); 2] =
            [("fused", ssim), ("composite", ssim_composite)];
        for (name, f) in paths {
            let (mut tf, mut tb, reps) = (0.0, 0.0, 50);
            for _ in 0..reps {
                let t0 = Instant::now();
                let l = (1.0 - f(x.as_tensor(), &y, SsimConfig::default()).unwrap().mean_all().unwrap()).unwrap();
                let t1 = Instant::now();
                let _g = l.backward().unwrap();
                tf += (t1 - t0).as_secs_f64();
                tb += t1.elapsed().as_secs_f64();
            }
            println!(
                "{name:<10} forward {:.3} ms  backward {:.3} ms",
                tf / reps as f64 * 1e3,
                tb / reps as f64 * 1e3
            );
        }
    });
}
