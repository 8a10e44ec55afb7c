#!/usr/bin/env bash
# The one prepared device check for a lent GPU machine (issue 30; ../shared/gpu.md).
#
# Runs from the repository root there, with gpu/aezoo.xz made by scripts/gpu/build.sh
# and a few photographs in gpu/photos (carried: both are ignored paths), in about
# 6 minutes on an H200:
#   1. `aezoo check-device --device cuda`: every image, video and codec entry's training
#      step on the GPU against the CPU (loss, every gradient, reconstruction in f32; the
#      bf16 loss; an f64 finite-difference check of the GPU's gradient);
#   2. one short training epoch of vae-conv, vae-flex-small, video-ae-small and
#      codec-photo-q2 on the CPU, on CUDA in f32 and in bf16: the losses side by side;
#   3. `aezoo bench --device cuda` against PyTorch CUDA eager (scripts/bench/torch_twins.py
#      --device cuda) on the 28x28 entries, and encode+decode of a 512x512 image through
#      the SD-sized VAEs;
#   4. `aezoo max-batch --device cuda`, reading device memory.
# Everything lands in $OUT (default gpu/out): gpu_check.json (the figures), check_device.json,
# log.txt, outs.tgz (every step's output). Each step has its own time limit; a failing step is
# recorded, the rest still run; the exit status is check-device's. DEVICE=cpu BIN=… BIN_GIVEN=1
# (a CPU build) runs the same plumbing here.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
BIN=${BIN:-/tmp/aezoo-cuda}
[ -n "${BIN_GIVEN:-}" ] && KEEP_BIN=1
if [ -z "${KEEP_BIN:-}" ]; then
  xz -dc gpu/aezoo.xz > "$BIN" && chmod +x "$BIN" || { echo "no gpu/aezoo.xz: run scripts/gpu/build.sh first"; exit 1; }
fi
# cuBLAS, cudart, cuRAND and NVRTC from PyTorch's nvidia wheels; the driver's own libcuda.
LIBS=$(find /opt/torch/.venv /usr/local/lib /usr/lib \( -name 'libcublas.so.13' -o -name 'libcudart.so.13' -o -name 'libcurand.so.10' \
  -o -name 'libnvrtc.so.13' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_LOG=${RUST_LOG:-warn}
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no GPU") | tee "$OUT/gpu.txt"
ldd "$BIN" | grep -E 'cuda|cublas|curand|nvrtc'
STEPS="$OUT/steps.jsonl"
LOGS=/tmp/gpu-check-steps
rm -rf "$LOGS" /tmp/runs
mkdir -p "$LOGS"
: > "$STEPS"
step() { # name, seconds, command...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s%N)
  echo "== $name"
  timeout "$limit" "$@" > "$LOGS/$name.out" 2>&1
  local rc=$?
  tail -n 25 "$LOGS/$name.out"
  printf '{"step":"%s","rc":%d,"ms":%d}\n' "$name" "$rc" $((($(date +%s%N) - t0) / 1000000)) >> "$STEPS"
}

step list 30 "$BIN" list
step check-device 200 "$BIN" check-device --device "$DEV" --batch 2 --folder gpu/photos ${CHECK_ENTRIES:+--entries "$CHECK_ENTRIES"} \
  --out "$OUT/check_device.json"

for e in vae-conv ae-conv vae-mlp codec-mnist; do
  step "bench-$e-aezoo" 60 "$BIN" bench "$e" --steps "${BENCH_STEPS:-300}" --device "$DEV"
  step "bench-$e-torch" 60 "$PY" scripts/bench/torch_twins.py "$e" --steps "${BENCH_STEPS:-300}" --device "$DEV" \
    --data crates/aezoo-data/bundled/fashion-mnist
done
for e in vae-conv vae-flex-small video-ae-small codec-photo-q2; do
  case $e in
    vae-conv) lim=(--train-limit 4096 --test-limit 1000) ;;
    video-ae-small) lim=(--train-limit 160 --test-limit 40) ;;
    *) lim=(--data gpu/photos --train-limit 256 --test-limit 64) ;;
  esac
  for run in cpu:f32 "$DEV:f32" "$DEV:bf16"; do
    dev=${run%:*} prec=${run##*:}
    step "train-$e-$dev-$prec" 60 "$BIN" train "$e" --epochs 1 "${lim[@]}" --device "$dev" --precision "$prec" \
      --no-plots --out "/tmp/runs/$e-$dev-$prec"
  done
done

for e in vae-kl-sd vae-tiny; do
  step "image512-$e" 60 "$BIN" bench "$e" --image-size 512 --rounds 3 --device "$DEV"
done
step max-batch 60 "$BIN" max-batch vae-kl-small --device "$DEV" --limit 256 ${BUDGET:+--budget "$BUDGET"}
tar czf "$OUT/outs.tgz" -C "$LOGS" .

"$PY" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def lines(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    except OSError:
        return []
report = {"gpu": open(os.path.join(out, "gpu.txt")).read().strip(), "steps": lines(os.path.join(out, "steps.jsonl"))}
try:
    cd = json.load(open(os.path.join(out, "check_device.json")))
    report["check_device"] = {"failed": cd["failed"], "entries": len(cd["entries"])}
except (OSError, ValueError) as e:
    report["check_device"] = {"error": str(e)}
train = {}
for d in sorted(os.listdir("/tmp/runs")) if os.path.isdir("/tmp/runs") else []:
    m = lines(os.path.join("/tmp/runs", d, "metrics.jsonl"))
    ep = [r for r in m if r.get("kind") == "epoch"]
    if ep:
        r = ep[-1]
        train[d] = {"train_loss": r["train_loss"], "test_loss": r["test"]["loss"], "test_mse": r["test"]["mse"],
                    "train_images_per_s": r["train_images_per_s"], "train_seconds": r["train_seconds"]}
for key, row in train.items():
    cpu = train.get(key.rsplit("-", 2)[0] + "-cpu-f32")
    if cpu and row is not cpu:
        row["test_loss_rel_to_cpu"] = abs(row["test_loss"] - cpu["test_loss"]) / abs(cpu["test_loss"])
report["train"] = train
bench = {}
logs = "/tmp/gpu-check-steps"
for f in sorted(os.listdir(logs)):
    if f.startswith(("bench-", "image512-")) and f.endswith(".out"):
        rows = lines(os.path.join(logs, f))
        if rows:
            bench[f[:-4]] = rows[-1]
report["bench"] = bench
for e in ["vae-conv", "ae-conv", "vae-mlp", "codec-mnist"]:
    a, t = bench.get(f"bench-{e}-aezoo"), bench.get(f"bench-{e}-torch")
    if a and t:
        report.setdefault("ratios", {})[e] = {"train": a["train_img_s"] / t["train_img_s"],
                                              "infer": a["infer_img_s"] / t["infer_img_s"]}
try:
    report["max_batch"] = open(os.path.join(logs, "max-batch.out")).read().strip().splitlines()[-1]
except (OSError, IndexError):
    pass
json.dump(report, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
print(json.dumps(report.get("ratios", {})), json.dumps(report["check_device"]))
EOF
rc=$(python3 -c 'import json,sys; print(next((r["rc"] for r in map(json.loads, open(sys.argv[1])) if r["step"]=="check-device"), 1))' "$STEPS")
exec >&- 2>&-
wait
exit "$rc"
