"""Checks that a folder `aezoo export` wrote for a `vae-kl` / `vae-tiny`
entry loads in diffusers and computes what aezoo computes.

    aezoo export vae-kl-small OUT --weights RUN_DIR
    aezoo encode vae-kl-small IMG.png --weights OUT -o lat.safetensors
    aezoo decode vae-kl-small lat.safetensors --weights OUT -o dec/
    python3 scripts/pins/diffusers_export_check.py OUT IMG.png lat.safetensors dec/IMG.png

The image must fit one tile (no tiling) and be a multiple of the
downsampling factor. diffusers' latents, `(mean − shift) · scaling_factor`,
must equal aezoo's to 1e-4, and its decoded image, `(y + 1) / 2` clamped and
rounded to 8 bits, aezoo's PNG to within one level.
"""
import json
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image
from safetensors.torch import load_file

torch.set_grad_enabled(False)


def main():
    out, img_path, lat_path, dec_path = sys.argv[1:5]
    cfg = json.load(open(f"{out}/config.json"))
    cls = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}[cfg["_class_name"]]
    vae = cls.from_pretrained(out).eval()
    x = torch.from_numpy(np.asarray(Image.open(img_path).convert("RGB"), dtype=np.float32) / 255.0)
    x = x.permute(2, 0, 1)[None]
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    if cls is AutoencoderKL:
        z = vae.encode(2 * x - 1).latent_dist.mean
    else:
        z = vae.encode(2 * x - 1).latents
    latents = (z - shift) * scale
    ours = load_file(lat_path)["latents"]
    d_lat = (latents - ours).abs().max().item()
    y = vae.decode(ours / scale + shift).sample
    y = ((y + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    theirs = np.round(y * 255).astype(np.int32)
    png = np.asarray(Image.open(dec_path).convert("RGB"), dtype=np.int32)
    d_img = int(np.abs(theirs - png).max())
    print(f"{cfg['_class_name']}: max |latents diffusers − aezoo| = {d_lat:.2e}, max pixel difference = {d_img} / 255")
    assert d_lat < 1e-4, d_lat
    assert d_img <= 1, d_img


if __name__ == "__main__":
    main()
