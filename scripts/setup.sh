#!/usr/bin/env bash
# Create .venv and install qrr with the export and dev extras, the CPU build of PyTorch first.
#   QRR_VENV        where the virtual environment goes (default: .venv)
#   QRR_TORCH_INDEX where the CPU build of torch comes from (default: PyTorch's CPU wheel index);
#                   "none" uses pip's own configuration (on our machines a local CPU wheel)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QRR_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
if ! "$py" -c "import torch" 2>/dev/null; then
  index="${QRR_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
  if [ "$index" = none ]; then
    "$py" -m pip install -q "torch==2.13.0"
  else
    "$py" -m pip install -q "torch==2.13.0" --index-url "$index"
  fi
fi
"$py" -m pip install -q -e ".[export,dev]"
echo "qrr installed in $venv"
