"""Quantization of an exported scoring graph's weights and, where the kernel takes them, its activations.

Two kernels for the linear layers (every MatMul with a constant weight):
- rowwise (int8): onnxruntime's integer GEMM, MatMulIntegerToFloat, with int8 weights per output column and
  int8 activations with one scale per row (token), computed in the graph: a row's result never depends on
  its batch neighbours. Accurate once activation outliers are gone (qrr.quant.rotate, qrr.quant.smooth).
- matmulnbits (int4, and int8 on request): MatMulNBits with `bits`-bit weights in blocks along the input
  dimension; `accuracy_level` 0 keeps activations in float inside the kernel, 4 quantizes them to int8 per
  block.
The embedding table becomes onnxruntime's GatherBlockQuantized (4 or 8 bits in blocks, so no row's
largest element decides its other elements' precision), or int8 rows with one scale each. The one-row
score head and the final dot product stay fp32: the quantizers only touch 2-D constant weights and the
head direction is 1-D.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qrr.runtime.errors import QrrError


EMBEDDING_BLOCK = 32  # embedding rows in blocks: one scale and zero point per 32 values
EMBEDDING_CHUNK = 8192  # rows quantized at a time: the float temporaries of a 151669-row table stay small


class QuantizationError(QrrError):
    """The graph could not be quantized as asked."""


KERNELS = ("rowwise", "matmulnbits")


def quantize_weights(
    src: str | Path,
    dst: str | Path,
    *,
    bits: int,
    block_size: int,
    symmetric: bool,
    accuracy_level: int,
    embedding_bits: int | None,
    embedding_block: int | None = EMBEDDING_BLOCK,
    method: str = "rtn",
    kernel: str = "matmulnbits",
    eight_bit: tuple[tuple[str, ...], int] = ((), 0),
    two_pass: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Quantize `src` (a float scoring graph) into `dst`; returns the scheme for the manifest.

    kernel "rowwise": int8 per row × int8 per column on the integer GEMM (quantize_rowwise_int8; 8 bits only),
    with the activations of the projections in `two_pass` (such as "k_proj") in two int8 passes.
    kernel "matmulnbits": `bits`-bit weights in blocks of `block_size` (MatMulNBits), activations per
    `accuracy_level`; `eight_bit` = (projections such as "k_proj", block) puts those at 8 bits in their own blocks.
    The embedding: `embedding_bits` in blocks of `embedding_block`, or per row when None.
    """
    if kernel not in KERNELS:
        raise QuantizationError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if bits not in (4, 8):
        raise QuantizationError(f"bits must be 4 or 8, got {bits}")
    if kernel == "rowwise" and (bits != 8 or method != "rtn"):
        raise QuantizationError("the rowwise kernel is 8-bit round-to-nearest; use matmulnbits for 4 bits or hqq")
    if block_size < 16 or block_size & (block_size - 1):
        raise QuantizationError(f"block_size must be a power of two of at least 16, got {block_size}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise QuantizationError(f"accuracy_level must be 0..4, got {accuracy_level}")
    if embedding_bits not in (None, 4, 8):
        raise QuantizationError(f"embedding_bits must be 4, 8 or None, got {embedding_bits}")
    model = onnx.load(str(src))
    model, linear = quantize_linear(model, bits=bits, block_size=block_size, symmetric=symmetric,
                                    accuracy_level=accuracy_level, method=method, kernel=kernel, eight_bit=eight_bit,
                                    two_pass=two_pass)
    scheme: dict[str, Any] = {"linear": linear, "embedding": quantize_embedding(model, embedding_bits, embedding_block),
                              "head": "fp32"}
    save_model(model, Path(dst))
    return scheme


def quantize_linear(model: onnx.ModelProto, *, bits: int, block_size: int, symmetric: bool, accuracy_level: int,
                    method: str, kernel: str, eight_bit: tuple[tuple[str, ...], int] = ((), 0),
                    two_pass: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Every MatMul with a constant 2-D weight of `model`, on `kernel`; the new model and the scheme. Runs on a
    whole graph or on one layer's (qrr.export.streamed_export). With `eight_bit` = (projection names such as
    "k_proj", block; MatMulNBits only), those projections' MatMuls take 8 bits in blocks of that size (their
    activations too, at accuracy level 4), rounded to nearest. On the rowwise kernel, the MatMuls of the
    projections in `two_pass` read their activations in two int8 passes (quantize_rowwise_int8)."""
    projections, wide_block = eight_bit
    if kernel == "rowwise":
        if projections:
            raise QuantizationError("the rowwise kernel is 8-bit throughout; 8-bit projections mix MatMulNBits bits")
        linear = quantize_rowwise_int8(model, projection_matmuls(model, two_pass, "to read in two passes"))
        if two_pass:
            linear["two_pass"]["projections"] = list(two_pass)
        return model, linear
    if two_pass:
        raise QuantizationError("two-pass activations are the rowwise kernel's; MatMulNBits quantizes them in blocks")
    wide: dict[str, Any] | None = None
    if projections and bits != 8:
        names = projection_matmuls(model, projections)
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in names]
        wide = quantize_nbits(model, bits=8, block_size=wide_block, symmetric=symmetric,
                              accuracy_level=accuracy_level, method="rtn", exclude=others)
        model = wide.pop("model")
    linear = quantize_nbits(model, bits=bits, block_size=block_size, symmetric=symmetric,
                            accuracy_level=accuracy_level, method=method)
    model = linear.pop("model")
    if wide is not None:
        linear["eight_bit"] = {"projections": list(projections), "block_size": wide_block, "count": wide["count"],
                               "rounding": "rtn"}
    return model, linear


def projection_matmuls(model: onnx.ModelProto, projections: tuple[str, ...], purpose: str = "to keep at 8 bits"
                       ) -> set[str]:
    """The names of the MatMuls of `projections` (their node names hold /k_proj/ …, as the tracer scopes them);
    refuses a projection the graph does not have, or one of its MatMuls without a constant weight."""
    consts = {t.name for t in model.graph.initializer}
    names: set[str] = set()
    for projection in projections:
        found = [n for n in model.graph.node if n.op_type == "MatMul" and f"/{projection}/" in n.name]
        if not found or any(n.input[1] not in consts for n in found):
            raise QuantizationError(f"the graph has no MatMul of {projection} with a constant weight {purpose}; "
                                    "name projections as the checkpoint does (q_proj, k_proj, …)")
        names.update(n.name for n in found)
    return names


def quantize_embedding(model: onnx.ModelProto, bits: int | None, block: int | None) -> dict[str, Any] | None:
    """The embedding table: `bits` in blocks of `block`, or int8 per row when `block` is None; kept when `bits`
    is None."""
    if bits == 4 or (bits == 8 and block):
        return quantize_embedding_blocks(model, block or EMBEDDING_BLOCK, bits=bits)
    if bits == 8:
        return quantize_embedding_rows(model)
    return None


def quantize_nbits(model: onnx.ModelProto, *, bits: int, block_size: int, symmetric: bool, accuracy_level: int,
                   method: str, exclude: list[str] | None = None) -> dict[str, Any]:
    """Every MatMul with a constant weight, but those named in `exclude`, → MatMulNBits; returns the scheme,
    with the new model under "model"."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

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
    before = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level,
        op_types_to_quantize=("MatMul",), algo_config=algo, nodes_to_exclude=exclude,
    )
    quantizer.process()
    model = quantizer.model.model
    if method == "hqq" and accuracy_level:
        for node in model.graph.node:
            if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
                node.attribute.append(helper.make_attribute("accuracy_level", accuracy_level))
    quantized = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits") - before
    if quantized == 0:
        raise QuantizationError("the graph has no MatMul with a constant 2-D weight to quantize")
    return {
        "model": model,
        "op": "MatMulNBits",
        "bits": bits,
        "block_size": block_size,
        "symmetric": symmetric if method == "rtn" else False,
        "rounding": method,
        "accuracy_level": accuracy_level,
        "activations": "int8 per block (VNNI kernels)" if accuracy_level == 4 else "float",
        "count": quantized,
    }


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


