"""Weight-only quantization of an exported scoring graph.

int8: every MatMul of the body becomes MatMulNBits with 8-bit symmetric weights in blocks along the input
dimension (activations stay in float, so the activation outliers of real LLMs cannot wreck the scale, the
failure of per-tensor dynamic quantization), and the embedding table becomes int8 rows with one fp32 scale
per row (Gather → Cast → Mul, plain ONNX ops). The one-row score head and the final dot product stay fp32:
the quantizer only touches 2-D constant weights and the head direction is 1-D.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qrr.runtime.errors import QrrError

INT8_BLOCK_SIZE = 32
# accuracy_level 0: activations stay fp32 inside MatMulNBits (4 would quantize them to int8 per block).
INT8_ACCURACY_LEVEL = 0


class QuantizationError(QrrError):
    """The graph could not be quantized as asked."""


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    *,
    block_size: int = INT8_BLOCK_SIZE,
    accuracy_level: int = INT8_ACCURACY_LEVEL,
    embedding: bool = True,
) -> dict[str, Any]:
    """Quantize `src` (an fp32 scoring graph) into `dst`; returns the scheme for the manifest."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise QuantizationError(f"block_size must be a power of two of at least 16, got {block_size}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise QuantizationError(f"accuracy_level must be 0..4, got {accuracy_level}")
    model = onnx.load(str(src))
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=8,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=accuracy_level,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    model = quantizer.model.model
    quantized = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    if quantized == 0:
        raise QuantizationError(f"{src} has no MatMul with a constant 2-D weight to quantize")
    scheme: dict[str, Any] = {
        "method": "weight-only",
        "linear": {
            "op": "MatMulNBits",
            "bits": 8,
            "block_size": block_size,
            "symmetric": True,
            "accuracy_level": accuracy_level,
            "count": quantized,
        },
        "embedding": None,
        "head": "fp32",
    }
    if embedding:
        scheme["embedding"] = quantize_embedding_rows(model)
    save_model(model, Path(dst))
    return scheme


def quantize_embedding_rows(model: onnx.ModelProto) -> dict[str, Any]:
    """Replace the embedding Gather by an int8 table with one fp32 scale per row (symmetric)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    candidates = [
        n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2
    ]
    if len(candidates) != 1:
        raise QuantizationError(f"expected one embedding Gather with a constant 2-D table, found {len(candidates)}")
    node = candidates[0]
    table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
    scale = np.abs(table).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
    base = node.input[0]
    graph.initializer.remove(inits[base])
    graph.initializer.extend(
        [numpy_helper.from_array(q, f"{base}_int8"), numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale")]
    )
    ids, out = node.input[1], node.output[0]
    new_nodes = [
        helper.make_node("Gather", [f"{base}_int8", ids], [f"{out}_q"], name=f"{node.name}_q", axis=0),
        helper.make_node("Cast", [f"{out}_q"], [f"{out}_f"], name=f"{node.name}_cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Gather", [f"{base}_scale", ids], [f"{out}_s"], name=f"{node.name}_scale", axis=0),
        helper.make_node("Unsqueeze", [f"{out}_s", f"{base}_axes"], [f"{out}_s2"], name=f"{node.name}_unsq"),
        helper.make_node("Mul", [f"{out}_f", f"{out}_s2"], [out], name=f"{node.name}_mul"),
    ]
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{base}_axes"))
    index = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, new in enumerate(new_nodes):
        graph.node.insert(index + offset, new)
    return {"op": "Gather+Mul", "bits": 8, "granularity": "per-row", "symmetric": True, "rows": int(table.shape[0])}


def save_model(model: onnx.ModelProto, path: Path) -> list[str]:
    """Save with all weights in one external file beside the graph (required over 2 GB, uniform below)."""
    data = path.name + ".data"
    if (path.parent / data).exists():
        (path.parent / data).unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=1024)
    return [path.name, data]
