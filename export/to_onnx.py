"""export_onnx: checkpoint → scoring graph in ONNX (fp32, fp16, int8 or int4) → validated artifact folder."""

from __future__ import annotations

import collections
import gc
import tempfile
from pathlib import Path
from typing import Any

from qrr.runtime.errors import QrrError
from qrr.runtime.prompt import DEFAULT_MAX_LENGTH

from .graph import OPSET, trace
from .pipeline import artifact_folder, check_disk, check_options, finish, load_folded, open_source, write_artifact
from .presets import ATTENTIONS, Preset, precision_of, preset_for
from .progress import Progress

MODEL_FILE = "model.onnx"
# What stays in fp32 in an fp16 artifact: transformers' Qwen3 computes RMSNorm's mean of squares and the
# attention softmax in fp32 (the ops that overflow fp16 on outlier activations); the head is ours.
FP16_SCHEME = {
    "method": "fp16 body",
    "fp32": ["score head direction and final dot product", "RMSNorm statistics", "attention softmax"],
}
# onnxruntime's fusions that the saved graph may hold on Qwen3, by fused op (README, "The artifact")
FUSED_OPS = ("GroupQueryAttention", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
             "RotaryEmbedding", "FusedMatMul", "MatMulNBits", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
             "GatherBlockQuantized")


def export_onnx(
    source: str,
    out_dir: str | Path,
    *,
    quant: str = "fp32",
    max_length: int = DEFAULT_MAX_LENGTH,
    validate: bool = True,
    max_drop: float | None = None,
    data: str | Path | None = None,
    reference_dtype: str = "float32",
    max_pairs: int | None = None,
    revision: str | None = None,
    method: str | None = None,
    block_size: int | None = None,
    accuracy_level: int | None = None,
    kernel: str | None = None,
    rotate: bool | None = None,
    rounding: str | None = None,
    calibration: str | Path | None = None,
    eight_bit: tuple[str, ...] | None = None,
    two_pass: tuple[str, ...] | None = None,
    preset: Preset | None = None,
    stream: bool | None = None,
    attention: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Export `source` (a checkpoint folder or hub id) into the ONNX artifact folder `out_dir`.

    `quant` is fp32, fp16 (a GPU body), int8 or int4; int8 and int4 take their settings from
    qrr.export.presets.PRESETS, which `method`, `block_size` and `accuracy_level` override, and `calibration`
    (JSON Lines pairs, default: the built-in set) feeds the activation-aware methods; `kernel` and `rotate`
    override the int8 kernel and the rotation, `rounding` how int8 weights meet their grid ("gptq", the int8
    default, or "nearest"; qrr.quant.gptq), `eight_bit` what int4 keeps at 8 bits (presets.EIGHT_BIT_PARTS:
    projections and "embedding"; () for none), `two_pass` the projections whose int8 activations take two
    passes on the rowwise kernel (presets.PROJECTIONS; () for none). `preset` replaces the precision's preset whole (sweeps).
    `attention` is how the graph computes attention (graph.ATTENTIONS): "ops", standard ONNX ops (the
    default), or "gqa", onnxruntime's GroupQueryAttention (CPU only in fp32: faster on long documents, slower
    on many short rows over a long shared past; README, "Measured").
    `stream` builds the graph one layer at a time from the safetensors files (qrr.export.streamed_export: memory of
    about one layer, for 4B/8B checkpoints); None streams when the whole-model path would not fit in memory.

    Returns the manifest. With `validate`, runs the built-in evaluation (or `data`, or its first `max_pairs`
    pairs) against the model card's recipe in `reference_dtype` (float32, or bfloat16), stores validation.json, and
    raises ValidationError when max |ΔP| exceeds `max_drop` (validate_artifact).
    """
    progress = progress or Progress()
    precision = precision_of(quant)
    if preset is None:
        preset = preset_for(precision, method=method, block_size=block_size, accuracy_level=accuracy_level,
                            kernel=kernel, rotate=rotate, rounding=rounding, calibration=calibration,
                            eight_bit=eight_bit, two_pass=two_pass)
    out = check_options(out_dir, max_length, reference_dtype, max_pairs)
    attention = attention_for(attention)
    src = open_source(source, revision, progress)
    if stream is None:
        from .streamed_export import should_stream

        stream = should_stream(src.checkpoint)
    check_disk(out, src.checkpoint, precision, stream)
    with artifact_folder(out):
        if stream:
            scheme = _export_streamed(src, out, precision, preset, calibration, max_length, attention, progress)
            files = [MODEL_FILE, MODEL_FILE + ".data"]
        else:
            scheme, files = _export_whole(src, out, precision, preset, calibration, max_length, attention,
                                          progress)
        backend: dict[str, Any] = {"opset": OPSET, "streamed": stream, "attention": ATTENTION_NAMES[attention]}
        if precision != "fp16":
            with progress.step("fusing the graph offline (onnxruntime, extended level)"):
                backend["graph"] = optimize_offline(out / MODEL_FILE)
        manifest = write_artifact(out, src, format="onnx", precision=precision, scheme=scheme, max_length=max_length,
                                  model_files=files, backend=backend)
    return finish(out, manifest, src, validate=validate, data=data, max_drop=max_drop,
                  reference_dtype=reference_dtype, max_pairs=max_pairs, progress=progress)


ATTENTION_NAMES = {"gqa": "GroupQueryAttention (com.microsoft)", "ops": "standard ONNX ops"}


def attention_for(attention: str | None) -> str:
    """The graph's attention: standard ops unless `attention` asks for gqa (README, "Export")."""
    if attention is None:
        return "ops"
    if attention not in ATTENTIONS:
        raise QrrError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTIONS)}")
    if attention == "gqa":
        from qrr.runtime.onnxruntime import check_gqa_support

        check_gqa_support("--attention gqa")  # before the work: the offline fusing would fail at the end
    return attention


