"""diffusers' twin of `aezoo bench <entry> --image-size N`: the same
AutoencoderKL / AutoencoderTiny, built from the `model` fields of
`configs/<entry>.json` (diffusers' own config keys; random weights, seed 0),
times encoding (the posterior mean; TAESD's latents) and decoding one N × N
image, each the best of --rounds after one warm-up, in f32 on the CPU.
Tiling as aezoo's: past the config's `sample_size` (or --tile, 0 = never),
`enable_tiling()` with that tile. Prints one JSON line, as `aezoo bench` does;
`cargo xtask bench --vae` runs both, alternating.

    python3 scripts/bench/diffusers_vae.py vae-kl-sd --image-size 512 --threads 2
"""
import argparse
import json
import pathlib
import resource
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("entry")
ap.add_argument("--image-size", type=int, required=True)
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--tile", type=int, default=None)
a = ap.parse_args()

try:
    import torch
    import diffusers
except ImportError as e:
    print(json.dumps({"error": f"diffusers not installed: {e}"}))
    sys.exit(1)

if a.threads > 0:
    torch.set_num_threads(a.threads)
root = pathlib.Path(__file__).resolve().parents[2]
cfg = json.loads((root / "configs" / f"{a.entry}.json").read_text())
family = cfg["family"]
# aezoo's own keys: the loss, and TAESD's tile (AutoencoderTiny has none).
fields = {k: v for k, v in cfg["model"].items() if k != "loss"}
own_sample = fields.pop("sample_size", None) if family == "vae-tiny" else None
torch.manual_seed(0)
if family == "vae-kl":
    vae = diffusers.AutoencoderKL(**fields)
elif family == "vae-tiny":
    vae = diffusers.AutoencoderTiny(**fields)
else:
    print(json.dumps({"error": f"{a.entry}: family {family} has no diffusers twin"}))
    sys.exit(1)
vae.eval()
sample = own_sample or fields.get("sample_size", vae.config.get("sample_size", 512))
sample = sample[0] if isinstance(sample, (list, tuple)) else sample
tile = sample if a.tile is None else a.tile
n = a.image_size
tiled = tile > 0 and n > tile
if tiled:
    # AutoencoderKL: the tile sizes enable_tiling reads (diffusers ≥ 0.30).
    vae.enable_tiling()
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // (2 ** (len(vae.config.block_out_channels) - 1)) if family == "vae-kl" else tile // 8
    vae.tile_overlap_factor = 0.25

x = torch.rand(1, 3, n, n, generator=torch.Generator().manual_seed(1)) * 2 - 1
enc = dec = float("inf")
with torch.inference_mode():
    for r in range(a.rounds + 1):
        t = time.perf_counter()
        if family == "vae-kl":
            z = vae.encode(x).latent_dist.mode()
        else:
            z = vae.encode(x).latents
        te = time.perf_counter() - t
        t = time.perf_counter()
        y = vae.decode(z).sample
        float(y.sum())
        td = time.perf_counter() - t
        if r > 0:
            enc, dec = min(enc, te), min(dec, td)
print(
    json.dumps(
        {
            "framework": f"diffusers {diffusers.__version__}, torch {torch.__version__}",
            "entry": a.entry,
            "image_size": n,
            "params": sum(p.numel() for p in vae.parameters()),
            "encode_s": enc,
            "decode_s": dec,
            "encode_decode_s": enc + dec,
            "rounds": a.rounds,
            "threads": torch.get_num_threads(),
            "tiled": tiled,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )
)
