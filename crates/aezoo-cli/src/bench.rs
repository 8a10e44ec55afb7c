//! Speed and memory: `aezoo bench` (the PyTorch bench protocol, `--peak`),
//! `max-batch` (the largest batch within a memory budget, by measuring)
//! and its hidden per-batch probe.

use aezoo_data::Locator;
use aezoo_zoo::ZOO;
use anyhow::{bail, Context, Result};
use clap::Args;

use crate::common::{device, DataArgs, TileArgs};

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Entry name or config .json (not needed with --peak).
    #[arg(required_unless_present = "peak")]
    pub(crate) entry: Option<String>,
    /// Print the f32 FMA rate all threads sustain together (FLOP/s, JSON) instead.
    #[arg(long)]
    pub(crate) peak: bool,
    /// Training steps to time (0: one epoch of Fashion-MNIST).
    #[arg(long, default_value_t = 0)]
    pub(crate) steps: usize,
    /// Time encoding and decoding one image of this side instead (fully
    /// convolutional entries, at the image's own size; tiled past the
    /// model's tile), best of --rounds, with fresh seeded weights.
    #[arg(long, value_name = "N")]
    pub(crate) image_size: Option<usize>,
    /// Rounds of --image-size timing (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    #[command(flatten)]
    pub(crate) tile: TileArgs,
    #[command(flatten)]
    pub(crate) data: DataArgs,
}

