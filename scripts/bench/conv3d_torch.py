"""PyTorch's Conv3d / ConvTranspose3d on the layer shapes of `video-ae-small`
(batch 8 clips of 20 × 64 × 64), forward and backward, best of 3 — the
reference for `cargo run --release -p aezoo-cli --example conv3d_speed`.

    python3 scripts/bench/conv3d_torch.py [BATCH]      # torch 2.x, CPU, all threads
"""
import sys
import time

import torch
import torch.nn.functional as F

b = int(sys.argv[1]) if len(sys.argv) > 1 else 8
down = dict(stride=(1, 2, 2), padding=1)
same = dict(padding=1)
up = dict(stride=(1, 2, 2), padding=1, output_padding=(0, 1, 1))
layers = [
    ("enc conv1 1→16", False, (b, 1, 20, 64, 64), (16, 1, 3, 3, 3), down),
    ("enc conv2 16→32", False, (b, 16, 20, 32, 32), (32, 16, 3, 3, 3), down),
    ("res conv 32→32", False, (b, 32, 20, 16, 16), (32, 32, 3, 3, 3), same),
    ("dec deconv1 8→32", True, (b, 8, 20, 8, 8), (8, 32, 3, 3, 3), up),
    ("dec deconv2 32→16", True, (b, 32, 20, 16, 16), (32, 16, 3, 3, 3), up),
    ("dec deconv3 16→1", True, (b, 16, 20, 32, 32), (16, 1, 3, 3, 3), up),
]
print(f"batch {b} clips; torch {torch.__version__}, {torch.get_num_threads()} threads; best of 3")
print(f"{'layer':<20} {'fwd / bwd (ms)':>22}")
for name, tr, xs, ks, kw in layers:
    x = torch.randn(xs, requires_grad=True)
    w = (torch.randn(ks) * 0.05).requires_grad_()
    oc = ks[1] if tr else ks[0]
    bias = torch.zeros(oc, requires_grad=True)
    best = [float("inf"), float("inf")]
    for _ in range(3):
        t0 = time.perf_counter()
        y = (F.conv_transpose3d if tr else F.conv3d)(x, w, bias, **kw)
        t1 = time.perf_counter()
        y.pow(2).mean().backward()
        t2 = time.perf_counter()
        best = [min(best[0], t1 - t0), min(best[1], t2 - t1)]
    print(f"{name:<20} {best[0] * 1e3:>9.1f} / {best[1] * 1e3:>9.1f}")
