"""What float activations at q/k/v would cost: the 0.6B shape's q, k and v projections (K 1024; N 2048, 1024,
1024) on one input, as fp32 MatMul, the int8 preset's rowwise kernel (MatMulIntegerToFloat), and MatMulNBits
8-bit blocks of 32 with float (accuracy_level 0) or int8 (4) activations; runs interleaved, 2 threads.

    python benchmarks/qkv_kernels.py --rows 430 --rounds 20        # 2 documents x 215 tokens
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

HIDDEN = 1024
WIDTHS = (2048, 1024, 1024)  # q, k, v of the 0.6B shape


def projections(rng):
    """One graph: x [M, 1024] → q, k, v with random fp32 weights."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outputs = [], [], []
    for i, n in enumerate(WIDTHS):
        weight = (rng.standard_normal((HIDDEN, n)) * 0.02).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}"))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["M", n]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", HIDDEN])
    model = helper.make_model(helper.make_graph(nodes, "qkv", [x], outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def variants(seed: int = 0) -> dict:
    """name → model: the same weights on each kernel."""
    from qrr.quant.onnx_quant import quantize_nbits, quantize_rowwise_int8

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    out = {"fp32": projections(np.random.default_rng(seed))}
    rowwise = projections(np.random.default_rng(seed))
    quantize_rowwise_int8(rowwise)
    out["rowwise"] = rowwise
    for level in (0, 4):
        model = projections(np.random.default_rng(seed))
        out[f"nbits8_level{level}"] = quantize_nbits(model, bits=8, block_size=32, symmetric=True,
                                                     accuracy_level=level, method="rtn")["model"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=430)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = args.threads, 1, 3
    sessions = {name: ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
                for name, model in variants().items()}
    x = np.random.default_rng(1).standard_normal((args.rows, HIDDEN)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"x": x})
            times[name].append(time.perf_counter() - start)
    flops = 2 * args.rows * HIDDEN * sum(WIDTHS)
    for name, runs in times.items():
        t = sorted(runs)[len(runs) // 4]  # lower quartile: the machine's quiet moments
        print(f"M={args.rows} {name:15s} {t * 1000:7.2f} ms  {flops / t / 1e9:6.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
