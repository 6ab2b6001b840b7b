"""Rank and score agreement between an artifact and the reference: every accuracy metric of DESIGN.md."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from qrr.runtime.pairs import Query


def _constant(a: np.ndarray) -> bool:
    return bool(np.all(a == a[0]))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho; for a constant side (scipy's NaN): 1 when both are constant, else 0."""
    if _constant(a) or _constant(b):
        return 1.0 if _constant(a) and _constant(b) else 0.0
    return float(stats.spearmanr(a, b).statistic)


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b; constant sides as in spearman."""
    if _constant(a) or _constant(b):
        return 1.0 if _constant(a) and _constant(b) else 0.0
    return float(stats.kendalltau(a, b).statistic)


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
    """Every accuracy metric, artifact against reference, per query where it is a rank metric."""
    all_ref, all_art = np.concatenate(reference), np.concatenate(artifact)
    delta = np.abs(all_ref - all_art)
    per_query = [(r, a) for r, a in zip(reference, artifact) if len(r) >= 2]
    rhos = [spearman(r, a) for r, a in per_query]
    metrics: dict[str, Any] = {
        "pairs": int(len(all_ref)),
        "queries": len(queries),
        "max_abs_dp": float(delta.max()),
        "mean_abs_dp": float(delta.mean()),
        "spearman_mean": float(np.mean(rhos)) if rhos else None,
        "spearman_min": float(np.min(rhos)) if rhos else None,
        "kendall_mean": float(np.mean([kendall(r, a) for r, a in per_query])) if per_query else None,
        "top1_agreement": float(np.mean([ranking(r)[0] == ranking(a)[0] for r, a in zip(reference, artifact)])),
        "top10_agreement": float(np.mean([len(set(ranking(r)[:10]) & set(ranking(a)[:10])) / min(10, len(r))
                                          for r, a in zip(reference, artifact)])),
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
