"""Which onnxruntime int8 GEMM for the int8 artifacts: one linear layer y = x @ W on the CPU, variant by variant.

    python benchmarks/kernels.py [--m 256 4096] [--repeat 10] [--out benchmarks/results]
    python benchmarks/kernels.py --shapes q/k/v --m 430 --repeat 20 --out out/kernels   # what float q/k/v costs
    python benchmarks/kernels.py --variants rowq_mitf_u8 nbits8_b32 nbits4_b32 nbits4_b128 --m 256   # int4 vs int8

Each variant is a tiny in-memory ONNX graph holding one [K, N] weight, fed x [M, K] float32, run by onnxruntime's
CPU provider with 2 intra-op threads (inter-op 1, sequential, ORT_ENABLE_ALL), on the Qwen3-0.6B layer shapes
gate/up 1024x3072, down 3072x1024, q 1024x2048, o 2048x1024 (`--shapes` picks; q/k/v 1024x4096 on request).
Variants:

  fp32          MatMul (baseline)
  dqmm          quantize_dynamic(per_channel=True): one uint8 scale + zero point for the whole activation tensor,
                int8 per-column weights (onnxruntime fuses it into DynamicQuantizeMatMul)
  nbits8_bB     MatMulNBits, 8-bit symmetric weights in blocks of B along K, accuracy_level 4 (activations
                quantized to int8 inside the kernel, per row and per block of B); B = 32, 128, 256 and K's largest
                power-of-two divisor (bK)
  nbits8_b32_float  the same at blocks of 32 with accuracy_level 0: float activations, int8 weights
  nbits4_bB     MatMulNBits, 4-bit asymmetric weights in blocks of B (the int4 preset's at B = 32), accuracy_level 4
  rowq_mmi_u8   per-row int8 from standard ops: s = max|x_row|/127, QuantizeLinear(axis 0, zero point 128, uint8),
                MatMulInteger with int8 per-column weights, Cast, x row scales, x column scales
  rowq_mmi_s8   the same with x quantized to int8 (zero point 0): MatMulInteger int8 x int8
  rowq_mitf_u8  the same quantization, then com.microsoft MatMulIntegerToFloat(a_scale = row scales [M,1],
  rowq_mitf_s8  b_scale = column scales [N]): the Cast and both Muls fused into the GEMM's output stage

Reported per variant, shape and M: median ms over --repeat runs after warm-up (io-binding, preallocated output),
GFLOP/s = 2*M*K*N/time, max relative error max|y - y_ref| / max|y_ref| against a float64 reference, on Gaussian x
and on Gaussian x with 4 channels 50x larger (outliers), and batch independence: row 0's output when run inside
[M, K] against run alone (M=1) and in the first 7 rows (M=7). The per-row graphs are also checked against a numpy
emulation of per-row (and, for contrast, per-tensor) quantization. Writes kernels.json and kernels.md.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SHAPES = {"gate/up": (1024, 3072), "down": (3072, 1024), "q": (1024, 2048), "o": (2048, 1024)}
# on request (--shapes): q, k and v of one input as one weight, the same multiply-adds as the three, the input
# quantized once as the artifacts do
EXTRA_SHAPES = {"q/k/v": (1024, 4096)}
THREADS = 2
OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
BATCH_CHECK = (1, 7)
WARMUP = 2
SLOW = 3  # a variant this many times slower than fp32 at one M is not timed at the larger ones (time budget)


# ---------------------------------------------------------------- graphs (one function per variant)

def _model(nodes, K, N, inits, doc="") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])], inits)
    model = helper.make_model(graph, opset_imports=OPSETS)
    model.doc_string = doc
    return model


def _quant_columns(W):
    """int8 per-column symmetric weights [K, N] and their scales [N]."""
    scale = np.maximum(np.abs(W).max(axis=0), 1e-30).astype(np.float32) / np.float32(127)
    return np.clip(np.rint(W / scale), -127, 127).astype(np.int8), scale


def fp32_matmul(W) -> onnx.ModelProto:
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"])], *W.shape, [numpy_helper.from_array(W, "W")])


def dqmm(W) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        onnx.save(fp32_matmul(W), src)
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
        return onnx.load(dst)


def matmul_nbits(W, block, level=4, bits=8, symmetric=True) -> onnx.ModelProto:
    """MatMulNBitsQuantizer's graph at `accuracy_level` `level` (4: int8 activations per block, 0: float
    activations); where the quantizer refuses the block size, the same node built by hand (8-bit symmetric)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    cfg = DefaultWeightOnlyQuantConfig(bits=bits, block_size=block, is_symmetric=symmetric, accuracy_level=level)
    try:
        quantizer = MatMulNBitsQuantizer(fp32_matmul(W), algo_config=cfg)
        quantizer.process()
        return quantizer.model.model
    except Exception as exc:  # noqa: BLE001 - the message is the finding
        if (bits, symmetric) != (8, True):
            raise
        refusal = f"MatMulNBitsQuantizer refused block_size={block}: {str(exc).strip()}"
    K, N = W.shape
    blocks = W.T.reshape(N, K // block, block)  # [N, blocks, block]: the node's layout, weights stored +128
    scale = np.maximum(np.abs(blocks).max(axis=-1), 1e-30).astype(np.float32) / np.float32(127)
    q = (np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
    node = helper.make_node("MatMulNBits", ["x", "W_q", "W_s"], ["y"], domain="com.microsoft",
                            K=K, N=N, bits=8, block_size=block, accuracy_level=level)
    inits = [numpy_helper.from_array(q, "W_q"), numpy_helper.from_array(scale.reshape(-1), "W_s")]
    return _model([node], K, N, inits, doc="hand-built node; " + refusal)


def _row_quant(signed):
    """Nodes x -> x_q [M, K] (uint8 zero point 128, or int8 zero point 0) and s [M, 1], one scale per row."""
    zp_dtype = np.int8 if signed else np.uint8
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "axis_last"),
             numpy_helper.from_array(np.array(1e-30, np.float32), "tiny"),
             numpy_helper.from_array(np.array(127, np.float32), "qmax"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat"),
             numpy_helper.from_array(np.array(0 if signed else 128, zp_dtype), "zp")]
    nodes = [helper.make_node("Abs", ["x"], ["x_abs"]),
             helper.make_node("ReduceMax", ["x_abs", "axis_last"], ["x_max"], keepdims=1),
             helper.make_node("Max", ["x_max", "tiny"], ["x_max_g"]),
             helper.make_node("Div", ["x_max_g", "qmax"], ["s"]),                 # [M, 1]
             helper.make_node("Reshape", ["s", "flat"], ["s_1d"]),                # [M]
             helper.make_node("Shape", ["s_1d"], ["m_shape"]),
             helper.make_node("Expand", ["zp", "m_shape"], ["zp_1d"]),            # [M] zero points
             helper.make_node("QuantizeLinear", ["x", "s_1d", "zp_1d"], ["x_q"], axis=0)]
    return nodes, inits


def rowq_mmi(W, signed) -> onnx.ModelProto:
    nodes, inits = _row_quant(signed)
    w_q, w_s = _quant_columns(W)
    inits += [numpy_helper.from_array(w_q, "W_q"), numpy_helper.from_array(w_s[None, :], "W_s")]
    mmi_inputs = ["x_q", "W_q"] if signed else ["x_q", "W_q", "zp"]
    nodes += [helper.make_node("MatMulInteger", mmi_inputs, ["acc"]),
              helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["acc_f", "s"], ["y_rows"]),
              helper.make_node("Mul", ["y_rows", "W_s"], ["y"])]
    return _model(nodes, *W.shape, inits)


