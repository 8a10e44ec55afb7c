#!/usr/bin/env python3
"""Runs the PyTorch reference (shared/bench/pytorch_ref.py) with its seeds moved.

usage: SEED=N python3 scripts/torch_ref_seeded.py PATH/TO/pytorch_ref.py <mlp|conv|vae> [args]

The reference fixes `torch.manual_seed(0)` (init, noise) and a shuffle generator
seeded 42; this runs the very same file with those replaced by SEED and 42+SEED,
so `cargo xtask quality` can compare the spread over seeds of both frameworks.
Nothing else in the reference changes.
"""
import os
import sys

if len(sys.argv) < 3:
    sys.exit(__doc__)
path = sys.argv[1]
seed = int(os.environ.get("SEED", "0"))
with open(path) as f:
    src = f.read()
for old in ("torch.manual_seed(0)", "manual_seed(42)"):
    if old not in src:
        sys.exit(f"{path}: `{old}` not found; the reference changed, update this wrapper")
src = src.replace("torch.manual_seed(0)", f"torch.manual_seed({seed})").replace("manual_seed(42)", f"manual_seed({42 + seed})")
sys.argv = [path] + sys.argv[2:]
exec(compile(src, path, "exec"), {"__name__": "__main__", "__file__": path})
