//! Rate-distortion summaries: the Bjøntegaard delta rate (G. Bjøntegaard,
//! *Calculation of average PSNR differences between RD-curves*, VCEG-M33,
//! 2001), the number codec comparisons quote.

/// Least-squares polynomial of degree `deg` through `(x, y)`, coefficients
/// from the constant term up (normal equations, solved by Gaussian
/// elimination with partial pivoting; `x` is centred and scaled first).
fn polyfit(x: &[f64], y: &[f64], deg: usize) -> Option<(Vec<f64>, f64, f64)> {
    let n = deg + 1;
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    let scale = x.iter().map(|v| (v - mean).abs()).fold(0.0, f64::max).max(1e-12);
    let xs: Vec<f64> = x.iter().map(|v| (v - mean) / scale).collect();
    let mut a = vec![vec![0.0; n + 1]; n];
    for (xi, yi) in xs.iter().zip(y) {
        let pows: Vec<f64> = (0..n).map(|k| xi.powi(k as i32)).collect();
        for r in 0..n {
            for c in 0..n {
                a[r][c] += pows[r] * pows[c];
            }
            a[r][n] += pows[r] * yi;
        }
    }
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, piv);
        for r in 0..n {
            if r != col {
                let f = a[r][col] / a[col][col];
                for c in col..=n {
                    a[r][c] -= f * a[col][c];
                }
            }
        }
    }
    Some(((0..n).map(|k| a[k][n] / a[k][k]).collect(), mean, scale))
}

/// `∫ p` from `lo` to `hi` for a polynomial in `(x − mean) / scale`.
fn integral((coef, mean, scale): &(Vec<f64>, f64, f64), lo: f64, hi: f64) -> f64 {
    let prim = |x: f64| {
        let t = (x - mean) / scale;
        coef.iter()
            .enumerate()
            .map(|(k, c)| c * t.powi(k as i32 + 1) / (k as f64 + 1.0))
            .sum::<f64>()
            * scale
    };
    prim(hi) - prim(lo)
}

/// The Bjøntegaard delta rate of `test` against `anchor`, in percent: the
/// mean difference in log rate at equal quality over the quality range both
/// curves cover (negative: `test` needs fewer bits). Points are
/// `(rate, quality)` — bits per pixel and PSNR, typically. Cubic fits, or of
/// degree points − 1 below four points. `None` without at least two points
/// per curve with positive rates, or without a common quality range.
pub fn bd_rate(anchor: &[(f64, f64)], test: &[(f64, f64)]) -> Option<f64> {
    let clean = |c: &[(f64, f64)]| -> Vec<(f64, f64)> {
        c.iter()
            .copied()
            .filter(|(r, d)| *r > 0.0 && r.is_finite() && d.is_finite())
            .collect()
    };
    let (a, t) = (clean(anchor), clean(test));
    if a.len() < 2 || t.len() < 2 {
        return None;
    }
    let deg = 3.min(a.len() - 1).min(t.len() - 1);
    let fit = |c: &[(f64, f64)]| {
        let (d, lr): (Vec<f64>, Vec<f64>) = c.iter().map(|(r, d)| (*d, r.ln())).unzip();
        polyfit(&d, &lr, deg)
    };
    let range = |c: &[(f64, f64)]| {
        c.iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)))
    };
    let ((alo, ahi), (tlo, thi)) = (range(&a), range(&t));
    let (lo, hi) = (alo.max(tlo), ahi.min(thi));
    if !(hi > lo) {
        return None;
    }
    let (pa, pt) = (fit(&a)?, fit(&t)?);
    let diff = (integral(&pt, lo, hi) - integral(&pa, lo, hi)) / (hi - lo);
    Some((diff.exp() - 1.0) * 100.0)
}
