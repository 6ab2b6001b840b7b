"""Desktop-app figures for an artifact: cold start (load + first score), steady ms/pair and resident memory,
per thread count, each in a fresh process so that nothing is shared between measurements.

    python benchmarks/cold_start.py ARTIFACT --threads 1 2 --out out/desktop
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import save

CHILD = r"""
import json, sys, time, psutil
t0 = time.perf_counter()
from qrr.runtime import Reranker
rr = Reranker(sys.argv[1], threads=int(sys.argv[2]))
t_load = time.perf_counter() - t0
rr.score("what is the capital of China?", ["The capital of China is Beijing."])
t_first = time.perf_counter() - t0
docs = [("Beijing is the capital of China and its political and cultural centre. " * 6).strip()] * 16
rr.score("what is the capital of China?", docs)
t = time.perf_counter(); rr.score("what is the capital of China?", docs); steady = (time.perf_counter() - t) / len(docs)
print(json.dumps({"threads": rr.threads, "import_and_load_s": t_load, "cold_start_s": t_first,
                  "ms_per_pair_16x~80_tokens": 1000 * steady, "rss_mib": psutil.Process().memory_info().rss / 2**20}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("out/desktop"))
    args = parser.parse_args(argv)
    rows = []
    for threads in args.threads:
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.artifact), str(threads)], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    save(args.out, "cold_start", {"artifact": str(args.artifact), "rows": rows},
         ["threads", "cold start s (import + load + first score)", "ms/pair", "RSS MiB"],
         [[str(r["threads"]), f"{r['cold_start_s']:.2f}", f"{r['ms_per_pair_16x~80_tokens']:.1f}", f"{r['rss_mib']:.0f}"]
          for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
