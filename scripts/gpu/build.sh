#!/usr/bin/env bash
# Builds aezoo with `--features cuda` (sm_90) on a machine without a GPU, and packs it for a lent GPU machine.
#
# What it does (the recipe of ../shared/gpu.md, in one command):
#   1. a venv with PyPI's CUDA 13.0 toolkit wheels (nvcc, crt, nvvm, cudart, cublas, nvrtc, curand);
#      13.0 because the device's driver is CUDA 13.0 and cudarc 0.19 accepts 13.0-13.4 only;
#   2. a link folder: unversioned links to the wheels' libraries and a link-time stub
#      `libcuda.so` (the driver library is not on PyPI): one empty function per driver
#      symbol cudarc declares; the real driver replaces it at run time on the device;
#   3. `cargo build --release -p aezoo-cli --features cuda` into target/cuda;
#   4. gpu/aezoo.xz: the stripped binary, xz-compressed (the working tree that travels to
#      the device is at most 64 MiB), unpacked by scripts/gpu/check.sh;
#   5. gpu/photos: JPEG copies (quality 92) of the first 12 training photographs of
#      data/photos/train (scripts/make_photo_set.py), the folder entries' data there.
# Env: CUDA_VENV (default ~/.cache/aezoo/cuda-venv), CUDA_COMPUTE_CAP (default 90).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${CUDA_VENV:-$HOME/.cache/aezoo/cuda-venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/pip" ]; then "$PY" -m venv "$VENV"; fi
NV=$("$VENV/bin/python" -c 'import sys,os; print(os.path.join(next(p for p in sys.path if p.endswith("site-packages")), "nvidia", "cu13"))')
if [ ! -x "$NV/bin/nvcc" ] || [ ! -e "$NV/lib/libcurand.so.10" ]; then
  "$VENV/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" \
    "nvidia-cuda-cccl==13.0.*" nvidia-curand
fi
LINK=target/cuda-link
mkdir -p "$LINK"
for l in cublas cublasLt cudart nvrtc curand; do
  f=$(ls "$NV/lib/lib$l.so."* | grep -v builtins | head -1)
  ln -sf "$(realpath "$f")" "$LINK/lib$l.so"
done
# The driver stub: every cu* symbol cudarc's driver bindings load.
CUDARC=$(cargo metadata --format-version 1 --features cuda -q --manifest-path crates/aezoo-cli/Cargo.toml \
  | "$PY" -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
CUDARC=$(dirname "$CUDARC")
grep -ho 'load::<_F>("cu[A-Za-z0-9_]*")' "$CUDARC"/src/driver/sys/mod.rs \
  | sed 's/.*("\(.*\)")/\1/' | sort -u | sed 's/.*/void &(void) {}/' > "$LINK/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/cuda_stub.c"
ln -sf libcuda.so "$LINK/libcuda.so.1"
export PATH="$NV/bin:$PATH" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDA_ROOT="$NV" CUDA_PATH="$NV" CUDA_TOOLKIT_ROOT_DIR="$NV"
export RUSTFLAGS="-L $(realpath "$LINK")"
cargo build --release -p aezoo-cli --features cuda --target-dir target/cuda
mkdir -p gpu
strip -o target/cuda/aezoo.stripped target/cuda/release/aezoo
xz -6 -T2 -c target/cuda/aezoo.stripped > gpu/aezoo.xz.tmp && mv gpu/aezoo.xz.tmp gpu/aezoo.xz
ls -l target/cuda/aezoo.stripped gpu/aezoo.xz
if [ -d data/photos/train ]; then
  rm -rf gpu/photos && mkdir -p gpu/photos
  "$PY" - <<'PYEOF'
import glob, os
from PIL import Image
for f in sorted(glob.glob("data/photos/train/*"))[:12]:
    name = os.path.splitext(os.path.basename(f))[0] + ".jpg"
    Image.open(f).convert("RGB").save(os.path.join("gpu/photos", name), quality=92)
PYEOF
else
  echo "no data/photos/train (python3 scripts/make_photo_set.py data/photos): gpu/photos not made"
fi
# It runs here on the CPU with the stub standing in for the driver:
LD_LIBRARY_PATH="$(realpath "$LINK"):$NV/lib" target/cuda/aezoo.stripped list > /dev/null && echo "cuda build runs on the CPU here"