def quantize_embedding_blocks(model: onnx.ModelProto, block_size: int, bits: int = 4,
                              rows_of: Callable[[int, int], np.ndarray] | None = None) -> dict[str, Any]:
    """Replace the embedding Gather by onnxruntime's GatherBlockQuantized: `bits` (4 or 8), blocks along the row.

    Asymmetric, one scale and zero point per block of `block_size`, the range stretched to include 0: so no
    row's largest element decides the precision of its other blocks. At 4 bits the numbers are those of
    onnxruntime's own Gather quantizer (tests/test_quant.py checks they are equal), which cannot be used
    here: it stores ONNX INT4 tensors and so raises the model to opset 21, which breaks the opset-17 ops
    the TorchScript exporter writes (ReduceMean with an axes attribute). This packs 4-bit values two to a
    uint8, which GatherBlockQuantized reads at any opset; 8-bit values are plain uint8 (onnxruntime's
    kernel takes no int8 data).

    `rows_of(start, stop)` gives the table's rows when they are not in the initializer (the streamed export
    reads them from the checkpoint a chunk at a time); the initializer then only needs its dims.
    """
    if bits not in (4, 8):
        raise QuantizationError(f"embedding bits must be 4 or 8, got {bits}")
    graph = model.graph
    node = _embedding_gather(graph)
    init = next(t for t in graph.initializer if t.name == node.input[0])
    rows, cols = init.dims
    block_size = min(block_size, cols)  # a row narrower than a block is one block
    if cols % block_size:
        raise QuantizationError(f"embedding width ({cols}) is not a multiple of the block size ({block_size})")
    if rows_of is None:
        table = numpy_helper.to_array(init)

        def rows_of(start: int, stop: int) -> np.ndarray:
            return table[start:stop]

    parts = [embedding_blocks(rows_of(start, min(start + EMBEDDING_CHUNK, rows)), block_size, bits)
             for start in range(0, rows, EMBEDDING_CHUNK)]
    q, scale, zp = (np.concatenate(p) for p in zip(*parts))
    del parts
    base = node.input[0]
    graph.initializer.remove(init)
    graph.initializer.extend(
        [
            numpy_helper.from_array(q, f"{base}_q{bits}"),
            numpy_helper.from_array(scale, f"{base}_scales"),
            numpy_helper.from_array(zp, f"{base}_zp{bits}"),
        ]
    )
    new = helper.make_node(
        "GatherBlockQuantized",
        [f"{base}_q{bits}", node.input[1], f"{base}_scales", f"{base}_zp{bits}"],
        [node.output[0]],
        name=f"{node.name}_q{bits}",
        domain="com.microsoft",
        gather_axis=0,
        quantize_axis=1,
        block_size=block_size,
        bits=bits,
    )
    _replace(graph, node, [new])
    _use_contrib_ops(model)
    return {"op": "GatherBlockQuantized", "bits": bits, "block_size": block_size, "symmetric": False, "rows": rows}


