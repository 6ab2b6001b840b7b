"""OpenVINO IR from the traced scoring graph, weights compressed with NNCF.

int8: per-output-channel weights (NNCF INT8_ASYM), the embedding table included.
int4: grouped 4-bit weights (NNCF INT4_ASYM, `group_size`) on every linear layer; NNCF keeps the embedding
      in int8 per channel. The one-row fp32 head is a vector, which NNCF leaves alone.
The activation-aware scales (SmoothQuant, AWQ) are folded into the torch model before tracing, exactly as
for ONNX, so both formats quantize the same smoothed weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
EXTRA = "OpenVINO export needs the openvino extra: pip install 'qrr[openvino,export]'"


def to_openvino(onnx_path: Path, out_dir: Path, *, bits: int | None, group_size: int | None = None) -> dict[str, Any] | None:
    """Convert `onnx_path` to `out_dir`/model.xml + model.bin; `bits` 8 or 4 compresses the weights.

    Returns the quantization scheme (None for an uncompressed graph).
    """
    try:
        import openvino as ov
    except ImportError:
        raise ImportError(EXTRA) from None
    model = ov.convert_model(str(onnx_path))
    scheme = None
    if bits is not None:
        try:
            import nncf
        except ImportError:
            raise ImportError(EXTRA) from None
        if bits == 8:
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            scheme = {"linear": {"op": "NNCF weight compression", "bits": 8, "granularity": "per output channel",
                                 "symmetric": False},
                      "embedding": {"bits": 8, "granularity": "per row"}}
        elif bits == 4:
            model = nncf.compress_weights(
                model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group_size, ratio=1.0, all_layers=True
            )
            scheme = {"linear": {"op": "NNCF weight compression", "bits": 4, "group_size": group_size,
                                 "symmetric": False},
                      "embedding": {"bits": 4, "group_size": group_size}}
        else:
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        scheme["head"] = "fp32 (score direction)"
    ov.save_model(model, str(out_dir / MODEL_FILE), compress_to_fp16=False)
    return scheme
