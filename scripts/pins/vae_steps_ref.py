#!/usr/bin/env python3
"""PyTorch reference for three training steps of a small vae-conv
(crates/aezoo-zoo/tests/fixtures/vae_steps_{init,after}.safetensors).

usage: python3 scripts/pins/vae_steps_ref.py   (needs torch, numpy, safetensors)

The model is aezoo's vae-conv family at channels [4, 8], latent 4, written in
PyTorch exactly as shared/bench/pytorch_ref.py writes its ConvVae, in float64.
Its initial weights (PyTorch's init, seed 0) are saved under aezoo's parameter
names; then three Adam steps (lr 1e-3, PyTorch defaults) run on bundled
Fashion-MNIST train images 0-7, 8-15, 16-23 with loss
(sum BCE-with-logits + KLD) / batch, the reparameterisation noise drawn from a
Python copy of aezoo's Rng (xoshiro256++ / Box-Muller, seed 123) so both sides
use the same eps. The weights after the steps are saved too; the Rust test
must reproduce them.
"""
import gzip, math, os
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates/aezoo-zoo/tests/fixtures")
M64 = (1 << 64) - 1


class Rng:
    """aezoo_nn::Rng: xoshiro256++ seeded by SplitMix64."""

    def __init__(self, seed):
        x = seed
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            s.append(z ^ (z >> 31))
        self.s = s

    def next_u64(self):
        s0, s1, s2, s3 = self.s
        rotl = lambda v, k: ((v << k) | (v >> (64 - k))) & M64
        result = (rotl((s0 + s3) & M64, 23) + s0) & M64
        t = (s1 << 17) & M64
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = rotl(s3, 45)
        self.s = [s0, s1, s2, s3]
        return result

    def uniform(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def randn(self, n):
        out = []
        while len(out) < n:
            u1 = 1.0 - self.uniform()
            u2 = self.uniform()
            r = math.sqrt(-2.0 * math.log(u1))
            th = 2.0 * math.pi * u2
            out += [r * math.cos(th), r * math.sin(th)]
        return out[:n]


class ConvVae(nn.Module):
    def __init__(self, c1=4, c2=8, latent=4):
        super().__init__()
        self.latent = latent
        self.c1 = nn.Conv2d(1, c1, 4, stride=2, padding=1)
        self.c2 = nn.Conv2d(c1, c2, 4, stride=2, padding=1)
        self.fc = nn.Linear(c2 * 7 * 7, 2 * latent)
        self.fc2 = nn.Linear(latent, c2 * 7 * 7)
        self.t1 = nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1)
        self.t2 = nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1)
        self.c2n = c2

    def encode(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x)))).flatten(1)
        s = self.fc(h)
        return s[:, :self.latent], s[:, self.latent:]

    def decode_logits(self, z):
        h = F.relu(self.fc2(z)).view(-1, self.c2n, 7, 7)
        return self.t2(F.relu(self.t1(h)))


NAMES = {"c1": "encoder.conv1", "c2": "encoder.conv2", "fc": "encoder.fc",
         "fc2": "decoder.fc", "t1": "decoder.deconv1", "t2": "decoder.deconv2"}


def ours(model):
    out = {}
    for k, v in model.state_dict().items():
        mod, kind = k.split(".")
        out[f"{NAMES[mod]}.{kind}"] = v.detach().clone().contiguous()
    return out


torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
model = ConvVae()
save_file(ours(model), os.path.join(OUT, "vae_steps_init.safetensors"))

with gzip.open(os.path.join(ROOT, "crates/aezoo-data/bundled/fashion-mnist/train-images-idx3-ubyte.gz")) as f:
    imgs = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
rng = Rng(123)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(3):
    x = torch.from_numpy(imgs[8 * step:8 * step + 8].astype(np.float64) / 255.0)
    opt.zero_grad()
    mu, lv = model.encode(x)
    eps = torch.tensor(rng.randn(8 * 4)).reshape(8, 4)
    z = mu + torch.exp(0.5 * lv) * eps
    logits = model.decode_logits(z)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + lv - mu.pow(2) - lv.exp())
    loss = (bce + kld) / 8
    loss.backward()
    opt.step()
    print(f"step {step + 1}: loss {loss.item():.12f}")
save_file(ours(model), os.path.join(OUT, "vae_steps_after.safetensors"))
print("wrote", OUT)
