"""Validation of an artifact against the PyTorch reference: accuracy drop, latency and memory of both.

The reference's scores and timing are cached per checkpoint, data, max length, threads, packages, dtype and
streaming, so that exporting several precisions of one checkpoint runs the slow recipe once. A checkpoint whose
weights would not fit comfortably in memory is scored by the streamed reference (streamed.py): the recipe's
numbers, one decoder layer in memory at a time.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from .presets import DEFAULT_MAX_DROP, check_max_pairs, check_reference_dtype
from .progress import Progress, Step
from .report import summary


class ValidationError(QrrError):
    """The artifact's scores drift from the reference more than the user allows."""


# The recipe loads the whole model: stream the reference when its weights would take more of the memory available
STREAM_FRACTION = 0.4
STREAMED_TIMING = ("one layer-by-layer pass over all pairs, every layer's weights read from disk once: not the "
                   "recipe's per-query latency")
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16"}
SUBSET = "the first {n} pairs in data order (queries in order of first appearance, each query's documents in order)"


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
    reference_dtype: str = "float32",
    streamed: bool | None = None,
    max_pairs: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score the evaluation pairs with the artifact and with the model card's recipe (fp32 by default); compare.

    Writes validation.json (and the summary into qrr.json and README.md) when `write`; raises ValidationError after
    writing when max |ΔP| exceeds `max_drop` (default: DEFAULT_MAX_DROP for the artifact's precision).
    The artifact runs on `device`; the reference always runs on the CPU. With `use_cache`, the reference's
    scores and timing are kept in the user cache and reused while the checkpoint's files, the data,
    max_length, threads, package versions, dtype and streaming are the same. `reference_dtype` bfloat16 holds the artifact to the
    model card's own dtype instead (weights and compute in bf16). `streamed` runs the reference layer by layer
    (streamed.py: the same scores, one layer's weights in memory; its time is that pass's, not the recipe's latency);
    None streams when the reference's weights would exceed STREAM_FRACTION of the memory available. `max_pairs`
    validates the first pairs of the data only (SUBSET). `progress` shows each scoring pass as a step.
    """
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    precision = manifest["precision"]
    if max_drop is None:
        max_drop = DEFAULT_MAX_DROP.get(precision, DEFAULT_MAX_DROP["int8"])
    if not max_drop > 0:
        raise QrrError(f"max_drop must be a positive number, got {max_drop}")
    check_reference_dtype(reference_dtype)
    queries = load_queries(data)
    available = sum(len(q.documents) for q in queries)
    if max_pairs is not None:
        queries = first_pairs(queries, max_pairs)
    pairs = sum(len(q.documents) for q in queries)
    progress = progress or Progress(enabled=False)

    with progress.step(f"scoring {pairs} pairs ({len(queries)} queries) with the artifact", total=pairs) as step:
        with PeakRSS() as art_mem:
            rr = Reranker(artifact, device=device, threads=threads)
            art_scores, art_time = score_queries(lambda p, i: rr.score_pairs(p, instruction=i), queries, step)
    max_length, used_threads = rr.max_length, rr.threads
    del rr
    gc.collect()

    ref = reference_scores(
        reference, manifest.get("source", {}).get("revision"), queries, max_length, used_threads, use_cache, progress,
        reference_dtype=reference_dtype, streamed=streamed,
    )
    metrics = compare(queries, ref.scores, art_scores)
    report = {
        "artifact": str(artifact),
        "precision": precision,
        "device": device,
        "reference": {
            "source": reference,
            "recipe": f"Qwen3-Reranker model card, transformers example, {DTYPE_NAMES[reference_dtype]}, batch 8, "
                      "left padding",
            "dtype": reference_dtype,
            "streamed": ref.streamed,
            **({"timing": STREAMED_TIMING} if ref.streamed else {}),
            "cached": ref.cached,
        },
        "data": BUILTIN if data is None else str(data),
        "subset": None if max_pairs is None else {"max_pairs": max_pairs, "pairs": pairs, "of": available,
                                                  "selection": SUBSET.format(n=pairs)},
        "metrics": metrics,
        "latency": {
            "artifact": _speed(art_time, pairs, art_mem.peak_mib),
            "reference": _speed(ref.seconds, pairs, ref.peak_rss_mib),
            # a streamed reference's time is no latency of the recipe: no speed-up is drawn from it
            "speedup": ref.seconds / art_time if art_time > 0 and not ref.streamed else None,
            "threads": used_threads,
            "peak_rss_note": "highest resident memory of the whole process while each one loaded and scored",
        },
        "max_drop": max_drop,
        "passed": metrics["max_abs_dp"] <= max_drop,
        # per pair, in data order: lets a report plot the drift or re-check without rerunning the reference
        "scores": {
            "reference": [float(x) for r in ref.scores for x in r],
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


@dataclass
class ReferenceRun:
    scores: list[np.ndarray]  # per query
    seconds: float
    peak_rss_mib: float
    streamed: bool
    cached: bool


def reference_scores(
    reference: str,
    revision: str | None,
    queries: Sequence[Query],
    max_length: int,
    threads: int,
    use_cache: bool,
    progress: Progress,
    *,
    reference_dtype: str = "float32",
    streamed: bool | None = None,
) -> ReferenceRun:
    """The recipe's scores per query in `reference_dtype`, its seconds and peak RSS (MiB), whether it was streamed
    layer by layer (None: when the weights would not fit, see validate_artifact) and whether it came from the cache."""
    from .checkpoint import resolve

    checkpoint = resolve(reference, revision)
    if streamed is None:
        streamed = should_stream(checkpoint, reference_dtype)
    key = (max_length, threads, reference_dtype, streamed)
    cache = reference_cache_path(checkpoint.path, queries, key) if use_cache else None
    if cache is not None and cache.is_file():
        progress.log(f"reusing the PyTorch reference's scores and timing from {cache}")
        cached = json.loads(cache.read_text(encoding="utf-8"))
        return ReferenceRun([np.asarray(s, dtype=np.float64) for s in cached["scores"]], cached["seconds"],
                            cached["peak_rss_mib"], streamed, True)
    import torch

    torch.set_num_threads(threads)
    pairs = sum(len(q.documents) for q in queries)
    recipe = f"model card recipe, {DTYPE_NAMES[reference_dtype]}"
    if streamed:
        from .streamed_reference import StreamedReference

        layers = int(checkpoint.config.get("num_hidden_layers") or 0) or None
        message = f"scoring the same pairs with the PyTorch reference ({recipe}), streamed layer by layer"
        with progress.step(message, total=layers, unit="layer") as step:
            with PeakRSS() as mem:
                ref = StreamedReference(checkpoint, max_length=max_length, dtype=reference_dtype)
                start = time.perf_counter()
                scores = ref.score_queries(queries, step)
                seconds = time.perf_counter() - start
    else:
        from .reference import ReferenceScorer

        with progress.step(f"scoring the same pairs with the PyTorch reference ({recipe})", total=pairs) as step:
            with PeakRSS() as mem:
                ref = ReferenceScorer(checkpoint, max_length=max_length, dtype=reference_dtype)
                scores, seconds = score_queries(ref.score_pairs, queries, step)
    del ref
    gc.collect()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {"scores": [s.tolist() for s in scores], "seconds": seconds, "peak_rss_mib": mem.peak_mib,
                           "dtype": reference_dtype, "streamed": streamed, "versions": versions()})
    return ReferenceRun(scores, seconds, mem.peak_mib, streamed, False)


def should_stream(checkpoint, reference_dtype: str) -> bool:
    """Whether the whole model in `reference_dtype` would take more than STREAM_FRACTION of the memory available."""
    import psutil

    from .streamed_reference import weight_bytes

    return weight_bytes(checkpoint, reference_dtype) > STREAM_FRACTION * psutil.virtual_memory().available


def first_pairs(queries: Sequence[Query], max_pairs: int) -> list[Query]:
    """The first `max_pairs` pairs (SUBSET): whole queries, the last one cut to the pairs that remain."""
    check_max_pairs(max_pairs)
    out, left = [], max_pairs
    for q in queries:
        if left <= 0:
            break
        out.append(Query(q.query, q.instruction, q.documents[:left], q.labels[:left]))
        left -= len(out[-1].documents)
    return out


def reference_cache_path(checkpoint: Path, queries: Sequence[Query], key: Sequence[object]) -> Path:
    """A cache file named by everything the reference's scores and timing depend on: the checkpoint's files, the
    pairs, `key` (max_length, threads, dtype, streaming), the package versions and the CPU."""
    h = hashlib.sha256()
    for f in sorted(checkpoint.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps([[q.query, q.instruction, q.documents] for q in queries], ensure_ascii=False).encode())
    h.update(json.dumps([*key, versions(REFERENCE_PACKAGES), cpu_name()]).encode())
    root = Path(os.environ.get("QRR_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qrr")
    return root / "reference" / f"{h.hexdigest()[:32]}.json"


def _speed(seconds: float, pairs: int, peak_mib: float) -> dict[str, float]:
    return {
        "ms_per_pair": 1000 * seconds / pairs,
        "pairs_per_s": pairs / seconds if seconds > 0 else float("inf"),
        "peak_rss_mib": round(peak_mib, 1),
    }
