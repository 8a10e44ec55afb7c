//! aezoo-metrics: the losses and metrics of the zoo, all differentiable candle
//! expressions (so any of them can be a training loss) and each pinned to
//! PyTorch or scikit-image values in `tests/metrics.rs`.
//!
//! - MSE, MAE, BCE on probabilities (log clamped at −100 like PyTorch), BCE on
//!   logits in the stable form `max(x, 0) − x·t + log(1 + e^−|x|)` (candle's
//!   `binary_cross_entropy_with_logit` takes sigmoid then log and overflows);
//! - KLD of a diagonal Gaussian against N(0, I) (Kingma & Welling 2014, app. B);
//! - SSIM (Wang et al. 2004): Gaussian window 11, σ 1.5, K1 0.01, K2 0.03,
//!   valid filtering, data range a parameter — scikit-image's
//!   `structural_similarity(gaussian_weights=True, use_sample_covariance=False)`;
//! - MS-SSIM (Wang, Simoncelli & Bovik 2003) as `pytorch_msssim` computes it;
//! - PSNR per image, L1 sparsity of a code;
//! - ROC AUC and average precision of scores, exact with ties ([`ranking`],
//!   pinned to scikit-learn), for link prediction;
//! - the Bjøntegaard delta rate of two rate-distortion curves ([`rd`]).
//!
//! Image metrics take `(b, c, h, w)` and return one value per image `(b,)`.

#![forbid(unsafe_code)]

pub mod ranking;
pub mod rd;

use aezoo_nn::ops;
use candle_core::{DType, Device, Result, Tensor};

/// How a per-element loss is reduced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// Mean over every element.
    #[default]
    Mean,
    /// Sum over every element.
    Sum,
    /// Sum over every element divided by the batch size (dim 0): the VAE
    /// convention of "per-sample summed loss, averaged over the batch".
    BatchMean,
}

fn reduce(xs: &Tensor, r: Reduction) -> Result<Tensor> {
    match r {
        Reduction::Mean => xs.mean_all(),
        Reduction::Sum => xs.sum_all(),
        Reduction::BatchMean => {
            let b = xs.dim(0)? as f64;
            xs.sum_all()? / b
        }
    }
}

fn same_shape(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.shape() != b.shape() {
        candle_core::bail!("{what}: shapes differ: {:?} vs {:?}", a.dims(), b.dims());
    }
    Ok(())
}

/// Mean squared error.
pub fn mse(pred: &Tensor, target: &Tensor, r: Reduction) -> Result<Tensor> {
    same_shape(pred, target, "mse")?;
    reduce(&(pred - target)?.sqr()?, r)
}

/// Mean absolute error.
pub fn mae(pred: &Tensor, target: &Tensor, r: Reduction) -> Result<Tensor> {
    same_shape(pred, target, "mae")?;
    reduce(&(pred - target)?.abs()?, r)
}

/// Binary cross-entropy of probabilities `p` against targets `t` in [0, 1],
/// with each log clamped at −100 as PyTorch's `binary_cross_entropy` does.
pub fn bce(p: &Tensor, t: &Tensor, r: Reduction) -> Result<Tensor> {
    same_shape(p, t, "bce")?;
    let log_p = p.log()?.maximum(-100f64)?;
    let log_1mp = p.affine(-1.0, 1.0)?.log()?.maximum(-100f64)?;
    let t1m = t.affine(-1.0, 1.0)?;
    let ll = ((t * log_p)? + (t1m * log_1mp)?)?;
    reduce(&ll.neg()?, r)
}

/// Binary cross-entropy on logits in the numerically stable form
/// `max(x, 0) − x·t + log(1 + exp(−|x|))` (PyTorch's
/// `binary_cross_entropy_with_logits`).
///
/// On the CPU (f32/f64) the per-element loss is one fused node
/// (`aezoo_nn::ops::bce_with_logits_fused`; `AEZOO_NO_FUSED=1` switches back);
/// [`bce_with_logits_composite`] is the plain form it is tested against.
pub fn bce_with_logits(logits: &Tensor, t: &Tensor, r: Reduction) -> Result<Tensor> {
    same_shape(logits, t, "bce_with_logits")?;
    if ops::fused_applies(logits) && logits.dtype() == t.dtype() {
        return reduce(&ops::bce_with_logits_fused(logits, t)?, r);
    }
    bce_with_logits_composite(logits, t, r)
}

