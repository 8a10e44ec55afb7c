"""PyTorch's `x @ W.t()` on the shapes of `cargo run --release -p aezoo-cli --example gemm_split`
(f32, GFLOP/s, best of 5 rounds), on 2 threads and on 1.

usage: python3 scripts/bench/gemm_torch.py [--threads 2]
"""
import argparse
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
A = p.parse_args()
print("(m, k, n): %d threads | 1 thread  [GFLOP/s]" % A.threads)
for m, k, n in [(1000, 784, 400), (1000, 400, 784), (128, 784, 400), (128, 400, 784)]:
    x = torch.rand(m, k)
    w = torch.rand(n, k)
    out = []
    for threads in (A.threads, 1):
        torch.set_num_threads(threads)
        for _ in range(5):
            x @ w.t()
        reps = max(5, 2_000_000_000 // (2 * m * n * k))
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(reps):
                x @ w.t()
            best = min(best, (time.perf_counter() - t) / reps)
        out.append(2 * m * n * k / best / 1e9)
    print("(%d, %d, %d): %.1f | %.1f" % (m, k, n, out[0], out[1]))
