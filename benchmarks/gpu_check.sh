#!/usr/bin/env bash
# The prepared GPU check: parity tests on the GPU and workload A (1 query × 32 documents × ~200 tokens) on a
# 0.6B-shaped stand-in, fp32 and fp16, GPU against CPU. Installs nothing from the network; results in $OUT.
#   OUT=out/gpu bash benchmarks/gpu_check.sh        (needs torch, transformers, onnx and onnxruntime-gpu)
# Run once on a lent H100 (2026-11-27): onnxruntime-gpu 1.31.1's wheel (244 MiB, CUDA 13) was carried in four
# parts, joined there and installed with `pip install --no-deps --target /tmp/site` ahead of the image's CPU
# onnxruntime (PYTHONPATH); it found the image's pip-installed CUDA and cuDNN libraries without preload_dlls.
# Results: README "Devices"; benchmarks/gpu_profile.py measured the batch size there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
"$py" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 \
  || { echo "qrr did not install: see $OUT/install.log"; exit 2; }
"$py" - <<'PY' | tee "$OUT/providers.txt"
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
PY
if ! "$py" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  echo "no CUDAExecutionProvider in this onnxruntime: install onnxruntime-gpu (it replaces onnxruntime)" | tee -a "$OUT/providers.txt"
  exit 3
fi
QRR_TEST_DEVICE=cuda "$py" -m pytest -q tests/test_devices.py tests/test_runtime.py 2>&1 | tee "$OUT/parity.log"
"$py" benchmarks/workload_a.py --device cuda --precisions fp32 fp16 --out "$OUT" 2>&1 | tee "$OUT/workload_a.log"