/// [`bce_with_logits`] from candle ops (any device and dtype).
pub fn bce_with_logits_composite(logits: &Tensor, t: &Tensor, r: Reduction) -> Result<Tensor> {
    same_shape(logits, t, "bce_with_logits")?;
    let softplus_neg_abs = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    let l = ((logits.relu()? - (logits * t)?)? + softplus_neg_abs)?;
    reduce(&l, r)
}

/// KL divergence of `N(mu, exp(logvar))` from `N(0, I)`:
/// `−½ Σ (1 + logvar − mu² − exp(logvar))`.
pub fn kld(mu: &Tensor, logvar: &Tensor, r: Reduction) -> Result<Tensor> {
    same_shape(mu, logvar, "kld")?;
    let inner = ((logvar.affine(1.0, 1.0)? - mu.sqr()?)? - logvar.exp()?)?;
    reduce(&(inner * -0.5)?, r)
}

/// Mean absolute value of a code: the sparse autoencoder's L1 penalty.
pub fn l1_sparsity(z: &Tensor) -> Result<Tensor> {
    z.abs()?.mean_all()
}

/// Per-image mean squared error `(b,)` of `(b, ...)` tensors.
pub fn mse_per_image(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    same_shape(pred, target, "mse_per_image")?;
    let b = pred.dim(0)?;
    (pred - target)?.sqr()?.reshape((b, ()))?.mean(1)
}

/// Per-image PSNR in dB `(b,)`: `10·log10(range² / mse)`; a perfect
/// reconstruction gives `+inf`, as scikit-image does.
pub fn psnr(pred: &Tensor, target: &Tensor, data_range: f64) -> Result<Tensor> {
    let m = mse_per_image(pred, target)?;
    // 10 log10(R²/m) = 10/ln10 · (ln R² − ln m)
    let k = 10.0 / std::f64::consts::LN_10;
    m.log()?.affine(-k, k * (data_range * data_range).ln())
}

/// Options of [`ssim`]: Wang et al. (2004)'s defaults.
#[derive(Clone, Copy, Debug)]
pub struct SsimConfig {
    /// Gaussian window size (odd).
    pub window: usize,
    /// Gaussian σ.
    pub sigma: f64,
    pub k1: f64,
    pub k2: f64,
    /// Dynamic range of the pixel values (1 for images in [0, 1]).
    pub data_range: f64,
}

impl Default for SsimConfig {
    fn default() -> Self {
        Self {
            window: 11,
            sigma: 1.5,
            k1: 0.01,
            k2: 0.03,
            data_range: 1.0,
        }
    }
}

