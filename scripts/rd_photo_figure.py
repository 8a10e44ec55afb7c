"""Side-by-side picture for the README: a test photograph, codec-photo-q2's
decoding of its .aez file, and libjpeg-turbo at the nearest rate at or above
it (cjpeg -optimize), with the bytes, bpp and PSNR of each.

    cargo build --release -p aezoo-cli
    python3 scripts/rd_photo_figure.py data/photos/test/LadyBird.png results/rd-photo/ladybird.png
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

AEZOO = os.environ.get("AEZOO", "target/release/aezoo")


def psnr(a, b):
    mse = ((np.asarray(a, float) - np.asarray(b, float)) ** 2).mean()
    return 10 * np.log10(255 ** 2 / mse)


def main(src, out, entry="codec-photo-q2"):
    img = Image.open(src).convert("RGB")
    w, h = img.size
    with tempfile.TemporaryDirectory() as d:
        aez, back = os.path.join(d, "x.aez"), os.path.join(d, "x.png")
        subprocess.run([AEZOO, "compress", src, "-o", aez, "--entry", entry], check=True, capture_output=True)
        subprocess.run([AEZOO, "decompress", aez, "-o", back], check=True, capture_output=True)
        ours = Image.open(back).convert("RGB")
        ours_bytes = os.path.getsize(aez)
        ppm, jpg, dec = (os.path.join(d, n) for n in ("x.ppm", "x.jpg", "y.ppm"))
        img.save(ppm)
        jpeg = None
        for q in range(1, 101):
            subprocess.run(["cjpeg", "-quality", str(q), "-optimize", "-outfile", jpg, ppm], check=True, stderr=subprocess.DEVNULL)
            if os.path.getsize(jpg) >= ours_bytes:
                subprocess.run(["djpeg", "-outfile", dec, jpg], check=True)
                jpeg = (q, os.path.getsize(jpg), Image.open(dec).convert("RGB"))
                break
    q, jpeg_bytes, jpeg_img = jpeg
    panels = [
        ("original", img),
        (f"aezoo {entry}: {ours_bytes} B, {8 * ours_bytes / (w * h):.3f} bpp, {psnr(img, ours):.2f} dB", ours),
        (f"libjpeg q{q}: {jpeg_bytes} B, {8 * jpeg_bytes / (w * h):.3f} bpp, {psnr(img, jpeg_img):.2f} dB", jpeg_img),
    ]
    bar = 22
    sheet = Image.new("RGB", (w * 3, h + bar), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, p) in enumerate(panels):
        sheet.paste(p, (i * w, bar))
        draw.text((i * w + 6, 5), label, fill="black")
    sheet.save(out)
    print(out, [p[0] for p in panels])


if __name__ == "__main__":
    main(*sys.argv[1:])
