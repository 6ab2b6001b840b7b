"""The steps every export format shares: resolve and load, calibrate and fold scales, write the artifact, validate.

export_onnx (to_onnx.py) and export_openvino (to_openvino.py) are these steps around their own conversion.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrr.runtime.errors import QrrError
from qrr.runtime.manifest import FORMAT_VERSION, MANIFEST_NAME, file_sizes, qrr_version, write_json
from qrr.runtime.pairs import load_queries
from qrr.runtime.prompt import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, TEMPLATE, pair_text

from .card import write_card
from .checkpoint import Checkpoint, load_model, load_tokenizer, resolve, yes_no_ids
from .graph import INPUT_NAMES, OUTPUT_NAMES
from .presets import CALIBRATION_PAIRS, Preset, check_max_pairs, check_reference_dtype
from .progress import Progress

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class Source:
    """A resolved checkpoint with its tokenizer and the ids of the two answer tokens."""

    checkpoint: Checkpoint
    tokenizer: Any  # transformers' fast tokenizer
    yes_id: int
    no_id: int


def check_options(out_dir: str | Path, max_length: object, reference_dtype: object, max_pairs: object) -> Path:
    """Refuse an output folder that holds anything, a max_length the graph cannot use, and validation options that
    validate_artifact would refuse after the export."""
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 16:
        raise QrrError(f"max_length must be an integer of at least 16, got {max_length!r}")
    check_reference_dtype(reference_dtype)
    check_max_pairs(max_pairs)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QrrError(f"output folder {out} exists and is not empty; choose a new folder or remove it")
    return out


# bytes an artifact holds per weight: int8/int4 codes plus an fp32 scale per block of 32, the embedding included
ARTIFACT_BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.125, "int4": 0.625}


def check_disk(out: Path, checkpoint: Checkpoint, precision: str, stream: bool) -> None:
    """Refuse before any work when the file system of `out` cannot hold what the export writes there: the artifact,
    the fused copy that the offline optimizer writes beside it, and (whole-model path) the traced fp32 graph. A full
    disk found at the end would cost the hours of a 4B/8B export and end in a backend's own error."""
    from types import SimpleNamespace

    from .standin import qwen3_tensor_shapes

    config = dict(checkpoint.config)
    config.setdefault("tie_word_embeddings", False)
    try:
        # the LM head is not in the artifact: the score reads two of its rows
        weights = sum(math.prod(shape) for name, shape, _ in qwen3_tensor_shapes(SimpleNamespace(**config))
                      if name != "lm_head.weight")
    except (AttributeError, TypeError, ZeroDivisionError):
        return  # a config without the Qwen3 fields: its own check names what is missing
    artifact = weights * ARTIFACT_BYTES_PER_WEIGHT.get(precision, 4.0)
    needed = 2 * artifact + (0 if stream else 4 * weights)
    folder = out
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise QrrError(
            f"not enough disk space: the {precision} export of this checkpoint ({weights / 1e9:.2f}B weights) writes "
            f"about {needed / 1e9:.1f} GB into {out} (an artifact of about {artifact / 1e9:.1f} GB and its working "
            f"copies), and that file system has {free / 1e9:.1f} GB free; free some space or choose an output folder "
            "on another disk"
        )


def open_source(source: str, revision: str | None, progress: Progress) -> Source:
    with progress.step(f"resolving {source}"):
        checkpoint = resolve(source, revision)
        tokenizer = load_tokenizer(checkpoint)
        yes_id, no_id = yes_no_ids(tokenizer, source)
    return Source(checkpoint, tokenizer, yes_id, no_id)


def load_folded(
    src: Source, preset: Preset | None, calibration: str | Path | None, max_length: int, progress: Progress
) -> tuple[Any, dict[str, Any] | None]:
    """The checkpoint in fp32, with the preset's activation-aware scales folded in; and what was folded."""
    with progress.step("loading the checkpoint in fp32"):
        model = load_model(src.checkpoint, attn_implementation="eager")
    if preset is None or not (preset.scaling or preset.rotate or preset.gptq):
        return model, None
    folded: dict[str, Any] = {}
    if preset.rotate:
        from qrr.quant.rotate import rotate

        with progress.step("rotating the residual stream and the values"):
            folded["rotation"] = rotate(model)
    if preset.scaling or preset.gptq:
        from .streamed_export import calibrate_model, calibration_summary

        what = " and ".join(([f"{preset.method} scales"] if preset.scaling else []) +
                            (["GPTQ rounding"] if preset.gptq else []))
        layers = len(model.model.layers)
        with progress.step(f"calibrating {what}, layer by layer", total=layers, unit="layer") as step:
            batches = calibration_batches(src.tokenizer, calibration, max_length)
            alphas = calibrate_model(model, src.checkpoint.config, batches, preset, step)
            folded.update(calibration_summary(preset, alphas, calibration, batches))
    return model, folded


