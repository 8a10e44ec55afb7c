//! Times one entry's inference (`Autoencoder::reconstruct`) on a batch of
//! 1000 random 28 × 28 images with fresh parameters — the inner loop of
//! `aezoo bench`'s inference, without the data set — and prints the median
//! of many repetitions (a steadier figure than the bench's ten batches on a
//! shared machine, and a loop long enough to profile):
//!
//!     cargo run --release -p aezoo-cli --example infer_speed -- ae-mlp [reps]

#[path = "../src/process.rs"]
mod process;
use std::time::Instant;

use aezoo_train::trainer::build_fresh;
use aezoo_train::EntryConfig;
use candle_core::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    process::tune();
    // On a pool worker, as `aezoo`'s main runs every command.
    aezoo_nn::runtime::on_worker(run)
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let entry = args.get(1).map(String::as_str).unwrap_or("ae-mlp");
    let reps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../configs/{entry}.json"));
    let cfg = EntryConfig::from_file(&path)?;
    let dev = Device::Cpu;
    let built = build_fresh(&cfg, &dev)?;
    let x = Tensor::rand(0f32, 1.0, (1000, 1, 28, 28), &dev)?;
    for _ in 0..5 {
        built.model.reconstruct(&x)?;
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        if let Ok(g) = std::env::var("GAP_US") {
            std::thread::sleep(std::time::Duration::from_micros(g.parse()?));
        }
        let t0 = Instant::now();
        let y = built.model.reconstruct(&x)?;
        t.push(t0.elapsed().as_secs_f64());
        if std::env::var_os("MSE").is_some() {
            (y - &x)?
                .sqr()?
                .to_dtype(candle_core::DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    t.sort_by(f64::total_cmp);
    let (med, min) = (t[reps / 2], t[0]);
    println!(
        "{entry}: median {:.3} ms ({:.0} img/s), min {:.3} ms ({:.0} img/s)",
        med * 1e3,
        1000.0 / med,
        min * 1e3,
        1000.0 / min
    );
    Ok(())
}
