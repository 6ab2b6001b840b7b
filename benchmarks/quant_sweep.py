"""The quantization sweep over the stand-in family: every member × every scheme, against the PyTorch reference.

The family (qrr.export.standin.FAMILY) has activation outliers at every kind of matmul input (norm-fed
channels, value channels, MLP intermediate channels) at factors 16–256, token-wise massive activations, and
a plain member; each is trained briefly as a reranker on its own share of the built-in pairs. The schemes
are the presets (ONNX, and OpenVINO as ov-int8 / ov-int4) and the alternatives they were chosen against.
Every member's figures are printed and written (the presets must pass the default gates and the
quantization targets on every member).

    python benchmarks/quant_sweep.py --out benchmarks/results            # tiny shape, all members, all schemes
    python benchmarks/quant_sweep.py --members value-256x16 --schemes int8 int8-matmulnbits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from common import save

TARGETS = {  # the quantization targets (README, "Quantization")
    "int8": {"max_abs_dp": 0.02, "spearman_mean": 0.99, "top1_agreement": 0.95},
    "int4": {"spearman_mean": 0.97, "top1_agreement": 0.90},
}


def schemes() -> dict[str, tuple[str, object]]:
    """name → (precision, Preset): the presets and the alternatives."""
    from qrr.export.presets import PRESETS

    int8, int4 = PRESETS["int8"], PRESETS["int4"]
    previous = dataclasses.replace(int8, kernel="matmulnbits", two_pass=(), rotate=False,
                                   sites=("attn", "mlp", "down"), embedding_block=None, rounding="nearest")
    return {
        "int8": ("int8", int8),
        "int8-alpha-searched": ("int8", dataclasses.replace(int8, alpha=None)),
        "int8-no-rotation": ("int8", dataclasses.replace(int8, rotate=False, sites=("attn", "mlp", "down", "vo"))),
        "int8-all-sites": ("int8", dataclasses.replace(int8, sites=("attn", "mlp", "down", "vo"))),
        "int8-nearest": ("int8", dataclasses.replace(int8, rounding="nearest")),
        "int8-one-pass": ("int8", dataclasses.replace(int8, two_pass=())),
        "int8-kv-two-pass": ("int8", dataclasses.replace(int8, two_pass=("k_proj", "v_proj"))),
        "int8-qkv-two-pass": ("int8", dataclasses.replace(int8, two_pass=("q_proj", "k_proj", "v_proj"))),
        "int8-matmulnbits": ("int8", dataclasses.replace(int8, kernel="matmulnbits", rounding="nearest", two_pass=())),
        "int8-previous": ("int8", previous),
        "int4": ("int4", int4),
        "int4-previous": ("int4", dataclasses.replace(int4, rotate=False, sites=("attn", "mlp", "down"))),
        "int4-all-sites": ("int4", dataclasses.replace(int4, sites=("attn", "mlp", "down", "vo"))),
        "int4-embedding8": ("int4", dataclasses.replace(int4, embedding_bits=8)),
        "int4-uniform": ("int4", dataclasses.replace(int4, eight_bit=(), embedding_bits=4)),
        "int4-gptq": ("int4", dataclasses.replace(int4, rounding="gptq")),
        "int4-nearest": ("int4", dataclasses.replace(int4, rounding="nearest")),
        # the OpenVINO artifacts of the presets (`--format openvino`): the same folded weights, NNCF's rounding
        "ov-int8": ("int8", int8),
        "ov-int4": ("int4", int4),
    }


def passes(precision: str, metrics: dict) -> bool:
    return all(metrics[k] <= v if k == "max_abs_dp" else metrics[k] >= v for k, v in TARGETS[precision].items())


def main(argv: list[str] | None = None) -> int:
    from qrr.export.standin import FAMILY

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--members", nargs="+", choices=list(FAMILY), default=list(FAMILY))
    parser.add_argument("--schemes", nargs="+", default=None, help="names from the scheme table (default: all)")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--data", type=Path, default=None, help="evaluation pairs (default: built-in set)")
    parser.add_argument("--work", type=Path, default=Path("out/sweep"), help="where the stand-ins are kept")
    parser.add_argument("--out", type=Path, default=Path("out/sweep"))
    args = parser.parse_args(argv)

    from qrr.export import export_onnx, export_openvino, validate_artifact
    from qrr.export.progress import Progress
    from qrr.export.standin import make_family_member

    table = schemes()
    chosen = args.schemes or list(table)
    unknown = [s for s in chosen if s not in table]
    if unknown:
        parser.error(f"unknown schemes {unknown}; choose from {', '.join(table)}")
    rows = []
    for member in args.members:
        ckpt = args.work / f"family-{args.shape}-{member}"
        if not (ckpt / "config.json").is_file():
            make_family_member(ckpt, member, shape=args.shape, train_steps=args.train_steps)
        for name in chosen:
            precision, preset = table[name]
            art = args.work / f"a-{member}-{name}"
            shutil.rmtree(art, ignore_errors=True)
            export = export_openvino if name.startswith("ov-") else export_onnx
            export(str(ckpt), art, quant=precision, preset=preset, validate=False, progress=Progress(enabled=False))
            report = validate_artifact(art, str(ckpt), data=args.data, max_drop=1.0, write=False)
            m = report["metrics"]
            rows.append({"member": member, "scheme": name, "precision": precision, "preset": dataclasses.asdict(preset),
                         "max_abs_dp": m["max_abs_dp"], "mean_abs_dp": m["mean_abs_dp"], "spearman": m["spearman_mean"],
                         "top1": m["top1_agreement"], "passes": passes(precision, m),
                         "ms_per_pair": report["latency"]["artifact"]["ms_per_pair"]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "preset"}), flush=True)
            shutil.rmtree(art, ignore_errors=True)
    header = ["member", "scheme", "max |ΔP|", "mean |ΔP|", "Spearman", "top-1", "targets"]
    save(args.out, f"quant_sweep_{args.shape}", {"family": {m: FAMILY[m] for m in args.members}, "rows": rows}, header,
         [[r["member"], r["scheme"], f"{r['max_abs_dp']:.4f}", f"{r['mean_abs_dp']:.4f}", f"{r['spearman']:.4f}",
           f"{r['top1']:.0%}", "pass" if r["passes"] else "MISS"] for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
