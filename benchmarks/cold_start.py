"""Desktop-app figures for an artifact: cold start (import, load, first score), steady ms/pair and resident
memory, per thread count and load-cache state, each run in a fresh process so that nothing is shared.

    python benchmarks/cold_start.py ARTIFACT --threads 2 --repeat 5 --wait-idle --out out/desktop

Each repetition runs three starts: without the load cache, the first start with an empty one (it writes the
entry) and the next start (it uses it); the medians are reported. `--wait-idle` starts each run only when
the CPUs have been idle for half a second (at most 30 s wait; the idle share at start is recorded), for
machines shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from qrr.runtime import Reranker
t_import = time.perf_counter()
rr = Reranker(sys.argv[1], threads=int(sys.argv[2]), load_cache=sys.argv[3] == "1")
t_load = time.perf_counter()
rr.score("what is the capital of China?", ["The capital of China is Beijing."])
t_first = time.perf_counter()
docs = [("Beijing is the capital of China and its political and cultural centre. " * 6).strip()] * 16
rr.score("what is the capital of China?", docs)
t = time.perf_counter(); rr.score("what is the capital of China?", docs); steady = (time.perf_counter() - t) / len(docs)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"threads": rr.threads, "load_cache": rr.session.load_cache, "import_s": t_import - t0,
                  "load_s": t_load - t_import, "first_score_s": t_first - t_load, "cold_start_s": t_first - t_import,
                  "import_load_first_s": t_first - t0, "ms_per_pair_16x~80_tokens": 1000 * steady,
                  "peak_rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}))
"""
MODES = ("uncached", "first", "cached")  # without the load cache; writing its entry; using it
FIELDS = ("import_s", "load_s", "first_score_s", "cold_start_s", "import_load_first_s", "ms_per_pair_16x~80_tokens",
          "peak_rss_mib", "cpu_s")


def idle_fraction(seconds: float = 0.5) -> float:
    """The share of CPU time spent idle over `seconds` (Linux /proc/stat; 1.0 elsewhere)."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(values), values[3] + values[4]

    try:
        total, idle = sample()
        time.sleep(seconds)
        total2, idle2 = sample()
    except OSError:
        return 1.0
    return (idle2 - idle) / max(1, total2 - total)


def wait_idle(limit_s: float = 30.0, idle: float = 0.85) -> float:
    start = time.monotonic()
    while True:
        share = idle_fraction()
        if share >= idle or time.monotonic() - start > limit_s:
            return share


def run(artifact: Path, threads: int, cache: bool, cache_dir: str, wait: bool) -> dict:
    idle = wait_idle() if wait else None
    out = subprocess.run([sys.executable, "-c", CHILD, str(artifact), str(threads), "1" if cache else "0"], check=True,
                         capture_output=True, text=True, env={**os.environ, "QRR_CACHE": cache_dir}).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "idle_at_start": idle}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="fresh-process starts per mode; medians reported")
    parser.add_argument("--wait-idle", action="store_true", help="start each run when the CPUs are idle")
    parser.add_argument("--out", type=Path, default=Path("out/desktop"))
    args = parser.parse_args(argv)
    runs: dict[tuple[int, str], list[dict]] = {}
    for threads in args.threads:
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="qrr-cache-") as cache_dir:
                for mode in MODES:
                    row = run(args.artifact, threads, mode != "uncached", cache_dir, args.wait_idle)
                    runs.setdefault((threads, mode), []).append(row)
                    print(json.dumps({"mode": mode, **row}), flush=True)
    rows = [{"threads": t, "mode": mode, "runs": len(rs), "load_cache": sorted({r["load_cache"] for r in rs}),
             **{k: statistics.median(r[k] for r in rs) for k in FIELDS}} for (t, mode), rs in runs.items()]
    save(args.out, "cold_start", {"artifact": str(args.artifact), "rows": rows, "runs": [
        {"threads": t, "mode": mode, **r} for (t, mode), rs in runs.items() for r in rs]},
         ["threads", "start", "cold start s (load + first score)", "import + load + first s", "load s",
          "first score s", "ms/pair", "peak RSS MiB"],
         [[str(r["threads"]), r["mode"], f"{r['cold_start_s']:.2f}", f"{r['import_load_first_s']:.2f}",
           f"{r['load_s']:.2f}", f"{r['first_score_s']:.2f}", f"{r['ms_per_pair_16x~80_tokens']:.0f}",
           f"{r['peak_rss_mib']:.0f}"] for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
