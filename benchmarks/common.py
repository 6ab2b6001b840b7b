"""What every benchmark script shares: the stand-in and artifacts made when missing, and the results writer.

Run the scripts from the repository root inside the project's venv (`python benchmarks/NAME.py …`); this
folder is on sys.path then, so `from common import …` works.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def ensure_standin(path: Path, **options: Any) -> Path:
    """The stand-in checkpoint at `path`, made with qrr.export.standin.make_standin(**options) if missing."""
    if not (path / "config.json").is_file():
        from qrr.export.standin import make_standin

        make_standin(path, **options)
    return path


def ensure_artifact(checkpoint: Path, artifact: Path, *, format: str = "onnx", precision: str = "fp32",
                    **options: Any) -> Path:
    """The artifact at `artifact`, exported from `checkpoint` without validation if missing."""
    if not (artifact / "qrr.json").is_file():
        from qrr.export import export_onnx, export_openvino
        from qrr.export.progress import Progress

        export = export_openvino if format == "openvino" else export_onnx
        export(str(checkpoint), artifact, quant=precision, validate=False, progress=Progress(), **options)
    return artifact


def save(out: Path, stem: str, result: dict[str, Any], header: list[str], rows: list[list[str]]) -> None:
    """`out/stem.json` holds `result` (with the machine and package versions added when missing);
    `out/stem.md` the table of `rows` under `header` (first column left). The table is also printed."""
    from qrr.runtime.machine import machine_info, versions

    result = {**result, "machine": result.get("machine") or machine_info(), "versions": result.get("versions") or versions()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    align = ["---"] + ["---:"] * (len(header) - 1)
    table = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    (out / f"{stem}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


def interleaved(scorers: Sequence[Callable[[Sequence[Any]], Any]], pairs: Sequence[Any], *, rounds: int,
                per_round: int, seed: int = 0) -> list[list[float]]:
    """Seconds per round of each scorer: round r takes the next `per_round` pairs (wrapping around) and every
    scorer scores them, in an order shuffled per round, so that a slow spell of a shared machine falls on all
    of them alike. `times[i][r]` is scorer i's time in round r."""
    times: list[list[float]] = [[] for _ in scorers]
    rng = random.Random(seed)
    for r in range(rounds):
        start = (r * per_round) % len(pairs)
        chunk = list(pairs[start:start + per_round])
        if len(chunk) < per_round:
            chunk += list(pairs[:per_round - len(chunk)])
        order = list(range(len(scorers)))
        rng.shuffle(order)
        for i in order:
            t = time.perf_counter()
            scorers[i](chunk)
            times[i].append(time.perf_counter() - t)
    return times


def median_ratio(base: Sequence[float], other: Sequence[float]) -> float:
    """Median over rounds of base's time / other's time: how many times faster `other` ran, round by round."""
    return statistics.median(b / t for b, t in zip(base, other))
