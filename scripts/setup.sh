#!/usr/bin/env bash
# Create a virtual environment and install qrr from this clone with the export and dev extras, the CPU build
# of PyTorch first (a bare `torch` requirement would pull a multi-GB CUDA build).
#   QRR_VENV        where the virtual environment goes (default: .venv)
#   QRR_TORCH_INDEX where the CPU build of torch comes from (default: PyTorch's CPU wheel index, probed first
#                   with a short timeout); "none" uses pip's own configuration (on our machines a local CPU wheel)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QRR_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
if ! "$py" -c "import torch" 2>/dev/null; then
  index="${QRR_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
  if [ "$index" != none ] && ! "$py" - "$index" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5)
except Exception:
    sys.exit(1)
PY
  then
    echo "setup: $index does not answer; installing torch==2.13.0 from pip's own configuration" >&2
    index=none
  fi
  if [ "$index" = none ]; then
    "$py" -m pip install -q "torch==2.13.0"
  else
    "$py" -m pip install -q "torch==2.13.0" --index-url "$index"
  fi
fi
"$py" -m pip install -q -e ".[export,dev]"
echo "qrr installed in $venv (activate it with: . $venv/bin/activate)"
