"""The workloads of `qrr bench` and benchmarks/throughput.py. Runtime only: no torch, no transformers.

The workloads are built from real prose (the built-in evaluation set's documents), cut to token lengths
measured with the artifact's own tokenizer:

  A  1 query × 32 documents × ~200 tokens        (a search results page)
  B  1 query × 8 documents × ~1000 tokens        (long passages)
  C  64 pairs: 8 queries × 8 documents of 20–500 tokens, shuffled   (a server's mixed traffic)
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .errors import InputError
from .pairs import load_queries

WORKLOADS = {
    "A": "1 query × 32 documents × ~200 tokens",
    "B": "1 query × 8 documents × ~1000 tokens",
    "C": "64 pairs: 8 queries × 8 documents of 20–500 tokens, shuffled",
}
Pair = tuple[str, str]


def _prose() -> tuple[list[str], list[str]]:
    """(English queries, words of the English documents) of the built-in evaluation set."""
    queries = load_queries()
    english = [q.query for q in queries if q.query.isascii()]
    words = " ".join(d for q in queries for d in q.documents if d.isascii()).split()
    return list(dict.fromkeys(english)), words


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
