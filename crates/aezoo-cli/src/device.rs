//! `aezoo check-device`: every entry's training step on a GPU set against
//! the CPU — the loss, every parameter's gradient and the reconstruction in
//! f32, the loss in bf16 — and a finite-difference check (f64) of the
//! device's gradient; one JSON line per entry and a JSON report.
//!
//! The CPU path is the reference: its layers are gradient-checked and pinned
//! to PyTorch by the test suite. On a GPU the custom CPU kernels are not used
//! (each falls back to its composite candle path on a non-CPU tensor), so
//! this command is what checks those paths and candle's CUDA kernels on real
//! models. The same data batch, initial weights and noise go to both devices
//! (aezoo's generator draws on the host).

use std::path::PathBuf;

use aezoo_data::Locator;
use aezoo_nn::{Batch, ParamStore, Rng, StepCtx};
use aezoo_train::trainer::load_data;
use aezoo_train::EntryConfig;
use aezoo_zoo::ZOO;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde_json::{json, Value};

use crate::common::{device, DataArgs};

#[derive(Args)]
pub(crate) struct CheckDeviceArgs {
    /// Entries to check, comma-separated (default: every image, video and
    /// codec entry of the zoo; the graph pipelines are not image models).
    #[arg(long, value_delimiter = ',')]
    pub(crate) entries: Vec<String>,
    /// Samples in the checked batch.
    #[arg(long, default_value_t = 4)]
    pub(crate) batch: usize,
    /// The image folder of entries whose data is a folder (photographs).
    #[arg(long, value_name = "DIR")]
    pub(crate) folder: Option<PathBuf>,
    /// Write every entry's figures to this JSON file too.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// --device is the device checked (against the CPU).
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

/// Tolerances: f32 on two devices differs by summation order only; bf16
/// networks keep about 3 significant digits; the f64 directional derivative
/// against its central difference (a step of 1e-5 along a unit direction)
/// agrees to ~1e-8 away from kinks.
const LOSS_F32: f64 = 1e-4;
const GRAD_F32: f64 = 2e-3;
const LOSS_BF16: f64 = 5e-2;
const FD_F64: f64 = 1e-4;
/// Models larger than this skip the f64 check.
const FD_MAX_PARAMS: usize = 5_000_000;

pub(crate) fn cmd_check_device(a: CheckDeviceArgs) -> Result<()> {
    let dev = device(&a.data.device)?;
    if dev.is_cpu() {
        // The CPU against itself: the f64 gradient check and the plumbing
        // (what the test suite runs); the comparison needs a GPU.
        tracing::warn!("--device cpu: the CPU is set against itself; name a GPU (cuda, metal) to check one");
    }
    let names: Vec<String> = if a.entries.is_empty() {
        ZOO.entry_names().into_iter().map(String::from).collect()
    } else {
        a.entries.clone()
    };
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let (mut rows, mut failed) = (Vec::new(), Vec::new());
    for name in &names {
        let (mut cfg, _) = ZOO.resolve_entry(name)?;
        if ZOO.pipeline_of(&cfg).is_some() {
            continue;
        }
        if let (Some(dir), Some(f)) = (&a.folder, cfg.data.folder.as_mut()) {
            f.path = Some(dir.clone());
        }
        let t = std::time::Instant::now();
        let row = match check_entry(&cfg, &locator, &dev, a.batch.max(1)) {
            Ok(mut r) => {
                let pass = r["pass"].as_bool().unwrap_or(false);
                r["seconds"] = json!(t.elapsed().as_secs_f64());
                if !pass {
                    failed.push(name.clone());
                }
                r
            }
            Err(e) => {
                failed.push(name.clone());
                json!({ "entry": name, "pass": false, "error": crate::error_line(&e) })
            }
        };
        println!("{row}");
        rows.push(row);
    }
    let report = json!({
        "device": a.data.device,
        "batch": a.batch,
        "tolerances": { "loss_f32": LOSS_F32, "grad_f32": GRAD_F32, "loss_bf16": LOSS_BF16, "fd_f64": FD_F64 },
        "entries": rows,
        "failed": failed,
    });
    if let Some(path) = &a.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if rows.is_empty() {
        bail!(
            "check-device: no image, video or codec entry among {}",
            names.join(", ")
        );
    }
    if !failed.is_empty() {
        bail!(
            "check-device: {} of {} entries differ on {}: {}",
            failed.len(),
            rows.len(),
            a.data.device,
            failed.join(", ")
        );
    }
    println!(
        "check-device: {} entries agree on {} and the CPU",
        rows.len(),
        a.data.device
    );
    Ok(())
}

/// One step's figures on one device: the loss, each parameter's gradient
/// (host copies, by name), the deterministic reconstruction, and what the
/// built model says of itself.
struct Step {
    loss: f64,
    grads: Vec<(String, Tensor)>,
    recon: Tensor,
    mixed_precision: bool,
    params: usize,
}

/// The entry's model with its seeded initial weights in `dtype` on `dev`,
/// and the batch moved there.
struct Built {
    params: ParamStore,
    model: Box<dyn aezoo_nn::Autoencoder>,
    batch: Batch,
}

impl Built {
    fn new(cfg: &EntryConfig, batch: &Batch, dev: &Device, dtype: DType) -> Result<Self> {
        let params = ParamStore::init(cfg.train.seed);
        let model = ZOO
            .family_of(cfg)?
            .build(&cfg.model, &cfg.entry, params.var_builder(dtype, dev))?;
        let batch = Batch {
            input: batch.input.to_dtype(dtype)?.to_device(dev)?,
            target: batch.target.to_dtype(dtype)?.to_device(dev)?,
        };
        Ok(Self { params, model, batch })
    }

