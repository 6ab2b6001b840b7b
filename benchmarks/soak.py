"""Soak test of `qrr serve` on loopback: N concurrent clients for a duration, mixed lengths, then the figures.

Starts the server itself in a child process (`qrr serve`, 127.0.0.1, a free port) so that its RSS is its own,
then N client threads post rerank requests (1-16 documents of 5-400 words, on every route) until the time is
up. Reports p50/p95/p99 latency, requests by status, and the server's RSS at the start, after the first
minute (or tenth of the run) and at the end. Nothing leaves this machine; it stops by itself.

    python benchmarks/soak.py ARTIFACT --clients 16 --duration 600 --out out/soak
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import save

ROUTES = ("/v1/rerank", "/v2/rerank", "/rerank")
WORDS = ("Beijing capital China city history river mountain people language north old new government "
         "culture trade 北京 首都 the of and a in is").split()


def body(rng: random.Random, route: str) -> dict:
    docs = [" ".join(rng.choices(WORDS, k=rng.randint(5, 400))) for _ in range(rng.randint(1, 16))]
    query = " ".join(rng.choices(WORDS, k=rng.randint(2, 12)))
    if route == "/rerank":  # TEI's shape
        return {"query": query, "texts": docs, "truncate": True}
    return {"query": query, "documents": docs}


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--threads", type=int, default=None, help="the server's scoring threads")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/soak"))
    args = parser.parse_args(argv)

    import httpx

    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "qrr.cli.main", "serve", str(args.artifact), "--host", "127.0.0.1",
               "--port", str(port), "--max-length", str(args.max_length)]
    command += ["--threads", str(args.threads)] if args.threads else []
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(base + "/health", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"qrr serve did not start: {server.stderr.read()}")
                time.sleep(0.2)
        httpx.post(base + "/v1/rerank", json=body(random.Random(-1), "/v1/rerank"), timeout=120)  # warm-up
        rss = {"start": rss_mib(server.pid)}
        latencies: list[float] = []
        statuses: collections.Counter = collections.Counter()
        lock = threading.Lock()
        start = time.monotonic()
        end = start + args.duration
        early = start + min(60.0, args.duration / 10)

        def client(n: int) -> None:
            rng = random.Random(args.seed * 1000 + n)
            with httpx.Client(base_url=base, timeout=120) as http:
                while time.monotonic() < end:
                    route = rng.choice(ROUTES)
                    t = time.perf_counter()
                    try:
                        status = http.post(route, json=body(rng, route)).status_code
                    except httpx.TransportError as exc:
                        status = type(exc).__name__
                    with lock:
                        latencies.append(time.perf_counter() - t)
                        statuses[str(status)] += 1

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(args.clients)]
        for t in threads:
            t.start()
        while time.monotonic() < end:
            time.sleep(1.0)
            if "early" not in rss and time.monotonic() >= early:
                rss["early"] = rss_mib(server.pid)
        for t in threads:
            t.join(timeout=180)
        rss["end"] = rss_mib(server.pid)
        wall = time.monotonic() - start
    finally:
        server.terminate()
        server.wait(timeout=60)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    result = {"artifact": str(args.artifact), "clients": args.clients, "duration_s": round(wall, 1),
              "requests": len(latencies), "requests_per_s": len(latencies) / wall, "statuses": dict(statuses),
              "p50_ms": 1000 * q[49], "p95_ms": 1000 * q[94], "p99_ms": 1000 * q[98],
              "rss_mib": {k: round(v, 1) for k, v in rss.items()}, "max_length": args.max_length}
    print(json.dumps(result), flush=True)
    errors = {k: v for k, v in statuses.items() if k not in ("200", "503")}
    save(args.out, "soak", result, ["clients", "s", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "statuses",
                                    "RSS MiB start / 1st min / end"],
         [[str(args.clients), f"{wall:.0f}", str(len(latencies)), f"{result['requests_per_s']:.1f}",
           f"{result['p50_ms']:.0f}", f"{result['p95_ms']:.0f}", f"{result['p99_ms']:.0f}",
           " ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
           f"{rss['start']:.0f} / {rss.get('early', rss['end']):.0f} / {rss['end']:.0f}"]])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