def _export_whole(src, out: Path, precision: str, preset: Preset | None, calibration, max_length: int,
                  attention: str, progress: Progress) -> tuple[dict[str, Any] | None, list[str]]:
    """The whole model in memory: load, fold, trace, quantize the traced graph."""
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        traced = Path(tmp) / MODEL_FILE
        model, smoothing = load_folded(src, preset, calibration, max_length, progress)
        body = "fp16" if precision == "fp16" else "fp32"
        with progress.step(f"tracing the scoring graph to ONNX ({body} body)"):
            trace(model, src.yes_id, src.no_id, traced, fp16=precision == "fp16", attention=attention)
        del model
        gc.collect()
        if preset is None:
            with progress.step(f"saving the {body} graph"):
                files = consolidate(traced, out / MODEL_FILE)
            return (FP16_SCHEME if precision == "fp16" else None), files
        from qrr.quant import quantize_weights

        rounding = "hqq" if preset.method == "hqq" else "rtn"
        with progress.step(f"quantizing to {precision} ({preset.kernel}, {preset.method})"):
            scheme = quantize_weights(
                traced, out / MODEL_FILE, bits=preset.bits, block_size=preset.block_size,
                symmetric=preset.symmetric, accuracy_level=preset.accuracy_level,
                embedding_bits=preset.embedding_bits, embedding_block=preset.embedding_block,
                method=rounding, kernel=preset.kernel, eight_bit=preset.wide, two_pass=preset.two_pass,
            )
        scheme.update(method=preset.method, smoothing=smoothing)
        return scheme, [MODEL_FILE, MODEL_FILE + ".data"]


def _export_streamed(src, out: Path, precision: str, preset: Preset | None, calibration, max_length: int,
                     attention: str, progress: Progress) -> dict[str, Any] | None:
    """One layer at a time from the safetensors files (qrr.export.streamed_export)."""
    from .streamed_export import StreamError, export_streamed

    if precision == "fp16":
        raise StreamError("the fp16 export is not streamed; export fp32, int8 or int4, or pass --no-stream")
    scheme, smoothing = export_streamed(src, out / MODEL_FILE, preset=preset, calibration=calibration,
                                        max_length=max_length, progress=progress, attention=attention)
    if scheme is None:
        return None
    scheme.update(method=preset.method, smoothing=smoothing, streamed=True)
    return scheme


def optimize_offline(path: Path) -> dict[str, Any]:
    """Replace the graph at `path` with onnxruntime's extended-level optimization of it, for the CPU.

    Extended is the portable level: fusions into onnxruntime's contrib ops, which its CPU and CUDA providers
    both run; the hardware-specific layouts of ORT_ENABLE_ALL are left to load time, and loading the saved
    graph skips the fusion passes.
    """
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
