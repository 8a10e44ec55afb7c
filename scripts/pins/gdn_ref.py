"""GDN / IGDN reference values for aezoo-nn's `gdn_matches_the_compressai_formula` test.

CompressAI's GDN forward (compressai/layers/gdn.py), with its effective
parameters given directly: norm = sqrt(conv2d(x², γ[:, :, None, None], β)),
y = x / norm (GDN) or x * norm (IGDN). Run: python3 scripts/pins/gdn_ref.py
"""
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
b, c, h, w = 2, 3, 2, 2
n = b * c * h * w
x = torch.tensor([((i * 37) % 23) / 11.0 - 1.0 for i in range(n)]).reshape(b, c, h, w)
beta = torch.tensor([1.0, 0.5, 2.0])
gamma = torch.tensor([[0.1, 0.02, 0.0], [0.03, 0.2, 0.01], [0.0, 0.05, 0.3]])
for inverse in (False, True):
    norm = torch.sqrt(F.conv2d(x * x, gamma.reshape(c, c, 1, 1), beta))
    y = x * norm if inverse else x / norm
    print("inverse" if inverse else "gdn", "sum", f"{y.sum().item():.15f}", "first", [f"{v:.15f}" for v in y.flatten()[:4].tolist()])
