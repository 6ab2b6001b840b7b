"""Timing and memory of scoring, for validation, `qrr bench`, the HTML report and the benchmark scripts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


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
    """Wall times of `pairs` pairs scored in one call: the best and the median of the timed runs."""

    pairs: int
    best_s: float
    median_s: float

    @property
    def ms_per_pair(self) -> float:
        return 1000 * self.best_s / self.pairs

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.best_s if self.best_s > 0 else float("inf")


def timed(run: Callable[[], T], pairs: int, *, repeat: int = 1, warmup: int = 0) -> tuple[Timing, T]:
    """Call `run` `warmup` times, then `repeat` times timed; the timing of `pairs` pairs and the last result."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    times.sort()
    return Timing(pairs, times[0], times[len(times) // 2]), result