def calibration_batches(tokenizer, calibration: str | Path | None, max_length: int) -> list[dict[str, Any]]:
    """The calibration pairs (a seeded sample of CALIBRATION_PAIRS), tokenized by the recipe in batches of 8."""
    from .reference import RecipeTokenizer

    pairs = [(q, d) for q in load_queries(calibration) for d in q.documents]
    random.Random(0).shuffle(pairs)
    pairs = pairs[:CALIBRATION_PAIRS]
    texts = [pair_text(q.query, d, q.instruction) for q, d in pairs]
    # batches of similar lengths: a batch is padded to its longest pair, and on 2 cores the padding of one
    # long document in a batch of short ones was most of the calibration time (every layer of a 4B/8B pays it)
    texts.sort(key=lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]))
    return [{"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
            for inputs in RecipeTokenizer(tokenizer, max_length).batches(texts)]


def calibration_info(calibration: str | Path | None, batches: list[dict[str, Any]]) -> dict[str, Any]:
    return {"data": "built-in" if calibration is None else str(calibration),
            "pairs": sum(len(b["input_ids"]) for b in batches)}


@contextlib.contextmanager
def artifact_folder(out: Path) -> Iterator[Path]:
    """Create `out`; remove it again if the export fails or is interrupted before the manifest is written."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def write_artifact(
    out: Path,
    src: Source,
    *,
    format: str,
    precision: str,
    scheme: dict[str, Any] | None,
    max_length: int,
    model_files: list[str],
    backend: dict[str, Any],
) -> dict[str, Any]:
    """Save the tokenizer, the manifest and the model card beside the model files; returns the manifest.

    `model_files` starts with the graph file; `backend` holds the format's own manifest fields.
    """
    src.tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    cfg = src.checkpoint.config
    tok = src.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    manifest = {
        "format_version": FORMAT_VERSION,
        "qrr_version": qrr_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "format": format,
        "precision": precision,
        "quantization": scheme,
        "model_file": model_files[0],
        "tokenizer_file": TOKENIZER_FILE,
        **backend,
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "padding": "right",
        "score": "P(yes) = sigmoid(score_logit), score_logit = h_last · (W[yes] − W[no]) in fp32",
        "yes_token_id": src.yes_id,
        "no_token_id": src.no_id,
        "pad_token_id": int(pad if pad is not None else 0),
        "prompt": {"prefix": PREFIX, "suffix": SUFFIX, "template": TEMPLATE, "default_instruction": DEFAULT_INSTRUCTION},
        "max_length": max_length,
        "source": {
            "checkpoint": src.checkpoint.source,
            "revision": src.checkpoint.revision,
            "model_type": cfg.get("model_type"),
            "hidden_size": cfg.get("hidden_size"),
            "num_hidden_layers": cfg.get("num_hidden_layers"),
            "vocab_size": cfg.get("vocab_size"),
        },
        "files": file_sizes(out, [*model_files, TOKENIZER_FILE]),
        "validation": None,
    }
    write_json(out / MANIFEST_NAME, manifest)
    write_card(out, manifest)
    return manifest


def finish(
    out: Path,
    manifest: dict[str, Any],
    src: Source,
    *,
    validate: bool,
    data: str | Path | None,
    max_drop: float | None,
    reference_dtype: str,
    max_pairs: int | None,
    progress: Progress,
) -> dict[str, Any]:
    """Report the artifact's size, validate it against the reference (validate_artifact) when asked; returns the
    manifest."""
    progress.log(f"artifact written to {out} ({sum(manifest['files'].values()) / 2**20:.1f} MiB)")
    if validate:
        from .report import format_report, summary
        from .validate import validate_artifact

        progress.log("validating against the PyTorch reference")
        report = validate_artifact(out, src.checkpoint.source, data=data, max_drop=max_drop,
                                   reference_dtype=reference_dtype, max_pairs=max_pairs, progress=progress)
        progress.log(format_report(report))
        manifest["validation"] = summary(report)
    progress.log(f"total {progress.total():.1f} s")
    return manifest
