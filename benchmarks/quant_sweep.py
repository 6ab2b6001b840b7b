"""Sweep quantization schemes on stand-in checkpoints (with and without activation outliers) and print the
accuracy of each against the PyTorch reference, plus disk size and speed. Used to choose the presets.

    python benchmarks/quant_sweep.py --shape small --out out/sweep
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import ensure_standin

# ("int8", "dynamic", 0, 0): onnxruntime's quantize_dynamic, per-channel int8 weights and per-tensor dynamic
# int8 activations (MatMulInteger) — what a plain `optimum-cli`/onnxruntime int8 export gives; measured here only.
VARIANTS = [
    ("int8", "dynamic", 0, 0),
    ("int8", "rtn", 32, 0), ("int8", "rtn", 32, 4), ("int8", "smoothquant", 32, 0), ("int8", "smoothquant", 32, 4),
    ("int4", "rtn", 32, 0), ("int4", "hqq", 32, 0), ("int4", "awq", 32, 0), ("int4", "awq", 32, 4),
    ("int4", "awq", 128, 4),
]


def dynamic_int8(ckpt: Path, art: Path) -> None:
    """An fp32 artifact whose graph is then run through onnxruntime's quantize_dynamic (per-channel weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from qrr.export import export_onnx
    from qrr.export.progress import Progress
    from qrr.runtime.manifest import file_sizes

    export_onnx(str(ckpt), art, quant="fp32", validate=False, progress=Progress(enabled=False))
    import onnx

    tmp = art / "dynamic.onnx"
    # the score head is Mul + ReduceSum, which quantize_dynamic leaves in fp32
    quantize_dynamic(art / "model.onnx", tmp, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], use_external_data_format=True)
    for name in ("model.onnx", "model.onnx.data"):
        (art / name).unlink()
    from qrr.quant import save_model

    save_model(onnx.load(str(tmp)), art / "model.onnx")
    for extra in art.iterdir():
        if extra.name not in ("model.onnx", "model.onnx.data", "tokenizer.json", "qrr.json"):
            extra.unlink()
    manifest = json.loads((art / "qrr.json").read_text())
    manifest["precision"] = "int8"
    manifest["files"] = file_sizes(art, ["model.onnx", "model.onnx.data", "tokenizer.json"])
    (art / "qrr.json").write_text(json.dumps(manifest))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small")
    parser.add_argument("--outliers", type=float, nargs="+", default=[0.0, 100.0])
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--train-steps", type=int, default=300, help="brief reranker training of the stand-in")
    parser.add_argument("--data", type=Path, default=None, help="evaluation pairs (default: built-in set)")
    parser.add_argument("--out", type=Path, default=Path("out/sweep"))
    parser.add_argument("--only", nargs="*", default=None, help="variants as PREC:METHOD:BLOCK:LEVEL")
    args = parser.parse_args(argv)

    from qrr.export import export_onnx, validate_artifact
    from qrr.export.progress import Progress

    variants = VARIANTS
    if args.only:
        variants = [(p, m, int(b), int(lv)) for p, m, b, lv in (v.split(":") for v in args.only)]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for outliers in args.outliers:
        ckpt = args.out / f"standin-{args.shape}-outliers{outliers:g}"
        ensure_standin(ckpt, shape=args.shape, tokenizer=args.tokenizer, outliers=outliers, train_steps=args.train_steps)
        for quant, method, block, level in [("fp32", None, None, None), *variants]:
            art = args.out / f"a-{args.shape}-o{outliers:g}-{quant}-{method}-{block}-{level}"
            shutil.rmtree(art, ignore_errors=True)
            if method == "dynamic":
                dynamic_int8(ckpt, art)
            else:
                export_onnx(str(ckpt), art, quant=quant, method=method, block_size=block, accuracy_level=level,
                            validate=False, progress=Progress(enabled=False))
            r = validate_artifact(art, str(ckpt), data=args.data, max_drop=1.0)
            m = r["metrics"]
            size = sum(json.loads((art / "qrr.json").read_text())["files"].values())
            row = {"outliers": outliers, "quant": quant, "method": method, "block": block, "level": level,
                   "max_abs_dp": m["max_abs_dp"], "mean_abs_dp": m["mean_abs_dp"], "spearman": m["spearman_mean"],
                   "top1": m["top1_agreement"], "ms_per_pair": r["latency"]["artifact"]["ms_per_pair"], "bytes": size}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(art, ignore_errors=True)
    (args.out / f"sweep-{args.shape}.json").write_text(json.dumps(rows, indent=2))
    print("| outliers | quant | method | block | level | max \|ΔP\| | mean \|ΔP\| | Spearman | top-1 | ms/pair | MiB |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['outliers']:g} | {r['quant']} | {r['method']} | {r['block']} | {r['level']} | {r['max_abs_dp']:.3g} "
              f"| {r['mean_abs_dp']:.3g} | {r['spearman']:.4f} | {r['top1']:.0%} | {r['ms_per_pair']:.2f} | {r['bytes'] / 2**20:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
