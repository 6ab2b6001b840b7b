"""export_onnx: checkpoint → scoring graph in ONNX (fp32 or int8) → validated artifact folder."""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from qrr.runtime.errors import QrrError
from qrr.runtime.manifest import FORMAT_VERSION, MANIFEST_NAME, file_sizes, qrr_version, write_json
from qrr.runtime.prompt import DEFAULT_INSTRUCTION, DEFAULT_MAX_LENGTH, PREFIX, SUFFIX, TEMPLATE, pair_text

from .checkpoint import Checkpoint, load_model, load_tokenizer, resolve, yes_no_ids
from .graph import INPUT_NAMES, OUTPUT_NAMES, ScoringModule
from .progress import Progress

QUANT_CHOICES = ("none", "int8", "int4", "fp16")
FORMATS = ("onnx", "openvino")
OPENVINO_QUANT = ("none", "int8", "int4")
METHODS = ("rtn", "hqq", "awq", "smoothquant")
SCALING_METHODS = ("awq", "smoothquant")  # fold activation-aware scales, from calibration pairs
# Chosen by measurement (README, "Quantization"): accuracy first, speed second.
PRESETS: dict[str, dict[str, Any]] = {
    "int8": {"bits": 8, "block_size": 32, "symmetric": True, "accuracy_level": 4, "embedding_bits": 8,
             "method": "smoothquant"},
    "int4": {"bits": 4, "block_size": 32, "symmetric": False, "accuracy_level": 4, "embedding_bits": 4,
             "method": "awq"},
}
CALIBRATION_PAIRS = 64
OPSET = 17
TOKENIZER_FILE = "tokenizer.json"
MODEL_FILE = "model.onnx"


