#!/usr/bin/env bash
# 0.6B-shaped stand-in → fp32 and int8 artifacts, each validated against the PyTorch reference → table.
#   bash benchmarks/standin_0p6b.sh [TOKENIZER_DIR]      (run inside the project's venv)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${QRR_BENCH_OUT:-out/bench}"
mkdir -p "$out"
tok=()
[ -n "${1:-}" ] && tok=(--tokenizer "$1")
[ -d "$out/standin-0.6b" ] || qrr standin --shape 0.6b -o "$out/standin-0.6b" "${tok[@]}"
for quant in fp32 int8; do
  name="$out/standin-0.6b-$quant"
  rm -rf "$name"
  qrr-export "$out/standin-0.6b" -o "$name" --quant "$quant"
done
python benchmarks/validation_table.py "$out/standin-0.6b-fp32" "$out/standin-0.6b-int8" -o "$out/validation"
