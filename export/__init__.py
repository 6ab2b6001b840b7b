"""qrr.export: checkpoint → validated artifact. Needs the [export] extra (torch, transformers, onnx).

Importing the package is cheap: the exporters load torch only when called, and `qrr.export.presets`
(formats, precisions, presets) imports nothing heavy, so the CLI reads its choices from there.
"""

from __future__ import annotations

import importlib
from typing import Any

from .presets import DEFAULT_MAX_DROP, FORMATS, PRECISIONS, PRESETS, Preset

_LAZY = {
    "CheckpointError": "checkpoint",
    "ValidationError": "validate",
    "export_onnx": "to_onnx",
    "export_openvino": "to_openvino",
    "validate_artifact": "validate",
}

__all__ = ["DEFAULT_MAX_DROP", "FORMATS", "PRECISIONS", "PRESETS", "Preset", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
