"""What float activations at q/k/v would cost: the 0.6B shape's q, k and v projections (K 1024; N 2048, 1024,
1024) on one input, as fp32 MatMul, the int8 preset's rowwise kernel (MatMulIntegerToFloat), and MatMulNBits
8-bit blocks of 32 with float (accuracy_level 0) or int8 (4) activations; runs interleaved, 2 threads.

    python benchmarks/qkv_kernels.py 430 20        # M rows (2 documents x 215 tokens), rounds
"""
import logging
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto
logging.getLogger('onnxruntime.quantization').setLevel(logging.ERROR)
from qrr.quant.onnx_quant import quantize_rowwise_int8, quantize_nbits
M, K = int(sys.argv[1]), 1024
rng = np.random.default_rng(0)
def graph(Ns):
    nodes, inits, outs = [], [], []
    for i, N in enumerate(Ns):
        w = (rng.standard_normal((K, N)) * 0.02).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}"))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["M", N]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 8
    return m
Ns = [2048, 1024, 1024]
variants = {}
variants["fp32"] = graph(Ns)
m = graph(Ns); quantize_rowwise_int8(m); variants["rowwise"] = m
for lvl in (0, 4):
    m = graph(Ns); r = quantize_nbits(m, bits=8, block_size=32, symmetric=True, accuracy_level=lvl, method="rtn"); variants[f"nbits8_l{lvl}"] = r["model"]
so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1; so.log_severity_level = 3
sess = {k: ort.InferenceSession(v.SerializeToString(), so, providers=["CPUExecutionProvider"]) for k, v in variants.items()}
x = rng.standard_normal((M, K)).astype(np.float32)
times = {k: [] for k in sess}
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 20):
    for k, s in sess.items():
        a = time.perf_counter(); s.run(None, {"x": x}); times[k].append(time.perf_counter() - a)
flops = 2 * M * K * sum(Ns)
for k, t in times.items():
    t = sorted(t)[len(t) // 4]
    print(f"M={M} {k:12s} {t*1000:7.2f} ms  {flops/t/1e9:6.0f} GFLOP/s")
