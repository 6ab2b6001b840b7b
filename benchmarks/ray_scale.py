"""What Ray costs on this machine: Ray Serve at one replica against `qrr serve` (p50/p95 latency and pairs/s,
same app, same threads, clients on loopback), and `qrr rerank-batch` pairs/s against Reranker.score_pairs in
one process. On a 2-core machine more replicas or workers cannot add speed; the per-core figure is what a
cluster multiplies (README, "On Ray").

    python benchmarks/ray_scale.py ARTIFACT --requests 200 --clients 4 --pairs 2000 --out out/ray
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from common import save

WORDS = "capital china beijing gravity force river paris france code model ranking search".split()


def pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": i, "query": f"query {rng.randrange(max(1, n // 16))}",
             "document": " ".join(rng.choices(WORDS, k=rng.randint(20, 120)))} for i in range(n)]


def wait_up(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def load(url: str, requests: int, clients: int, docs: int) -> dict:
    body = {"query": "query 1", "documents": [p["document"] for p in pairs(docs, seed=1)]}
    for _ in range(3):  # warm-up
        httpx.post(url + "/v1/rerank", json=body, timeout=120).raise_for_status()

    def one(_: int) -> float:
        t = time.perf_counter()
        httpx.post(url + "/v1/rerank", json=body, timeout=120).raise_for_status()
        return time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = sorted(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    return {"p50_ms": 1000 * lat[len(lat) // 2], "p95_ms": 1000 * lat[int(len(lat) * 0.95)],
            "pairs_per_s": requests * docs / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--docs", type=int, default=16, help="documents per request")
    parser.add_argument("--pairs", type=int, default=2000, help="pairs for the batch comparison")
    parser.add_argument("--threads", type=int, default=1, help="scoring threads (= CPUs of the replica, the worker)")
    parser.add_argument("--out", type=Path, default=Path("out/ray"))
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    from qrr.distributed.batch import rerank_batch
    from qrr.distributed.serve import build_app
    from qrr.runtime import Reranker

    results: dict = {"threads": args.threads, "requests": args.requests, "clients": args.clients, "docs": args.docs}
    server = subprocess.Popen([sys.executable, "-m", "qrr.cli.main", "serve", str(args.artifact), "--port", "8781",
                              "--threads", str(args.threads)], stderr=subprocess.DEVNULL)
    try:
        wait_up("http://127.0.0.1:8781")
        results["qrr serve"] = load("http://127.0.0.1:8781", args.requests, args.clients, args.docs)
    finally:
        server.terminate()
        server.wait(30)
    ray.init(num_cpus=max(2, args.threads), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8782})
    serve.run(build_app(args.artifact.resolve(), replicas=1, num_cpus=args.threads), name="qrr", route_prefix="/")
    results["ray serve, 1 replica"] = load("http://127.0.0.1:8782", args.requests, args.clients, args.docs)
    serve.shutdown()

    rows = pairs(args.pairs)
    rr = Reranker(args.artifact, threads=args.threads)
    rr.score_pairs([(r["query"], r["document"]) for r in rows[:32]])
    t = time.perf_counter()
    rr.score_pairs([(r["query"], r["document"]) for r in rows])
    results["Reranker.score_pairs"] = {"pairs_per_s": args.pairs / (time.perf_counter() - t)}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for workers in (1, 2):
            t = time.perf_counter()
            rerank_batch(args.artifact, Path(tmp, "in.jsonl"), Path(tmp, f"out{workers}"), workers=workers,
                         cpus_per_worker=args.threads)
            results[f"rerank-batch, {workers} worker(s)"] = {"pairs_per_s": args.pairs / (time.perf_counter() - t)}
    ray.shutdown()
    base = results["qrr serve"]
    ray_serve = results["ray serve, 1 replica"]
    results["serve_overhead_pct"] = {k: 100 * (ray_serve[k] / base[k] - 1) for k in base}
    table = [[k, *(f"{v[c]:.1f}" if c in v else "" for c in ("p50_ms", "p95_ms", "pairs_per_s"))]
             for k, v in results.items() if isinstance(v, dict) and "pairs_per_s" in v and k != "serve_overhead_pct"]
    save(args.out, "ray_scale", results, ["run", "p50 ms", "p95 ms", "pairs/s"], table)
    print(json.dumps(results["serve_overhead_pct"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
