"""Validation of an artifact against the PyTorch reference: accuracy drop, latency and memory of both."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from qrr.runtime import Reranker
from qrr.runtime.bench import PeakRSS
from qrr.runtime.errors import QrrError
from qrr.runtime.manifest import (
    MANIFEST_NAME,
    VALIDATION_NAME,
    load_manifest,
    write_json,
)

# Largest allowed |ΔP(yes)| of any evaluation pair against the reference, per precision (README, "Validation").
DEFAULT_MAX_DROP = {"fp32": 1e-3, "fp16": 0.01, "int8": 0.03, "int4": 0.1}
BUILTIN = "built-in"


class ValidationError(QrrError):
    """The artifact's scores drift from the reference more than the user allows."""


@dataclass
class Query:
    query: str
    instruction: str | None
    documents: list[str] = field(default_factory=list)
    labels: list[float | None] = field(default_factory=list)


def load_pairs(path: str | Path | None = None) -> list[Query]:
    """JSON Lines of {"query", "document", "label"?, "instruction"?, "qid"?}; the built-in set when None."""
    if path is None:
        text = resources.files("qrr.export").joinpath("data/eval_pairs.jsonl").read_text(encoding="utf-8")
        name = BUILTIN
    else:
        p = Path(path)
        if not p.is_file():
            raise QrrError(f"evaluation data not found: {p}")
        text, name = p.read_text(encoding="utf-8"), str(p)
    groups: dict[tuple[str, str | None, str | None], Query] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QrrError(f"{name}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not isinstance(row.get("document"), str):
            raise QrrError(f"{name}, line {number}: needs string fields 'query' and 'document'")
        label = row.get("label")
        if label is not None and not isinstance(label, (int, float)):
            raise QrrError(f"{name}, line {number}: 'label' must be a number")
        instruction = row.get("instruction")
        key = (row.get("qid") or row["query"], row["query"], instruction)
        group = groups.setdefault(key, Query(row["query"], instruction))
        group.documents.append(row["document"])
        group.labels.append(label)
    if not groups:
        raise QrrError(f"{name} holds no pairs")
    return list(groups.values())


# -- metrics (numpy only) --------------------------------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks, ties shared (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if ra.std() == rb.std() else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b."""
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(len(a), 1)
    da, db = da[upper], db[upper]
    denom = np.sqrt(np.count_nonzero(da) * np.count_nonzero(db))
    if denom == 0:
        return 1.0 if np.count_nonzero(da) == np.count_nonzero(db) else 0.0
    return float((da * db).sum() / denom)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Indices best first; ties by input order (as Reranker.rerank)."""
    return np.lexsort((np.arange(len(scores)), -scores))


def ndcg_at(order: np.ndarray, gains: np.ndarray, k: int = 10) -> float:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((gains[order[:k]] * discounts[: len(order[:k])]).sum())
    ideal = np.sort(gains)[::-1][:k]
    idcg = float((ideal * discounts[: len(ideal)]).sum())
    return dcg / idcg if idcg > 0 else 1.0


def reciprocal_rank(order: np.ndarray, labels: np.ndarray) -> float:
    hits = np.nonzero(labels[order] > 0)[0]
    return 1.0 / (hits[0] + 1) if len(hits) else 0.0


def compare(queries: Sequence[Query], reference: Sequence[np.ndarray], artifact: Sequence[np.ndarray]) -> dict[str, Any]:
    """Every accuracy metric of DESIGN.md, artifact against reference."""
    all_ref, all_art = np.concatenate(reference), np.concatenate(artifact)
    delta = np.abs(all_ref - all_art)
    per_query = [(r, a) for r, a in zip(reference, artifact) if len(r) >= 2]
    metrics: dict[str, Any] = {
        "pairs": int(len(all_ref)),
        "queries": len(queries),
        "max_abs_dp": float(delta.max()),
        "mean_abs_dp": float(delta.mean()),
        "spearman_mean": float(np.mean([spearman(r, a) for r, a in per_query])) if per_query else None,
        "spearman_min": float(np.min([spearman(r, a) for r, a in per_query])) if per_query else None,
        "kendall_mean": float(np.mean([kendall(r, a) for r, a in per_query])) if per_query else None,
        "top1_agreement": float(np.mean([ranking(r)[0] == ranking(a)[0] for r, a in zip(reference, artifact)])),
        "top10_agreement": float(
            np.mean(
                [
                    len(set(ranking(r)[:10]) & set(ranking(a)[:10])) / min(10, len(r))
                    for r, a in zip(reference, artifact)
                ]
            )
        ),
        "ndcg10_vs_reference": float(np.mean([ndcg_at(ranking(a), r) for r, a in zip(reference, artifact)])),
    }
    labelled = [(q, r, a) for q, r, a in zip(queries, reference, artifact) if all(x is not None for x in q.labels)]
    if labelled:
        out: dict[str, Any] = {"queries": len(labelled)}
        for name, idx in (("reference", 1), ("artifact", 2)):
            ndcg = [ndcg_at(ranking(t[idx]), 2.0 ** np.asarray(t[0].labels, dtype=float) - 1) for t in labelled]
            mrr = [reciprocal_rank(ranking(t[idx]), np.asarray(t[0].labels, dtype=float)) for t in labelled]
            out[name] = {"ndcg10": float(np.mean(ndcg)), "mrr": float(np.mean(mrr))}
        out["ndcg10_drop_points"] = 100 * (out["reference"]["ndcg10"] - out["artifact"]["ndcg10"])
        out["mrr_drop_points"] = 100 * (out["reference"]["mrr"] - out["artifact"]["mrr"])
        metrics["labelled"] = out
    return metrics


# -- timing and memory -----------------------------------------------------------------------------------------


def _timed_scores(
    score: Callable[[Sequence[tuple[str, str]], str | None], Sequence[float]], queries: Sequence[Query]
) -> tuple[list[np.ndarray], float]:
    score([(queries[0].query, queries[0].documents[0])], queries[0].instruction)  # warm-up
    start = time.perf_counter()
    out = [np.asarray(score([(q.query, d) for d in q.documents], q.instruction), dtype=np.float64) for q in queries]
    return out, time.perf_counter() - start


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
    }


# what the reference recipe's scores and timing depend on: the key of its cache
REFERENCE_PACKAGES = ("qrr", "onnxruntime", "onnx", "torch", "transformers", "tokenizers", "numpy")


def versions(names: tuple[str, ...] = (*REFERENCE_PACKAGES, "openvino", "nncf")) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# -- the whole validation ----------------------------------------------------------------------------------------


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
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Score the evaluation pairs with the artifact and with the model card's fp32 recipe; compare.

    Writes validation.json (and the summary into qrr.json) when `write`; raises ValidationError after
    writing when max |ΔP| exceeds `max_drop` (default: DEFAULT_MAX_DROP for the artifact's precision).
    The artifact runs on `device`; the reference always runs on the CPU. With `use_cache`, the reference's scores and timing are kept in the user cache and reused while the
    checkpoint's files, the data, max_length, threads and package versions are the same.
    """
    from .checkpoint import resolve
    from .reference import ReferenceScorer

    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    precision = manifest["precision"]
    if max_drop is None:
        max_drop = DEFAULT_MAX_DROP.get(precision, DEFAULT_MAX_DROP["int8"])
    if not max_drop > 0:
        raise QrrError(f"max_drop must be a positive number, got {max_drop}")
    queries = load_pairs(data)
    pairs = sum(len(q.documents) for q in queries)

    log(f"scoring {pairs} pairs ({len(queries)} queries) with the artifact")
    with PeakRSS() as art_mem:
        rr = Reranker(artifact, device=device, threads=threads)
        art_scores, art_time = _timed_scores(lambda p, i: rr.score_pairs(p, instruction=i), queries)
    max_length, used_threads = rr.max_length, rr.threads
    del rr
    gc.collect()

    checkpoint = resolve(reference, manifest.get("source", {}).get("revision"))
    cache = reference_cache_path(checkpoint.path, queries, max_length, used_threads) if use_cache else None
    reused = cache is not None and cache.is_file()
    if reused:
        log(f"reusing the PyTorch reference's scores and timing from {cache}")
        cached = json.loads(cache.read_text(encoding="utf-8"))
        ref_scores = [np.asarray(s, dtype=np.float64) for s in cached["scores"]]
        ref_time, ref_peak = cached["seconds"], cached["peak_rss_mib"]
    else:
        log("scoring the same pairs with the PyTorch reference (model card recipe, fp32)")
        import torch

        torch.set_num_threads(used_threads)
        with PeakRSS() as ref_mem:
            ref = ReferenceScorer(checkpoint, max_length=max_length)
            ref_scores, ref_time = _timed_scores(ref.score_pairs, queries)
        ref_peak = ref_mem.peak_mib
        del ref
        gc.collect()
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            scores = [s.tolist() for s in ref_scores]
            write_json(cache, {"scores": scores, "seconds": ref_time, "peak_rss_mib": ref_peak, "versions": versions()})

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
    if not report["passed"]:
        raise ValidationError(
            f"{artifact} fails validation: max |ΔP| {metrics['max_abs_dp']:.4g} > {max_drop:g} allowed "
            f"(mean |ΔP| {metrics['mean_abs_dp']:.3g}, top-1 agreement {metrics['top1_agreement']:.0%}); "
            "raise --max-drop to accept it, or choose a higher precision"
        )
    return report


def reference_cache_path(checkpoint: Path, queries: Sequence[Query], max_length: int, threads: int) -> Path:
    """A cache file named by everything the reference's scores and timing depend on."""
    h = hashlib.sha256()
    for f in sorted(checkpoint.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps([[q.query, q.instruction, q.documents] for q in queries], ensure_ascii=False).encode())
    h.update(json.dumps([max_length, threads, versions(REFERENCE_PACKAGES), machine_info()["cpu"]]).encode())
    root = Path(os.environ.get("QRR_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qrr")
    return root / "reference" / f"{h.hexdigest()[:32]}.json"


def _speed(seconds: float, pairs: int, peak_mib: float) -> dict[str, float]:
    return {
        "ms_per_pair": 1000 * seconds / pairs,
        "pairs_per_s": pairs / seconds if seconds > 0 else float("inf"),
        "peak_rss_mib": round(peak_mib, 1),
    }


def summary(report: dict[str, Any]) -> dict[str, Any]:
    m = report["metrics"]
    return {
        "passed": report["passed"],
        "max_drop": report["max_drop"],
        "data": report["data"],
        "max_abs_dp": m["max_abs_dp"],
        "mean_abs_dp": m["mean_abs_dp"],
        "spearman_mean": m["spearman_mean"],
        "top1_agreement": m["top1_agreement"],
        "ms_per_pair": report["latency"]["artifact"]["ms_per_pair"],
        "reference_ms_per_pair": report["latency"]["reference"]["ms_per_pair"],
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for a terminal."""
    m, lat = report["metrics"], report["latency"]
    lines = [
        f"validation of {report['artifact']} ({report['precision']}) against {report['reference']['source']}",
        f"  data                 {report['data']}: {m['pairs']} pairs, {m['queries']} queries",
        f"  max |ΔP|             {m['max_abs_dp']:.3g}   (allowed {report['max_drop']:g}: "
        f"{'pass' if report['passed'] else 'FAIL'})",
        f"  mean |ΔP|            {m['mean_abs_dp']:.3g}",
        f"  Spearman mean / min  {_num(m['spearman_mean'])} / {_num(m['spearman_min'])}   Kendall mean {_num(m['kendall_mean'])}",
        f"  top-1 / top-10 agr.  {m['top1_agreement']:.1%} / {m['top10_agreement']:.1%}",
        f"  NDCG@10 vs reference {m['ndcg10_vs_reference']:.4f}",
    ]
    if "labelled" in m:
        lab = m["labelled"]
        lines.append(
            f"  labels: NDCG@10      reference {lab['reference']['ndcg10']:.4f}  artifact {lab['artifact']['ndcg10']:.4f}"
            f"  (drop {lab['ndcg10_drop_points']:+.2f} points)"
        )
        lines.append(
            f"  labels: MRR          reference {lab['reference']['mrr']:.4f}  artifact {lab['artifact']['mrr']:.4f}"
            f"  (drop {lab['mrr_drop_points']:+.2f} points)"
        )
    for name in ("artifact", "reference"):
        s = lat[name]
        lines.append(
            f"  {name:<9} speed      {s['ms_per_pair']:.2f} ms/pair, {s['pairs_per_s']:.1f} pairs/s, "
            f"peak RSS {s['peak_rss_mib']:.0f} MiB"
        )
    lines.append(f"  speed-up             {lat['speedup']:.2f}x on {lat['threads']} threads")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
