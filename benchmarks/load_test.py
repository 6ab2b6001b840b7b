"""Bounded load test of `qrr serve` on loopback: pairs/s and p50/p95/p99 latency at 1, 4 and 16 clients.

Starts the server itself (127.0.0.1, a free port), sends a fixed number of rerank requests per concurrency
level, stops. Nothing leaves this machine.

    python benchmarks/load_test.py ARTIFACT --docs 8 --requests 64 --out out/load
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import save


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level (bounded)")
    parser.add_argument("--docs", type=int, default=8, help="documents per request")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("out/load"))
    args = parser.parse_args(argv)

    import httpx
    import uvicorn

    from qrr.runtime.pairs import load_queries
    from qrr.runtime import Reranker
    from qrr.server import ServerConfig, create_app

    queries = load_queries()
    rr = Reranker(args.artifact, threads=args.threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(rr, ServerConfig(max_in_flight=256)), host="127.0.0.1",
                                           port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/rerank"
    bodies = [{"query": q.query, "documents": (q.documents * 3)[: args.docs]} for q in queries]
    client = httpx.Client(timeout=600)
    client.post(url, json=bodies[0])  # warm-up
    rows = []
    try:
        for clients in args.clients:
            latencies: list[float] = []

            def one(i: int) -> None:
                t = time.perf_counter()
                client.post(url, json=bodies[i % len(bodies)]).raise_for_status()
                latencies.append(time.perf_counter() - t)

            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - start
            q = statistics.quantiles(latencies, n=100)
            rows.append({"clients": clients, "requests": args.requests, "pairs_per_s": args.requests * args.docs / wall,
                         "p50_ms": 1000 * q[49], "p95_ms": 1000 * q[94], "p99_ms": 1000 * q[98]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    result = {"artifact": str(args.artifact), "precision": rr.manifest["precision"], "docs_per_request": args.docs,
              "threads": rr.threads, "rows": rows}
    save(args.out, "load_test", result, ["clients", "pairs/s", "p50 ms", "p95 ms", "p99 ms"],
         [[str(r["clients"]), f"{r['pairs_per_s']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{r['p99_ms']:.0f}"]
          for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