    /// The training loss, with the same noise on every device and call.
    fn loss(&self, compute: Option<DType>) -> Result<Tensor> {
        let mut rng = Rng::new(11);
        let mut ctx = StepCtx::train(&mut rng);
        if let Some(c) = compute {
            ctx = ctx.computing_in(c);
        }
        Ok(self.model.step(&self.batch, &mut ctx)?.loss)
    }
}

fn run_step(cfg: &EntryConfig, batch: &Batch, dev: &Device, dtype: DType, compute: Option<DType>) -> Result<Step> {
    let built = Built::new(cfg, batch, dev, dtype)?;
    let loss = built.loss(compute)?;
    let grads = loss.backward()?;
    let mut named = Vec::new();
    for (name, var) in built.params.vars() {
        if let Some(g) = grads.get(&var) {
            named.push((name, g.to_dtype(DType::F64)?.to_device(&Device::Cpu)?));
        }
    }
    let recon = built
        .model
        .reconstruct(&built.batch.input)?
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?;
    Ok(Step {
        loss: loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        grads: named,
        recon,
        mixed_precision: built.model.mixed_precision(),
        params: built.params.num_params(),
    })
}

/// The f64 loss's gradient along a seeded random direction, analytic and
/// by central difference, on `dev`: one model, its parameters moved to
/// `base ± eps·dir` in place.
fn directional(cfg: &EntryConfig, batch: &Batch, dev: &Device) -> Result<(f64, f64)> {
    let built = Built::new(cfg, batch, dev, DType::F64)?;
    let grads = built.loss(None)?.backward()?;
    let vars = built.params.vars();
    // A seeded random direction of unit length over all parameters, so the
    // step is eps whatever the model's size.
    let mut rng = Rng::new(5);
    let mut dir = Vec::new();
    let mut norm2 = 0f64;
    for (_, var) in &vars {
        if let Some(g) = grads.get(var) {
            let d = rng.randn(g.shape().clone(), DType::F64, &Device::Cpu)?.to_device(dev)?;
            norm2 += d.sqr()?.sum_all()?.to_scalar::<f64>()?;
            dir.push((var, g.clone(), d));
        }
    }
    let inv = 1.0 / norm2.sqrt().max(f64::MIN_POSITIVE);
    let mut analytic = 0f64;
    for (_, g, d) in dir.iter_mut() {
        *d = (&*d * inv)?;
        analytic += (&*g * &*d)?.sum_all()?.to_scalar::<f64>()?;
    }
    let eps = 1e-5;
    let base: Vec<Tensor> = dir
        .iter()
        .map(|(v, _, _)| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?;
    let at = |step: f64| -> Result<f64> {
        for ((v, _, d), b) in dir.iter().zip(&base) {
            v.set(&(b + (d * step)?)?)?;
        }
        Ok(built.loss(None)?.to_scalar::<f64>()?)
    };
    let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
    Ok((analytic, numeric))
}

/// max |a - b| / max(max |a|, floor) over one tensor pair; NaN where
/// either holds a value that is not finite (candle's `max_all` skips NaN).
fn rel_diff(a: &Tensor, b: &Tensor, floor: f64) -> Result<f64> {
    if !all_finite(a)? || !all_finite(b)? {
        return Ok(f64::NAN);
    }
    let scale = a.abs()?.max_all()?.to_scalar::<f64>()?.max(floor);
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(if scale == 0.0 { diff } else { diff / scale })
}

/// Whether every value of an f64 tensor is finite.
fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.flatten_all()?.to_vec1::<f64>()?.iter().all(|v| v.is_finite()))
}

