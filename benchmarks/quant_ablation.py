"""Which quantized inputs move the scores: the int8 preset emulated in PyTorch, one group of inputs at a time.

The checkpoint is rotated and smoothed exactly as `qrr-export --quant int8` does (qrr.export.pipeline), then
run by the recipe on the built-in pairs with the rowwise kernel's rounding (int8 activations per row × int8
weights per output column, qrr.quant.smooth.fake_quant) applied only where a variant says, and the embedding
in 8-bit blocks of 32. Max |ΔP| against the unquantized checkpoint, per variant:

  all            every linear layer and the embedding, as the artifact exported with `--rounding nearest` (matches
                 its figure; the default GPTQ rounding moves the weights, not the inputs this ablation splits)
  emb            the embedding only
  qkv, o, gateup, down     those projections only (activations and weights)
  qkv-act, qkv-wt          q/k/v activations only, weights only
  all-but-qkv    everything except q/k/v, which keep float activations and weights
  qkv-float-act  everything, but q/k/v read float activations (weights int8 per column)
  k-act          the k_proj activations only
  fp16           every linear layer's activations and weights rounded to fp16, the embedding kept (the scale
                 of what a finer format leaves)

    python benchmarks/quant_ablation.py out/sweep/family-tiny-norm-256x2 out/sweep/family-tiny-plain
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

QKV = ("q_proj", "k_proj", "v_proj")
LINEAR = (*QKV, "o_proj", "gate_proj", "up_proj", "down_proj")
# variant → (projection → (activations, weights): True int8, False float, "fp16"), embedding quantized
VARIANTS = {
    "all": ({p: (True, True) for p in LINEAR}, True),
    "emb": ({}, True),
    "qkv": ({p: (True, True) for p in QKV}, False),
    "o": ({"o_proj": (True, True)}, False),
    "gateup": ({p: (True, True) for p in ("gate_proj", "up_proj")}, False),
    "down": ({"down_proj": (True, True)}, False),
    "qkv-act": ({p: (True, False) for p in QKV}, False),
    "qkv-wt": ({p: (False, True) for p in QKV}, False),
    "all-but-qkv": ({p: (True, True) for p in LINEAR if p not in QKV}, True),
    "qkv-float-act": ({p: (p not in QKV, True) for p in LINEAR}, True),
    "k-act": ({"k_proj": (True, False)}, False),
    "fp16": ({p: ("fp16", "fp16") for p in LINEAR}, False),
}


def embedding_blocks(table, block: int = 32):
    """The table as the artifact's 8-bit GatherBlockQuantized holds it (qrr.quant.onnx_quant.embedding_blocks),
    dequantized."""
    import torch

    from qrr.quant.onnx_quant import embedding_blocks as quantize

    values, scale, zero = quantize(table.detach().numpy(), block, bits=8)
    rows, cols = table.shape
    codes = values.reshape(rows, cols // block, block).astype("float32") - zero[..., None]
    return torch.from_numpy((codes * scale[..., None]).reshape(rows, cols))


def hook(acts: bool | str, weights: bool | str):
    from qrr.quant.smooth import fake_quant

    def forward(module, inputs, output):
        x = inputs[0]
        rows = x.reshape(-1, x.shape[-1])
        xq = rows.half().float() if acts == "fp16" else fake_quant(rows, 8, rows.shape[1], True) if acts else rows
        w = module.weight
        w = w.half().float() if weights == "fp16" else fake_quant(w, 8, w.shape[1], True) if weights else w
        return (xq @ w.T).reshape(*x.shape[:-1], -1)

    return forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from qrr.export.checkpoint import resolve
    import dataclasses

    from qrr.export.pipeline import calibration_batches
    from qrr.export.streamed_export import calibrate_model
    from qrr.export.presets import PRESETS
    from qrr.export.reference import ReferenceScorer
    from qrr.quant.rotate import rotate
    from qrr.runtime.pairs import load_queries

    queries = load_queries()
    for path in args.checkpoints:
        checkpoint = resolve(str(path))
        ref = ReferenceScorer(checkpoint)

        def scores(model):
            ref.model = model
            return np.array([p for q in queries for p in ref.score_pairs([(q.query, d) for d in q.documents],
                                                                        q.instruction)])

        exact = scores(ref.model)
        folded = copy.deepcopy(ref.model)
        rotate(folded)
        # the preset's rotation and scales; the variants round weights to nearest (the preset with --rounding nearest)
        preset = dataclasses.replace(PRESETS["int8"], rounding="nearest")
        calibrate_model(folded, checkpoint.config, calibration_batches(ref.tokenizer, None, 8192), preset)
        row = {"checkpoint": str(path)}
        for name in args.variants:
            linear, embedding = VARIANTS[name]
            model = copy.deepcopy(folded)
            for module_name, module in model.named_modules():
                short = module_name.rsplit(".", 1)[-1]
                if isinstance(module, torch.nn.Linear) and short in linear:
                    module.register_forward_hook(hook(*linear[short]))
            if embedding:
                with torch.no_grad():
                    model.model.embed_tokens.weight.copy_(embedding_blocks(model.model.embed_tokens.weight))
            row[name] = round(float(np.abs(scores(model) - exact).max()), 4)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
