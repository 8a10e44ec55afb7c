//! Times `y = x · Wᵀ` on the linear layers' shapes (`ae-mlp`, `vae-mlp`:
//! batches of 128 for training, 1000 for inference) three ways on all of
//! rayon's threads — the `gemm` crate's own threading, the per-thread split
//! of `aezoo_kernels::gemm`, and one thread — and prints GFLOP/s (f32).
//! `python3 scripts/bench/gemm_torch.py` prints PyTorch's on the same shapes.
//!
//!     cargo run --release -p aezoo-cli --example gemm_split

use std::time::Instant;

use aezoo_kernels::gemm;
use gemm::Parallelism;

/// Best of 5 rounds of `reps` calls, in GFLOP/s.
fn gflops(m: usize, k: usize, n: usize, f: &dyn Fn()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let reps = (2_000_000_000 / (2 * m * n * k)).max(5);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

fn main() {
    let t = rayon::current_num_threads();
    println!("threads {t}; (m, k, n): gemm's threads | aezoo split | 1 thread  [GFLOP/s]");
    for (m, k, n) in [(1000, 784, 400), (1000, 400, 784), (128, 784, 400), (128, 400, 784)] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let y = std::cell::RefCell::new(vec![0f32; m * n]);
        // y (m×n) = x (m×k) · Wᵀ, W row-major (n, k).
        let run = |par: Parallelism| gemm(m, n, k, &mut y.borrow_mut(), (n, 1), false, &x, (k, 1), &w, (1, k), par);
        let own = || {
            // SAFETY: the three buffers hold m·n, m·k and n·k values, as the strides need.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    y.borrow_mut().as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    k as isize,
                    1,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    Parallelism::Rayon(t),
                )
            }
        };
        println!(
            "({m}, {k}, {n}): {:.1} | {:.1} | {:.1}",
            gflops(m, k, n, &own),
            gflops(m, k, n, &|| run(Parallelism::Rayon(t))),
            gflops(m, k, n, &|| run(Parallelism::None)),
        );
    }
}