fn check_entry(cfg: &EntryConfig, locator: &Locator, dev: &Device, n: usize) -> Result<Value> {
    let splits = load_data(cfg, &ZOO, locator)?;
    let idx: Vec<usize> = (0..n.min(splits.train.len())).collect();
    let clean = splits.train.batch(&idx, &Device::Cpu)?;
    let input = match &cfg.data.noise {
        Some(noise) => noise.apply(&clean, &mut Rng::new(7))?,
        None => clean.clone(),
    };
    let batch = Batch { input, target: clean };

    let cpu = run_step(cfg, &batch, &Device::Cpu, DType::F32, None)?;
    let t = std::time::Instant::now();
    let gpu = run_step(cfg, &batch, dev, DType::F32, None)?;
    let gpu_s = t.elapsed().as_secs_f64();
    let loss_rel = (gpu.loss - cpu.loss).abs() / cpu.loss.abs().max(1e-12);
    // Each gradient's error relative to its own scale, floored at 1e-3 of
    // the model's largest gradient: some parameters' true gradient is 0
    // (a key bias under softmax, a bias before a normalisation), and two
    // devices' rounding noise there is no error.
    let mut floor = 0f64;
    for (_, g) in &cpu.grads {
        floor = floor.max(g.abs()?.max_all()?.to_scalar::<f64>()?);
    }
    floor *= 1e-3;
    let (mut grad_worst, mut grad_worst_name) = (0f64, String::new());
    for ((name, g_cpu), (_, g_gpu)) in cpu.grads.iter().zip(&gpu.grads) {
        let r = rel_diff(g_cpu, g_gpu, floor)?;
        if r > grad_worst || r.is_nan() {
            (grad_worst, grad_worst_name) = (r, name.clone());
        }
    }
    let grads_counted = cpu.grads.len() == gpu.grads.len();
    let recon_max_abs = if all_finite(&gpu.recon)? {
        (&cpu.recon - &gpu.recon)?.abs()?.max_all()?.to_scalar::<f64>()?
    } else {
        f64::NAN
    };

    // bf16 networks (families with mixed precision), against the f32 loss.
    let num_params = cpu.params;
    let bf16 = if cpu.mixed_precision {
        let s = run_step(cfg, &batch, dev, DType::F32, Some(DType::BF16))?;
        Some((s.loss - cpu.loss).abs() / cpu.loss.abs().max(1e-12))
    } else {
        None
    };

    // f64: the gradient along a random direction against the central
    // difference of the loss, on the device and on the CPU. Where the CPU's
    // own pair disagrees the loss is not smooth there (a straight-through
    // quantiser, an L1 term on a kink): the difference quotient is then
    // ill-conditioned, and the device's analytic figure must equal the CPU's.
    // SD-sized models are left out (f64 activations of a 256-px SD VAE do
    // not fit a 24 GiB host); their layers are the small entries' layers.
    let fd = if num_params <= FD_MAX_PARAMS {
        let fd_gpu = directional(cfg, &batch, dev)?;
        let fd_cpu = directional(cfg, &batch, &Device::Cpu)?;
        let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
        let fd_rel = rel(fd_gpu.0, fd_gpu.1);
        let smooth = rel(fd_cpu.0, fd_cpu.1) <= FD_F64;
        let pass = if smooth {
            fd_rel <= FD_F64
        } else {
            rel(fd_gpu.0, fd_cpu.0) <= 1e-6
        };
        json!({
            "analytic": fd_gpu.0, "central_difference": fd_gpu.1, "rel": fd_rel,
            "cpu_analytic": fd_cpu.0, "cpu_central_difference": fd_cpu.1,
            "smooth": smooth, "pass": pass,
        })
    } else {
        json!({ "pass": true, "skipped": format!("{num_params} parameters: over {FD_MAX_PARAMS}") })
    };
    let fd_pass = fd["pass"].as_bool().unwrap_or(false);

    // Written so that NaN fails every comparison.
    let pass = loss_rel <= LOSS_F32
        && grad_worst <= GRAD_F32
        && grads_counted
        && recon_max_abs <= 1e-3
        && bf16.is_none_or(|r| r <= LOSS_BF16)
        && fd_pass;
    Ok(json!({
        "entry": cfg.entry,
        "pass": pass,
        "batch": idx.len(),
        "loss_cpu": cpu.loss,
        "loss_device": gpu.loss,
        "loss_rel": loss_rel,
        "grads": cpu.grads.len(),
        "grads_on_device": gpu.grads.len(),
        "grad_worst_rel": grad_worst,
        "grad_worst_param": grad_worst_name,
        "recon_max_abs": recon_max_abs,
        "loss_bf16_rel": bf16,
        "params": num_params,
        "fd_f64_directional": fd,
        "device_first_step_s": gpu_s,
    }))
}
