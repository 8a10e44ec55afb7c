"""Writes the `.npy` fixtures of aezoo-data's Moving MNIST loader tests with
NumPy itself, so the loader is checked against the real format:

- moving_tiny.npy: uint8, shape (3, 2, 4, 5) = (frames, clips, h, w), values
  arange(120) % 256 — the published mnist_test_seq.npy layout in miniature;
- moving_float.npy: the same as float32 (a layout the loader must refuse);
- moving_fortran.npy: the uint8 array in Fortran order (refused).

    python3 scripts/pins/npy_fixture.py    # numpy 2.x
"""
from pathlib import Path

import numpy as np

out = Path(__file__).resolve().parents[2] / "crates/aezoo-data/tests/fixtures"
out.mkdir(parents=True, exist_ok=True)
a = (np.arange(120) % 256).astype(np.uint8).reshape(3, 2, 4, 5)
np.save(out / "moving_tiny.npy", a)
np.save(out / "moving_float.npy", a.astype(np.float32))
np.save(out / "moving_fortran.npy", np.asfortranarray(a))
for f in sorted(out.glob("moving_*.npy")):
    print(f.name, f.stat().st_size, "bytes")
