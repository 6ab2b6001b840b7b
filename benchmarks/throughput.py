"""Throughput against the peers, in one process and one run: workloads A, B, C on a 0.6B-shaped stand-in.

    python benchmarks/throughput.py --tokenizer ../shared/fixtures/qwen3-tokenizer --out benchmarks/results
    python benchmarks/throughput.py --engines recipe qrr-onnx-int8 --workloads A      # a subset

Engines (each skipped, with the reason in the table, when it cannot run here):
  recipe           the model card's transformers fp32 recipe as published (full vocabulary logits), batch 8
  recipe-keep1     the same with logits_to_keep=1
  optimum-fp32     `optimum-cli export onnx --task text-generation` on onnxruntime, the recipe around it
  optimum-int8     the same after onnxruntime's quantize_dynamic (what a user gets without us)
  genai-fp32/int8  openvino_genai.TextRerankPipeline on an `optimum-cli export openvino` folder
  llamacpp-q8_0    llama-cpp-python with a Q8_0 GGUF from llama.cpp's convert_hf_to_gguf.py (rank pooling)
  qrr-onnx-*       our artifacts, fp32, int8, int4 (qrr-openvino-* likewise once exported)

Peer models are made outside this process (their exporters pin their own transformers); the paths come
by flag, see benchmarks/peers.md. Each engine scores every workload once after a short warm-up;
it prints pairs/s, ms/pair, the process's peak RSS while the engine was loaded and scoring (cumulative: what
earlier engines left resident counts too) and its growth over the engine, the ratio to the recipe and
the share of the fp32 (torch) and int8 (onnxruntime DynamicQuantizeMatMul) GEMM peaks measured at the start,
and writes throughput.json, throughput.md and
throughput.png.

`--rounds N` measures instead in interleaved rounds, for a machine whose speed drifts between engines run one
after the other: every engine is loaded first, then round r has every engine score the same next
`--round-pairs` pairs of a workload, in an order shuffled per round. Speed is the median round time; each
engine's ratio to the recipe and to the fastest peer (the fastest engine that is neither qrr's nor the recipe)
is the median over rounds of the per-round ratio, so a slow spell falls on both sides of it. Peak RSS is
then the whole run's, and each engine's load growth is given beside it.

Work per pair is counted as the Qwen3 body's FLOPs on the pair's full prompt (2 × weights × tokens plus
causal attention), the same figure for every engine: qrr's prefix reuse shows as a higher share.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from peers import Skip
from common import ensure_artifact, ensure_standin, interleaved, median_ratio, save

Pair = tuple[str, str]
Scorer = Callable[[Sequence[Pair]], Sequence[float]]

ENGINES = ["recipe", "recipe-keep1", "optimum-fp32", "optimum-int8", "genai-fp32", "genai-int8", "llamacpp-q8_0",
           "qrr-onnx-fp32", "qrr-onnx-int8", "qrr-onnx-int8onepass", "qrr-onnx-int8gqa", "qrr-onnx-int8nbits",
           "qrr-onnx-int4", "qrr-openvino-fp32", "qrr-openvino-int8", "qrr-openvino-int4"]
# qrr artifacts other than a precision's preset: the name's last part → (precision, export options)
VARIANTS = {
    "int8nbits": ("int8", {"kernel": "matmulnbits"}),  # the previous int8 kernel, MatMulNBits blocks of 32
    "int8gqa": ("int8", {"attention": "gqa"}),  # the int8 preset attending with onnxruntime's GroupQueryAttention
    "int8onepass": ("int8", {"two_pass": ()}),  # the int8 preset with every activation in one int8 pass
}


def gemm_peak_gflops(threads: int) -> float:
    """Best fp32 GEMM rate of torch on this machine, 1024×1024 by 1024×3072 (a 0.6B MLP's shape)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 3072)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 1024 * 1024 * 3072 / best / 1e9


def int8_gemm_peak_gflops(threads: int, rows: int = 4096) -> float:
    """Best int8 GEMM rate of onnxruntime here: DynamicQuantizeMatMul (quantize_dynamic's op, one activation
    scale per tensor, the fastest integer kernel measured by kernels.py) on a 1024×3072 layer, `rows` rows."""
    import numpy as np

    import kernels

    kernels.THREADS = threads
    w = np.random.default_rng(0).standard_normal((1024, 3072)).astype(np.float32) * 0.02
    x = np.random.default_rng(1).standard_normal((rows, 1024)).astype(np.float32)
    times, _, failed = kernels.time_interleaved({"dqmm": kernels.session(kernels.dqmm(w))}, x, 3072, 10)
    if failed:
        raise RuntimeError(f"DynamicQuantizeMatMul did not run: {failed}")
    return 2 * rows * 1024 * 3072 / (min(times["dqmm"]) / 1000) / 1e9


def body_flops(config: dict, tokens: int) -> float:
    """Forward FLOPs of the Qwen3 body (no vocabulary head) on one sequence of `tokens` tokens."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") or h // heads
    weights = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * inter
    attention = 2 * heads * hd * tokens * (tokens + 1) / 2 * 2  # QK^T and PV over the causal half
    return layers * (2 * weights * tokens + attention)


# -- engines ------------------------------------------------------------------------------------------------

def load_recipe(args, keep: int | None) -> Scorer:
    import torch
    from qrr.export.checkpoint import resolve
    from qrr.export.reference import ReferenceScorer

    torch.set_num_threads(args.threads)
    scorer = ReferenceScorer(resolve(str(args.checkpoint)), logits_to_keep=keep)
    return scorer.score_pairs


def prepare_qrr(args, name: str) -> None:
    """Export the artifact an engine needs, before anything is measured."""
    _, fmt, precision = name.split("-")
    precision, options = VARIANTS.get(precision, (precision, {}))
    import importlib.util

    if fmt == "openvino" and importlib.util.find_spec("openvino") is None:
        raise Skip("openvino is not installed (pip install -e '.[openvino]' in the qrr clone)")
    ensure_artifact(args.checkpoint, args.work / name, format=fmt, precision=precision, **options)
    gc.collect()


def load_qrr(args, name: str) -> Scorer:
    from qrr.runtime import Reranker

    artifact = args.work / name
    if not (artifact / "qrr.json").is_file():
        raise Skip(f"{artifact} was not exported")
    return Reranker(artifact, threads=args.threads).score_pairs


def load_engine(name: str, args) -> Scorer:
    if name == "recipe":
        return load_recipe(args, None)
    if name == "recipe-keep1":
        return load_recipe(args, 1)
    if name.startswith("qrr-"):
        return load_qrr(args, name)
    import peers

    return peers.load(name, args)


# -- the run ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a Qwen3 reranker folder (default: make a 0.6B-shaped stand-in under --work)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="folder with the real Qwen3 tokenizer.json for the stand-in (default: a generated one)")
    parser.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    parser.add_argument("--workloads", nargs="+", default=["A", "B", "C"], choices=["A", "B", "C"])
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per workload (best kept)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="interleave the engines over this many rounds per workload (0: one engine after another)")
    parser.add_argument("--round-pairs", nargs="+", default=["8"], metavar="N|W=N",
                        help="pairs per round with --rounds: one number for every workload, or per workload (A=8 B=2)")
    parser.add_argument("--work", type=Path, default=Path("out/throughput"), help="stand-in and artifacts")
    parser.add_argument("--out", type=Path, default=Path("out/throughput"))
    parser.add_argument("--optimum-onnx", type=Path, default=None, help="folder of `optimum-cli export onnx`")
    parser.add_argument("--optimum-int8", type=Path, default=None, help="the same after quantize_dynamic")
    parser.add_argument("--genai", type=Path, default=None, help="`optimum-cli export openvino` folder, fp32 weights")
    parser.add_argument("--genai-int8", type=Path, default=None, help="the same with --weight-format int8")
    parser.add_argument("--gguf", type=Path, default=None, help="Q8_0 GGUF from convert_hf_to_gguf.py")
    args = parser.parse_args(argv)
    try:
        args.round_pairs = round_pairs(args.round_pairs, args.workloads)
    except ValueError as exc:
        parser.error(str(exc))

    from qrr.runtime.bench import WORKLOADS, make_workload
    from qrr.runtime.reranker import physical_cores
    from tokenizers import Tokenizer

    args.threads = args.threads or physical_cores()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.checkpoint is None:
        args.checkpoint = ensure_standin(args.work / "standin-0.6b", shape="0.6b", tokenizer=args.tokenizer)
    config = json.loads((args.checkpoint / "config.json").read_text())
    tok = Tokenizer.from_file(str(args.checkpoint / "tokenizer.json"))

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    from qrr.runtime.prompt import PREFIX, SUFFIX, pair_text

    fixed = count(PREFIX) + count(SUFFIX)
    workloads = {w: make_workload(w, count) for w in args.workloads}
    work = {w: sum(body_flops(config, fixed + count(pair_text(q, d))) for q, d in pairs)
            for w, pairs in workloads.items()}
    peak = gemm_peak_gflops(args.threads)
    peak8 = int8_gemm_peak_gflops(args.threads)
    print(f"GEMM peak {peak:.0f} GFLOP/s fp32 (torch), {peak8:.0f} int8 (onnxruntime) on {args.threads} threads",
          flush=True)

    for name in args.engines:
        if name.startswith("qrr-"):
            try:
                prepare_qrr(args, name)
            except Skip as exc:
                print(f"{name}: {exc}", flush=True)
    gc.collect()

    if args.rounds:
        rows = run_interleaved(args, workloads, work, peak, peak8)
    else:
        rows = run_sequential(args, workloads, work, peak, peak8)

    base = next((r for r in rows if r["engine"] == "recipe" and "workloads" in r), None)
    for r in rows:
        for w, v in r.get("workloads", {}).items():
            if "vs_recipe" not in v:  # interleaved rounds give it as a median of per-round ratios
                v["vs_recipe"] = v["pairs_per_s"] / base["workloads"][w]["pairs_per_s"] if base else None
    result = {"checkpoint": str(args.checkpoint), "threads": args.threads, "gemm_peak_gflops": peak,
              "interleaved": {"rounds": args.rounds, "round_pairs": args.round_pairs} if args.rounds else None,
              "int8_gemm_peak_gflops": peak8,
              "workloads": {w: WORKLOADS[w] for w in workloads}, "rows": rows}
    header = ["engine", "workload", "pairs/s", "ms/pair", "vs recipe", "vs fastest peer", "fp32 GEMM peak share",
              "int8 GEMM peak share", "process peak RSS MiB", "RSS growth MiB"]
    table = []
    for r in rows:
        if "skipped" in r:
            table.append([r["engine"], "—", "skipped: " + r["skipped"], "", "", "", "", "", "", ""])
            continue
        for w, v in r["workloads"].items():
            ratio = f"{v['vs_recipe']:.2f}x" if v["vs_recipe"] else "—"
            peer = f"{v['vs_fastest_peer']:.2f}x ({v['fastest_peer']})" if "vs_fastest_peer" in v else "—"
            table.append([r["engine"], w, f"{v['pairs_per_s']:.2f}", f"{v['ms_per_pair']:.0f}", ratio, peer,
                          f"{100 * v['peak_share']:.0f}%", f"{100 * v['int8_peak_share']:.0f}%",
                          f"{r['peak_rss_mib']:.0f}", f"{r['rss_growth_mib']:.0f}"])
    save(args.out, "throughput", result, header, table)
    chart(rows, list(workloads), args.out / "throughput.png")
    return 0


def round_pairs(given: list[str], workloads: list[str]) -> dict[str, int]:
    """--round-pairs as {workload: pairs per round}: ["8"] for all, or ["A=8", "B=2"] (the rest 8)."""
    sizes = {w: 8 for w in workloads}
    for item in given:
        name, _, value = item.rpartition("=")
        if name and name not in sizes:
            raise ValueError(f"--round-pairs names workload {name!r}, which is not among {workloads}")
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"--round-pairs takes positive numbers (N or W=N), got {item!r}")
        sizes.update({name: int(value)} if name else dict.fromkeys(sizes, int(value)))
    return sizes


def shares(work: float, seconds: float, pairs: int, peak: float, peak8: float) -> dict[str, float]:
    """Effective GFLOP/s of `work` FLOPs in `seconds`, and its shares of the two GEMM peaks."""
    gflops = work / seconds / 1e9
    return {"pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds, "ms_per_pair": 1000 * seconds / pairs,
            "gflops": gflops, "peak_share": gflops / peak, "int8_peak_share": gflops / peak8}


def run_sequential(args, workloads: dict, work: dict, peak: float, peak8: float) -> list[dict]:
    """Each engine loaded, warmed up and timed on every workload, one engine after the other."""
    from qrr.runtime.timing import PeakRSS, timed

    rows = []
    for name in args.engines:
        gc.collect()
        with PeakRSS() as mem:
            try:
                start = time.perf_counter()
                score = load_engine(name, args)
                load_s = time.perf_counter() - start
                results = {}
                for w, pairs in workloads.items():
                    score(pairs[:2])  # warm-up: first-run allocations and kernels
                    timing, _ = timed(lambda: score(pairs), len(pairs), repeat=args.repeat)
                    results[w] = timing
                    print(f"{name} {w}: {timing.pairs_per_s:.3f} pairs/s", flush=True)
                error = None
            except Skip as exc:
                error = str(exc)
            finally:
                score = None
                gc.collect()
        if error:
            print(f"{name}: skipped ({error})", flush=True)
            rows.append({"engine": name, "skipped": error})
            continue
        # one process: what earlier engines left resident is in the peak too, so the growth is kept beside it
        row = {"engine": name, "load_s": load_s, "peak_rss_mib": mem.peak_mib,
               "rss_growth_mib": (mem.peak - mem.start) / 2**20, "workloads": {}}
        for w, t in results.items():
            row["workloads"][w] = shares(work[w], t.best_s, t.pairs, peak, peak8)
        rows.append(row)
    return rows


def run_interleaved(args, workloads: dict, work: dict, peak: float, peak8: float) -> list[dict]:
    """Every engine loaded at once, then timed in interleaved rounds on each workload (see the docstring)."""
    from qrr.runtime.timing import PeakRSS

    loaded, rows = {}, []
    with PeakRSS() as run_mem:
        for name in args.engines:
            gc.collect()
            with PeakRSS() as mem:
                try:
                    start = time.perf_counter()
                    loaded[name] = load_engine(name, args)
                    load_s = time.perf_counter() - start
                except Skip as exc:
                    print(f"{name}: skipped ({exc})", flush=True)
                    rows.append({"engine": name, "skipped": str(exc)})
                    continue
            rows.append({"engine": name, "load_s": load_s, "rss_growth_mib": (mem.peak - mem.start) / 2**20,
                         "workloads": {}})
        names = list(loaded)
        timed_rows = {r["engine"]: r["workloads"] for r in rows if "workloads" in r}
        for w, pairs in workloads.items():
            k = min(args.round_pairs[w], len(pairs))
            for name in names:  # warm-up: first-run allocations and kernels
                loaded[name](pairs[:2])
            times = dict(zip(names, interleaved([loaded[n] for n in names], pairs, rounds=args.rounds, per_round=k)))
            per_pair = work[w] / len(pairs)
            for name, ts in times.items():
                timed_rows[name][w] = {**shares(per_pair * k, statistics.median(ts), k, peak, peak8),
                                       "rounds": args.rounds, "round_seconds": ts}
                print(f"{name} {w}: {timed_rows[name][w]['pairs_per_s']:.3f} pairs/s (median of {args.rounds} rounds "
                      f"of {k})", flush=True)
            peers_ = [n for n in names if not n.startswith(("qrr-", "recipe"))]
            fastest = max(peers_, key=lambda n: timed_rows[n][w]["pairs_per_s"], default=None)
            for name, ts in times.items():
                v = timed_rows[name][w]
                if "recipe" in times:
                    v["vs_recipe"] = median_ratio(times["recipe"], ts)
                if fastest:
                    v["fastest_peer"] = fastest
                    v["vs_fastest_peer"] = median_ratio(times[fastest], ts)
    for r in rows:
        if "workloads" in r:
            r["peak_rss_mib"] = run_mem.peak_mib
    return rows

def chart(rows: list[dict], workloads: list[str], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
        return
    ran = [r for r in rows if "workloads" in r]
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 0.4 * len(ran) + 1.5), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        names = [r["engine"] for r in ran if w in r["workloads"]]
        values = [r["workloads"][w]["pairs_per_s"] for r in ran if w in r["workloads"]]
        ax.barh(names, values, color=["tab:orange" if n.startswith("qrr") else "tab:gray" for n in names])
        ax.invert_yaxis()
        ax.set_title(f"workload {w}")
        ax.set_xlabel("pairs/s (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
