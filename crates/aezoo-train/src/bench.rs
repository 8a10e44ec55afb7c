//! `aezoo bench`: the speed protocol of `shared/bench/pytorch_ref.py` for any
//! image entry, so `cargo xtask bench` can set aezoo beside its PyTorch twin
//! (`scripts/bench/torch_twins.py`) in one invocation.
//!
//! Fashion-MNIST (through the data chain), the entry's batch size and Adam
//! settings, `steps` training steps timed (forward, backward, optimiser; data
//! batching and noise not timed, as in the reference), then inference over
//! the test images in batches of 1000 (timed) with the test MSE per pixel of
//! clean inputs, and the process's peak resident memory.

use std::time::Instant;

use aezoo_data::{EpochPlan, Locator};
use aezoo_nn::{Batch, Rng, StepCtx};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::config::EntryConfig;
use crate::error::{Result, TrainError};
use crate::trainer::{build_fresh, load_data};
use crate::zoo::Zoo;
use aezoo_nn::optim::Adam;

/// One entry's measurements.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    pub entry: String,
    pub framework: String,
    pub threads: usize,
    pub params: usize,
    pub batch: usize,
    pub steps: usize,
    pub train_img_s: f64,
    pub infer_img_s: f64,
    pub test_mse: f64,
    pub peak_rss_mb: f64,
    /// Where it ran: `cpu`, `cuda` or `metal`.
    #[serde(default)]
    pub device: String,
    /// Mean milliseconds per training step in the forward pass (with the
    /// loss), the backward pass and the optimiser step.
    #[serde(default)]
    pub step_ms: StepMs,
    /// Where the data came from.
    pub data: String,
}

/// Where a training step's time goes (mean ms per step).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepMs {
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
}

