"""Progress of long steps on stderr: a tqdm bar per step in a terminal (time left where the step counts its
work), else the plain lines `[qrr] step …` and `[qrr] step: done in N s` that logs and tests read."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """`bars`: None draws bars when the stream is a terminal and tqdm is installed; False never, True always."""

    def __init__(self, enabled: bool = True, stream=None, bars: bool | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        if bars is None:
            bars = bool(getattr(self.stream, "isatty", lambda: False)())
        self.tqdm = _tqdm() if enabled and bars else None

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self.tqdm is not None:  # printed above any bar that is drawing
            self.tqdm.write(f"[qrr] {message}", file=self.stream)
        else:
            print(f"[qrr] {message}", file=self.stream, flush=True)

    @contextmanager
    def step(self, message: str, total: int | None = None, unit: str = "pair") -> Iterator[Step]:
        """A step; `total` units of work (then `.update(n)` as they are done) give a bar with the time left."""
        if self.tqdm is None:
            self.log(f"{message} …")
            start = time.perf_counter()
            yield Step(None)
            self.log(f"{message}: done in {time.perf_counter() - start:.1f} s")
            return
        # without a total there is no time left to show: the bar shows the time spent, refreshed every second
        form = None if total else "{desc}: {elapsed}"
        with self.tqdm(total=total, desc=message, unit=unit, file=self.stream, bar_format=form, leave=True,
                       dynamic_ncols=True) as bar:
            stop = threading.Event()
            ticker = threading.Thread(target=_refresh_every_second, args=(bar, stop), daemon=True)
            ticker.start()
            try:
                yield Step(bar)
            finally:
                stop.set()
                ticker.join()

    def total(self) -> float:
        return time.perf_counter() - self.start


class Step:
    """What a step's code reports its work to; nothing when no bar is drawn."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)


def _refresh_every_second(bar, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        bar.refresh()


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:  # the export extra installs it; without it, the plain lines
        return None
    return tqdm
