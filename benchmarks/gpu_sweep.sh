#!/usr/bin/env bash
# GPU sweep and its CPU twin on one GPU host, in one go (about 3 minutes on an H100 host):
#   bash benchmarks/gpu_sweep.sh
# Needs python3 with torch (CUDA build), numpy, scikit-learn and PyYAML; no Ray, no MLflow.
# Fashion-MNIST's IDX files come from PODIUM_FASHION_MNIST_DIR, else Debian's dataset package,
# else .data/fashion-mnist in the checkout (copy them there to carry them to a bare host).
# Logs land in $OUT (default: ./gpu-sweep-out); the JSON lines are what docs/BENCHMARKS.md quotes.
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
TASK=${TASK:-fashion-mnist}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  nproc; } 2>&1 | tee "$OUT/host.txt"

echo "== GPU: 6 trials x 2 epochs (fp32), then the same with bf16 autocast"
timeout 180 "$PY" benchmarks/gpu_sweep.py --device cuda --task "$TASK" --trials 6 --epochs 2 \
  | tee "$OUT/cuda.txt"
timeout 120 "$PY" benchmarks/gpu_sweep.py --device cuda --task "$TASK" --trials 6 --epochs 2 --amp \
  | tee "$OUT/cuda_amp.txt"

echo "== GPU at batch 1024: the per-step launch cost shrinks against the work"
timeout 120 "$PY" benchmarks/gpu_sweep.py --device cuda --task "$TASK" --trials 6 --epochs 2 \
  --batch-size 1024 | tee "$OUT/cuda_b1024.txt"

echo "== CPU twin: 3 trials (one per config) x 1 epoch on all $(nproc) cores"
timeout 240 "$PY" benchmarks/gpu_sweep.py --device cpu --task "$TASK" --trials 3 --epochs 1 \
  --threads "$(nproc)" | tee "$OUT/cpu.txt"

echo "== the device picker on a real GPU"
"$PY" -m pytest tests/workers/test_device.py -q -s --noconftest -p no:cacheprovider -m "not slow" \
  2>&1 | tee "$OUT/test_device.txt"
