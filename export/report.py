"""The validation report for people: the summary stored in the manifest and the lines printed in a terminal."""

from __future__ import annotations

from typing import Any


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the manifest keeps of a validation report."""
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
        "reference_dtype": report["reference"].get("dtype", "float32"),
        "reference_streamed": report["reference"].get("streamed", False),
        "subset": (report.get("subset") or {}).get("selection"),
    }


def reference_words(reference: dict[str, Any]) -> str:
    """How the reference ran, in a few words: 'fp32', 'bf16, streamed layer by layer'."""
    words = "bf16" if reference.get("dtype") == "bfloat16" else "fp32"
    return words + (", streamed layer by layer" if reference.get("streamed") else "")


def format_report(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for a terminal."""
    m, lat = report["metrics"], report["latency"]
    ref = report["reference"]
    subset = report.get("subset")
    lines = [
        f"validation of {report['artifact']} ({report['precision']}) against {ref['source']} ({reference_words(ref)})",
        f"  data                 {report['data']}: {m['pairs']} pairs, {m['queries']} queries"
        + (f" ({subset['selection']}, of {subset['of']})" if subset else ""),
        f"  max |ΔP|             {m['max_abs_dp']:.3g}   (allowed {report['max_drop']:g}: "
        f"{'pass' if report['passed'] else 'FAIL'})",
        f"  mean |ΔP|            {m['mean_abs_dp']:.3g}",
        f"  Spearman mean / min  {_num(m['spearman_mean'])} / {_num(m['spearman_min'])}   Kendall mean {_num(m['kendall_mean'])}",
        f"  top-1 / top-10 agr.  {m['top1_agreement']:.1%} / {m['top10_agreement']:.1%}",
        f"  NDCG@10 vs reference {m['ndcg10_vs_reference']:.4f}",
    ]
    if "labelled" in m:
        lab = m["labelled"]
        for key, name in (("ndcg10", "NDCG@10"), ("mrr", "MRR")):
            lines.append(
                f"  labels: {name:<12} reference {lab['reference'][key]:.4f}  artifact {lab['artifact'][key]:.4f}"
                f"  (drop {lab[f'{key}_drop_points']:+.2f} points)"
            )
    for name in ("artifact", "reference"):
        s = lat[name]
        lines.append(
            f"  {name:<9} speed      {s['ms_per_pair']:.2f} ms/pair, {s['pairs_per_s']:.1f} pairs/s, "
            f"peak RSS {s['peak_rss_mib']:.0f} MiB"
        )
    if ref.get("streamed"):
        lines.append(f"  reference timing     {ref['timing']}")
    if lat["speedup"] is None:
        lines.append(f"  speed-up             n/a on {lat['threads']} threads")
    else:
        lines.append(f"  speed-up             {lat['speedup']:.2f}x on {lat['threads']} threads")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
