"""Reference values for the layer grammar (aezoo-nn `spec`), from PyTorch.

The FlexVAE "basic" encoder and decoder lists (README of the Flexible
Variational Autoencoder repository) built with its `model_creator` and the
Stable-Diffusion VAE blocks it imports (`VAE_ResidualBlock`,
`VAE_AttentionBlock` with a one-head `SelfAttention`, in_proj/out_proj with
biases, as in the PyTorch SD re-implementations it follows); their parameter
counts; and the outputs of one residual block and one attention block with
every parameter set by name to sin(0.1·i + 0.7·len(name))·0.2 (i = flat index).

    python3 scripts/pins/flexvae_ref.py       # torch 2.x, float64
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

torch.set_default_dtype(torch.float64)


class SelfAttention(nn.Module):
    def __init__(self, n_heads, d_embed, in_proj_bias=True, out_proj_bias=True):
        super().__init__()
        self.in_proj = nn.Linear(d_embed, 3 * d_embed, bias=in_proj_bias)
        self.out_proj = nn.Linear(d_embed, d_embed, bias=out_proj_bias)
        self.n_heads = n_heads
        self.d_head = d_embed // n_heads

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        shape = (b, s, self.n_heads, self.d_head)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        w = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        out = (F.softmax(w, dim=-1) @ v).transpose(1, 2).reshape(b, s, d)
        return self.out_proj(out)


class VAE_AttentionBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.groupnorm = nn.GroupNorm(32, channels)
        self.attention = SelfAttention(1, channels)

    def forward(self, x):
        residue = x
        n, c, h, w = x.shape
        x = self.groupnorm(x).view(n, c, h * w).transpose(-1, -2)
        x = self.attention(x).transpose(-1, -2).view(n, c, h, w)
        return x + residue


class VAE_ResidualBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.groupnorm_1 = nn.GroupNorm(32, in_channels)
        self.conv_1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.groupnorm_2 = nn.GroupNorm(32, out_channels)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.residual_layer = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        r = x
        x = self.conv_1(F.silu(self.groupnorm_1(x)))
        x = self.conv_2(F.silu(self.groupnorm_2(x)))
        return x + self.residual_layer(r)


def model_creator(structure):  # FlexVAE's, unchanged in behaviour
    layer_dict = {
        "C2d": nn.Conv2d, "VAERB": VAE_ResidualBlock, "VAEA": VAE_AttentionBlock, "GN": nn.GroupNorm,
        "SiLU": nn.SiLU, "MaxP": nn.MaxPool2d, "UpS": lambda x: nn.Upsample(None, x),
    }
    flat = []
    for item in structure:
        mult, ltype = (item.split("*") if "*" in item else (1, item))
        flat += [ltype] * int(mult)
    return [layer_dict[l.split("_")[0]](*[int(v) for v in l.split("_")[1:]]) for l in flat]


ENCODER = ["C2d_3_128_3_1_1", "2*VAERB_128_128", "C2d_128_128_3_4_0", "VAERB_128_256", "VAERB_256_256",
           "C2d_256_256_3_4_0", "3*VAERB_256_256", "VAEA_256", "VAERB_256_256", "GN_32_256", "SiLU",
           "C2d_256_8_3_1_1", "C2d_8_8_1_1_0"]
DECODER = ["C2d_4_4_1_1_0", "C2d_4_512_3_1_1", "VAERB_512_512", "VAEA_512", "4*VAERB_512_512", "UpS_4",
           "C2d_512_512_3_1_1", "VAERB_512_256", "2*VAERB_256_256", "UpS_4", "C2d_256_256_3_1_1",
           "VAERB_256_128", "2*VAERB_128_128", "GN_32_128", "SiLU", "C2d_128_3_3_1_1"]
enc, dec = nn.Sequential(*model_creator(ENCODER)), nn.Sequential(*model_creator(DECODER))
count = lambda m: sum(p.numel() for p in m.parameters())
print(f"encoder params {count(enc)}  decoder params {count(dec)}  total {count(enc) + count(dec)}")
x = torch.zeros(1, 3, 64, 64)
print("encoder out", tuple(enc(x).shape), "decoder out", tuple(dec(torch.zeros(1, 4, 4, 4)).shape))


def fill(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            i = torch.arange(p.numel(), dtype=torch.float64)
            p.copy_((torch.sin(0.1 * i + 0.7 * len(name)) * 0.2).view_as(p))


def inp(c, h, w):
    i = torch.arange(c * h * w, dtype=torch.float64)
    return torch.cos(0.05 * i).view(1, c, h, w)


rb = VAE_ResidualBlock(32, 64)
fill(rb)
y = rb(inp(32, 3, 4))
print("resblock(32->64) y[0, 5, 1, :]:", ", ".join(f"{v:.15e}" for v in y[0, 5, 1].tolist()))
ab = VAE_AttentionBlock(32)
fill(ab)
y = ab(inp(32, 3, 4))
print("attention(32) y[0, 7, 2, :]:", ", ".join(f"{v:.15e}" for v in y[0, 7, 2].tolist()))
