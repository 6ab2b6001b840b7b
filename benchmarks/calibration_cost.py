"""What calibration costs per decoder layer of a streamed export: one layer of CHECKPOINT, rotated, run through
calibrate_layer (qrr.export.streamed_export) on the built-in calibration pairs with the int8 preset, once per
rounding asked for; wall time and the process's peak RSS after each. Multiply by the depth for the export's
calibration time.

    python benchmarks/calibration_cost.py out/big/standin-4b nearest gptq
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("roundings", nargs="+", choices=["nearest", "gptq"])
    parser.add_argument("--layer", type=int, default=0)
    args = parser.parse_args(argv)

    from qrr.export.checkpoint import SafetensorsWeights
    from qrr.export.pipeline import calibration_batches, open_source
    from qrr.export.presets import PRESETS
    from qrr.export.progress import Progress
    from qrr.export.streamed_export import LayerRunner, _Config, _embed, calibrate_layer
    from qrr.quant import rotate

    src = open_source(args.checkpoint, None, Progress(enabled=False))
    config = src.checkpoint.config
    reader = SafetensorsWeights(src.checkpoint)
    q, _ = rotate.matrices(_Config(config))
    batches = calibration_batches(src.tokenizer, None, 8192)
    hidden = [_embed(reader, b["input_ids"], q) for b in batches]
    runner = LayerRunner(config)
    prefix = f"model.layers.{args.layer}."
    names = [n[len(prefix):] for n in reader.files if n.startswith(prefix)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"{args.checkpoint}: layer {args.layer}, {len(batches)} calibration batches, {tokens} tokens", flush=True)
    for rounding in args.roundings:
        preset = dataclasses.replace(PRESETS["int8"], rounding=rounding)
        layer = runner.new_layer({n: reader.tensor(prefix + n).float() for n in names})
        rotate.rotate_layer(layer, q)
        start = time.perf_counter()
        calibrate_layer(runner, layer, args.layer, hidden, batches, preset)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{rounding}: {time.perf_counter() - start:.1f} s, process peak RSS so far {peak:.2f} GiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
