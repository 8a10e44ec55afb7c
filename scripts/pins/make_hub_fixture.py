#!/usr/bin/env python3
"""Writes the tiny Hub-parquet fixture of crates/aezoo-data/tests/fixtures/.

usage: python3 scripts/pins/make_hub_fixture.py   (needs pyarrow, pillow)

The Hub's automatic parquet conversion of zalando-datasets/fashion_mnist
(revision refs/convert/parquet) stores rows of
  image: struct<bytes: binary (PNG), path: string>, label: int64
in fashion_mnist/{train,test}/0000.parquet. This writes the same schema with
the first 12 train and 6 test images of the bundled Fashion-MNIST subset, so
the test can lay the files out as an hf-hub cache and compare pixels exactly.
"""
import gzip, io, os
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(ROOT, "crates/aezoo-data/bundled/fashion-mnist")
OUT = os.path.join(ROOT, "crates/aezoo-data/tests/fixtures/fashion_mnist")


def load(split):
    with gzip.open(os.path.join(SRC, f"{split}-images-idx3-ubyte.gz")) as f:
        imgs = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(os.path.join(SRC, f"{split}-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    return imgs, labels


def png(a):
    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, format="PNG")
    return buf.getvalue()


for split, name, n in (("train", "train", 12), ("t10k", "test", 6)):
    imgs, labels = load(split)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": png(imgs[i]), "path": None} for i in range(n)], type=image_type),
        "label": pa.array([int(labels[i]) for i in range(n)], type=pa.int64()),
    })
    os.makedirs(os.path.join(OUT, name), exist_ok=True)
    path = os.path.join(OUT, name, "0000.parquet")
    pq.write_table(table, path)
    print(path, os.path.getsize(path))