/// A `/proc` field given in kB (`VmHWM:` of `/proc/self/status`,
/// `MemAvailable:` of `/proc/meminfo`), in bytes; Linux only.
pub fn proc_bytes(file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let kib: u64 = text
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The device's `(free, total)` memory in bytes: CUDA's `cuMemGetInfo`;
/// `None` on the CPU (and in builds without the `cuda` feature).
pub fn device_memory(dev: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = dev.as_cuda_device() {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some((free as u64, total as u64));
    }
    let _ = dev;
    None
}

/// `cpu`, `cuda` or `metal`.
pub fn device_kind(dev: &Device) -> &'static str {
    match dev {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mb() -> Option<f64> {
    proc_bytes("/proc/self/status", "VmHWM:").map(|b| b as f64 / (1024.0 * 1024.0))
}

/// Two full training steps (forward, backward, Adam) of `cfg` at `batch`
/// images of noise-free random pixels; returns this process's peak memory
/// in bytes: on the CPU its peak RSS, on a GPU the device memory in use at
/// the fullest moment seen (after the forward pass, with the activations,
/// and after the backward pass, with the gradients; read with
/// [`device_memory`], so other processes on the device count too).
/// `aezoo max-batch` runs it in a fresh process per batch size.
pub fn probe_batch(cfg: &EntryConfig, zoo: &Zoo, batch: usize, dev: &Device) -> Result<u64> {
    let mut cfg = cfg.clone();
    cfg.train.batch_size = batch;
    let built = build_fresh(&cfg, zoo, dev)?;
    let [c, h, w] = zoo.image_shape(&cfg)?;
    let mut adam = Adam::new(built.params.vars(), cfg.train.lr, cfg.train.optimizer.clone())?;
    let mut rng = Rng::new(0);
    let mut peak = 0u64;
    let mut seen = |dev: &Device| -> Result<()> {
        dev.synchronize()?;
        if let Some((free, total)) = device_memory(dev) {
            peak = peak.max(total - free);
        }
        Ok(())
    };
    for _ in 0..2 {
        let xs = rng.rand_uniform((batch, c, h, w), 0.0, 1.0, DType::F32, dev)?;
        let out = built
            .model
            .step(&Batch::autoencode(xs), &mut StepCtx::train(&mut rng))?;
        seen(dev)?;
        let grads = out.loss.backward()?;
        seen(dev)?;
        adam.step(&grads)?;
    }
    if !dev.is_cpu() {
        return match device_memory(dev) {
            Some(_) => Ok(peak),
            None => Err(TrainError::Other(
                "this device's memory cannot be read (CUDA only)".into(),
            )),
        };
    }
    proc_bytes("/proc/self/status", "VmHWM:")
        .ok_or_else(|| TrainError::Other("no VmHWM in /proc/self/status (peak memory is read on Linux only)".into()))
}

/// Runs the protocol on `cfg` (its data set replaced by Fashion-MNIST);
/// `steps == 0` means one epoch. On a GPU each step ends by waiting for the
/// device, so the times are the device's, not the launches'.
pub fn run(cfg: &EntryConfig, zoo: &Zoo, locator: &Locator, steps: usize, dev: &Device) -> Result<BenchResult> {
    if zoo.pipeline_of(cfg).is_some() {
        return Err(TrainError::Other(format!("{}: bench covers image entries", cfg.entry)));
    }
    let mut cfg = cfg.clone();
    cfg.data.dataset = "fashion-mnist".into();
    cfg.data.folder = None;
    let dev = dev.clone();
    let splits = load_data(&cfg, zoo, locator)?;
    let built = build_fresh(&cfg, zoo, &dev)?;
    let t = &cfg.train;
    let mut adam = Adam::new(built.params.vars(), t.lr, t.optimizer.clone())?;
    let mut rng = Rng::new(t.seed);
    let n = splits.train.len();
    let per_epoch = n.div_ceil(t.batch_size);
    let steps = if steps == 0 { per_epoch } else { steps };
    let (mut step_s, mut images) = (0f64, 0usize);
    let mut plan = EpochPlan::new(n, t.batch_size, t.seed, 0, true);
    // Forward (with the loss), backward, optimiser.
    let mut phase = [0f64; 3];
    for s in 0..steps {
        if s > 0 && s % per_epoch == 0 {
            plan = EpochPlan::new(n, t.batch_size, t.seed, (s / per_epoch) as u64, true);
        }
        let idx = plan.batch(s % per_epoch);
        let clean = splits.train.batch(idx, &dev)?;
        let input = match &cfg.data.noise {
            Some(noise) => noise.apply(&clean, &mut rng)?,
            None => clean.clone(),
        };
        let batch = Batch { input, target: clean };
        let t0 = Instant::now();
        let out = built.model.step(&batch, &mut StepCtx::train(&mut rng))?;
        dev.synchronize()?;
        let t1 = Instant::now();
        let grads = out.loss.backward()?;
        dev.synchronize()?;
        let t2 = Instant::now();
        adam.step(&grads)?;
        dev.synchronize()?;
        let t3 = Instant::now();
        step_s += t0.elapsed().as_secs_f64();
        phase[0] += (t1 - t0).as_secs_f64();
        phase[1] += (t2 - t1).as_secs_f64();
        phase[2] += (t3 - t2).as_secs_f64();
        images += idx.len();
    }
    // Inference: batches of 1000 after one warm-up batch, as the reference.
    let test = &splits.test;
    let nb = test.len() / 1000;
    if nb == 0 {
        return Err(TrainError::Other(format!(
            "bench: {} has fewer than 1000 test images",
            splits.describe()
        )));
    }
    built
        .model
        .reconstruct(&test.batch(&(0..1000).collect::<Vec<_>>(), &dev)?)?;
    let (mut inf_s, mut sse) = (0f64, 0f64);
    for b in 0..nb {
        let x = test.batch(&(b * 1000..(b + 1) * 1000).collect::<Vec<_>>(), &dev)?;
        let t0 = Instant::now();
        let y = built.model.reconstruct(&x)?;
        dev.synchronize()?;
        inf_s += t0.elapsed().as_secs_f64();
        sse += (y - &x)?.sqr()?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    }
    let [c, h, w] = test.image_shape();
    Ok(BenchResult {
        entry: cfg.entry.clone(),
        framework: format!("aezoo {} (candle 0.11)", env!("CARGO_PKG_VERSION")),
        threads: rayon::current_num_threads(),
        params: built.params.num_params(),
        batch: t.batch_size,
        steps,
        train_img_s: images as f64 / step_s,
        infer_img_s: (nb * 1000) as f64 / inf_s,
        test_mse: sse / (nb * 1000 * c * h * w) as f64,
        peak_rss_mb: peak_rss_mb().unwrap_or(f64::NAN),
        device: device_kind(&dev).into(),
        step_ms: StepMs {
            forward: phase[0] * 1e3 / steps as f64,
            backward: phase[1] * 1e3 / steps as f64,
            optimizer: phase[2] * 1e3 / steps as f64,
        },
        data: splits.describe(),
    })
}
