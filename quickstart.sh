#!/usr/bin/env bash
# The whole pipeline in one command: set up, export an int8 artifact with validation, rerank.
#   bash quickstart.sh                            # offline: a 0.6B-shaped stand-in with random weights
#   bash quickstart.sh Qwen/Qwen3-Reranker-0.6B   # the real model from the Hugging Face hub
# Settings (environment):
#   QRR_WORK   where the stand-in and the artifact are written (default: out)
#   QRR_VENV   the virtual environment scripts/setup.sh makes and uses (default: .venv)
#   QRR_SHAPE  the stand-in's shape: 0.6b (default), or tiny / small for a trial in a few minutes
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
. "${QRR_VENV:-.venv}/bin/activate"
source="${1:-}"
work="${QRR_WORK:-out}"
mkdir -p "$work"
if [ -z "$source" ]; then
  shape="${QRR_SHAPE:-0.6b}"
  source="$work/standin-$shape"
  tok=()
  [ -f ../shared/fixtures/qwen3-tokenizer/tokenizer.json ] && tok=(--tokenizer ../shared/fixtures/qwen3-tokenizer)
  [ -d "$source" ] || qrr standin --shape "$shape" -o "$source" "${tok[@]}"
fi
artifact="$work/$(basename "$source")-int8"
rm -rf "$artifact"
qrr-export "$source" -o "$artifact" --quant int8
printf '%s\n' "The capital of China is Beijing." "Gravity is a force." "Beijing hosted the 2008 Olympics." \
  | qrr rerank "$artifact" --query "What is the capital of China?" --docs -
echo "quickstart: the artifact is in $artifact (validation report: $artifact/validation.json)" >&2
