//! aezoo-kernels' own tests: the libm-free `exp` and `ln(1 + e)` against
//! f64, the f32 GEMM against a reference product for every layout and
//! epilogue, and the pool's lingering workers. The fused layers are tested
//! against their composites where they are called, in `aezoo-nn`'s tests.

use aezoo_kernels::{self as fused, Act, Float};

/// A small seeded generator for test data (SplitMix64).
struct Lcg(u64);

impl Lcg {
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn exp_f32_is_within_2_ulp() {
    // Against f64's exp rounded to f32, on a dense grid over f32's range.
    let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
    let mut worst = (0i64, 0f32);
    let n = 400_000;
    for i in 0..=n {
        let x = -87.0 + 175.0 * i as f32 / n as f32;
        let d = ulps(fused::exp_f32(x), (x as f64).exp() as f32);
        if d > worst.0 {
            worst = (d, x);
        }
    }
    assert!(worst.0 <= 2, "exp_f32 is {} ulp off at {}", worst.0, worst.1);
    // Clamped outside the range, never NaN or 0 for finite input.
    assert!(fused::exp_f32(-1000.0) > 0.0 && fused::exp_f32(1000.0).is_finite());
    assert!((Float::sigmoid(0.0f32) - 0.5).abs() < 1e-7);
}

#[test]
fn ln_1p_unit_f32_is_within_3_ulp() {
    // Against f64's ln_1p rounded to f32, over [0, 1] and down to tiny e.
    let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
    let n = 200_000;
    let grid = (0..=n)
        .map(|i| i as f32 / n as f32)
        .chain((1..40).map(|k| 2f32.powi(-k)));
    let mut worst = (0i64, 0f32);
    for e in grid {
        let d = ulps(fused::ln_1p_unit_f32(e), (e as f64).ln_1p() as f32);
        if d > worst.0 {
            worst = (d, e);
        }
    }
    assert!(worst.0 <= 3, "ln_1p_unit_f32 is {} ulp off at {}", worst.0, worst.1);
    assert_eq!(fused::ln_1p_unit_f32(0.0), 0.0);
}

// ---------------------------------------------------------------- the f32 GEMM

/// `C = act([C +] A·B + biases)` in f64, element `(i, j)` at `i·c_rs + j·c_cs`.
#[allow(clippy::too_many_arguments)]
fn reference_gemm(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    c: &mut [f32],
    (c_rs, c_cs): (usize, usize),
    epi: &aezoo_kernels::sgemm::Epilogue,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s: f64 = (0..k)
                .map(|p| a[i * a_rs + p * a_cs] as f64 * b[p * b_rs + j * b_cs] as f64)
                .sum();
            if epi.accumulate {
                s += c[i * c_rs + j * c_cs] as f64;
            }
            s += epi.row_bias.map_or(0.0, |v| v[i] as f64) + epi.col_bias.map_or(0.0, |v| v[j] as f64);
            c[i * c_rs + j * c_cs] = match epi.act {
                Act::None => s,
                Act::Relu => s.max(0.0),
                Act::Sigmoid => 1.0 / (1.0 + (-s).exp()),
            } as f32;
        }
    }
}

#[test]
fn sgemm_transpose_matches_the_element_by_element_transpose() {
    // Full 8 × 8 blocks, edges on either side, and added into a target.
    for (rows, cols) in [(1, 1), (7, 9), (8, 8), (17, 33), (49, 64), (64, 49)] {
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
        let base: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32).collect();
        for add in [false, true] {
            let mut got = base.clone();
            aezoo_kernels::sgemm::transpose(&src, rows, cols, &mut got, add);
            for i in 0..rows {
                for j in 0..cols {
                    let want = src[i * cols + j] + if add { base[j * rows + i] } else { 0.0 };
                    assert_eq!(
                        got[j * rows + i],
                        want,
                        "transpose {rows}x{cols} add {add} at ({i}, {j})"
                    );
                }
            }
        }
    }
}

