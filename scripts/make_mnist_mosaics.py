"""Writes rate-distortion test pictures for the MNIST codec: N mosaics of
6 × 7 bundled MNIST *test* digits (168 × 196 pixels, large enough for
MS-SSIM), digits 42·k … 42·k + 41 of crates/aezoo-data/bundled/mnist.

    python3 scripts/make_mnist_mosaics.py OUT_DIR [N]     # numpy, Pillow
"""
import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image

out = Path(sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
root = Path(__file__).resolve().parents[1]
data = gzip.open(root / "crates/aezoo-data/bundled/mnist/t10k-images-idx3-ubyte.gz").read()
n = int.from_bytes(data[4:8], "big")
digits = np.frombuffer(data, np.uint8, offset=16).reshape(n, 28, 28)
out.mkdir(parents=True, exist_ok=True)
for k in range(count):
    tile = np.block([[digits[42 * k + r * 7 + c] for c in range(7)] for r in range(6)])
    Image.fromarray(tile).save(out / f"mosaic{k:02d}.png")
print(f"{count} mosaics of 42 test digits → {out}")
