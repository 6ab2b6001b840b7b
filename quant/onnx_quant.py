"""Weight-only quantization of an exported scoring graph (onnxruntime MatMulNBits).

Every MatMul of the body becomes MatMulNBits with `bits`-bit weights in blocks along the input dimension.
`accuracy_level` 0 keeps activations in float inside the kernel; 4 quantizes them to int8 per block and runs
the VNNI integer kernels, which is accurate only once activation outliers have been smoothed away
(qrr.quant.smooth). The embedding table becomes int8 rows with one fp32 scale each (Gather → Cast → Mul,
plain ONNX) or, at 4 bits, onnxruntime's GatherBlockQuantized. The one-row score head and the final dot
product stay fp32: the quantizers only touch 2-D constant weights and the head direction is 1-D.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qrr.runtime.errors import QrrError


EMBEDDING_BLOCK = 32  # 4-bit embedding rows: one scale and zero point per 32 values


class QuantizationError(QrrError):
    """The graph could not be quantized as asked."""


def quantize_weights(
    src: str | Path,
    dst: str | Path,
    *,
    bits: int,
    block_size: int,
    symmetric: bool,
    accuracy_level: int,
    embedding_bits: int | None,
    method: str = "rtn",
) -> dict[str, Any]:
    """Quantize `src` (a float scoring graph) into `dst`; returns the scheme for the manifest."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if bits not in (4, 8):
        raise QuantizationError(f"bits must be 4 or 8, got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise QuantizationError(f"block_size must be a power of two of at least 16, got {block_size}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise QuantizationError(f"accuracy_level must be 0..4, got {accuracy_level}")
    if embedding_bits not in (None, 4, 8):
        raise QuantizationError(f"embedding_bits must be 4, 8 or None, got {embedding_bits}")
    model = onnx.load(str(src))
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    if method == "hqq":
        if bits != 4:
            raise QuantizationError("HQQ is a 4-bit method; use rtn for 8 bits")
        algo = HQQWeightOnlyQuantConfig(block_size=block_size, bits=4, op_types_to_quantize=("MatMul",))
    elif method == "rtn":
        algo = DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level, bits=bits,
            op_types_to_quantize=("MatMul",),
        )
    else:
        raise QuantizationError(f"unknown rounding method {method!r}; use rtn or hqq")
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level,
        op_types_to_quantize=("MatMul",), algo_config=algo,
    )
    quantizer.process()
    model = quantizer.model.model
    if method == "hqq" and accuracy_level:
        for node in model.graph.node:
            if node.op_type == "MatMulNBits":
                node.attribute.append(helper.make_attribute("accuracy_level", accuracy_level))
    quantized = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    if quantized == 0:
        raise QuantizationError(f"{src} has no MatMul with a constant 2-D weight to quantize")
    scheme: dict[str, Any] = {
        "linear": {
            "op": "MatMulNBits",
            "bits": bits,
            "block_size": block_size,
            "symmetric": symmetric if method == "rtn" else False,
            "rounding": method,
            "accuracy_level": accuracy_level,
            "activations": "int8 per block (VNNI kernels)" if accuracy_level == 4 else "float",
            "count": quantized,
        },
        "embedding": None,
        "head": "fp32",
    }
    if embedding_bits == 8:
        scheme["embedding"] = quantize_embedding_rows(model)
    elif embedding_bits == 4:
        scheme["embedding"] = quantize_embedding_blocks(model, EMBEDDING_BLOCK)
    save_model(model, Path(dst))
    return scheme


def _embedding_gather(graph) -> onnx.NodeProto:
    inits = {t.name: t for t in graph.initializer}
    candidates = [
        n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2
    ]
    if len(candidates) != 1:
        raise QuantizationError(f"expected one embedding Gather with a constant 2-D table, found {len(candidates)}")
    return candidates[0]


