"""Turns scripts/gpu/check.sh's figures (gpu_check.json, check_device.json) into report.md.

usage: python3 scripts/gpu/report.py DIR   (DIR holds the two JSON files; writes DIR/report.md)
"""
import json, os, sys

d = sys.argv[1]
g = json.load(open(os.path.join(d, "gpu_check.json")))
gpu = (g["gpu"].split(",") + ["?", "?"])[:2]
cd = json.load(open(os.path.join(d, "check_device.json")))
out = [f"# The device check on {gpu[0]}", "",
       f"Made by `scripts/gpu/check.sh` (driver {gpu[1].strip()}); this file by "
       "`python3 scripts/gpu/report.py results/gpu`.", "",
       "## 1. Each entry's training step on CUDA against the CPU (`aezoo check-device --device cuda --batch 2`)", "",
       "f32 loss and every parameter's gradient (worst relative error, floored at 1e-3 of the model's largest "
       "gradient), reconstruction, the bf16 loss where the family computes in bf16, and the f64 gradient along a "
       "seeded random direction against its central difference on the GPU; where the CPU's own pair "
       "disagrees (a straight-through quantiser) the GPU's analytic figure must equal the CPU's.", "",
       "| entry | params | loss rel | worst grad rel | recon max abs | bf16 loss rel | f64 FD rel | pass |",
       "|---|---:|---:|---:|---:|---:|---:|---|"]
for e in cd["entries"]:
    if "error" in e:
        out.append(f"| {e['entry']} | | | | | | | **no**: {e['error'][:90]} |")
        continue
    fd = e["fd_f64_directional"]
    fdt = "skipped (SD-sized)" if "skipped" in fd else f"{fd['rel']:.1e}" + ("" if fd.get("smooth", True) else " (not smooth)")
    bf = "" if e["loss_bf16_rel"] is None else f"{e['loss_bf16_rel']:.1e}"
    out.append(f"| {e['entry']} | {e['params']:,} | {e['loss_rel']:.1e} | {e['grad_worst_rel']:.1e} | "
               f"{e['recon_max_abs']:.1e} | {bf} | {fdt} | {'yes' if e['pass'] else '**no**'} |")
out += ["", "## 2. One short epoch: CPU f32, CUDA f32, CUDA bf16", "",
        "| run | train loss | test loss | rel. to CPU | train img/s |", "|---|---:|---:|---:|---:|"]
for k, r in g["train"].items():
    rel = r.get("test_loss_rel_to_cpu")
    out.append(f"| {k} | {r['train_loss']:.5f} | {r['test_loss']:.5f} | {'' if rel is None else f'{rel:.1e}'} | "
               f"{r['train_images_per_s']:.0f} |")
out += ["", "## 3. Speed against PyTorch CUDA eager (same GPU, same run; 300 steps, bundled Fashion-MNIST)", "",
        "| entry | aezoo train img/s | torch train img/s | ratio | aezoo infer img/s | torch infer img/s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|"]
for e, r in g.get("ratios", {}).items():
    a, t = g["bench"][f"bench-{e}-aezoo"], g["bench"][f"bench-{e}-torch"]
    out.append(f"| {e} | {a['train_img_s']:.0f} | {t['train_img_s']:.0f} | {r['train']:.2f}× | "
               f"{a['infer_img_s']:.0f} | {t['infer_img_s']:.0f} | {r['infer']:.2f}× |")
for k, r in g["bench"].items():
    if k.startswith("image512-"):
        out.append(f"\n`{r['entry']}` encode + decode of one 512×512 image on CUDA (f32, tiled at its sample size): "
                   f"{r['encode_decode_s']:.3f} s")
if "max_batch" in g:
    out += ["", "## 4. max-batch on device memory", "", f"`aezoo max-batch vae-kl-small --device cuda --limit 256`: {g['max_batch']}"]
open(os.path.join(d, "report.md"), "w").write("\n".join(out) + "\n")
