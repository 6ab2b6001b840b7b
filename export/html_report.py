"""`qrr validate --html`: the validation report as one self-contained page with plots.

The page opens with the verdict in one sentence and the plot to judge it by: artifact against reference P(yes),
one dot per pair, the allowed drift shaded around the diagonal and the pairs outside it in red. Below: the
figures, rank agreement (Spearman) per query, and the artifact's latency by prompt length (matplotlib, PNG).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from qrr.runtime import Reranker
from qrr.runtime.errors import QrrError
from qrr.runtime.pairs import Query
from qrr.runtime.timing import timed

from .metrics import spearman
from .report import reference_words


def latency_by_length(rr: Reranker, queries: list[Query], samples: int = 24) -> list[tuple[int, float]]:
    """(prompt tokens, ms) for single pairs spread over the data's lengths; best of two runs each."""
    pairs = [(q, d) for q in queries for d in q.documents]
    lengths = [len(ids) for ids in rr.tokenizer.encode([(q.query, d) for q, d in pairs])]
    picks = np.unique(np.linspace(0, len(pairs) - 1, samples).astype(int))
    order = np.argsort(lengths)
    out = []
    for i in order[picks]:
        q, d = pairs[i]
        timing, _ = timed(lambda: rr.score_pairs([(q.query, d)], instruction=q.instruction), 1, repeat=2)
        out.append((lengths[i], timing.ms_per_pair))
    return out


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_html(report: dict[str, Any], path: str | Path, latency: list[tuple[int, float]]) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise QrrError("--html needs matplotlib: pip install matplotlib") from None
    ref = np.asarray(report["scores"]["reference"])
    art = np.asarray(report["scores"]["artifact"])
    sizes = report["scores"]["query_sizes"]
    bounds = np.cumsum([0, *sizes])
    rhos = [spearman(ref[a:b], art[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= 2]

    tol = report["max_drop"]
    outside = np.abs(art - ref) > tol
    fig, ax = plt.subplots(figsize=(6, 6))
    edge = np.array([0.0, 1.0])
    ax.fill_between(edge, edge - tol, edge + tol, color="#2a2", alpha=0.15, lw=0,
                    label=f"allowed drift (±{tol:g})")
    ax.plot(edge, edge, color="grey", lw=0.8, label="same score")
    ax.scatter(ref[~outside], art[~outside], s=12, alpha=0.7, color="#1f5fa8", label=f"{(~outside).sum()} pairs within")
    if outside.any():
        ax.scatter(ref[outside], art[outside], s=24, color="#c00", label=f"{outside.sum()} pairs outside")
    ax.set(xlabel=f"reference P(yes) — PyTorch, {reference_words(report['reference'])}", ylabel="artifact P(yes)",
           xlim=(0, 1), ylim=(0, 1), title="each dot is one (query, document) pair")
    ax.legend(loc="upper left", frameon=False)
    scatter = _png(fig)
    plt.close(fig)

    figs = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(1, len(rhos) + 1), rhos)
    ax.set(xlabel="query", ylabel="Spearman", title="rank agreement per query", ylim=(min(0.0, min(rhos or [0])), 1.02))
    figs.append(("Rank agreement per query", _png(fig)))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if latency:
        xs, ys = zip(*latency)
        ax.plot(xs, ys, "o-")
    ax.set(xlabel="prompt tokens", ylabel="ms per pair (alone)", title="artifact latency by length")
    figs.append(("Latency by document length", _png(fig)))
    plt.close(fig)

    m, lat = report["metrics"], report["latency"]
    rows = [
        ("max |ΔP|", f"{m['max_abs_dp']:.3g} (allowed {report['max_drop']:g})"),
        ("mean |ΔP|", f"{m['mean_abs_dp']:.3g}"),
        ("Spearman mean / min", f"{m['spearman_mean']:.4f} / {m['spearman_min']:.4f}"),
        ("top-1 / top-10 agreement", f"{m['top1_agreement']:.1%} / {m['top10_agreement']:.1%}"),
        ("NDCG@10 vs reference", f"{m['ndcg10_vs_reference']:.4f}"),
        ("artifact", f"{lat['artifact']['ms_per_pair']:.1f} ms/pair, peak RSS {lat['artifact']['peak_rss_mib']:.0f} MiB"),
        ("reference", f"{lat['reference']['ms_per_pair']:.1f} ms/pair, peak RSS {lat['reference']['peak_rss_mib']:.0f} MiB"),
    ]
    if report["reference"].get("streamed"):
        rows[-1] = ("reference", rows[-1][1] + " (streamed layer by layer: not the recipe's latency)")
    if report.get("subset"):
        rows.insert(0, ("pairs validated", f"{report['subset']['selection']}, of {report['subset']['of']}"))
    if "labelled" in m:
        lab = m["labelled"]
        rows.append(("NDCG@10 drop (labels)", f"{lab['ndcg10_drop_points']:+.2f} points"))
        rows.append(("MRR drop (labels)", f"{lab['mrr_drop_points']:+.2f} points"))
    verdict = "PASS" if report["passed"] else "FAIL"
    if report["passed"]:
        sentence = f"All {m['pairs']} pairs scored within {tol:g} of the reference"
    else:
        sentence = f"{outside.sum()} of {m['pairs']} pairs moved more than the allowed {tol:g} from the reference"
    sentence += f"; the largest difference is {m['max_abs_dp']:.3g}, top-1 agreement {m['top1_agreement']:.0%}"
    if lat.get("speedup"):
        sentence += f", {lat['speedup']:.1f}x the reference's speed"
    body = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    images = "\n".join(f'<figure><figcaption>{html.escape(t)}</figcaption><img alt="{html.escape(t)}" '
                       f'src="data:image/png;base64,{b64}"></figure>' for t, b64 in figs)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qrr validation: {html.escape(str(report['artifact']))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:960px}} table{{border-collapse:collapse}}
th,td{{text-align:left;padding:4px 12px;border-bottom:1px solid #ddd}} .PASS{{color:#070}} .FAIL{{color:#b00}}
figure{{margin:1.5em 0}} img{{max-width:100%}} .verdict{{font-size:1.25em}}</style></head>
<body><h1>Validation: <span class="{verdict}">{verdict}</span></h1>
<p class="verdict">{html.escape(sentence)}.</p>
<figure><img alt="Artifact against reference P(yes), one dot per pair" src="data:image/png;base64,{scatter}"></figure>
<p>{html.escape(str(report['artifact']))} ({html.escape(report['precision'])}) against
{html.escape(report['reference']['source'])} ({html.escape(reference_words(report['reference']))}) — {m['pairs']} pairs,
{m['queries']} queries ({html.escape(report['data'])}),
{lat['threads']} threads, {html.escape(report['machine']['cpu'])}.</p>
<table>{body}</table>
{images}
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
