#!/usr/bin/env bash
# The GPU benchmark as one prepared run on a lent GPU host (about 4 minutes; budget 15):
#   bash benchmarks/gpu_sweep.sh
# Needs python3 with torch (CUDA build), numpy and scikit-learn; no Ray, no MLflow.
# Fashion-MNIST's IDX files come from PODIUM_FASHION_MNIST_DIR, else Debian's dataset package,
# else .data/fashion-mnist in the checkout (copy them there to carry them to a bare host).
# Everything lands in $OUT (default: ./gpu-sweep-out): gpu.json is the line to commit as
# docs/benchmarks/gpu.json (the device's copy of the checkout does not come back).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-sweep-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -z "${PODIUM_FASHION_MNIST_DIR:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
   && [ -d .data/fashion-mnist ]; then
  export PODIUM_FASHION_MNIST_DIR=.data/fashion-mnist
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  nproc; } 2>&1 | tee "$OUT/host.txt"

echo "== the sweep three ways: packed on the GPU (bf16), one trial at a time on it, the CPU cores"
timeout 480 "$PY" benchmarks/gpu_sweep.py --trials 16 --epochs 2 --out "$OUT/gpu.json" \
  2>&1 | tee "$OUT/gpu_sweep.txt"

echo "== the device picker and bf16 on a real GPU"
timeout 120 "$PY" -m pytest tests/workers/test_device.py -q -s --noconftest -p no:cacheprovider \
  -m "not slow" 2>&1 | tee "$OUT/test_device.txt"
