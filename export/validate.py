"""Validation of an artifact against the PyTorch reference: accuracy drop, latency and memory of both.

The reference's scores and timing are cached per checkpoint, data, max length, threads and packages, so that
exporting several precisions of one checkpoint runs the slow recipe once.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qrr.runtime import Reranker
from qrr.runtime.errors import QrrError
from qrr.runtime.machine import REFERENCE_PACKAGES, cpu_name, machine_info, versions
from qrr.runtime.manifest import MANIFEST_NAME, VALIDATION_NAME, load_manifest, write_json
from qrr.runtime.pairs import BUILTIN, Query, load_queries
from qrr.runtime.timing import PeakRSS, timed

from .card import write_card
from .metrics import compare
from .presets import DEFAULT_MAX_DROP
from .progress import Progress, Step
from .report import summary


class ValidationError(QrrError):
    """The artifact's scores drift from the reference more than the user allows."""


Scorer = Callable[[Sequence[tuple[str, str]], str | None], Sequence[float]]


def score_queries(score: Scorer, queries: Sequence[Query], step: Step | None = None) -> tuple[list[np.ndarray], float]:
    """Each query's scores, scored query by query after a one-pair warm-up; and the seconds it took. `step` is
    told of each query's pairs as they are scored."""
    first = queries[0]
    step = step or Step(None)

    def run() -> list[np.ndarray]:
        scores = []
        for q in queries:
            scores.append(np.asarray(score([(q.query, d) for d in q.documents], q.instruction), dtype=np.float64))
            step.update(len(q.documents))
        return scores

    score([(first.query, first.documents[0])], first.instruction)  # warm-up
    timing, scores = timed(run, sum(len(q.documents) for q in queries))
    return scores, timing.best_s


