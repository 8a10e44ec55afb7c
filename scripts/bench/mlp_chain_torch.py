"""PyTorch's side of `cargo run --release -p aezoo-cli --example layer_speed mlp`:
ae-mlp's inference chain (784 -> 128 ReLU -> 64 -> 128 ReLU -> 784 sigmoid) at
the bench's batch of 1000, f32, under no_grad, the median of 400 calls, and each
layer alone (the last also without its sigmoid), and the layers of ae-sparse
and vae-mlp.

usage: python3 scripts/bench/mlp_chain_torch.py [--threads 2]
"""
import argparse
import statistics
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
A = p.parse_args()
torch.set_num_threads(A.threads)
B = 1000
DIMS = [(784, 128, "relu"), (128, 64, None), (64, 128, "relu"), (128, 784, "sigmoid")]
ACT = {"relu": torch.relu, "sigmoid": torch.sigmoid, None: lambda h: h}


def median_ms(f, reps=400):
    for _ in range(20):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


with torch.no_grad():
    layers = [(torch.nn.Linear(i, o), a) for i, o, a in DIMS]
    x = torch.rand(B, 784)

    def chain():
        h = x
        for lin, a in layers:
            h = ACT[a](lin(h))
        return h

    flops = sum(2 * B * i * o for i, o, _ in DIMS)
    t = median_ms(chain)
    print("ae-mlp chain n=1000  %.3f ms (%.1f GFLOP/s, %.0f img/s)" % (t, flops / t / 1e6, B / t * 1e3))
    # As layer_speed's list: the chain's layers, the last without its
    # sigmoid, then ae-sparse's and vae-mlp's layers.
    extra = [(128, 784, None), (784, 64, "relu"), (64, 784, "sigmoid"), (784, 400, "relu"), (400, 784, "sigmoid")]
    for i, o, a in DIMS + extra:
        lin = torch.nn.Linear(i, o)
        xi = torch.rand(B, i)
        t = median_ms(lambda: ACT[a](lin(xi)))
        print("  linear %d->%d %s  %.3f ms (%.1f GFLOP/s)" % (i, o, a, t, 2 * B * i * o / t / 1e6))
