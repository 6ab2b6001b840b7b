"""qrr-export's progress: tqdm bars with the time left in a terminal, the plain `[qrr]` lines elsewhere."""

from __future__ import annotations

import io

import pytest

from qrr.export.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_stderr_is_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream=stream)
    with progress.step("scoring", total=3) as step:
        step.update(3)
    progress.log("total 1.0 s")
    assert stream.getvalue().splitlines() == ["[qrr] scoring …", "[qrr] scoring: done in 0.0 s", "[qrr] total 1.0 s"]


def test_bars_with_time_left_in_a_terminal():
    pytest.importorskip("tqdm")
    stream = Terminal()
    progress = Progress(stream=stream)
    with progress.step("scoring", total=4) as step:
        for _ in range(4):
            step.update(1)
    with progress.step("tracing the graph"):  # no count of its work: the time spent, no bar
        pass
    progress.log("artifact written")
    out = stream.getvalue()
    assert "scoring: 100%" in out and "4/4 [00:00<00:00" in out  # elapsed<left
    assert "tracing the graph: 00:00" in out and "[qrr] artifact written" in out
    assert "…" not in out and "done in" not in out
    quiet = Terminal()
    with Progress(enabled=False, stream=quiet).step("scoring", total=2) as step:
        step.update(2)
    assert quiet.getvalue() == ""
