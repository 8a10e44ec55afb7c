"""Peak memory and time of `aezoo compress` / `decompress` / `reconstruct` / `encode` / `decode` on a 25-megapixel photograph.

usage: python3 scripts/bench/big_photo.py [--entry codec-photo-q2] [--out results/big-photo] [--no-vae]

`reconstruct`, `encode` and `decode` run TAESD (`vae-tiny`, tiled at its 512-px sample size) with the weights of one
training step on the photographs (memory and time do not depend on the weights' values).

Makes a 6120x4080 picture from the first training photograph (data/photos/train, made by
scripts/make_photo_set.py; bicubic upscale), runs the release binary under /usr/bin/time -v
and writes big-photo.md: peak RSS (VmHWM) and seconds per megapixel for each command.
"""
import argparse, os, re, subprocess, sys, glob

p = argparse.ArgumentParser()
p.add_argument("--entry", default="codec-photo-q2")
p.add_argument("--out", default="results/big-photo")
p.add_argument("--bin", default="target/release/aezoo")
p.add_argument("--no-vae", action="store_true", help="skip the vae-tiny reconstruction (minutes)")
A = p.parse_args()
from PIL import Image

os.makedirs(A.out, exist_ok=True)
src = sorted(glob.glob("data/photos/train/*"))
if not src:
    sys.exit("no data/photos/train: run python3 scripts/make_photo_set.py data/photos first")
big = "/tmp/aezoo-big-photo.png"
W, H = 6120, 4080
Image.open(src[0]).convert("RGB").resize((W, H), Image.BICUBIC).save(big)
mp = W * H / 1e6


def timed(args):
    r = subprocess.run(["/usr/bin/time", "-v", A.bin] + args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed: {r.stderr.strip().splitlines()[-1]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", r.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    secs = sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
    return rss, secs, r.stdout.strip()


rows = []
rss, secs, line = timed(["compress", big, "--entry", A.entry, "-o", "/tmp/aezoo-big-photo.aez"])
rows.append(("compress (and the decode that measures PSNR)", rss, secs, line))
rss, secs, line = timed(["decompress", "/tmp/aezoo-big-photo.aez", "-o", "/tmp/aezoo-big-photo.out.png"])
rows.append(("decompress", rss, secs, line))
if not A.no_vae:
    import shutil
    run = "/tmp/aezoo-big-photo-vt"
    shutil.rmtree(run, ignore_errors=True)
    r = subprocess.run([A.bin, "train", "vae-tiny", "--data", "data/photos/train", "--max-steps", "1", "--no-plots",
                        "--out", run], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"vae-tiny weights: {r.stderr.strip().splitlines()[-1]}")
    wdir = run + "-weights"
    os.makedirs(wdir, exist_ok=True)
    ck = sorted(glob.glob(run + "/checkpoints/*/model.safetensors"))[-1]
    shutil.copy(ck, os.path.join(wdir, "model.safetensors"))
    shutil.copy(os.path.join(run, "config.json"), os.path.join(wdir, "config.json"))
    os.makedirs("/tmp/aezoo-big-photo-recon", exist_ok=True)
    rss, secs, line = timed(["reconstruct", "vae-tiny", big, "--weights", wdir, "--out", "/tmp/aezoo-big-photo-recon"])
    rows.append(("reconstruct vae-tiny (encode and decode in 512-px tiles, PSNR and SSIM)", rss, secs, line))
    rss, secs, line = timed(["encode", "vae-tiny", big, "--weights", wdir, "-o", "/tmp/aezoo-big-photo.lat.safetensors"])
    rows.append(("encode vae-tiny (latents file)", rss, secs, line))
    rss, secs, line = timed(["decode", "vae-tiny", "/tmp/aezoo-big-photo.lat.safetensors", "--weights", wdir,
                             "-o", "/tmp/aezoo-big-photo-decoded"])
    rows.append(("decode vae-tiny (PNG)", rss, secs, line))
md = [f"# A {W}x{H} ({mp:.1f} MP) photograph", "",
      "Made by `python3 scripts/bench/big_photo.py`: the whole command under `/usr/bin/time -v` "
      "(PNG reading and writing included), 2 cores.", "",
      "| command | peak RSS (MiB) | seconds | seconds per MP |", "|---|---:|---:|---:|"]
for name, rss, secs, _ in rows:
    md.append(f"| {name} | {rss:.0f} | {secs:.1f} | {secs / mp:.2f} |")
md += ["", "```", *[r[3] for r in rows], "```"]
open(os.path.join(A.out, "big-photo.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
