"""qrr.quant: quantization of scoring graphs and the rescaling that makes it accurate. It only quantizes:
tracing and converting graphs is qrr.export's job.

Depends on qrr.runtime (errors), never on qrr.export. `smooth` needs torch and `openvino` needs nncf.
"""

from .onnx_quant import QuantizationError, quantize_weights, save_model

__all__ = ["QuantizationError", "quantize_weights", "save_model"]
