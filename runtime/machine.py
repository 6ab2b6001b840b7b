"""What a measurement ran on: the machine and the package versions, written beside every figure."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

# what the reference recipe's scores and timing depend on: the key of validation's reference cache
REFERENCE_PACKAGES = ("qrr", "onnxruntime", "onnx", "torch", "transformers", "tokenizers", "numpy")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import psutil

    return {
        "cpu": cpu_name(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
    }


def versions(names: tuple[str, ...] = (*REFERENCE_PACKAGES, "openvino", "nncf")) -> dict[str, str]:
    """Installed versions of `names` (those installed) and of Python."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in names:
        # a loaded module's own version first: onnxruntime-gpu installs the module onnxruntime, and a copy put
        # ahead on the path can leave another distribution's metadata behind
        loaded = getattr(sys.modules.get(name), "__version__", None)
        try:
            out[name] = str(loaded) if loaded else version(name)
        except PackageNotFoundError:
            pass
    return out