def export_onnx(
    source: str,
    out_dir: str | Path,
    *,
    quant: str = "none",
    format: str = "onnx",
    max_length: int = DEFAULT_MAX_LENGTH,
    validate: bool = True,
    max_drop: float | None = None,
    data: str | Path | None = None,
    revision: str | None = None,
    method: str | None = None,
    block_size: int | None = None,
    accuracy_level: int | None = None,
    calibration: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Export `source` (a checkpoint folder or hub id) into the artifact folder `out_dir`.

    int8 and int4 take their defaults from PRESETS; `method`, `block_size` and `accuracy_level` override them,
    `calibration` (JSON Lines pairs, default: the built-in set) feeds the activation-aware methods.

    Returns the manifest. With `validate`, runs the built-in evaluation (or `data`) against the model card's
    fp32 recipe, stores validation.json, and raises ValidationError when max |ΔP| exceeds `max_drop`.
    """
    progress = progress or Progress()
    if format not in FORMATS:
        raise QrrError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if quant not in QUANT_CHOICES:
        raise QrrError(f"unknown quant {quant!r}; choose one of {', '.join(QUANT_CHOICES)}")
    if format == "openvino":
        if quant not in OPENVINO_QUANT:
            raise QrrError(f"--quant {quant} is an ONNX option; OpenVINO artifacts take {', '.join(OPENVINO_QUANT)}")
        if accuracy_level is not None:
            raise QrrError("accuracy_level is onnxruntime's MatMulNBits setting; OpenVINO artifacts do not take it")
        _check_openvino()
    if not isinstance(max_length, int) or max_length < 16:
        raise QrrError(f"max_length must be an integer of at least 16, got {max_length!r}")
    settings = dict(PRESETS.get(quant, {}))
    if quant in PRESETS:
        for key, value in (("method", method), ("block_size", block_size), ("accuracy_level", accuracy_level)):
            if value is not None:
                settings[key] = value
        if settings["method"] not in METHODS:
            raise QrrError(f"unknown method {settings['method']!r}; choose one of {', '.join(METHODS)}")
        if calibration is not None and settings["method"] not in SCALING_METHODS:
            raise QrrError(f"calibration pairs feed awq and smoothquant; method {settings['method']} uses none")
    elif method is not None or block_size is not None or accuracy_level is not None or calibration is not None:
        raise QrrError(f"method, block size, accuracy level and calibration apply to int8 and int4, not {quant}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QrrError(f"output folder {out} exists and is not empty; choose a new folder or remove it")

    with progress.step(f"resolving {source}"):
        checkpoint = resolve(source, revision)
        tokenizer = load_tokenizer(checkpoint)
        yes_id, no_id = yes_no_ids(tokenizer, source)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
            fp32_path = Path(tmp) / MODEL_FILE
            with progress.step("loading the checkpoint in fp32"):
                model = load_model(checkpoint, attn_implementation="eager")
            smoothing = None
            if settings.get("method") in SCALING_METHODS:
                with progress.step(f"calibrating {settings['method']} scales"):
                    smoothing = smooth(model, tokenizer, settings, calibration, max_length)
            body = "fp16" if quant == "fp16" else "fp32"
            with progress.step(f"tracing the scoring graph to ONNX ({body} body)"):
                trace(model, yes_id, no_id, fp32_path, fp16=quant == "fp16")
            del model
            gc.collect()
            if format == "openvino":
                from qrr.quant.openvino import MODEL_FILE as OV_MODEL, WEIGHTS_FILE, to_openvino

                bits = settings.get("bits")
                with progress.step(f"converting to OpenVINO IR{f' and compressing to {quant}' if bits else ''}"):
                    scheme = to_openvino(fp32_path, out, bits=bits, group_size=settings.get("block_size"))
                if scheme is not None:
                    scheme["method"] = settings["method"]
                    scheme["smoothing"] = smoothing
                files = [OV_MODEL, WEIGHTS_FILE]
                precision = "fp32" if quant == "none" else quant
            elif quant in ("none", "fp16"):
                with progress.step(f"saving the {body} graph"):
                    files = consolidate(fp32_path, out / MODEL_FILE)
                precision, scheme = body, FP16_SCHEME if quant == "fp16" else None
            else:
                from qrr.quant import quantize_weights

                rounding = "hqq" if settings["method"] == "hqq" else "rtn"
                with progress.step(f"quantizing to {quant} ({settings['block_size']}-blocks, {settings['method']})"):
                    scheme = quantize_weights(
                        fp32_path, out / MODEL_FILE, bits=settings["bits"], block_size=settings["block_size"],
                        symmetric=settings["symmetric"], accuracy_level=settings["accuracy_level"],
                        embedding_bits=settings["embedding_bits"], method=rounding,
                    )
                scheme["method"] = settings["method"]
                scheme["smoothing"] = smoothing
                files = [MODEL_FILE, MODEL_FILE + ".data"]
                precision = quant
        graph = None
        if format == "onnx" and quant != "fp16":
            with progress.step("fusing the graph offline (onnxruntime, extended level)"):
                graph = optimize_offline(out / MODEL_FILE)
        tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
        if format == "openvino":
            backend = {"openvino": {"properties": openvino_properties(precision)}}
        else:
            backend = {"graph": graph} if graph is not None else {}
        manifest = build_manifest(checkpoint, tokenizer, yes_id, no_id, precision, scheme, max_length, out, files,
                                  format, backend)
        write_json(out / MANIFEST_NAME, manifest)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    progress.log(f"artifact written to {out} ({sum(manifest['files'].values()) / 2**20:.1f} MiB)")

    if validate:
        from .validate import format_report, summary, validate_artifact

        with progress.step("validating against the PyTorch reference"):
            report = validate_artifact(out, checkpoint.source, data=data, max_drop=max_drop, log=progress.log)
        progress.log(format_report(report))
        manifest["validation"] = summary(report)
    progress.log(f"total {progress.total():.1f} s")
    return manifest


# What stays in fp32 in an fp16 artifact: transformers' Qwen3 computes RMSNorm's mean of squares and the
# attention softmax in fp32 (the ops that overflow fp16 on outlier activations); the head is ours.
FP16_SCHEME = {
    "method": "fp16 body",
    "fp32": ["score head direction and final dot product", "RMSNorm statistics", "attention softmax"],
}


def _check_openvino() -> None:
    import importlib.util

    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        raise QrrError(f"--format openvino needs {' and '.join(missing)}: pip install 'qrr[openvino]'")


def openvino_properties(precision: str) -> dict[str, str]:
    """The CPU plugin's properties that change numbers, fixed per artifact (runtime/openvino.py).

    Always f32 compute (the plugin's bf16 default moved P(yes) by 0.006 on the 0.6B shape) and an f32 KV
    cache. Compressed weights also get int8 activations per token in groups of 32, which the SmoothQuant /
    AWQ folding makes safe: 1.8x faster on workload A of the 0.6B shape (int8: 707 vs 1244 ms/pair).
    """
    from qrr.runtime.openvino import DEFAULT_PROPERTIES

    properties = dict(DEFAULT_PROPERTIES)
    if precision in ("int8", "int4"):
        properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = "32"
    return properties


def smooth(model, tokenizer, settings: dict[str, Any], calibration, max_length: int) -> dict[str, Any]:
    """Fold activation-aware scales into the torch model, from the calibration pairs' activations."""
    import random

    from qrr.quant import smooth as sm

    from .reference import RecipeTokenizer
    from .validate import load_pairs

    queries = load_pairs(calibration)
    pairs = [(q, d) for q in queries for d in q.documents]
    random.Random(0).shuffle(pairs)
    pairs = pairs[:CALIBRATION_PAIRS]
    recipe = RecipeTokenizer(tokenizer, max_length)
    batches = []
    for start in range(0, len(pairs), 8):
        texts = [pair_text(q.query, d, q.instruction) for q, d in pairs[start : start + 8]]
        inputs = recipe.process_inputs(texts)
        batches.append({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]})
    stats = sm.collect_stats(model, batches)
    if settings["method"] == "smoothquant":
        info = sm.smoothquant(model, stats)
    else:
        info = sm.awq(model, stats, bits=settings["bits"], block=settings["block_size"], symmetric=settings["symmetric"])
    info["calibration"] = {"data": "built-in" if calibration is None else str(calibration), "pairs": len(pairs)}
    return info


def trace(model, yes_id: int, no_id: int, path: Path, *, fp16: bool = False) -> None:
    import torch

    module = ScoringModule(model, yes_id, no_id).eval()
    if fp16:
        module.body.half()  # the head direction was taken in fp32 above and stays fp32
    dtype = torch.float16 if fp16 else torch.float32
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.long)
    layers = len(module.body.layers)
    past = torch.zeros(layers, 2, module.kv_heads, 3, module.head_dim, dtype=dtype)
    keep = torch.tensor(2, dtype=torch.long)
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "past_key_values": {3: "past_sequence"},
        "score_logit": {0: "batch"},
        "present": {3: "present_sequence"},
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False) keeps batch and lengths dynamic through the mask arithmetic.
        torch.onnx.export(
            module,
            (ids, mask, past, keep),
            str(path),
            dynamo=False,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes=axes,
            opset_version=OPSET,
        )