def rowq_mitf(W, signed) -> onnx.ModelProto:
    nodes, inits = _row_quant(signed)
    w_q, w_s = _quant_columns(W)
    inits += [numpy_helper.from_array(w_q, "W_q"), numpy_helper.from_array(w_s, "W_s")]
    nodes.append(helper.make_node("MatMulIntegerToFloat", ["x_q", "W_q", "s", "W_s", "zp"], ["y"],
                                  domain="com.microsoft"))
    return _model(nodes, *W.shape, inits)


def _pow2_divisor(k):
    return k & -k


VARIANTS = {  # name -> (builder(W), activation-scale granularity)
    "fp32": (fp32_matmul, "-"),
    "dqmm": (dqmm, "tensor"),
    "nbits8_b32": (lambda W: matmul_nbits(W, 32), "row x 32"),
    "nbits8_b128": (lambda W: matmul_nbits(W, 128), "row x 128"),
    "nbits8_b256": (lambda W: matmul_nbits(W, 256), "row x 256"),
    "nbits8_bK": (lambda W: matmul_nbits(W, _pow2_divisor(W.shape[0])), "row x pow2|K"),
    "nbits8_b32_float": (lambda W: matmul_nbits(W, 32, level=0), "float"),
    "nbits4_b32": (lambda W: matmul_nbits(W, 32, bits=4, symmetric=False), "row x 32"),
    "nbits4_b128": (lambda W: matmul_nbits(W, 128, bits=4, symmetric=False), "row x 128"),
    "rowq_mmi_u8": (lambda W: rowq_mmi(W, False), "row"),
    "rowq_mmi_s8": (lambda W: rowq_mmi(W, True), "row"),
    "rowq_mitf_u8": (lambda W: rowq_mitf(W, False), "row"),
    "rowq_mitf_s8": (lambda W: rowq_mitf(W, True), "row"),
}


