//! The rate-distortion sweep of a quantised video entry (`aezoo rd-video`,
//! `cargo xtask rd-video`): one model per codebook size K, trained from the
//! entry's config with `model.codebook.levels = K`, then measured on the test
//! clips.
//!
//! Rate, per clip: every latent value is one of K levels, so the fixed-length
//! code is `latent values × log₂K` bits — what the issue defines and what
//! a file of raw indices costs. Beside it, the empirical entropy of the
//! levels the encoder uses on the test clips (`latent values × H`): the rate
//! an ideal entropy coder with that histogram would reach. Both are computed
//! from the model's own latents, never assumed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aezoo_nn::Autoencoder;
use candle_core::{DType, Device};
use serde::Serialize;

use aezoo_train::config::EntryConfig;
use aezoo_train::error::{Result, TrainError};
use aezoo_train::eval::{evaluate, EvalMetrics};
use aezoo_train::trainer::{load_data, train, TrainOptions};
use aezoo_train::weights;

use crate::ZOO;

/// One point of the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct RdRow {
    /// K, the codebook size.
    pub levels: usize,
    /// Latent values per clip.
    pub latent_values: usize,
    /// Fixed-length rate: `latent_values · log₂K`.
    pub bits_per_clip: f64,
    /// The same per pixel of the clip (frames × height × width).
    pub bits_per_pixel: f64,
    /// Empirical entropy of the used levels on the test clips, bits per value.
    pub entropy_bits_per_value: f64,
    /// `latent_values · entropy`.
    pub entropy_bits_per_clip: f64,
    /// Levels used at least once on the test clips.
    pub levels_used: usize,
    pub test: EvalMetrics,
    pub run_dir: PathBuf,
}

/// The entry config with its codebook resized to `k` levels (spread over
/// `init_range` when given; the family's capability,
/// [`aezoo_train::DynFamily::with_codebook`]) and its own entry name.
pub fn config_for(
    base: &EntryConfig,
    k: usize,
    epochs: Option<usize>,
    init_range: Option<(f64, f64)>,
) -> Result<EntryConfig> {
    let mut cfg = base.clone();
    cfg.model = ZOO
        .family_of(base)?
        .with_codebook(&base.model, &base.entry, k, init_range)?;
    cfg.entry = format!("{}-k{k}", base.entry);
    if let Some(e) = epochs {
        cfg.train.epochs = e;
    }
    ZOO.validate(&cfg, &cfg.entry.clone())?;
    Ok(cfg)
}

/// The latent-value histogram of `model` over `set` (keyed by the f32 bits
/// of each quantised value) → `(entropy in bits per value, distinct values)`.
pub fn latent_entropy(
    model: &dyn Autoencoder,
    set: &aezoo_data::ImageSet,
    batch: usize,
    dev: &Device,
) -> Result<(f64, usize)> {
    let mut hist: BTreeMap<u32, u64> = BTreeMap::new();
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let z = model.encode(&set.batch(chunk, dev)?)?;
        for v in z.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
            *hist.entry(v.to_bits()).or_default() += 1;
        }
    }
    let total: u64 = hist.values().sum();
    let h = hist
        .values()
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.log2()
        })
        .sum::<f64>();
    Ok((h, hist.len()))
}

/// Trains (or, with `reuse`, re-reads) one model per K under `out/k<K>` and
/// measures it.
pub fn sweep(
    base: &EntryConfig,
    levels: &[usize],
    epochs: Option<usize>,
    out: &Path,
    locator: &aezoo_data::Locator,
    dev: &Device,
    reuse: bool,
    init: Option<&Path>,
) -> Result<Vec<RdRow>> {
    let mut rows = Vec::new();
    // Fine-tuning from trained weights: every tensor but the codebook is
    // copied, and the K new levels start evenly over the trained levels' span.
    let span = match init {
        Some(dir) => {
            let loaded = weights::load(dir, &ZOO, &Device::Cpu)?;
            let levels = loaded.model.codebook_levels().ok_or_else(|| TrainError::Checkpoint {
                path: dir.to_path_buf(),
                msg: format!(
                    "`{}` ({}) has no codebook: --init needs weights of a quantised entry",
                    loaded.config.entry, loaded.config.family
                ),
            })??;
            let v: Vec<f32> = levels.to_vec1()?;
            let (lo, hi) = v.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            Some((dir.join("model.safetensors"), (lo as f64, hi as f64)))
        }
        None => None,
    };
    for &k in levels {
        let range = span.as_ref().map(|(_, r)| *r).filter(|(lo, hi)| lo < hi);
        let cfg = config_for(base, k, epochs, range)?;
        let run_dir = out.join(format!("k{k}"));
        let done = run_dir.join("model.safetensors").is_file() && run_dir.join("config.json").is_file();
        if !(reuse && done) {
            tracing::info!("rd-video: K = {k} → {}", run_dir.display());
            let mut opts = TrainOptions::new(&run_dir, locator.clone());
            opts.device = dev.clone();
            opts.init_from = span.as_ref().map(|(f, _)| f.clone());
            let outcome = train(&cfg, &ZOO, &opts)?;
            if !outcome.completed {
                return Err(TrainError::Other(format!(
                    "rd-video: K = {k} stopped before its last epoch; re-run with --reuse to keep the finished points"
                )));
            }
        }
        let loaded = weights::load(&run_dir, &ZOO, dev)?;
        let splits = load_data(&loaded.config, &ZOO, locator)?;
        let t = &loaded.config.train;
        let test = evaluate(
            loaded.model.as_ref(),
            &splits.test,
            t.eval_batch_size,
            None,
            t.seed,
            dev,
        )?;
        let latent_values: usize = loaded.model.latent_shape().iter().product();
        let pixels: usize = splits.test.image_shape().iter().product();
        let (h, used) = latent_entropy(loaded.model.as_ref(), &splits.test, t.eval_batch_size, dev)?;
        let bits = latent_values as f64 * (k as f64).log2();
        tracing::info!(
            "rd-video: K = {k}: {bits:.0} bits per clip, PSNR {:.2} dB, SSIM {:.4}",
            test.psnr,
            test.ssim
        );
        rows.push(RdRow {
            levels: k,
            latent_values,
            bits_per_clip: bits,
            bits_per_pixel: bits / pixels as f64,
            entropy_bits_per_value: h,
            entropy_bits_per_clip: h * latent_values as f64,
            levels_used: used,
            test,
            run_dir,
        });
    }
    Ok(rows)
}