def embedding_blocks(table: np.ndarray, block_size: int, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of an embedding table as GatherBlockQuantized stores them: (values, scales, zero points), 4-bit
    values and zero points packed two to a byte. Row by row the same whatever rows it is given."""
    rows, cols = table.shape
    top = 2**bits - 1
    blocks = table.astype(np.float32).reshape(rows, cols // block_size, block_size)
    lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)  # 0 in range: zero point in [0, top]
    scale = np.maximum((hi - lo) / top, 1e-12).astype(np.float32)
    zero = np.clip(np.rint(-lo / scale), 0, top).astype(np.uint8)
    q = np.clip(np.rint(blocks / scale[..., None]) + zero[..., None], 0, top).astype(np.uint8).reshape(rows, cols)
    zp = zero.reshape(rows, -1)
    if bits == 4:
        q = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
        zp = np.pad(zp, ((0, 0), (0, zp.shape[1] % 2)))
        zp = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    return q, scale, zp


def quantize_rowwise_int8(model: onnx.ModelProto, two_pass: set[str] = frozenset()) -> dict[str, Any]:
    """Every MatMul with a constant 2-D weight → int8 activations with one scale per row (token) × int8
    weights with one scale per output column, on onnxruntime's integer GEMM (MatMulIntegerToFloat).

    A row's scale is max|x| of that row / 127, so a row's result never depends on the other rows of the
    batch (which per-tensor scales, as in quantize_dynamic, do). The values are stored as uint8 around a
    zero point of 128: onnxruntime's u8×s8 kernels are the fast ones. Inputs read by several layers (q/k/v,
    gate/up) are quantized once. Outliers must be gone first (rotation, smoothing): one scale spans a row.

    The MatMuls named in `two_pass` read their activations in two int8 passes (residual_rows): the row, then
    what its rounding left, each on the integer GEMM with the same weights, summed: about 15 bits of
    activation for twice these layers' multiply-adds.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    targets = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]
    if not targets:
        raise QuantizationError("the graph has no MatMul with a constant 2-D weight to quantize")
    consts = {
        "rq_tiny": np.array(1e-30, dtype=np.float32), "rq_qmax": np.array(127.0, dtype=np.float32),
        "rq_zp": np.array(128, dtype=np.uint8), "rq_flat": np.array([-1], dtype=np.int64),
        "rq_zero": np.array([0], dtype=np.int64), "rq_last": np.array([-1], dtype=np.int64),
        "rq_half_step": np.array(1 / 254, dtype=np.float32),  # a residual's scale: ±s/2 onto ±127
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    quantized: dict[str, tuple[str, str, str, str]] = {}  # input → (x_q, row scales, output shape prefix)
    residuals: dict[str, tuple[str, str]] = {}  # input → (its rounding residual's codes, their row scales)
    for index, node in enumerate(targets):
        x, weight = node.input[0], inits[node.input[1]]
        w = numpy_helper.to_array(weight).astype(np.float32)  # [K, N]
        k, n = w.shape
        w_scale = np.maximum(np.abs(w).max(axis=0) / 127.0, 1e-30).astype(np.float32)
        w_q = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)
        graph.initializer.remove(weight)
        p = f"rq{index}"
        graph.initializer.extend([numpy_helper.from_array(w_q, f"{p}_w_q"), numpy_helper.from_array(w_scale, f"{p}_w_s"),
                                  numpy_helper.from_array(np.array([-1, k], dtype=np.int64), f"{p}_k_shape"),
                                  numpy_helper.from_array(np.array([n], dtype=np.int64), f"{p}_n")])
        new = []
        if x not in quantized:
            q = f"rqx{len(quantized)}"
            new += [
                helper.make_node("Reshape", [x, f"{p}_k_shape"], [f"{q}_2d"], name=f"{q}_reshape"),
                helper.make_node("Abs", [f"{q}_2d"], [f"{q}_abs"], name=f"{q}_abs"),
                helper.make_node("ReduceMax", [f"{q}_abs"], [f"{q}_max"], name=f"{q}_max", axes=[-1], keepdims=1),
                helper.make_node("Max", [f"{q}_max", "rq_tiny"], [f"{q}_max1"], name=f"{q}_guard"),
                helper.make_node("Div", [f"{q}_max1", "rq_qmax"], [f"{q}_s"], name=f"{q}_scale"),  # [M, 1]
                helper.make_node("Reshape", [f"{q}_s", "rq_flat"], [f"{q}_s1"], name=f"{q}_scale_1d"),
                helper.make_node("Shape", [f"{q}_s1"], [f"{q}_m"], name=f"{q}_rows"),
                helper.make_node("Expand", ["rq_zp", f"{q}_m"], [f"{q}_zp"], name=f"{q}_zero_points"),
                helper.make_node("QuantizeLinear", [f"{q}_2d", f"{q}_s1", f"{q}_zp"], [f"{q}_q"], name=f"{q}_quantize",
                                 axis=0),
                helper.make_node("Shape", [x], [f"{q}_shape"], name=f"{q}_shape"),
                helper.make_node("Slice", [f"{q}_shape", "rq_zero", "rq_last"], [f"{q}_lead"], name=f"{q}_lead"),
            ]
            quantized[x] = (f"{q}_q", f"{q}_s", f"{q}_lead")
        x_q, rows, lead = quantized[x]
        out = node.output[0]
        two = node.name in two_pass  # the row's pass and its residual's, one GEMM each on the same weights, summed
        new.append(helper.make_node("MatMulIntegerToFloat", [x_q, f"{p}_w_q", rows, f"{p}_w_s", "rq_zp"],
                                    [f"{p}_y_first" if two else f"{p}_y2d"], name=f"{p}_gemm", domain="com.microsoft"))
        if two:
            if x not in residuals:
                r = f"rqr{len(residuals)}"
                new += residual_rows(x_q.removesuffix("_q"), r)
                residuals[x] = (f"{r}_rq", f"{r}_rs")
            residual_q, residual_scales = residuals[x]
            new += [helper.make_node("MatMulIntegerToFloat",
                                     [residual_q, f"{p}_w_q", residual_scales, f"{p}_w_s", "rq_zp"],
                                     [f"{p}_y_residual"], name=f"{p}_gemm_residual", domain="com.microsoft"),
                    helper.make_node("Add", [f"{p}_y_first", f"{p}_y_residual"], [f"{p}_y2d"], name=f"{p}_sum")]
        new += [
            helper.make_node("Concat", [lead, f"{p}_n"], [f"{p}_shape"], name=f"{p}_shape", axis=0),
            helper.make_node("Reshape", [f"{p}_y2d", f"{p}_shape"], [out], name=f"{p}_reshape"),
        ]
        _replace(graph, node, new)
    _use_contrib_ops(model)
    scheme = {"op": "MatMulIntegerToFloat", "bits": 8, "weights": "int8 per output column, symmetric",
              "activations": "int8 per row (token), symmetric, computed in the graph", "count": len(targets)}
    if two_pass:
        scheme["two_pass"] = {"count": len(two_pass & {n.name for n in targets}),
                              "activations": "int8 per row, then the row's rounding residual at 1/254 of its step"}
    return scheme


