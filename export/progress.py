"""Progress lines for long steps, on stderr: what is happening, then how long it took."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    def __init__(self, enabled: bool = True, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def log(self, message: str) -> None:
        if self.enabled:
            print(f"[qrr] {message}", file=self.stream, flush=True)

    @contextmanager
    def step(self, message: str) -> Iterator[None]:
        self.log(f"{message} …")
        start = time.perf_counter()
        yield
        self.log(f"{message}: done in {time.perf_counter() - start:.1f} s")

    def total(self) -> float:
        return time.perf_counter() - self.start
