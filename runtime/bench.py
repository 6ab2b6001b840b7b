"""Workloads and timing for `qrr bench` and benchmarks/throughput.py. Runtime only: no torch, no transformers.

The workloads are built from real prose (the built-in evaluation set's documents), cut to token lengths
measured with the artifact's own tokenizer:

  A  1 query × 32 documents × ~200 tokens        (a search results page)
  B  1 query × 8 documents × ~1000 tokens        (long passages)
  C  64 pairs: 8 queries × 8 documents of 20–500 tokens, shuffled   (a server's mixed traffic)
"""

from __future__ import annotations

import importlib.util
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

WORKLOADS = {
    "A": "1 query × 32 documents × ~200 tokens",
    "B": "1 query × 8 documents × ~1000 tokens",
    "C": "64 pairs: 8 queries × 8 documents of 20–500 tokens, shuffled",
}
Pair = tuple[str, str]


def _eval_set() -> list[dict[str, Any]]:
    # located without importing qrr.export (whose modules import torch)
    spec = importlib.util.find_spec("qrr.export")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the built-in evaluation set is missing from this qrr installation; pass --data")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "eval_pairs.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _prose() -> tuple[list[str], list[str]]:
    """(English queries, words of the English documents) of the built-in evaluation set."""
    rows = _eval_set()  # one {"query", "document", …} per line
    queries = list(dict.fromkeys(r["query"] for r in rows if r["query"].isascii()))
    words = " ".join(r["document"] for r in rows if r["document"].isascii()).split()
    return queries, words


def _cut(words: list[str], start: int, tokens: int, count: Callable[[str], int]) -> tuple[str, int]:
    """A passage of about `tokens` tokens starting at word `start` (wrapping around), and the next start."""
    n = max(1, tokens // 2)
    while True:
        text = " ".join(words[(start + i) % len(words)] for i in range(n))
        if count(text) >= tokens:
            return text, (start + n) % len(words)
        n += max(1, tokens // 20)


def make_workload(name: str, count_tokens: Callable[[str], int]) -> list[Pair]:
    """The (query, document) pairs of workload A, B or C; `count_tokens` is the tokenizer's length."""
    if name not in WORKLOADS:
        raise InputError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    queries, words = _prose()
    query = "How does sunlight scattering in the atmosphere change the colour of the sky?"
    start = 0
    pairs: list[Pair] = []
    if name in ("A", "B"):
        docs, tokens = (32, 200) if name == "A" else (8, 1000)
        for _ in range(docs):
            text, start = _cut(words, start, tokens, count_tokens)
            pairs.append((query, text))
        return pairs
    rng = random.Random(0)
    for q in queries[:8]:
        for _ in range(8):
            text, start = _cut(words, start, rng.randint(20, 500), count_tokens)
            pairs.append((q, text))
    rng.shuffle(pairs)
    return pairs


def load_data(path: str | Path) -> list[Pair]:
    """Pairs from JSON Lines: {"query": …, "document": …} or {"query": …, "documents": [...]} per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    pairs: list[Pair] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            docs = row["documents"] if "documents" in row else [row["document"]]
            pairs.extend((str(row["query"]), str(d)) for d in docs)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(
                f"{path}:{number}: expected {{\"query\": …, \"document\": …}} or {{\"query\": …, \"documents\": "
                f"[…]}} ({exc.__class__.__name__}: {exc})"
            ) from None
    if not pairs:
        raise InputError(f"{path} holds no pairs")
    return pairs


class PeakRSS:
    """Samples this process's resident memory in a thread; `peak` (bytes) is the highest seen while inside."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20


@dataclass
class Timing:
    pairs: int
    best_s: float
    median_s: float
    runs: int

    @property
    def ms_per_pair(self) -> float:
        return 1000 * self.best_s / self.pairs

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.best_s


def time_scoring(score: Callable[[Sequence[Pair]], Sequence[float]], pairs: Sequence[Pair], *, repeat: int = 3,
                 warmup: int = 1) -> tuple[Timing, list[float]]:
    """Best and median wall time of scoring all `pairs` in one call, after `warmup` calls; and the scores."""
    scores: list[float] = []
    for _ in range(warmup):
        scores = list(score(pairs))
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        scores = list(score(pairs))
        times.append(time.perf_counter() - start)
    times.sort()
    return Timing(len(pairs), times[0], times[len(times) // 2], len(times)), scores