/// The normalised 1-D Gaussian window.
pub fn gaussian_window(size: usize, sigma: f64) -> Vec<f64> {
    let c = (size as f64 - 1.0) / 2.0;
    let w: Vec<f64> = (0..size)
        .map(|i| {
            let x = i as f64 - c;
            (-(x * x) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// The `(n, n - k + 1)` matrix whose column `j` holds the window at rows
/// `j..j + k`: "valid" 1-D filtering of a length-`n` signal as one matmul.
fn band_matrix(n: usize, win: &[f64], dtype: DType, dev: &Device) -> Result<Tensor> {
    let k = win.len();
    let m = n - k + 1;
    let mut v = vec![0f64; n * m];
    for j in 0..m {
        for (t, w) in win.iter().enumerate() {
            v[(j + t) * m + j] = *w;
        }
    }
    Tensor::from_vec(v, (n, m), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)
}

/// Separable Gaussian filtering ("valid": no padding) of every `(h, w)` plane
/// of an `(n, h, w)` tensor, as two matmuls with banded matrices (far less
/// memory traffic than an im2col over thousands of planes).
fn gaussian_filter(xs: &Tensor, win: &[f64]) -> Result<Tensor> {
    // xs: (n, h, w) -> (n, h - k + 1, w - k + 1)
    let (n, h, w) = xs.dims3()?;
    let (dtype, dev) = (xs.dtype(), xs.device());
    let k = win.len();
    let (oh, ow) = (h - k + 1, w - k + 1);
    let bw = band_matrix(w, win, dtype, dev)?;
    let bh = band_matrix(h, win, dtype, dev)?;
    // Along w: (n·h, w) · (w, ow).
    let ys = xs.reshape((n * h, w))?.matmul(&bw)?.reshape((n, h, ow))?;
    // Along h: (n·ow, h) · (h, oh), then back to (n, oh, ow).
    let ys = ys.transpose(1, 2)?.contiguous()?.reshape((n * ow, h))?.matmul(&bh)?;
    ys.reshape((n, ow, oh))?.transpose(1, 2)?.contiguous()
}

/// Per-image SSIM `(b,)` of `(b, c, h, w)` images: the mean of the SSIM map
/// over channels and valid positions. Differentiable in both arguments. On
/// the CPU one fused node (`aezoo_nn::ops::ssim_planes_fused`), elsewhere [`ssim_composite`].
pub fn ssim(x: &Tensor, y: &Tensor, cfg: SsimConfig) -> Result<Tensor> {
    if ops::fused_applies(x) && x.dtype() == y.dtype() {
        same_shape(x, y, "ssim")?;
        let win = gaussian_window(cfg.window, cfg.sigma);
        let (c1, c2) = ((cfg.k1 * cfg.data_range).powi(2), (cfg.k2 * cfg.data_range).powi(2));
        return ops::ssim_planes_fused(x, y, &win, c1, c2)?.mean(1);
    }
    ssim_composite(x, y, cfg)
}

/// PSNR and SSIM of one large image pair `(1, c, h, w)`, computed in bands
/// of rows so that memory holds a band's temporaries, not the image's: the
/// same values as [`psnr`] and [`ssim`] (SSIM's windows are the valid ones,
/// each band reading `window − 1` rows past its end), up to the order of
/// summation. SSIM is `None` for an image smaller than the window.
pub fn psnr_ssim_in_bands(pred: &Tensor, target: &Tensor, cfg: SsimConfig, band: usize) -> Result<(f64, Option<f64>)> {
    same_shape(pred, target, "psnr_ssim_in_bands")?;
    let (b, c, h, w) = pred.dims4()?;
    if b != 1 {
        candle_core::bail!("psnr_ssim_in_bands: one image at a time, got a batch of {b}");
    }
    let band = band.max(1);
    let mut sse = 0f64;
    for r in (0..h).step_by(band) {
        let rows = band.min(h - r);
        let d = (pred.narrow(2, r, rows)? - target.narrow(2, r, rows)?)?;
        sse += d.sqr()?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    }
    let mse = sse / (c * h * w) as f64;
    let psnr = 10.0 * (cfg.data_range * cfg.data_range / mse).log10();
    if h < cfg.window || w < cfg.window {
        return Ok((psnr, None));
    }
    // Output rows r..r+n of the valid SSIM map read input rows r..r+n+window−1.
    let out_h = h - cfg.window + 1;
    let out_w = w - cfg.window + 1;
    let mut sum = 0f64;
    for r in (0..out_h).step_by(band) {
        let n = band.min(out_h - r);
        let rows = n + cfg.window - 1;
        let mean = ssim(&pred.narrow(2, r, rows)?, &target.narrow(2, r, rows)?, cfg)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?[0];
        sum += mean * (n * out_w) as f64;
    }
    Ok((psnr, Some(sum / (out_h * out_w) as f64)))
}

/// [`ssim`] from candle ops (any device and dtype).
pub fn ssim_composite(x: &Tensor, y: &Tensor, cfg: SsimConfig) -> Result<Tensor> {
    let (b, _, _, _) = x.dims4()?;
    let (s, _) = ssim_cs(x, y, cfg)?;
    s.reshape((b, ()))?.mean(1)
}

/// Per-channel means `(b, c)` of the SSIM map and of its contrast-structure
/// part `cs = (2σxy + C2) / (σx² + σy² + C2)`.
fn ssim_cs(x: &Tensor, y: &Tensor, cfg: SsimConfig) -> Result<(Tensor, Tensor)> {
    same_shape(x, y, "ssim")?;
    let (b, c, h, w) = x.dims4()?;
    if h < cfg.window || w < cfg.window {
        candle_core::bail!(
            "ssim: images of {h}x{w} are smaller than the {0}x{0} window",
            cfg.window
        );
    }
    let win = gaussian_window(cfg.window, cfg.sigma);
    let c1 = (cfg.k1 * cfg.data_range).powi(2);
    let c2 = (cfg.k2 * cfg.data_range).powi(2);
    // All five moments in one filtering pass: (5·b·c, h, w).
    let planes = Tensor::stack(&[x, y, &x.sqr()?, &y.sqr()?, &(x * y)?], 0)?.reshape((5 * b * c, h, w))?;
    let f = gaussian_filter(&planes, &win)?;
    let (oh, ow) = (h - cfg.window + 1, w - cfg.window + 1);
    let f = f.reshape((5, b * c, oh, ow))?;
    let mu_x = f.get(0)?;
    let mu_y = f.get(1)?;
    let mu_x2 = mu_x.sqr()?;
    let mu_y2 = mu_y.sqr()?;
    let mu_xy = (&mu_x * &mu_y)?;
    let s_x = (f.get(2)? - &mu_x2)?;
    let s_y = (f.get(3)? - &mu_y2)?;
    let s_xy = (f.get(4)? - &mu_xy)?;
    let cs = (s_xy.affine(2.0, c2)? / (s_x + s_y)?.affine(1.0, c2)?)?;
    let lum = (mu_xy.affine(2.0, c1)? / (mu_x2 + mu_y2)?.affine(1.0, c1)?)?;
    let map = (&lum * &cs)?;
    Ok((
        map.reshape((b, c, oh * ow))?.mean(2)?,
        cs.reshape((b, c, oh * ow))?.mean(2)?,
    ))
}

/// MS-SSIM's scale weights (Wang, Simoncelli & Bovik 2003).
pub const MS_SSIM_WEIGHTS: [f64; 5] = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333];

/// Per-image multi-scale SSIM `(b,)` (Wang, Simoncelli & Bovik 2003) as
/// `pytorch_msssim.ms_ssim` computes it: five scales, 2×2 average pooling
/// between them (zero-padded to even sizes, padding counted), the
/// contrast-structure terms of the first four and the SSIM of the last, each
/// clamped at 0 and raised to its weight, per channel, then averaged over
/// channels. The smaller side must exceed `(window − 1)·2⁴` (160 pixels).
pub fn ms_ssim(x: &Tensor, y: &Tensor, cfg: SsimConfig) -> Result<Tensor> {
    same_shape(x, y, "ms_ssim")?;
    let (_, _, h, w) = x.dims4()?;
    let need = (cfg.window - 1) * 16;
    if h.min(w) <= need {
        candle_core::bail!("ms_ssim: images of {h}x{w}; both sides must exceed {need} for five scales");
    }
    let pool = |t: &Tensor| -> Result<Tensor> {
        let (_, _, h, w) = t.dims4()?;
        let t = t.pad_with_zeros(2, h % 2, h % 2)?.pad_with_zeros(3, w % 2, w % 2)?;
        // Drop the row / column no window reads: candle 0.11's avg_pool2d
        // backward is wrong when the size leaves a remainder (tested).
        let (ph, pw) = (h + 2 * (h % 2), w + 2 * (w % 2));
        t.narrow(2, 0, ph / 2 * 2)?.narrow(3, 0, pw / 2 * 2)?.avg_pool2d(2)
    };
    let (mut x, mut y) = (x.clone(), y.clone());
    let mut acc: Option<Tensor> = None;
    for (i, wt) in MS_SSIM_WEIGHTS.iter().enumerate() {
        let (s, cs) = ssim_cs(&x, &y, cfg)?;
        let last = i + 1 == MS_SSIM_WEIGHTS.len();
        let term = if last { s } else { cs };
        let term = term.relu()?.powf(*wt)?;
        acc = Some(match acc {
            Some(a) => (a * term)?,
            None => term,
        });
        if !last {
            x = pool(&x)?;
            y = pool(&y)?;
        }
    }
    acc.expect("five scales").mean(1)
}
