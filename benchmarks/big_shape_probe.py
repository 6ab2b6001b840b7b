"""Probes for the 4B/8B stand-ins, which are too large to export at fp32 or to hold whole on a 24 GiB machine.

    # the checkpoint cut to its first L layers (same widths, same tensors, the standard layout): its fp32 streamed
    # export can be validated (the 8B's fp32 artifact would be 32 GB), and a precision's drift seen at small depth
    python benchmarks/big_shape_probe.py cut out/big/standin-8b out/big/standin-8b-4L --layers 4

    # how far the model card's own dtype (bf16) moves the stand-in's scores against fp32, on the first N pairs:
    # the noise floor of this checkpoint, to read an artifact's drift against (both references are streamed)
    python benchmarks/big_shape_probe.py bf16 out/big/standin-8b --pairs 8 [--artifact out/big/8b-int4]

The second compares against the fp32 scores of the artifact's validation.json when it has them for those pairs
(the first N in data order), and computes the fp32 reference otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

CONFIG_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def cut(src: Path, dst: Path, layers: int) -> int:
    """Write `src` with only its first `layers` decoder layers into the new folder `dst`; returns the tensors kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((src / "config.json").read_text())
    if not 1 <= layers <= config["num_hidden_layers"]:
        raise SystemExit(f"--layers must be 1..{config['num_hidden_layers']}, got {layers}")
    config["num_hidden_layers"] = layers
    if "layer_types" in config:
        config["layer_types"] = config["layer_types"][:layers]
    dst.mkdir(parents=True, exist_ok=False)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for name in CONFIG_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    index = src / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.exists() else None
    if weight_map is None:
        with safe_open(src / "model.safetensors", "pt") as f:
            weight_map = {name: "model.safetensors" for name in f.keys()}
    keep: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not name.startswith("model.layers.") or int(name.split(".")[2]) < layers:
            keep.setdefault(shard, []).append(name)
    tensors = {}
    for shard, names in keep.items():
        with safe_open(src / shard, "pt") as f:
            for name in names:
                tensors[name] = f.get_tensor(name)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return len(tensors)


def bf16_floor(checkpoint: str, pairs: int, artifact: Path | None) -> dict:
    """max and mean |ΔP| of the bf16 recipe against the fp32 one (and of the artifact, when given)."""
    from qrr.export.checkpoint import resolve
    from qrr.export.streamed_reference import StreamedReference
    from qrr.export.validate import first_pairs
    from qrr.runtime.pairs import load_queries

    queries = first_pairs(load_queries(None), pairs)
    ckpt = resolve(checkpoint)
    fp32 = art = None
    if artifact is not None:
        report = json.loads((artifact / "validation.json").read_text())
        if report["reference"].get("dtype") == "float32" and len(report["scores"]["reference"]) >= pairs:
            fp32 = np.asarray(report["scores"]["reference"][:pairs])
        art = np.asarray(report["scores"]["artifact"][:pairs])
    if fp32 is None:
        fp32 = np.concatenate(StreamedReference(ckpt, dtype="float32").score_queries(queries))
    start = time.perf_counter()
    bf16 = np.concatenate(StreamedReference(ckpt, dtype="bfloat16").score_queries(queries))
    out = {"checkpoint": checkpoint, "pairs": int(len(bf16)), "bf16_seconds": round(time.perf_counter() - start, 1),
           "bf16_vs_fp32": {"max_abs_dp": float(np.abs(bf16 - fp32).max()),
                            "mean_abs_dp": float(np.abs(bf16 - fp32).mean())}}
    if art is not None:
        out["artifact_vs_fp32"] = {"artifact": str(artifact), "max_abs_dp": float(np.abs(art - fp32).max()),
                                   "mean_abs_dp": float(np.abs(art - fp32).mean())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cut", help="the checkpoint with only its first L layers")
    c.add_argument("source", type=Path)
    c.add_argument("output", type=Path)
    c.add_argument("--layers", type=int, required=True)
    b = sub.add_parser("bf16", help="bf16 against fp32 recipe scores on the first N pairs")
    b.add_argument("checkpoint")
    b.add_argument("--pairs", type=int, default=8)
    b.add_argument("--artifact", type=Path, default=None, help="an artifact validated on these pairs at fp32")
    args = parser.parse_args(argv)
    if args.command == "cut":
        print(f"{cut(args.source, args.output, args.layers)} tensors written to {args.output}")
    else:
        print(json.dumps(bf16_floor(args.checkpoint, args.pairs, args.artifact), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