#[test]
fn sgemm_matches_a_reference_product_for_every_layout_and_epilogue() {
    use aezoo_kernels::sgemm::{self, Epilogue, PackedB, Strided};
    if !sgemm::available() {
        eprintln!("sgemm: this CPU has no AVX2 + FMA; the gemm crate serves f32 here");
        return;
    }
    let vals = |len: usize, seed: u64| -> Vec<f32> {
        let mut rng = Lcg(seed);
        (0..len).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect()
    };
    // Edges of tiles and panels, several k blocks (k > 256), k = 0, and
    // enough rows for the parallel split.
    let shapes = [
        (1, 1, 1),
        (7, 37, 5),
        (13, 16, 300),
        (64, 49, 257),
        (6, 33, 600),
        (9, 20, 0),
        (200, 40, 30),
    ];
    let mut checked = 0;
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        let (a, b) = (vals(m * k, 10 + si as u64), vals(k * n, 20 + si as u64));
        let (row_bias, col_bias, c0) = (vals(m, 30), vals(n, 31), vals(m * n, 32));
        for (a_t, b_t, c_t) in (0..8).map(|l| (l & 1 == 1, l & 2 == 2, l & 4 == 4)) {
            let a_s = if a_t { (1, m) } else { (k, 1) };
            let b_s = if b_t { (1, k) } else { (n, 1) };
            let c_s = if c_t { (1, m) } else { (n, 1) };
            let pb = PackedB::pack(k, n, Strided::new(&b, b_s.0, b_s.1));
            for e in 0..24 {
                let epi = Epilogue {
                    accumulate: e & 1 == 1,
                    row_bias: (e & 2 == 2).then_some(&row_bias[..]),
                    col_bias: (e & 4 == 4).then_some(&col_bias[..]),
                    act: [Act::None, Act::Relu, Act::Sigmoid][e / 8],
                };
                let parallel = (e + si) % 2 == 0;
                let (mut got, mut want) = (c0.clone(), c0.clone());
                sgemm::gemm_packed(m, Strided::new(&a, a_s.0, a_s.1), &pb, &mut got, c_s, &epi, parallel);
                reference_gemm((m, n, k), &a, a_s, &b, b_s, &mut want, c_s, &epi);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
                    .fold(0f32, f32::max);
                assert!(
                    err < 2e-6 * (k as f32).sqrt().max(1.0),
                    "sgemm ({m}, {n}, {k}) A{a_s:?} B{b_s:?} C{c_s:?} {epi:?} parallel {parallel}: error {err}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, shapes.len() * 8 * 24);
    // The sigmoid epilogue (vector code on the tile's registers) gives the
    // bits of `Float::sigmoid` over f32's range and past the clamp (steps of
    // 0.77 out to ±100), densely over [−20, 20] (steps of 1/64), at ±∞,
    // NaN and tiny values, at the tile and panel edges (n = 37).
    let mut a: Vec<f32> = (0..260).map(|i| (i as f32 - 130.0) * 0.77).collect();
    a.extend((-1280..=1280).map(|i| i as f32 / 64.0));
    a.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-30,
        -1e-30,
        f32::MAX,
        f32::MIN,
    ]);
    let (m, n) = (a.len(), 37);
    let b: Vec<f32> = (0..n)
        .map(|j| if j == 0 { -0.0 } else { j as f32 * 0.013 - 0.2 })
        .collect();
    let pb = PackedB::pack(1, n, Strided::new(&vec![1.0; n], n, 1));
    let epi = Epilogue {
        col_bias: Some(&b),
        act: Act::Sigmoid,
        ..Epilogue::default()
    };
    // y[i][j] = σ(a[i] · 1 + b[j]).
    let mut got = vec![0f32; m * n];
    sgemm::gemm_packed(m, Strided::new(&a, 1, 1), &pb, &mut got, (n, 1), &epi, false);
    for (i, g) in got.iter().enumerate() {
        let z = a[i / n] + b[i % n];
        let want = z.sigmoid();
        assert!(
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
            "sgemm sigmoid of {z}: {g} against Float::sigmoid's {want}"
        );
    }
}

/// Polls `pool::lingerers()` until it is 0, for up to `secs` seconds.
fn lingerers_end_within(secs: u64) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs() < secs {
        if aezoo_kernels::pool::lingerers() == 0 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

#[test]
fn lingering_workers_stay_bounded_never_hold_a_job_and_end() {
    use rayon::prelude::*;
    let workers = rayon::current_num_threads();
    aezoo_kernels::pool::keep_warm();
    assert!(aezoo_kernels::pool::lingerers() <= workers.saturating_sub(1));
    if aezoo_kernels::pool::lingering() && workers > 1 {
        // Queued or running right after the call (other tests may have
        // queued them already; none run past their slice uncounted).
        assert!(aezoo_kernels::pool::lingerers() >= 1);
    }
    // Nested regions on a worker while linger jobs are queued: every one
    // completes (a linger job picked up inside a join gives its slot back)
    // and computes what the serial loop does.
    let sums = aezoo_kernels::pool::on_worker(|| {
        (0..200u64)
            .map(|r| {
                aezoo_kernels::pool::keep_warm();
                (0..10_000u64)
                    .into_par_iter()
                    .map(|i| (0..4u64).into_par_iter().map(|j| (i * j) ^ r).sum::<u64>())
                    .sum::<u64>()
            })
            .collect::<Vec<_>>()
    });
    for (r, s) in sums.iter().enumerate() {
        let want: u64 = (0..10_000u64)
            .map(|i| (0..4u64).map(|j| (i * j) ^ r as u64).sum::<u64>())
            .sum();
        assert_eq!(*s, want, "round {r}");
    }
    assert!(aezoo_kernels::pool::lingerers() <= workers.saturating_sub(1));
    // With no region started for the blocktime (30 ms), they end; other
    // tests of this binary start regions of their own, hence the long bound.
    assert!(lingerers_end_within(120), "linger jobs still queued after 120 s");
}
