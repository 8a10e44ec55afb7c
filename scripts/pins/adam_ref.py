#!/usr/bin/env python3
"""Reference values pinned in crates/aezoo-nn/tests/nn/optim.rs (Adam).

usage: python3 scripts/pins/adam_ref.py   (needs torch)

Five steps of torch.optim.Adam (defaults but lr) on
  loss = sum(w * c) + sum(w**2 * d) + sum(b**3 / 3)
from w = [0.5, -1.5, 2.0, 0.0], b = [1.0, -0.25], c = [1, -2, 0.5, 3],
d = [0.1, 0.2, 0.3, 0.4]; then again with weight_decay 0.1, and with AdamW
(decoupled, weight_decay 0.1). Prints the final parameters.
"""
import torch

torch.set_default_dtype(torch.float64)
c = torch.tensor([1.0, -2.0, 0.5, 3.0])
d = torch.tensor([0.1, 0.2, 0.3, 0.4])


def run(opt_cls, **kw):
    w = torch.tensor([0.5, -1.5, 2.0, 0.0], requires_grad=True)
    b = torch.tensor([1.0, -0.25], requires_grad=True)
    opt = opt_cls([w, b], lr=0.1, **kw)
    for _ in range(5):
        opt.zero_grad()
        loss = (w * c).sum() + (w ** 2 * d).sum() + (b ** 3 / 3).sum()
        loss.backward()
        opt.step()
    return w.detach().tolist() + b.detach().tolist()


for name, vals in (("adam", run(torch.optim.Adam)),
                   ("adam_l2", run(torch.optim.Adam, weight_decay=0.1)),
                   ("adamw", run(torch.optim.AdamW, weight_decay=0.1))):
    print(name, "[" + ", ".join(f"{v:.15e}" for v in vals) + "]")
