"""The quantization report: one table per stand-in checkpoint — precision × {disk, peak RSS, ms/pair,
max/mean |ΔP|, Spearman, top-1, NDCG@10 vs reference} — as Markdown and JSON, and a PNG of each precision's
score drift against the PyTorch reference.

    python benchmarks/quant_report.py --shape 0.6b --tokenizer ../shared/fixtures/qwen3-tokenizer --out out/report
    python benchmarks/quant_report.py --shape small --train-steps 80 --outliers 0 100 --out out/report-small
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import ensure_artifact, ensure_standin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.6b")
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--outliers", type=float, nargs="+", default=[0.0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an existing stand-in (qrr standin) instead of making one; --outliers is then ignored")
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8", "int4"])
    parser.add_argument("--data", type=Path, default=None, help="evaluation pairs (default: built-in set)")
    parser.add_argument("--out", type=Path, default=Path("out/report"))
    args = parser.parse_args(argv)

    from qrr.export import validate_artifact
    from qrr.export.progress import Progress

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for outliers in [None] if args.checkpoint else args.outliers:
        if args.checkpoint:
            info = json.loads((args.checkpoint / "qrr-standin.json").read_text())
            outliers, ckpt = info["outliers"], args.checkpoint
            name = f"{info['shape']}-o{outliers:g}" + (f"-t{info['train_steps']}" if info.get("train_steps") else "")
        else:
            name = f"{args.shape}-o{outliers:g}" + (f"-t{args.train_steps}" if args.train_steps else "")
            ckpt = args.out / f"standin-{name}"
        ensure_standin(ckpt, shape=args.shape, tokenizer=args.tokenizer, outliers=outliers, train_steps=args.train_steps)
        for precision in args.precisions:
            art = ensure_artifact(ckpt, args.out / f"{name}-{precision}", precision=precision)
            report = validate_artifact(art, str(ckpt), data=args.data, max_drop=1.0, progress=Progress())
            manifest = json.loads((art / "qrr.json").read_text())
            results.append({"checkpoint": name, "outliers": outliers, "precision": precision,
                            "disk_mib": sum(manifest["files"].values()) / 2**20,
                            "quantization": manifest["quantization"], **{k: report[k] for k in
                            ("metrics", "latency", "scores", "machine", "versions")}})
            print(json.dumps({k: v for k, v in results[-1].items() if k not in ("scores", "machine", "versions")})[:400],
                  flush=True)
    write(results, args.out)
    return 0


def write(results: list[dict], out: Path) -> None:
    lines = []
    for name in dict.fromkeys(r["checkpoint"] for r in results):
        rows = [r for r in results if r["checkpoint"] == name]
        base = next((r for r in rows if r["precision"] == "fp32"), rows[0])
        lines += [f"### stand-in {name}", "",
                  "| precision | disk MiB | disk vs fp32 | peak RSS MiB | ms/pair | speed vs fp32 | max \\|ΔP\\| | mean \\|ΔP\\| "
                  "| Spearman | top-1 | NDCG@10 vs ref |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            m, lat = r["metrics"], r["latency"]["artifact"]
            lines.append(
                f"| {r['precision']} | {r['disk_mib']:.0f} | {r['disk_mib'] / base['disk_mib']:.0%} | {lat['peak_rss_mib']:.0f} "
                f"| {lat['ms_per_pair']:.1f} | {base['latency']['artifact']['ms_per_pair'] / lat['ms_per_pair']:.2f}x "
                f"| {m['max_abs_dp']:.3g} | {m['mean_abs_dp']:.3g} | {m['spearman_mean']:.4f} | {m['top1_agreement']:.0%} "
                f"| {m['ndcg10_vs_reference']:.4f} |")
        ref = rows[0]["latency"]["reference"]
        lines += ["", f"PyTorch reference (model card recipe, fp32): {ref['ms_per_pair']:.1f} ms/pair, peak RSS "
                  f"{ref['peak_rss_mib']:.0f} MiB; {rows[0]['metrics']['pairs']} pairs; "
                  f"{rows[0]['machine']['cpu']}, {rows[0]['latency']['threads']} threads.", ""]
    (out / "quant_report.md").write_text("\n".join(lines) + "\n")
    (out / "quant_report.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install matplotlib)", file=sys.stderr)
        return
    names = list(dict.fromkeys(r["checkpoint"] for r in results))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in (r for r in results if r["checkpoint"] == name):
            ref, art = r["scores"]["reference"], r["scores"]["artifact"]
            ax.scatter(ref, [a - b for a, b in zip(art, ref)], s=8, alpha=0.6, label=r["precision"])
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"stand-in {name}")
        ax.set_xlabel("reference P(yes)")
        ax.set_ylabel("artifact − reference")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "quant_drift.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
