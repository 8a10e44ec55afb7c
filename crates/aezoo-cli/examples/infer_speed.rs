//! Times one entry's inference (`Autoencoder::reconstruct`) on a batch of
//! 1000 random 28 × 28 images with fresh parameters — the inner loop of
//! `aezoo bench`'s inference, without the data set — and prints the median
//! of many repetitions (a steadier figure than the bench's ten batches on a
//! shared machine, and a loop long enough to profile):
//!
//!     cargo run --release -p aezoo-cli --example infer_speed -- ae-mlp [reps] [--gap-us N] [--mse]

#[path = "../src/process.rs"]
mod process;
use std::time::Instant;

use aezoo_train::trainer::build_fresh;
use aezoo_zoo::ZOO;
use candle_core::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    process::tune(false);
    // On a pool worker, as `aezoo`'s main runs every command.
    aezoo_nn::runtime::on_worker(run)
}

fn run() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--gap-us N`: sleep N µs before each repetition; `--mse`: also sum the
    // squared error of each reconstruction.
    let gap_us: Option<u64> = match args.iter().position(|a| a == "--gap-us") {
        Some(i) => {
            let v = args.get(i + 1).ok_or_else(|| anyhow::anyhow!("--gap-us N"))?.parse()?;
            args.drain(i..i + 2);
            Some(v)
        }
        None => None,
    };
    let mse = match args.iter().position(|a| a == "--mse") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let entry = args.first().map(String::as_str).unwrap_or("ae-mlp");
    let reps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let (cfg, _) = ZOO.resolve_entry(entry)?;
    let dev = Device::Cpu;
    let built = build_fresh(&cfg, &ZOO, &dev)?;
    let x = Tensor::rand(0f32, 1.0, (1000, 1, 28, 28), &dev)?;
    for _ in 0..5 {
        built.model.reconstruct(&x)?;
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        if let Some(g) = gap_us {
            std::thread::sleep(std::time::Duration::from_micros(g));
        }
        let t0 = Instant::now();
        let y = built.model.reconstruct(&x)?;
        t.push(t0.elapsed().as_secs_f64());
        if mse {
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