def quantize_embedding_rows(model: onnx.ModelProto) -> dict[str, Any]:
    """Replace the embedding Gather by an int8 table with one fp32 scale per row (symmetric)."""
    graph = model.graph
    node = _embedding_gather(graph)
    init = next(t for t in graph.initializer if t.name == node.input[0])
    table = numpy_helper.to_array(init).astype(np.float32)
    scale = np.abs(table).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
    base = node.input[0]
    graph.initializer.remove(init)
    graph.initializer.extend(
        [
            numpy_helper.from_array(q, f"{base}_int8"),
            numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{base}_axes"),
        ]
    )
    ids, out = node.input[1], node.output[0]
    new_nodes = [
        helper.make_node("Gather", [f"{base}_int8", ids], [f"{out}_q"], name=f"{node.name}_q", axis=0),
        helper.make_node("Cast", [f"{out}_q"], [f"{out}_f"], name=f"{node.name}_cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Gather", [f"{base}_scale", ids], [f"{out}_s"], name=f"{node.name}_scale", axis=0),
        helper.make_node("Unsqueeze", [f"{out}_s", f"{base}_axes"], [f"{out}_s2"], name=f"{node.name}_unsq"),
        helper.make_node("Mul", [f"{out}_f", f"{out}_s2"], [out], name=f"{node.name}_mul"),
    ]
    _replace(graph, node, new_nodes)
    return {"op": "Gather+Mul", "bits": 8, "granularity": "per-row", "symmetric": True, "rows": int(table.shape[0])}


def quantize_embedding_blocks(model: onnx.ModelProto, block_size: int) -> dict[str, Any]:
    """Replace the embedding Gather by onnxruntime's GatherBlockQuantized: 4-bit, blocks along the row.

    The same numbers as onnxruntime's own Gather quantizer (tests/test_quant.py checks they are equal), which
    cannot be used here: it stores ONNX INT4 tensors and so raises the model to opset 21, which breaks the
    opset-17 ops the TorchScript exporter writes (ReduceMean with an axes attribute). This packs the same
    4-bit values two to a uint8, which GatherBlockQuantized reads at any opset.
    """
    graph = model.graph
    node = _embedding_gather(graph)
    init = next(t for t in graph.initializer if t.name == node.input[0])
    table = numpy_helper.to_array(init).astype(np.float32)
    rows, cols = table.shape
    if cols % block_size:
        raise QuantizationError(f"embedding width ({cols}) is not a multiple of the block size ({block_size})")
    blocks = table.reshape(rows, cols // block_size, block_size)
    lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)  # 0 in range: zero point in [0, 15]
    scale = np.maximum((hi - lo) / 15.0, 1e-12).astype(np.float32)
    zero = np.clip(np.rint(-lo / scale), 0, 15).astype(np.uint8)
    q = np.clip(np.rint(blocks / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8).reshape(rows, cols)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    zp = zero.reshape(rows, -1)
    zp = np.pad(zp, ((0, 0), (0, zp.shape[1] % 2)))
    zp_packed = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    base = node.input[0]
    graph.initializer.remove(init)
    graph.initializer.extend(
        [
            numpy_helper.from_array(packed, f"{base}_q4"),
            numpy_helper.from_array(scale, f"{base}_scales"),
            numpy_helper.from_array(zp_packed, f"{base}_zp4"),
        ]
    )
    new = helper.make_node(
        "GatherBlockQuantized",
        [f"{base}_q4", node.input[1], f"{base}_scales", f"{base}_zp4"],
        [node.output[0]],
        name=f"{node.name}_q4",
        domain="com.microsoft",
        gather_axis=0,
        quantize_axis=1,
        block_size=block_size,
        bits=4,
    )
    _replace(graph, node, [new])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return {"op": "GatherBlockQuantized", "bits": 4, "block_size": block_size, "symmetric": False, "rows": rows}


def _replace(graph, node, new_nodes) -> None:
    index = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, new in enumerate(new_nodes):
        graph.node.insert(index + offset, new)


def save_model(model: onnx.ModelProto, path: Path) -> list[str]:
    """Save with all weights in one external file beside the graph (required over 2 GB, uniform below)."""
    data = path.name + ".data"
    if (path.parent / data).exists():
        (path.parent / data).unlink()
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=1024
    )
    return [path.name, data]
