"""qrr.quant: quantization of exported scoring graphs. Depends on qrr.runtime, never on qrr.export."""

from .onnx_quant import INT8_ACCURACY_LEVEL, INT8_BLOCK_SIZE, QuantizationError, quantize_int8, save_model

__all__ = ["INT8_ACCURACY_LEVEL", "INT8_BLOCK_SIZE", "QuantizationError", "quantize_int8", "save_model"]
