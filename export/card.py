"""The artifact's model card, README.md: YAML front matter the Hugging Face hub reads, what the folder is, its
validation, and how to load it. Written with the artifact and again after each validation, so the folder can be
uploaded to the hub as it is.

The card is not in the manifest's file list: people edit a card on the hub, which must not make the artifact
fail its size check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qrr.runtime.hub import CARD_NAME, HUB_ID


def model_card(manifest: dict[str, Any]) -> str:
    source = manifest.get("source") or {}
    checkpoint = str(source.get("checkpoint") or "")
    hub_source = bool(HUB_ID.match(checkpoint)) and not Path(checkpoint).exists()
    fmt, precision = manifest["format"], manifest["precision"]
    front = ["library_name: qrr", "pipeline_tag: text-ranking"]
    if hub_source:  # a local folder is no repo id; the hub would refuse it
        front.append(f"base_model: {checkpoint}")
        if precision in ("int8", "int4"):
            front.append("base_model_relation: quantized")
    front.append("tags:")
    front += [f"- {tag}" for tag in ("qrr", "reranker", "qwen3", fmt, precision)]
    revision = f" (revision `{source['revision']}`)" if source.get("revision") else ""
    engine = {"onnx": "an ONNX scoring graph for onnxruntime", "openvino": "an OpenVINO IR scoring graph"}.get(fmt, fmt)
    size = sum(manifest["files"].values()) / 2**20
    weights = f"{precision} weights"
    quant = manifest.get("quantization") or {}
    linear = quant.get("linear") or {}
    wide = [*(linear.get("eight_bit") or {}).get("projections", [])]
    if precision == "int4" and (quant.get("embedding") or {}).get("bits") == 8:
        wide.append("the embedding")
    if precision == "int4" and wide:
        weights += f"; {', '.join(wide)} at 8 bits"
    two_pass = (linear.get("two_pass") or {}).get("projections")
    if two_pass:
        weights += f"; {', '.join(two_pass)} reading their activations in two int8 passes"
    lines = [
        "---", *front, "---", "",
        f"# {checkpoint.rstrip('/').split('/')[-1] or 'Qwen3-Reranker'} — qrr {fmt} {precision}", "",
        f"A qrr artifact of `{checkpoint}`{revision}: {engine} ({weights}), its tokenizer and the "
        f"manifest `qrr.json`, {size:.1f} MiB in all. It computes the Qwen3-Reranker relevance score P(yes) of "
        "(query, document) pairs without torch or transformers.", "",
        "## Validation", "",
        *validation_lines(manifest.get("validation")), "",
        "## Use it", "",
        "```python",
        "from qrr.runtime import Reranker",
        "",
        'rr = Reranker.from_pretrained("ORG/NAME")   # the repo this folder is uploaded to; or Reranker("path/to/folder")',
        'rr.rerank("what is the capital of China?", ["Beijing is the capital of China.", "Gravity is a force."])',
        "```",
        "",
        "From the command line: `qrr rerank ORG/NAME --query \"…\" --docs docs.txt`; as a server: "
        "`qrr serve path/to/folder`. `from_pretrained` needs the `hub` extra of qrr; `HF_HUB_OFFLINE=1` loads "
        "from the Hugging Face cache.", "",
        f"Made by qrr {manifest.get('qrr_version', '?')} on {manifest.get('created', '?')}; prompt template, "
        f"maximum length ({manifest['max_length']} tokens) and the whole quantization scheme are in `qrr.json`.", "",
    ]
    return "\n".join(lines)


def validation_lines(summary: dict[str, Any] | None) -> list[str]:
    """The validation summary of the manifest as a Markdown table, or a line saying there is none."""
    if not summary:
        return ["Not validated yet: `qrr validate FOLDER --reference CHECKPOINT` compares it with the PyTorch "
                "reference and writes the figures here."]
    verdict = "passed" if summary["passed"] else "FAILED"
    rows = [
        ("max \\|ΔP(yes)\\|", f"{summary['max_abs_dp']:.3g} (allowed {summary['max_drop']:g}: {verdict})"),
        ("mean \\|ΔP(yes)\\|", f"{summary['mean_abs_dp']:.3g}"),
        ("Spearman per query, mean", "n/a" if summary["spearman_mean"] is None else f"{summary['spearman_mean']:.4f}"),
        ("top-1 agreement", f"{summary['top1_agreement']:.1%}"),
        ("ms per pair, artifact / reference", f"{summary['ms_per_pair']:.1f} / {summary['reference_ms_per_pair']:.1f}"),
    ]
    data = "qrr's built-in evaluation set" if summary["data"] == "built-in" else f"`{summary['data']}`"
    if summary.get("subset"):
        data += f", {summary['subset']}"
    dtype = "bf16" if summary.get("reference_dtype") == "bfloat16" else "fp32"
    how = ", streamed layer by layer (its ms per pair is that pass's, not the recipe's latency)" \
        if summary.get("reference_streamed") else ""
    return [
        f"Against the model card's PyTorch recipe in {dtype}{how} on {data} ({verdict}):", "",
        "| metric | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows),
    ]


def write_card(folder: Path, manifest: dict[str, Any]) -> Path:
    path = Path(folder) / CARD_NAME
    path.write_text(model_card(manifest), encoding="utf-8")
    return path