#[derive(Args)]
pub(crate) struct MaxBatchArgs {
    /// Entry name or config .json.
    pub(crate) entry: String,
    /// The memory budget, e.g. `4GiB`, `512MiB` (default: 80 % of the machine's available memory;
    /// on a GPU 80 % of its memory, read after the forward and backward passes, so transients between are not seen).
    #[arg(long)]
    pub(crate) budget: Option<String>,
    /// The largest batch to try.
    #[arg(long, default_value_t = 4096)]
    pub(crate) limit: usize,
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

#[derive(Args)]
pub(crate) struct ProbeArgs {
    pub(crate) entry: String,
    pub(crate) batch: usize,
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

/// Bytes from `4GiB`, `512MiB`, `1.5G`, `800M` or a plain number.
pub(crate) fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .with_context(|| format!("--budget `{s}`: expected a size like 4GiB or 512MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("--budget `{s}`: unknown unit `{other}` (use KiB, MiB or GiB)"),
    };
    Ok((v * mult) as u64)
}

/// One probe: a fresh process trains two steps at `batch` and reports its
/// peak memory (host RSS, or device memory on a GPU).
pub(crate) fn probe(entry: &str, batch: usize, device: &str) -> Result<Option<u64>> {
    let exe = std::env::current_exe().context("cannot find the aezoo binary")?;
    let o = std::process::Command::new(exe)
        .args(["probe-batch", entry, &batch.to_string(), "--device", device])
        .env("RUST_LOG", "error")
        .output()
        .context("cannot start a probe")?;
    if !o.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&o.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_bytes "))
        .and_then(|v| v.trim().parse().ok()))
}

pub(crate) fn cmd_probe_batch(a: ProbeArgs) -> Result<()> {
    let (cfg, _) = ZOO.resolve_entry(&a.entry)?;
    let peak = aezoo_train::bench::probe_batch(&cfg, &ZOO, a.batch, &device(&a.device)?)?;
    println!("peak_rss_bytes {peak}");
    Ok(())
}

pub(crate) fn cmd_max_batch(a: MaxBatchArgs) -> Result<()> {
    // The device is opened here only to read its size, and closed before
    // the probes (each its own process) so its context is not counted.
    let (budget, gpu) = {
        let dev = device(&a.device)?;
        let gpu = !dev.is_cpu();
        let budget = match (&a.budget, gpu) {
            (Some(s), _) => parse_bytes(s)?,
            (None, false) => aezoo_train::bench::proc_bytes("/proc/meminfo", "MemAvailable:")
                .map(|b| b / 10 * 8)
                .context("no /proc/meminfo: pass --budget")?,
            (None, true) => aezoo_train::bench::device_memory(&dev)
                .map(|(_, total)| total / 10 * 8)
                .with_context(|| format!("--device {}: its memory cannot be read: pass --budget", a.device))?,
        };
        (budget, gpu)
    };
    let (cfg, _) = ZOO.resolve_entry(&a.entry)?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "{}: each probe is a fresh `aezoo probe-batch` process that builds the model, runs two training steps \
         (forward, backward, Adam) on a batch of that size and reports its peak {}; budget {:.2} GiB",
        cfg.entry,
        if gpu {
            "device memory in use (cuMemGetInfo after the forward and backward passes)"
        } else {
            "resident memory (VmHWM)"
        },
        gib(budget)
    );
    let fits = |b: usize| -> Result<Option<u64>> {
        let peak = probe(&a.entry, b, &a.device)?;
        match peak {
            Some(p) => println!(
                "  batch {b:>5}: peak {:.3} GiB {}",
                gib(p),
                if p <= budget { "fits" } else { "over" }
            ),
            None => println!("  batch {b:>5}: failed (out of memory or error)"),
        }
        Ok(peak.filter(|&p| p <= budget))
    };
    // Doubling, then bisection between the last batch that fits and the first that does not.
    let (mut lo, mut hi) = (0usize, None);
    let mut b = 1usize;
    while b <= a.limit {
        if fits(b)?.is_some() {
            lo = b;
            b *= 2;
        } else {
            hi = Some(b);
            break;
        }
    }
    if let Some(mut hi) = hi {
        while hi - lo > 1 && lo > 0 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)?.is_some() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    if lo == 0 {
        bail!(
            "{}: even a batch of 1 does not train within {:.2} GiB",
            cfg.entry,
            gib(budget)
        );
    }
    println!(
        "{}: largest batch within {:.2} GiB: {lo}{}",
        cfg.entry,
        gib(budget),
        if hi.is_none() {
            " (the --limit; larger not tried)".to_string()
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `aezoo bench`: one entry under the PyTorch bench protocol, or the
/// machine's FMA rate (`--peak`); one JSON line.
pub(crate) fn cmd_bench(a: BenchArgs) -> Result<()> {
    if a.peak {
        let flops = aezoo_nn::runtime::measured_peak_flops(0.5);
        println!(
            "{}",
            serde_json::json!({ "peak_flops": flops, "threads": aezoo_nn::runtime::threads() })
        );
        return Ok(());
    }
    let (cfg, _) = ZOO.resolve_entry(a.entry.as_deref().unwrap_or_default())?;
    if let Some(n) = a.image_size {
        return bench_image(&cfg, n, a.rounds.max(1), &a.tile, &device(&a.data.device)?);
    }
    let locator = Locator::from_env(a.data.data.clone(), a.data.download);
    let r = aezoo_train::bench::run(&cfg, &ZOO, &locator, a.steps, &device(&a.data.device)?)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// `aezoo bench E --image-size N`: seconds to encode, and to decode, one
/// `N × N` image, each the best of `rounds` after one warm-up (one JSON line).
fn bench_image(
    cfg: &aezoo_train::EntryConfig,
    n: usize,
    rounds: usize,
    tile: &TileArgs,
    dev: &candle_core::Device,
) -> Result<()> {
    use aezoo_nn::{ParamStore, Rng};
    use candle_core::DType;
    let [c, _, _] = ZOO.image_shape(cfg)?;
    aezoo_train::config::check_image_shape([c, n, n], "--image-size", "the image")?;
    let dev = dev.clone();
    let params = ParamStore::init_frozen(cfg.train.seed);
    let model = ZOO
        .family_of(cfg)?
        .build(&cfg.model, &cfg.entry, params.var_builder(DType::F32, &dev))?;
    let Some(sp) = tile.apply(model.spatial())? else {
        bail!(
            "--image-size: {} takes images of one size only; time it with --steps",
            cfg.entry
        );
    };
    let x = Rng::new(1).rand_uniform((1, c, n, n), 0.0, 1.0, DType::F32, &dev)?;
    let (mut enc, mut dec) = (f64::INFINITY, f64::INFINITY);
    for round in 0..=rounds {
        let t = std::time::Instant::now();
        let z = aezoo_train::infer::encode_any_size(model.as_ref(), sp, &x)?;
        dev.synchronize()?;
        let te = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let y = aezoo_train::infer::decode_any_size(model.as_ref(), sp, &z, Some([n, n]))?;
        y.flatten_all()?.sum_all()?.to_scalar::<f32>()?;
        let td = t.elapsed().as_secs_f64();
        if round > 0 {
            enc = enc.min(te);
            dec = dec.min(td);
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "entry": cfg.entry,
            "image_size": n,
            "params": params.num_params(),
            "encode_s": enc,
            "decode_s": dec,
            "encode_decode_s": enc + dec,
            "rounds": rounds,
            "tiled": aezoo_nn::tiling::needs_tiles([n, n], sp.tile),
            "peak_rss_mb": aezoo_train::bench::peak_rss_mb(),
            "threads": aezoo_nn::runtime::threads(),
            "device": aezoo_train::bench::device_kind(&dev),
        })
    );
    Ok(())
}
