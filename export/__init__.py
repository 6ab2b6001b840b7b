"""qrr.export: checkpoint → validated artifact. Needs the [export] extra (torch, transformers, onnx)."""

from .checkpoint import CheckpointError
from .to_onnx import QUANT_CHOICES, export_onnx
from .validate import DEFAULT_MAX_DROP, ValidationError, validate_artifact

__all__ = ["CheckpointError", "DEFAULT_MAX_DROP", "QUANT_CHOICES", "ValidationError", "export_onnx", "validate_artifact"]
