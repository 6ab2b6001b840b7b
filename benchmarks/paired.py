"""Paired, interleaved speed comparison of artifacts in one process, for machines too noisy for sequential runs.

    python benchmarks/paired.py ART_A ART_B [ART…] --workload A --rounds 30 --pairs 4

Each round takes the next `--pairs` pairs of the workload and has every artifact score them, in a shuffled
order; the report gives each artifact's median time per round and the median over rounds of (first
artifact's time / this artifact's time), so that a slow spell of the machine hits both sides of a ratio.
`ART:nocache` loads an artifact without the load cache; `ART:bt=N` scores with batch_tokens N (the same
artifact may appear with several settings).
"""

from __future__ import annotations

import argparse
import statistics

from common import interleaved, median_ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--workload", default="A", choices=["A", "B", "C"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=4, help="pairs per round")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    from tokenizers import Tokenizer

    from qrr.runtime import Reranker
    from qrr.runtime.bench import make_workload

    folders, rerankers = [], []
    for spec in args.artifacts:
        folder, *options = spec.split(":")
        unknown = [o for o in options if o != "nocache" and not o.startswith("bt=")]
        if unknown:
            parser.error(f"unknown artifact options {unknown} in {spec!r}; use :nocache or :bt=N")
        batch_tokens = next((int(o[3:]) for o in options if o.startswith("bt=")), None)
        folders.append(folder)
        rerankers.append(Reranker(folder, threads=args.threads, load_cache="nocache" not in options,
                                  batch_tokens=batch_tokens))
    tok = Tokenizer.from_file(f"{folders[0]}/tokenizer.json")
    pairs = make_workload(args.workload, lambda t: len(tok.encode(t, add_special_tokens=False).ids))
    for rr in rerankers:  # warm-up
        rr.score_pairs(pairs[:args.pairs])
    times = interleaved([rr.score_pairs for rr in rerankers], pairs, rounds=args.rounds, per_round=args.pairs)
    print(f"workload {args.workload}: {args.rounds} rounds of {args.pairs} pairs")
    for name, ts in zip(args.artifacts, times):
        speed = median_ratio(times[0], ts)
        print(f"{name}: median {1000 * statistics.median(ts):.0f} ms per round, speed vs the first {speed:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