def validate_artifact(
    artifact: str | Path,
    reference: str,
    *,
    data: str | Path | None = None,
    max_drop: float | None = None,
    threads: int | None = None,
    device: str = "cpu",
    write: bool = True,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score the evaluation pairs with the artifact and with the model card's fp32 recipe; compare.

    Writes validation.json (and the summary into qrr.json and README.md) when `write`; raises ValidationError after
    writing when max |ΔP| exceeds `max_drop` (default: DEFAULT_MAX_DROP for the artifact's precision).
    The artifact runs on `device`; the reference always runs on the CPU. With `use_cache`, the reference's
    scores and timing are kept in the user cache and reused while the checkpoint's files, the data,
    max_length, threads and package versions are the same. `progress` shows each scoring pass as a step.
    """
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    precision = manifest["precision"]
    if max_drop is None:
        max_drop = DEFAULT_MAX_DROP.get(precision, DEFAULT_MAX_DROP["int8"])
    if not max_drop > 0:
        raise QrrError(f"max_drop must be a positive number, got {max_drop}")
    queries = load_queries(data)
    pairs = sum(len(q.documents) for q in queries)
    progress = progress or Progress(enabled=False)

    with progress.step(f"scoring {pairs} pairs ({len(queries)} queries) with the artifact", total=pairs) as step:
        with PeakRSS() as art_mem:
            rr = Reranker(artifact, device=device, threads=threads)
            art_scores, art_time = score_queries(lambda p, i: rr.score_pairs(p, instruction=i), queries, step)
    max_length, used_threads = rr.max_length, rr.threads
    del rr
    gc.collect()

    ref_scores, ref_time, ref_peak, reused = reference_scores(
        reference, manifest.get("source", {}).get("revision"), queries, max_length, used_threads, use_cache, progress
    )
    metrics = compare(queries, ref_scores, art_scores)
    report = {
        "artifact": str(artifact),
        "precision": precision,
        "device": device,
        "reference": {
            "source": reference,
            "recipe": "Qwen3-Reranker model card, transformers example, fp32, batch 8, left padding",
            "cached": reused,
        },
        "data": BUILTIN if data is None else str(data),
        "metrics": metrics,
        "latency": {
            "artifact": _speed(art_time, pairs, art_mem.peak_mib),
            "reference": _speed(ref_time, pairs, ref_peak),
            "speedup": ref_time / art_time if art_time > 0 else None,
            "threads": used_threads,
            "peak_rss_note": "highest resident memory of the whole process while each one loaded and scored",
        },
        "max_drop": max_drop,
        "passed": metrics["max_abs_dp"] <= max_drop,
        # per pair, in data order: lets a report plot the drift or re-check without rerunning the reference
        "scores": {
            "reference": [float(x) for r in ref_scores for x in r],
            "artifact": [float(x) for a in art_scores for x in a],
            "query_sizes": [len(q.documents) for q in queries],
        },
        "machine": machine_info(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if write:
        write_json(artifact / VALIDATION_NAME, report)
        manifest_path = artifact / MANIFEST_NAME
        stored = json.loads(manifest_path.read_text(encoding="utf-8"))
        stored["validation"] = summary(report)
        write_json(manifest_path, stored)
        write_card(artifact, stored)  # the card shows the figures too, a failed validation's included
    if not report["passed"]:
        raise ValidationError(
            f"{artifact} fails validation: max |ΔP| {metrics['max_abs_dp']:.4g} > {max_drop:g} allowed "
            f"(mean |ΔP| {metrics['mean_abs_dp']:.3g}, top-1 agreement {metrics['top1_agreement']:.0%}); "
            "raise --max-drop to accept it, or choose a higher precision"
        )
    return report


def reference_scores(
    reference: str,
    revision: str | None,
    queries: Sequence[Query],
    max_length: int,
    threads: int,
    use_cache: bool,
    progress: Progress,
) -> tuple[list[np.ndarray], float, float, bool]:
    """The recipe's scores per query, its seconds and peak RSS (MiB), and whether they came from the cache."""
    from .checkpoint import resolve

    checkpoint = resolve(reference, revision)
    cache = reference_cache_path(checkpoint.path, queries, max_length, threads) if use_cache else None
    if cache is not None and cache.is_file():
        progress.log(f"reusing the PyTorch reference's scores and timing from {cache}")
        cached = json.loads(cache.read_text(encoding="utf-8"))
        return [np.asarray(s, dtype=np.float64) for s in cached["scores"]], cached["seconds"], cached["peak_rss_mib"], True
    import torch

    from .reference import ReferenceScorer

    torch.set_num_threads(threads)
    pairs = sum(len(q.documents) for q in queries)
    message = "scoring the same pairs with the PyTorch reference (model card recipe, fp32)"
    with progress.step(message, total=pairs) as step:
        with PeakRSS() as mem:
            ref = ReferenceScorer(checkpoint, max_length=max_length)
            scores, seconds = score_queries(ref.score_pairs, queries, step)
    del ref
    gc.collect()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {"scores": [s.tolist() for s in scores], "seconds": seconds, "peak_rss_mib": mem.peak_mib,
                           "versions": versions()})
    return scores, seconds, mem.peak_mib, False


def reference_cache_path(checkpoint: Path, queries: Sequence[Query], max_length: int, threads: int) -> Path:
    """A cache file named by everything the reference's scores and timing depend on."""
    h = hashlib.sha256()
    for f in sorted(checkpoint.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps([[q.query, q.instruction, q.documents] for q in queries], ensure_ascii=False).encode())
    h.update(json.dumps([max_length, threads, versions(REFERENCE_PACKAGES), cpu_name()]).encode())
    root = Path(os.environ.get("QRR_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qrr")
    return root / "reference" / f"{h.hexdigest()[:32]}.json"


def _speed(seconds: float, pairs: int, peak_mib: float) -> dict[str, float]:
    return {
        "ms_per_pair": 1000 * seconds / pairs,
        "pairs_per_s": pairs / seconds if seconds > 0 else float("inf"),
        "peak_rss_mib": round(peak_mib, 1),
    }
