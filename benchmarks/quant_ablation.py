"""Which quantized inputs move the scores: the int8 preset (or with `--preset int4` the int4 one) emulated in
PyTorch, one group of inputs at a time.

The checkpoint is rotated and smoothed exactly as `qrr-export --quant int8` does (qrr.export.pipeline), then
run by the recipe on the built-in pairs with the rowwise kernel's rounding (int8 activations per row × int8
weights per output column, qrr.quant.smooth.fake_quant) applied only where a variant says, and the embedding
in 8-bit blocks of 32. Max |ΔP| against the unquantized checkpoint, per variant:

  all            every linear layer and the embedding in one int8 pass, as the artifact exported with
                 `--rounding nearest --two-pass none` (matches
                 its figure; the default GPTQ rounding moves the weights, not the inputs this ablation splits)
  emb            the embedding only
  qkv, q, k, v, o, gateup, down     those projections only (activations and weights)
  qkv-act, qkv-wt          q/k/v activations only, weights only
  all-but-qkv    everything except q/k/v, which keep float activations and weights
  qkv-float-act  everything, but q/k/v read float activations (weights int8 per column)
  k-act          the k_proj activations only
  all-qkv-act2, all-qk-act2, all-kv-act2, all-k-act2
                 everything, with those projections' activations in two int8 passes (the row, then its
                 rounding residual at 1/254 of its step: qrr.quant.onnx_quant.residual_rows); the int8 preset
                 reads k and v that way, which these variants compare (all: one pass everywhere)
  fp16           every linear layer's activations and weights rounded to fp16, the embedding kept (the scale
                 of what a finer format leaves)

With `--preset int4` the int4 preset's rotation and AWQ scales come first and "rounded" means as MatMulNBits
rounds: 4-bit asymmetric weight blocks of 32, int8 activations per block, the embedding at the preset's bits.
Its mixed-precision candidates put some parts at 8 bits (with `(bits, block)`, in blocks of their own):
kv8, kv8-emb8, qkv8-emb8, k8-emb8, emb8, qkv8-emb8-b128 (blocks of 128), kv8-q16-emb8 (q at 4 bits in blocks of
16). "all" is 4 bits throughout (the int4 preset before mixed precision); the preset now is qkv8-emb8-b128.

    python benchmarks/quant_ablation.py out/sweep/family-tiny-norm-256x2 out/sweep/family-tiny-plain
    python benchmarks/quant_ablation.py out/sweep/family-tiny-* --preset int4 --variants all qkv8-emb8-b128
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

QKV = ("q_proj", "k_proj", "v_proj")
LINEAR = (*QKV, "o_proj", "gate_proj", "up_proj", "down_proj")
# variant → (projection → (activations, weights): True as the preset rounds, False float, "fp16", or for the
# weights a bit width or (bits, block)), the embedding: True as the preset, False float, bits or (bits, block)
VARIANTS = {
    "all": ({p: (True, True) for p in LINEAR}, True),
    "emb": ({}, True),
    "qkv": ({p: (True, True) for p in QKV}, False),
    "q": ({"q_proj": (True, True)}, False),
    "k": ({"k_proj": (True, True)}, False),
    "v": ({"v_proj": (True, True)}, False),
    "o": ({"o_proj": (True, True)}, False),
    "gateup": ({p: (True, True) for p in ("gate_proj", "up_proj")}, False),
    "down": ({"down_proj": (True, True)}, False),
    "qkv-act": ({p: (True, False) for p in QKV}, False),
    "qkv-wt": ({p: (False, True) for p in QKV}, False),
    "all-but-qkv": ({p: (True, True) for p in LINEAR if p not in QKV}, True),
    "qkv-float-act": ({p: (p not in QKV, True) for p in LINEAR}, True),
    "k-act": ({"k_proj": (True, False)}, False),
    # q/k/v activations in two int8 passes (the row, then what its rounding left, each with its own scale)
    "all-qkv-act2": ({p: ("2x8" if p in QKV else True, True) for p in LINEAR}, True),
    "all-k-act2": ({p: ("2x8" if p == "k_proj" else True, True) for p in LINEAR}, True),
    "all-kv-act2": ({p: ("2x8" if p in ("k_proj", "v_proj") else True, True) for p in LINEAR}, True),
    "all-qk-act2": ({p: ("2x8" if p in ("q_proj", "k_proj") else True, True) for p in LINEAR}, True),
    "fp16": ({p: ("fp16", "fp16") for p in LINEAR}, False),
    # mixed precision for the int4 preset: some projections' weights (and the embedding) at 8 bits
    "kv8": ({p: (True, 8 if p in ("k_proj", "v_proj") else True) for p in LINEAR}, True),
    "kv8-emb8": ({p: (True, 8 if p in ("k_proj", "v_proj") else True) for p in LINEAR}, 8),
    "qkv8-emb8": ({p: (True, 8 if p in QKV else True) for p in LINEAR}, 8),
    "k8-emb8": ({p: (True, 8 if p == "k_proj" else True) for p in LINEAR}, 8),
    "emb8": ({p: (True, True) for p in LINEAR}, 8),
    "qkv8-emb8-b128": ({p: (True, (8, 128) if p in QKV else True) for p in LINEAR}, (8, 128)),
    "kv8-q16-emb8": ({p: (True, 8 if p in ("k_proj", "v_proj") else (4, 16) if p == "q_proj" else True)
                      for p in LINEAR}, 8),
}


def embedding_blocks(table, block: int = 32, bits: int = 8):
    """The table as the artifact's GatherBlockQuantized holds it at `bits` (qrr.quant.onnx_quant.embedding_blocks),
    dequantized."""
    import numpy as np
    import torch

    from qrr.quant.onnx_quant import embedding_blocks as quantize

    values, scale, zero = quantize(table.detach().numpy(), block, bits=bits)
    if bits == 4:  # two to a byte, low nibble first
        values = np.stack([values & 15, values >> 4], -1).reshape(values.shape[0], -1)
        zero = np.stack([zero & 15, zero >> 4], -1).reshape(zero.shape[0], -1)[:, : scale.shape[1]]
    rows, cols = table.shape
    codes = values.reshape(rows, cols // block, block).astype("float32") - zero[..., None]
    return torch.from_numpy((codes * scale[..., None]).reshape(rows, cols))


def hook(acts: bool | str, weights: bool | str, preset):
    """The projection as `preset`'s kernel rounds it (qrr.quant.smooth.kernel_matmul), its activations and its
    weights each rounded or not: rowwise, int8 per row × int8 per output column; matmulnbits, `bits` in blocks
    and (accuracy level 4) int8 activations per block of the same size."""
    from qrr.quant.smooth import fake_quant

    rowwise = preset.kernel == "rowwise"

    def forward(module, inputs, output):
        x = inputs[0]
        rows = x.reshape(-1, x.shape[-1])
        own_block = isinstance(weights, tuple)  # MatMulNBits quantizes activations in the node's own blocks
        act_block = rows.shape[1] if rowwise else weights[1] if own_block else preset.block_size
        if acts == "fp16":
            xq = rows.half().float()
        elif acts == "2x8":
            # as qrr.quant.onnx_quant.residual_rows: the residual at a fixed scale, the row's step / 254
            step = (rows.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-30)
            first = (rows / step).round() * step
            xq = first + ((rows - first) / (step / 254)).round().clamp(-127, 127) * (step / 254)
        elif acts and (rowwise or preset.accuracy_level == 4):
            xq = fake_quant(rows, 8, act_block, True)
        else:
            xq = rows
        w = module.weight
        if weights == "fp16":
            w = w.half().float()
        elif weights:  # True: the preset's grid; a number: that many bits on it; (bits, block): that grid
            bits, block = ((preset.bits, preset.block_size) if weights is True else
                           (weights, preset.block_size) if isinstance(weights, int) else weights)
            w = (fake_quant(w, 8, w.shape[1], True) if rowwise
                 else fake_quant(w, bits, block, preset.symmetric))
        return (xq @ w.T).reshape(*x.shape[:-1], -1)

    return forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--preset", choices=("int8", "int4"), default="int8",
                        help="whose rotation, scales and grid to emulate (default int8)")
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
        preset = dataclasses.replace(PRESETS[args.preset], rounding="nearest")
        if preset.bits == 4:  # the variants name their 8-bit parts: start from 4 bits throughout
            preset = dataclasses.replace(preset, eight_bit=(), embedding_bits=4, embedding_block=32)
        calibrate_model(folded, checkpoint.config, calibration_batches(ref.tokenizer, None, 8192), preset)
        row = {"checkpoint": str(path)}
        for name in args.variants:
            linear, embedding = VARIANTS[name]
            model = copy.deepcopy(folded)
            for module_name, module in model.named_modules():
                short = module_name.rsplit(".", 1)[-1]
                if isinstance(module, torch.nn.Linear) and short in linear:
                    module.register_forward_hook(hook(*linear[short], preset))
            if embedding:  # True: the preset's embedding bits; a number: that many; (bits, block)
                with torch.no_grad():
                    bits, block = ((preset.embedding_bits, preset.embedding_block or 32) if embedding is True else
                                   (embedding, preset.embedding_block or 32) if isinstance(embedding, int)
                                   else embedding)
                    table = model.model.embed_tokens.weight
                    model.model.embed_tokens.weight.copy_(embedding_blocks(table, min(block, table.shape[1]), bits))
            row[name] = round(float(np.abs(scores(model) - exact).max()), 4)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
