"""Where a GPU call's time goes: the whole score() call against the session's runs, then onnxruntime's own
profile of those runs (time per operator and provider: which nodes left the GPU).

    python benchmarks/gpu_profile.py ARTIFACT --device cuda --out out/gpu      (workload A, one query × 32 docs)
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workload", default="A")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[512],
                        help="the runtime's batch_tokens, one timing each; the last one is profiled")
    parser.add_argument("--out", type=Path, default=Path("out/gpu"))
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from qrr.runtime import Reranker
    from qrr.runtime.bench import make_workload

    summary: dict = {"artifact": str(args.artifact), "device": args.device, "calls": []}
    for batch_tokens in args.batch_tokens:
        rr = Reranker(args.artifact, device=args.device, batch_tokens=batch_tokens)
        pairs = make_workload(args.workload, rr.tokenizer.count)
        query, docs = pairs[0][0], [d for _, d in pairs]
        inner, feeds_seen = [], []
        run = rr.session.run

        def timed(feeds, run=run, inner=inner, feeds_seen=feeds_seen):
            start = time.perf_counter()
            result = run(feeds)
            inner.append(time.perf_counter() - start)
            feeds_seen.append(feeds)
            return result

        rr.session.run = timed
        rr.score(query, docs)  # warm-up
        calls = []
        for _ in range(args.repeat):
            inner.clear()
            feeds_seen.clear()
            start = time.perf_counter()
            rr.score(query, docs)
            calls.append((time.perf_counter() - start, sum(inner), len(inner)))
        total, in_session, runs = (statistics.median(c[i] for c in calls) for i in range(3))
        row = {"batch_tokens": batch_tokens, "pairs": len(docs), "call_s": total, "pairs_per_s": len(docs) / total,
               "session_runs_s": in_session, "runs_per_call": runs,
               "batch_shapes": [list(f["input_ids"].shape) for f in feeds_seen]}
        summary["calls"].append(row)
        print(json.dumps(row), flush=True)

    # onnxruntime's profile of the same runs on a plain session (numpy in and out, as a CPU caller would)
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(args.out / "ort_profile")
    args.out.mkdir(parents=True, exist_ok=True)
    providers = [("CUDAExecutionProvider", {}), "CPUExecutionProvider"] if args.device.startswith("cuda") else None
    session = ort.InferenceSession(str(args.artifact / rr.manifest["model_file"]), so, providers=providers)
    for feeds in feeds_seen * 2:
        session.run(None, feeds)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    by_op: collections.Counter = collections.Counter()
    nodes: collections.Counter = collections.Counter()
    for e in events:
        a = e.get("args") or {}
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = f"{a.get('provider', '?')}:{a.get('op_name', '?')}"
            by_op[key] += e["dur"]
            nodes[a.get("provider", "?")] += 1
    runs_us = sum(e["dur"] for e in events if e.get("name") == "model_run")
    summary["profile"] = {"model_run_ms": runs_us / 1000, "kernel_ms_by_op": {k: v / 1000 for k, v in by_op.most_common(20)},
                          "kernel_launches_by_provider": dict(nodes)}
    profile.unlink()
    text = json.dumps(summary, indent=1)
    (args.out / "gpu_profile.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