# ---------------------------------------------------------------- running

def session(model, optimized_path=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def optimized_ops(model):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "opt.onnx")
        session(model, path)
        return [n.op_type for n in onnx.load(path).graph.node]


def time_interleaved(sessions, x, N, repeat):
    """Per-variant run times (ms) and outputs for input x. Runs go round-robin over the variants so that load
    from outside (the cores are shared) falls on every variant alike; io-binding, preallocated outputs."""
    bound, failed = {}, {}
    for name, sess in sessions.items():
        io = sess.io_binding()
        io.bind_cpu_input("x", x)
        y = ort.OrtValue.ortvalue_from_shape_and_type([x.shape[0], N], np.float32)
        io.bind_ortvalue_output("y", y)
        try:
            for _ in range(WARMUP):
                sess.run_with_iobinding(io)
            bound[name] = (io, y)
        except Exception as exc:  # noqa: BLE001
            failed[name] = " ".join(str(exc).split())
    times = {name: [] for name in bound}
    for _ in range(repeat):
        for name, (io, _) in bound.items():
            t0 = time.perf_counter()
            sessions[name].run_with_iobinding(io)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times, {name: y.numpy() for name, (_, y) in bound.items()}, failed


def rel_err(y, ref):
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def emulate(x, W, per_row):
    """numpy per-row (or per-tensor) symmetric int8 activations x int8 per-column weights, the graph's op order."""
    w_q, w_s = _quant_columns(W)
    amax = np.abs(x).max(axis=1, keepdims=True) if per_row else np.full((x.shape[0], 1), np.abs(x).max())
    s = np.maximum(amax, np.float32(1e-30)).astype(np.float32) / np.float32(127)
    x_q = np.clip(np.rint(x / s), -127, 127)
    acc = (x_q.astype(np.float64) @ w_q.astype(np.float64)).astype(np.float32)  # exact integers, then rounded
    return acc * s * w_s[None, :]