# onnxruntime's fusions that the saved graph holds, by fused op (README, "Fused graphs")
FUSED_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RotaryEmbedding", "FusedMatMul",
             "QuickGelu", "MultiHeadAttention", "GroupQueryAttention", "MatMulNBits", "GatherBlockQuantized")


def optimize_offline(path: Path) -> dict[str, Any]:
    """Replace the graph at `path` with onnxruntime's extended-level optimization of it, for the CPU.

    Extended is the portable level: fusions into onnxruntime's contrib ops, which its CPU and CUDA providers
    both run; the hardware-specific layouts of ORT_ENABLE_ALL are left to load time. Loading the saved
    graph skips the fusion passes (0.6B int8: session created in 0.6-0.9 s instead of 1.1-1.7 s).
    """
    import collections

    import onnx
    import onnxruntime as ort

    before = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".optimize-") as tmp:
        target = Path(tmp) / path.name
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(target)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", path.name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for name in (path.name, path.name + ".data"):
            (Path(tmp) / name).replace(path.parent / name)
    after = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {
        "optimization": f"onnxruntime {ort.__version__} ORT_ENABLE_EXTENDED, offline, CPU provider",
        "nodes": {"before": sum(before.values()), "after": sum(after.values())},
        "fused_ops": {op: after[op] for op in FUSED_OPS if after[op]},
    }


def consolidate(src: Path, dst: Path) -> list[str]:
    """Re-save a traced graph with its weights in one external file (the exporter may scatter them)."""
    import onnx

    from qrr.quant import save_model

    return save_model(onnx.load(str(src)), dst)


def build_manifest(
    checkpoint: Checkpoint,
    tokenizer,
    yes_id: int,
    no_id: int,
    precision: str,
    scheme: dict[str, Any] | None,
    max_length: int,
    out: Path,
    model_files: list[str],
    format: str = "onnx",
    backend: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest; `model_files` starts with the graph file, `backend` holds the format's own fields."""
    cfg = checkpoint.config
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "format_version": FORMAT_VERSION,
        "qrr_version": qrr_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "format": format,
        "precision": precision,
        "quantization": scheme,
        "model_file": model_files[0],
        "tokenizer_file": TOKENIZER_FILE,
        **({"opset": OPSET} if format == "onnx" else {}),
        **(backend or {}),
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "padding": "right",
        "score": "P(yes) = sigmoid(score_logit), score_logit = h_last · (W[yes] − W[no]) in fp32",
        "yes_token_id": yes_id,
        "no_token_id": no_id,
        "pad_token_id": int(pad if pad is not None else 0),
        "prompt": {
            "prefix": PREFIX,
            "suffix": SUFFIX,
            "template": TEMPLATE,
            "default_instruction": DEFAULT_INSTRUCTION,
        },
        "max_length": max_length,
        "source": {
            "checkpoint": checkpoint.source,
            "revision": checkpoint.revision,
            "model_type": cfg.get("model_type"),
            "hidden_size": cfg.get("hidden_size"),
            "num_hidden_layers": cfg.get("num_hidden_layers"),
            "vocab_size": cfg.get("vocab_size"),
        },
        "files": file_sizes(out, [*model_files, TOKENIZER_FILE]),
        "validation": None,
    }
