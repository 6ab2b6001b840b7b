"""NNCF weight compression of an OpenVINO scoring graph (converting to IR is qrr.export's job).

int8: per-output-channel weights (NNCF INT8_ASYM), the embedding table included.
int4: grouped 4-bit weights (NNCF INT4_ASYM, `group_size`) on every linear layer but the projections named in
      `eight_bit` and (with `embedding_bits` 8) the embedding table, which a second pass compresses to int8
      per channel. The one-row fp32 head is a vector, which NNCF leaves alone.
"""

from __future__ import annotations

from typing import Any

from .onnx_quant import QuantizationError


def compress_weights(model, *, bits: int, group_size: int | None = None, eight_bit: tuple[str, ...] = (),
                     embedding_bits: int = 4) -> tuple[Any, dict[str, Any]]:
    """Compress the weights of the ov.Model `model` to `bits` (8 or 4), at 4 bits the projections in `eight_bit`
    (q_proj, k_proj …) and an `embedding_bits` 8 embedding at 8; returns the model and its scheme."""
    import nncf

    if bits == 8:
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        scheme = {"linear": {"op": "NNCF weight compression", "bits": 8, "granularity": "per output channel",
                             "symmetric": False},
                  "embedding": {"bits": 8, "granularity": "per row"}}
    elif bits == 4:
        # node names as the tracer scopes them: /layers.N/k_proj/MatMul, /embed_tokens/Gather
        kept = [rf".*/{name}/MatMul" for name in eight_bit] + (["/embed_tokens/Gather"] if embedding_bits == 8 else [])
        ignored = nncf.IgnoredScope(patterns=kept, validate=True) if kept else None
        try:
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group_size,
                                          ratio=1.0, all_layers=True, ignored_scope=ignored)
        except nncf.ValidationError as exc:  # a pattern matched nothing: not the graph qrr traces
            raise QuantizationError(f"the graph lacks a node to keep at 8 bits ({exc}); is it qrr's scoring graph?")
        if kept:  # what the first pass left in float: int8 per channel (4-bit weights are no longer float)
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        scheme = {"linear": {"op": "NNCF weight compression", "bits": 4, "group_size": group_size, "symmetric": False},
                  "embedding": ({"bits": 8, "granularity": "per row"} if embedding_bits == 8
                                else {"bits": 4, "group_size": group_size})}
        if eight_bit:
            scheme["linear"]["eight_bit"] = {"projections": list(eight_bit), "granularity": "per output channel"}
    else:
        raise QuantizationError(f"bits must be 8 or 4, got {bits}")
    scheme["head"] = "fp32 (score direction)"
    return model, scheme