def probe_support():
    """Which integer-GEMM type combinations and scale shapes this onnxruntime accepts (tiny graphs)."""
    M, K, N = 4, 32, 8
    found = {}

    def attempt(label, nodes, in_type, inits, feeds, extra_inputs=()):
        inputs = [helper.make_tensor_value_info("a", in_type, [M, K])] + list(extra_inputs)
        out_type = TensorProto.INT32 if nodes[0].op_type == "MatMulInteger" else TensorProto.FLOAT
        g = helper.make_graph(nodes, "p", inputs, [helper.make_tensor_value_info("y", out_type, None)], inits)
        try:
            sess = session(helper.make_model(g, opset_imports=OPSETS))
            sess.run(None, feeds)
            found[label] = "ok"
        except Exception as exc:  # noqa: BLE001
            found[label] = " ".join(str(exc).split())

    for a_t, a_np in ((TensorProto.UINT8, np.uint8), (TensorProto.INT8, np.int8)):
        for b_np in (np.int8, np.uint8):
            attempt(f"MatMulInteger {np.dtype(a_np).name} x {np.dtype(b_np).name}",
                    [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], a_t,
                    [numpy_helper.from_array(np.ones((K, N), b_np), "b")], {"a": np.ones((M, K), a_np)})
        attempt(f"MatMulIntegerToFloat {np.dtype(a_np).name} x int8, a_scale [M,1]",
                [helper.make_node("MatMulIntegerToFloat", ["a", "b", "as", "bs"], ["y"], domain="com.microsoft")],
                a_t, [numpy_helper.from_array(np.ones((K, N), np.int8), "b"),
                      numpy_helper.from_array(np.ones(N, np.float32), "bs")],
                {"a": np.ones((M, K), a_np), "as": np.ones((M, 1), np.float32)},
                [helper.make_tensor_value_info("as", TensorProto.FLOAT, [M, 1])])
    attempt("MatMulIntegerToFloat uint8 x int8, a_scale [M] (1-D)",
            [helper.make_node("MatMulIntegerToFloat", ["a", "b", "as", "bs"], ["y"], domain="com.microsoft")],
            TensorProto.UINT8, [numpy_helper.from_array(np.ones((K, N), np.int8), "b"),
                                numpy_helper.from_array(np.ones(N, np.float32), "bs")],
            {"a": np.ones((M, K), np.uint8), "as": np.ones(M, np.float32)},
            [helper.make_tensor_value_info("as", TensorProto.FLOAT, [M])])
    return found


def machine_info():
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
    return {"cpu": cpu, "cpus": os.cpu_count(), "intra_op_threads": THREADS,
            "loadavg_start": round(os.getloadavg()[0], 2),
            "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16") if f in flags],
            "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


# ---------------------------------------------------------------- main

