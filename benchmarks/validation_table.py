"""Markdown and JSON table of the validation reports of some artifacts.

    python benchmarks/validation_table.py out/bench/a-fp32 out/bench/a-int8 -o out/bench/validation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=None, help="write OUTPUT.md and OUTPUT.json")
    args = parser.parse_args(argv)
    reports = []
    for artifact in args.artifacts:
        path = artifact / "validation.json"
        if not path.is_file():
            print(f"validation_table: {artifact} has no validation.json (run qrr validate first)", file=sys.stderr)
            return 2
        reports.append(json.loads(path.read_text(encoding="utf-8")))
    header = (
        "| artifact | precision | disk MiB | max \\|ΔP\\| | mean \\|ΔP\\| | Spearman mean | top-1 agr. | NDCG@10 vs ref "
        "| ms/pair | ref ms/pair | speed-up | peak RSS MiB (ref) |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    rows = []
    for artifact, r in zip(args.artifacts, reports):
        m, lat = r["metrics"], r["latency"]
        manifest = json.loads((artifact / "qrr.json").read_text(encoding="utf-8"))
        disk = sum(manifest["files"].values()) / 2**20
        rows.append(
            f"| {artifact.name} | {r['precision']} | {disk:.0f} | {m['max_abs_dp']:.2g} | {m['mean_abs_dp']:.2g} "
            f"| {m['spearman_mean']:.4f} | {m['top1_agreement']:.0%} | {m['ndcg10_vs_reference']:.4f} "
            f"| {lat['artifact']['ms_per_pair']:.1f} | {lat['reference']['ms_per_pair']:.1f} | {_speedup(lat['speedup'])} "
            f"| {lat['artifact']['peak_rss_mib']:.0f} ({lat['reference']['peak_rss_mib']:.0f}) |"
        )
    first = reports[0]
    mach, ver = first["machine"], first["versions"]
    footer = (
        f"\n{first['metrics']['pairs']} pairs of the {first['data']} evaluation set; {first['latency']['threads']} threads; "
        f"{mach['cpu']}, {mach['physical_cores']} physical cores, {mach['memory_gib']} GiB; "
        + ", ".join(f"{k} {v}" for k, v in ver.items())
    )
    table = "\n".join([header, *rows]) + "\n" + footer + "\n"
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.with_suffix(".md").write_text(table, encoding="utf-8")
        summary = [{"artifact": str(a), **{k: r[k] for k in ("precision", "metrics", "latency", "machine", "versions")}}
                   for a, r in zip(args.artifacts, reports)]
        args.output.with_suffix(".json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


def _speedup(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"  # None: the reference was streamed, its time is no recipe latency


if __name__ == "__main__":
    sys.exit(main())