def residual_rows(q: str, r: str) -> list[onnx.NodeProto]:
    """Nodes that quantize a row-quantized input's rounding residual: `q`_2d its float rows [M, K], `q`_q their
    uint8 codes around 128 at the per-row scales `q`_s [M, 1] / `q`_s1 [M] (zero points `q`_zp) → `r`_rq, the
    residual's uint8 codes, and `r`_rs [M, 1] its scales. A row's residual lies within half its step, ±s/2, so
    its scale is s / 254, with no reduction over the row; rows stay independent of each other."""
    return [
        helper.make_node("DequantizeLinear", [f"{q}_q", f"{q}_s1", f"{q}_zp"], [f"{r}_first"], name=f"{r}_first",
                         axis=0),
        helper.make_node("Sub", [f"{q}_2d", f"{r}_first"], [f"{r}_res"], name=f"{r}_residual"),
        helper.make_node("Mul", [f"{q}_s", "rq_half_step"], [f"{r}_rs"], name=f"{r}_scale"),  # [M, 1]
        helper.make_node("Mul", [f"{q}_s1", "rq_half_step"], [f"{r}_rs1"], name=f"{r}_scale_1d"),  # [M]
        helper.make_node("QuantizeLinear", [f"{r}_res", f"{r}_rs1", f"{q}_zp"], [f"{r}_rq"], name=f"{r}_quantize",
                         axis=0),
    ]


def _use_contrib_ops(model: onnx.ModelProto) -> None:
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


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