def bench_shape(shape_name, K, N, ms, repeat, rng):
    W = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    gauss = rng.standard_normal((max(ms), K)).astype(np.float32)
    outl = gauss.copy()
    outl[:, rng.choice(K, 4, replace=False)] *= 50
    sessions, info = {}, {}
    for name, (build, gran) in VARIANTS.items():
        t0 = time.perf_counter()
        try:
            model = build(W)
            sessions[name] = session(model)
            info[name] = {"granularity": gran, "ops": [n.op_type for n in model.graph.node],
                          "note": model.doc_string, "build_s": round(time.perf_counter() - t0, 2)}
            if name.startswith("rowq"):  # is it really per-row? compare with numpy emulations
                m0 = min(ms)
                y = sessions[name].run(None, {"x": outl[:m0]})[0]
                info[name]["vs_emulation_per_row"] = rel_err(y, emulate(outl[:m0], W, True))
                info[name]["vs_emulation_per_tensor"] = rel_err(y, emulate(outl[:m0], W, False))
        except Exception as exc:  # noqa: BLE001
            info[name] = {"granularity": gran, "error": " ".join(str(exc).split())}
    row0 = {name: {m: s.run(None, {"x": outl[:m]})[0][0] for m in BATCH_CHECK} for name, s in sessions.items()}
    rows, skip = [], {}
    refs = {k: v.astype(np.float64) @ W.astype(np.float64) for k, v in (("gauss", gauss), ("outl", outl))}
    for m in ms:
        base = {"shape": shape_name, "K": K, "N": N, "M": m}
        rows += [{**base, "variant": name, "skipped": why} for name, why in skip.items()]
        active = {name: sess for name, sess in sessions.items() if name not in skip}
        times, outs, failed = time_interleaved(active, gauss[:m], N, repeat)
        rows += [{**base, "variant": name, "error": msg} for name, msg in failed.items()]
        for name, ts in times.items():
            med = statistics.median(ts)
            y_o = sessions[name].run(None, {"x": outl[:m]})[0]
            deltas = {b: float(np.abs(y_o[0] - row0[name][b]).max()) for b in BATCH_CHECK}
            rows.append({**base, "variant": name, "granularity": info[name]["granularity"], "ms_median": med,
                         "ms_min": min(ts), "gflops": 2 * m * K * N / med / 1e6,
                         "rel_err_outliers": rel_err(y_o, refs["outl"][:m]),
                         "rel_err_gauss": rel_err(outs[name], refs["gauss"][:m]), "row0_delta": deltas,
                         "bit_exact": all(d == 0.0 for d in deltas.values())})
            print(f"  {shape_name:7s} M={m:5d} {name:13s} {med:9.2f} ms {rows[-1]['gflops']:7.1f} GFLOP/s", flush=True)
        base_ms = statistics.median(times["fp32"]) if "fp32" in times else float("inf")
        for name, ts in times.items():
            if statistics.median(ts) > SLOW * base_ms:
                skip[name] = f"skipped: {statistics.median(ts) / base_ms:.0f}x fp32's time at M={m}"
    return rows, info


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def markdown(result):
    mi = result["machine"]
    out = ["# One linear layer, onnxruntime CPU GEMM variants", "",
           f"CPU: {mi['cpu']} ({mi['cpus']} logical CPUs, ISA: {', '.join(mi['isa'])}); "
           f"onnxruntime {mi['onnxruntime']}, onnx {mi['onnx']}, numpy {mi['numpy']}; "
           f"{mi['intra_op_threads']} intra-op threads; median of {result['repeat']} runs after {WARMUP} warm-up.",
           "", "rel err = max|y - y_ref| / max|y_ref| against float64 (outliers: 4 channels x50). "
           "row-0 max|Δ|: row 0's output inside [M, K] against the same row run alone (M=1) / in 7 rows (M=7).", "",
           f"Load average (1 min) at start / end: {mi['loadavg_start']} / {result['loadavg_end']} "
           "(another job shares the cores: the medians carry its noise; ms min is the best run). "
           f"A variant over {SLOW}x fp32's time at one M is not timed at the larger ones.", "",
           "| shape (KxN) | M | variant | act. scales | ms | ms min | GFLOP/s | rel err outliers | rel err gauss "
           "| row-0 max|Δ| vs M=1 / M=7 | bit-exact |",
           "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in result["rows"]:
        head = f"| {r['shape']} {r['K']}x{r['N']} | {r['M']} | {r['variant']} |"
        if "error" in r or "skipped" in r:
            out.append(f"{head} {r.get('skipped') or 'error: ' + r['error']} |" + " |" * 7)
            continue
        d = r["row0_delta"]
        out.append(f"{head} {r['granularity']} | {r['ms_median']:.2f} | {r['ms_min']:.2f} | {r['gflops']:.1f} | "
                   f"{r['rel_err_outliers']:.2e} | {r['rel_err_gauss']:.2e} | {d['1']:.1e} / {d['7']:.1e} | "
                   f"{'yes' if r['bit_exact'] else 'no'} |")
    out += ["", f"## Whole layer (sum over the shapes: {', '.join(result['shapes'])})", "",
            "| M | variant | act. scales | ms | GFLOP/s | bit-exact on every shape |",
            "| ---: | --- | --- | ---: | ---: | --- |"]
    for s in result["summary"]:
        out.append(f"| {s['M']} | {s['variant']} | {s['granularity']} | {s['ms']:.1f} | {s['gflops']:.1f} | "
                   f"{'yes' if s['bit_exact'] else 'no'} |")
    for m in sorted({x["M"] for x in result["summary"]}):
        per_row = [x for x in result["summary"] if x["M"] == m and x["granularity"].startswith("row")]
        if per_row:
            best = min(per_row, key=lambda x: x["ms"])
            out.append(f"\nFastest variant with per-row activation scales at M={m}: **{best['variant']}**, "
                       f"{best['gflops']:.0f} GFLOP/s over the layer, bit-exact under batch changes: "
                       f"{'yes' if best['bit_exact'] else 'no'}.")
    out += ["", "## Graphs", "", "| variant | ops built | ops after ORT_ENABLE_ALL | vs per-row emulation "
            "| vs per-tensor emulation | note |", "| --- | --- | --- | ---: | ---: | --- |"]
    for name, g in result["graphs"].items():
        out.append(f"| {name} | {' '.join(g.get('ops', []))} | {' '.join(g.get('optimized_ops', []))} | "
                   f"{fmt(g.get('vs_emulation_per_row', ''), '.1e')} | "
                   f"{fmt(g.get('vs_emulation_per_tensor', ''), '.1e')} | {g.get('note') or g.get('error', '')} |")
    out += ["", "## What this onnxruntime accepts", ""]
    out += [f"- {k}: {v}" for k, v in result["support"].items()]
    return "\n".join(out) + "\n"


def summarize(rows, shapes):
    summary = []
    for m in sorted({r["M"] for r in rows}):
        for name, (_, gran) in VARIANTS.items():
            rs = [r for r in rows if r["M"] == m and r["variant"] == name and "ms_median" in r]
            if len(rs) != len(shapes):
                continue
            ms_total = sum(r["ms_median"] for r in rs)
            flop = sum(2 * r["M"] * r["K"] * r["N"] for r in rs)
            summary.append({"M": m, "variant": name, "granularity": gran, "ms": ms_total,
                            "gflops": flop / ms_total / 1e6, "bit_exact": all(r["bit_exact"] for r in rs)})
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, nargs="+", default=[256, 4096], help="token counts (rows of x)")
    ap.add_argument("--repeat", type=int, default=10, help="timed runs per point (median reported)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--shapes", nargs="+", choices=[*SHAPES, *EXTRA_SHAPES], default=list(SHAPES),
                    help="layer shapes (default: the four of a 0.6B layer; q/k/v: the three projections of one input)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                    help="the variants to run (default: all)")
    args = ap.parse_args()
    for name in set(VARIANTS) - set(args.variants):
        del VARIANTS[name]
    logging.disable(logging.WARNING)  # quantize_dynamic's pre-processing advice, quantizer progress
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    shapes = {name: {**SHAPES, **EXTRA_SHAPES}[name] for name in args.shapes}
    result = {"machine": machine_info(), "repeat": args.repeat, "warmup": WARMUP, "m": args.m, "shapes": list(shapes),
              "support": probe_support(), "rows": [], "graphs": {}}
    for shape_name, (K, N) in shapes.items():
        rows, info = bench_shape(shape_name, K, N, args.m, args.repeat, rng)
        result["rows"] += rows
        for name, g in info.items():  # one entry per variant; worst emulation match over shapes
            kept = result["graphs"].setdefault(name, dict(g))
            for key in ("vs_emulation_per_row", "vs_emulation_per_tensor"):
                if key in g:
                    kept[key] = max(kept[key], g[key]) if key in kept else g[key]
    for name, g in result["graphs"].items():
        if "error" not in g:
            g["optimized_ops"] = optimized_ops(VARIANTS[name][0](np.ones((256, 64), np.float32)))
    result["summary"] = summarize(result["rows"], shapes)
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    for r in result["rows"]:  # JSON keys are strings; keep the Markdown reader on the same footing
        if "row0_delta" in r:
            r["row0_delta"] = {str(k): v for k, v in r["row0_delta"].items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (args.out / "kernels.md").write_text(md)
    print(md)
    print(f"{result['seconds']} s")


if __name__ == "__main__":
    main()
