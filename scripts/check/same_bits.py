"""Trains the same short runs with two `aezoo` binaries and compares what
they leave, file by file: the weights, checkpoints, logs, pictures and
metrics must be the same bytes (timing fields aside). For refactors that
must change nothing a user sees.

    python3 scripts/check/same_bits.py OLD_AEZOO NEW_AEZOO [--entries a,b] [--keep DIR]

Each entry trains one short epoch on its default data (Fashion-MNIST where
installed, data/photos for the photo entries, generated Moving MNIST clips,
the bundled graphs), stopped after a few steps and resumed, then runs
`eval`; a photo is compressed and decompressed with each codec entry. Run it
from the repository root. Exit status 1 when anything differs.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

# entry -> extra `aezoo train` arguments (small runs)
ENTRIES = {
    "ae-linear": ["--train-limit", "2000", "--test-limit", "500"],
    "ae-conv": ["--train-limit", "1024", "--test-limit", "256"],
    "ae-denoise": ["--train-limit", "1024", "--test-limit", "256"],
    "vae-mlp": ["--train-limit", "2000", "--test-limit", "500"],
    "vae-conv": ["--train-limit", "1024", "--test-limit", "256"],
    "codec-mnist": ["--train-limit", "512", "--test-limit", "128"],
    "video-ae-small": ["--train-limit", "32", "--test-limit", "16", "--batch-size", "8"],
    "vae-flex-small": ["--data", "data/photos/train", "--train-limit", "64", "--test-limit", "16"],
    "codec-photo-q1": ["--train-limit", "32", "--test-limit", "8"],
    "gae-cora": ["--epochs", "5"],
}
# JSON fields that measure time, not what was computed.
TIMING = {"images_per_s", "train_images_per_s", "train_seconds", "seconds", "wall_seconds"}
GRAPHS = {"gae-cora"}


def run(binary, args, cwd):
    r = subprocess.run([binary] + args, cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, "RUST_LOG": "warn"})
    if r.returncode != 0:
        raise SystemExit(f"{binary} {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def strip_timing(v):
    if isinstance(v, dict):
        return {k: strip_timing(x) for k, x in v.items() if k not in TIMING}
    if isinstance(v, list):
        return [strip_timing(x) for x in v]
    return v


def digest(path):
    """A file's content as compared: JSON without timing fields, else bytes."""
    name = os.path.basename(path)
    data = open(path, "rb").read()
    # Key order is part of the file: objects keep theirs.
    load = lambda t: json.loads(t, object_pairs_hook=dict)
    if name.endswith(".json"):
        return json.dumps(strip_timing(load(data)))
    if name.endswith(".jsonl"):
        return "\n".join(json.dumps(strip_timing(load(l))) for l in data.decode().splitlines() if l.strip())
    return hashlib.sha256(data).hexdigest()


def files(root):
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith(".tmp") or "tensorboard" in d:
                continue
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = p
    return out


def make_digit(d):
    """A 28 x 28 grey PNG (a bar), without Pillow: a hand-written PNG."""
    import struct
    import zlib
    rows = b"".join(b"\x00" + bytes(255 if 8 <= x < 20 and 6 <= y < 22 else 0 for x in range(28)) for y in range(28))
    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    p = os.path.join(d, "digit.png")
    open(p, "wb").write(png)
    return p


def train_twice(binary, entry, extra, out):
    """A run stopped after 3 steps and resumed (graphs: one full run)."""
    if entry in GRAPHS:
        run(binary, ["train", entry, "--out", out] + extra, ".")
    else:
        run(binary, ["train", entry, "--epochs", "1", "--out", out, "--max-steps", "3"] + extra, ".")
        run(binary, ["train", entry, "--epochs", "1", "--resume", out] + extra, ".")
    data = extra[extra.index("--data"):extra.index("--data") + 2] if "--data" in extra else []
    return run(binary, ["eval", entry, "--weights", out, "--json"] + data, ".")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--entries", default=",".join(ENTRIES))
    ap.add_argument("--keep", help="keep the run folders here")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp(prefix="same-bits-")
    differ = 0
    for entry in a.entries.split(","):
        extra = ENTRIES.get(entry, [])
        if entry.startswith(("vae-flex", "codec-photo")) and not os.path.isdir("data/photos"):
            print(f"{entry}: no data/photos here (scripts/make_photo_set.py); skipped")
            continue
        outs = {}
        for side, binary in (("old", a.old), ("new", a.new)):
            d = os.path.join(work, side, entry)
            evaled = train_twice(os.path.abspath(binary), entry, extra, d)
            outs[side] = (d, strip_timing(json.loads(evaled)))
        (od, oe), (nd, ne) = outs["old"], outs["new"]
        of, nf = files(od), files(nd)
        bad = sorted(set(of) ^ set(nf))
        bad += [f for f in sorted(set(of) & set(nf)) if digest(of[f]) != digest(nf[f])]
        oe.pop("weights", None)
        ne.pop("weights", None)
        if oe != ne:
            bad.append("eval --json")
        print(f"{entry}: {len(of)} files, " + ("the same" if not bad else f"DIFFERENT: {bad}"))
        differ += bool(bad)
    # The codecs' real bitstreams and their decodings, with the shipped weights.
    photos = sorted(os.listdir("data/photos/test")) if os.path.isdir("data/photos/test") else []
    for entry, image in [("codec-mnist", None), ("codec-photo-q2", photos[0] if photos else None)]:
        if not os.path.isdir(f"weights/{entry}") or (entry.startswith("codec-photo") and not image):
            continue
        got = {}
        for side, binary in (("old", a.old), ("new", a.new)):
            d = os.path.join(work, side, "compress-" + entry)
            os.makedirs(d, exist_ok=True)
            src = os.path.join("data/photos/test", image) if image else make_digit(d)
            aez, png = os.path.join(d, "x.aez"), os.path.join(d, "x.png")
            run(os.path.abspath(binary), ["compress", src, "--entry", entry, "--weights", f"weights/{entry}", "-o", aez], ".")
            run(os.path.abspath(binary), ["decompress", aez, "--weights", f"weights/{entry}", "-o", png], ".")
            got[side] = (digest(aez), digest(png))
        same = got["old"] == got["new"]
        print(f"compress {entry}: " + ("the same .aez and decoding" if same else "DIFFERENT"))
        differ += not same
    print(f"runs in {work}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