/// Writes `rd.csv`, `rd.md`, `rd.png` (PSNR against kbit per clip, fixed-
/// length and entropy rates) and `rd_ssim.png` into `out`.
pub fn write_outputs(entry: &str, rows: &[RdRow], out: &Path, command: &str) -> Result<()> {
    use aezoo_nn::params::write_atomic;
    let mut csv = String::from(
        "levels,latent_values,bits_per_clip,bits_per_pixel,entropy_bits_per_value,entropy_bits_per_clip,levels_used,test_clips,mse,psnr_db,ssim\n",
    );
    let mut md = format!(
        "# Rate-distortion sweep of `{entry}` over the codebook size K\n\nMade by `{command}`. One model per K, trained from the entry's config with `model.codebook.levels = K`; test clips of its data. Rate is the fixed-length code, latent values × log₂K bits per clip; the entropy column is the empirical entropy of the levels used on the test clips (what an ideal entropy coder with that histogram would need).\n\n| K | kbit / clip | bits / pixel | entropy kbit / clip | levels used | PSNR (dB) | SSIM | MSE |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            r.levels,
            r.latent_values,
            r.bits_per_clip,
            r.bits_per_pixel,
            r.entropy_bits_per_value,
            r.entropy_bits_per_clip,
            r.levels_used,
            r.test.images,
            r.test.mse,
            r.test.psnr,
            r.test.ssim
        ));
        md.push_str(&format!(
            "| {} | {:.2} | {:.4} | {:.2} | {} | {:.2} | {:.4} | {:.5} |\n",
            r.levels,
            r.bits_per_clip / 1000.0,
            r.bits_per_pixel,
            r.entropy_bits_per_clip / 1000.0,
            r.levels_used,
            r.test.psnr,
            r.test.ssim,
            r.test.mse
        ));
    }
    write_atomic(&out.join("rd.csv"), csv.as_bytes())?;
    write_atomic(&out.join("rd.md"), md.as_bytes())?;
    let fixed: Vec<(f64, f64)> = rows.iter().map(|r| (r.bits_per_clip / 1000.0, r.test.psnr)).collect();
    let entropy: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.entropy_bits_per_clip / 1000.0, r.test.psnr))
        .collect();
    aezoo_train::plot::save_line_plot(
        &format!(
            "{entry} — PSNR against rate (K = {})",
            rows.iter().map(|r| r.levels.to_string()).collect::<Vec<_>>().join(", ")
        ),
        "kbit per clip",
        "test PSNR (dB)",
        &[
            aezoo_train::plot::Series {
                label: "fixed-length code (log2 K per value)",
                points: &fixed,
                color: plotters::style::RGBColor(66, 133, 244),
                smooth: false,
            },
            aezoo_train::plot::Series {
                label: "empirical entropy of the levels",
                points: &entropy,
                color: plotters::style::RGBColor(219, 68, 55),
                smooth: false,
            },
        ],
        &out.join("rd.png"),
    )?;
    let ssim: Vec<(f64, f64)> = rows.iter().map(|r| (r.bits_per_clip / 1000.0, r.test.ssim)).collect();
    aezoo_train::plot::save_line_plot(
        &format!("{entry} — SSIM against rate"),
        "kbit per clip (fixed-length code)",
        "test SSIM",
        &[aezoo_train::plot::Series {
            label: "SSIM",
            points: &ssim,
            color: plotters::style::RGBColor(15, 157, 88),
            smooth: false,
        }],
        &out.join("rd_ssim.png"),
    )
}
