"""Reference values for aezoo-metrics' MS-SSIM, from pytorch_msssim (the
implementation CompressAI's evaluations use): two (2, 3, 177, 190) images
(odd and even sides, so the zero-padded pooling is exercised),
x[i] = ½ + ½·cos(0.013·i)·sin(0.007·i), y = clamp(x + 0.08·sin(0.31·i)), per image,
data range 1.

    pip install pytorch-msssim; python3 scripts/pins/ms_ssim_ref.py
"""
import sys

import torch
from pytorch_msssim import ms_ssim

torch.set_default_dtype(torch.float64)
n = 2 * 3 * 177 * 190
i = torch.arange(n, dtype=torch.float64)
x = (0.5 + 0.5 * torch.cos(0.013 * i) * torch.sin(0.007 * i)).reshape(2, 3, 177, 190)
y = (x.flatten() + 0.08 * torch.sin(0.31 * i)).clamp(0, 1).reshape(2, 3, 177, 190)
print("stock (float32 window):", [repr(float(v)) for v in ms_ssim(x, y, data_range=1.0, size_average=False)])

# pytorch_msssim builds its Gaussian window in float32; the same computation
# with the window in float64, as aezoo computes it:
S = sys.modules["pytorch_msssim.ssim"]


def gauss64(size, sigma):
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).unsqueeze(0).unsqueeze(0)


S._fspecial_gauss_1d = gauss64
print("float64 window:", [repr(float(v)) for v in S.ms_ssim(x, y, data_range=1.0, size_average=False)])
