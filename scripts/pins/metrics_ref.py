#!/usr/bin/env python3
"""Reference values pinned in crates/aezoo-metrics/tests/metrics.rs.

usage: python3 scripts/pins/metrics_ref.py   (needs torch, numpy, scikit-image)

Losses come from PyTorch on deterministic inputs (the same formulas are in the
Rust test); SSIM and PSNR come from scikit-image on real images: the first
test images of the Fashion-MNIST subset bundled in crates/aezoo-data/bundled.
"""
import gzip, os
import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity, peak_signal_noise_ratio

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_default_dtype(torch.float64)

n = 120
i = torch.arange(n, dtype=torch.float64)
p = (0.05 + 0.9 * ((i * 37) % 101) / 100).reshape(2, 3, 4, 5)
t = (((i * 53) % 97) / 96).reshape(2, 3, 4, 5)
x = (-6 + 12 * ((i * 29) % 89) / 88).reshape(2, 3, 4, 5)
mu = (-2 + 4 * ((i * 17) % 61) / 60).reshape(2, 60)
lv = (-3 + 4 * ((i * 41) % 67) / 66).reshape(2, 60)

print(f"mse {F.mse_loss(p, t).item():.15e}")
print(f"mae {F.l1_loss(p, t).item():.15e}")
print(f"bce {F.binary_cross_entropy(p, t).item():.15e}")
print(f"bce_sum {F.binary_cross_entropy(p, t, reduction='sum').item():.15e}")
print(f"bce_logits {F.binary_cross_entropy_with_logits(x, t).item():.15e}")
big = torch.tensor([-200.0, -50.0, 0.0, 50.0, 200.0])
tt = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0])
print(f"bce_logits_extreme_sum {F.binary_cross_entropy_with_logits(big, tt, reduction='sum').item():.15e}")
kld = -0.5 * torch.sum(1 + lv - mu.pow(2) - lv.exp())
print(f"kld_sum {kld.item():.15e}")
print(f"kld_batchmean {(kld / 2).item():.15e}")

with gzip.open(os.path.join(ROOT, "crates/aezoo-data/bundled/fashion-mnist/t10k-images-idx3-ubyte.gz")) as f:
    raw = f.read()
imgs = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
a = imgs[0].astype(np.float64) / 255
b = imgs[1].astype(np.float64) / 255
c = 0.8 * a + 0.1
kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
print(f"ssim_a_b {structural_similarity(a, b, **kw):.15e}")
print(f"ssim_a_c {structural_similarity(a, c, **kw):.15e}")
print(f"ssim_a_a {structural_similarity(a, a, **kw):.15e}")
kw255 = dict(kw, data_range=255)
print(f"ssim_u8_255 {structural_similarity(imgs[2].astype(np.float64), imgs[3].astype(np.float64), **kw255):.15e}")
rgb1 = np.stack([imgs[4], imgs[5], imgs[6]]).astype(np.float64) / 255
rgb2 = np.stack([imgs[7], imgs[8], imgs[9]]).astype(np.float64) / 255
print(f"ssim_3ch {structural_similarity(rgb1, rgb2, channel_axis=0, **kw):.15e}")
print(f"psnr_a_b {peak_signal_noise_ratio(a, b, data_range=1.0):.15e}")
print(f"psnr_a_c {peak_signal_noise_ratio(a, c, data_range=1.0):.15e}")
print(f"psnr_u8_255 {peak_signal_noise_ratio(imgs[2].astype(np.float64), imgs[3].astype(np.float64), data_range=255):.15e}")
