"""NNCF weight compression of an OpenVINO scoring graph (converting to IR is qrr.export's job).

int8: per-output-channel weights (NNCF INT8_ASYM), the embedding table included.
int4: grouped 4-bit weights (NNCF INT4_ASYM, `group_size`) on every linear layer; NNCF keeps the embedding
      in int8 per channel. The one-row fp32 head is a vector, which NNCF leaves alone.
"""

from __future__ import annotations

from typing import Any

from .onnx_quant import QuantizationError


def compress_weights(model, *, bits: int, group_size: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Compress the weights of the ov.Model `model` to `bits` (8 or 4); returns the model and its scheme."""
    import nncf

    if bits == 8:
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        scheme = {"linear": {"op": "NNCF weight compression", "bits": 8, "granularity": "per output channel",
                             "symmetric": False},
                  "embedding": {"bits": 8, "granularity": "per row"}}
    elif bits == 4:
        model = nncf.compress_weights(
            model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group_size, ratio=1.0, all_layers=True
        )
        scheme = {"linear": {"op": "NNCF weight compression", "bits": 4, "group_size": group_size, "symmetric": False},
                  "embedding": {"bits": 4, "group_size": group_size}}
    else:
        raise QuantizationError(f"bits must be 8 or 4, got {bits}")
    scheme["head"] = "fp32 (score direction)"
    return model, scheme
