"""Workload A — 1 query × 32 documents × ~200 tokens of prose — on a 0.6B-shaped stand-in, per precision and
device, with warm-up and repetitions; writes JSON and Markdown beside the package versions and machine.

    python benchmarks/workload_a.py --device cuda --precisions fp32 fp16 --out out/gpu
    python benchmarks/workload_a.py --device cpu --precisions fp32 int8 --tokenizer ../shared/fixtures/qwen3-tokenizer
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from common import ensure_artifact, ensure_standin, save

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"])
    parser.add_argument("--tokenizer", type=Path, default=None, help="a folder with the real Qwen3 tokenizer.json")
    parser.add_argument("--shape", default="0.6b", help="stand-in shape (tiny for a quick trial)")
    parser.add_argument("--work", type=Path, default=Path("out/bench"), help="where stand-in and artifacts are kept")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    from tokenizers import Tokenizer

    from qrr.runtime import Reranker
    from qrr.runtime.bench import make_workload

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    standin = ensure_standin(args.work / f"standin-{args.shape}", shape=args.shape, tokenizer=args.tokenizer)
    tok = Tokenizer.from_file(str(standin / "tokenizer.json"))
    pairs = make_workload("A", lambda text: len(tok.encode(text, add_special_tokens=False).ids))
    query, docs = pairs[0][0], [d for _, d in pairs]
    rows = []
    for precision in args.precisions:
        artifact = ensure_artifact(standin, args.work / f"standin-{args.shape}-{precision}", precision=precision)
        devices = [args.device] + (["cpu"] if args.device != "cpu" else [])
        for device in devices:
            start = time.perf_counter()
            rr = Reranker(artifact, device=device, threads=args.threads)
            first = rr.score(query, docs[:1])
            cold = time.perf_counter() - start
            for _ in range(args.warmup):
                rr.score(query, docs)
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                scores = rr.score(query, docs)
                times.append(time.perf_counter() - t)
            best = min(times)
            rows.append({
                "precision": precision, "device": device, "threads": rr.threads, "pairs": len(docs),
                "ms_per_pair": 1000 * best / len(docs), "pairs_per_s": len(docs) / best,
                "median_s": statistics.median(times), "cold_start_s": cold, "first_score": first[0],
                "score_mean": sum(scores) / len(scores),
            })
            print(json.dumps(rows[-1]), flush=True)
    result = {"workload": "A: 1 query x 32 documents x ~200 tokens", "rows": rows}
    save(args.out, "workload_a", result, ["precision", "device", "pairs/s", "ms/pair", "cold start s"],
         [[r["precision"], r["device"], f"{r['pairs_per_s']:.1f}", f"{r['ms_per_pair']:.1f}", f"{r['cold_start_s']:.2f}"]
          for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
