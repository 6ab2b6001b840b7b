"""qrr.quant: quantization of scoring graphs and the rescaling that makes it accurate.

Depends on qrr.runtime (errors), never on qrr.export. `smooth` needs torch (the [export] extra).
"""

from .onnx_quant import QuantizationError, quantize_weights, save_model

__all__ = ["QuantizationError", "quantize_weights", "save_model"]
