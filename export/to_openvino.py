"""export_openvino: checkpoint → the same scoring graph as OpenVINO IR (fp32, int8 or int4) → validated artifact.

The graph is traced to ONNX exactly as for export_onnx, then converted with `ov.convert_model`; int8 and int4
compress its weights with NNCF (qrr.quant.openvino) after the same activation-aware scales were folded in.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

from qrr.runtime.errors import QrrError
from qrr.runtime.openvino import DEFAULT_PROPERTIES
from qrr.runtime.prompt import DEFAULT_MAX_LENGTH

from .graph import trace
from .pipeline import artifact_folder, check_disk, check_options, finish, load_folded, open_source, write_artifact
from .presets import OPENVINO_PRECISIONS, Preset, precision_of, preset_for
from .progress import Progress

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
EXTRA = "pip install -e '.[openvino,export]' in the qrr clone (or pip install openvino nncf)"


def export_openvino(
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
    rotate: bool | None = None,
    calibration: str | Path | None = None,
    eight_bit: tuple[str, ...] | None = None,
    preset: Preset | None = None,
    stream: bool | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Export `source` into the OpenVINO artifact folder `out_dir`; the arguments are export_onnx's.

    `quant` is fp32, int8 (NNCF per output channel) or int4 (NNCF groups of `block_size`); the CPU
    properties that change numbers are fixed in the manifest (openvino_properties).

    `stream` (None: when the whole model would not fit in memory) builds the graph one layer at a time as
    export_onnx does, quantized by qrr's own ONNX quantizers (the same weights as the ONNX artifact), and
    converts that graph: NNCF needs the whole fp32 model in memory.
    """
    progress = progress or Progress()
    precision = precision_of(quant)
    if precision not in OPENVINO_PRECISIONS:
        raise QrrError(f"--quant {quant} is an ONNX option; OpenVINO artifacts take {', '.join(OPENVINO_PRECISIONS)}")
    if preset is None:
        preset = preset_for(precision, method=method, block_size=block_size, rotate=rotate, calibration=calibration,
                            eight_bit=eight_bit)
    if preset is not None and preset.gptq:
        # NNCF (and the streamed path's MatMulNBits) round onto grids of their own: GPTQ's choices would be re-rounded
        preset = dataclasses.replace(preset, rounding="nearest")
    if preset is not None and preset.two_pass:
        # the CPU plugin quantizes activations itself, in groups of 32 per token (openvino_properties)
        preset = dataclasses.replace(preset, two_pass=())
    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        raise QrrError(f"--format openvino needs {' and '.join(missing)}: {EXTRA}")
    out = check_options(out_dir, max_length, reference_dtype, max_pairs)
    src = open_source(source, revision, progress)
    if stream is None:
        from .streamed_export import should_stream

        stream = should_stream(src.checkpoint)
    check_disk(out, src.checkpoint, precision, stream)
    with artifact_folder(out):
        with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
            traced = Path(tmp) / "model.onnx"
            scheme = None
            if stream:
                from .streamed_export import export_streamed

                if preset is not None and preset.kernel == "rowwise":
                    # OpenVINO 2025's ONNX reader turns the per-row QuantizeLinear into a FakeQuantize whose
                    # shapes it then rejects; MatMulNBits-8 converts into its own compressed-weight form
                    preset = dataclasses.replace(preset, kernel="matmulnbits")
                scheme, smoothing = export_streamed(src, traced, preset=preset, calibration=calibration,
                                                    max_length=max_length, progress=progress)
                if scheme is not None:
                    scheme.update(method=preset.method, smoothing=smoothing, streamed=True,
                                  converted="from qrr's streamed ONNX graph (its quantized weights, not NNCF's)")
            else:
                model, smoothing = load_folded(src, preset, calibration, max_length, progress)
                with progress.step("tracing the scoring graph to ONNX (fp32 body)"):
                    trace(model, src.yes_id, src.no_id, traced)
                del model
                gc.collect()
            with progress.step("converting to OpenVINO IR" + (f" and compressing to {precision}"
                                                              if preset and not stream else "")):
                import openvino as ov

                graph = ov.convert_model(str(traced))
                if preset is not None and not stream:
                    from qrr.quant.openvino import compress_weights

                    graph, scheme = compress_weights(graph, bits=preset.bits, group_size=preset.block_size,
                                                     eight_bit=preset.eight_bit, embedding_bits=preset.embedding_bits)
                    scheme.update(method=preset.method, smoothing=smoothing)
                ov.save_model(graph, str(out / MODEL_FILE), compress_to_fp16=False)
                del graph
        backend = {"openvino": {"properties": openvino_properties(precision)}, "streamed": stream}
        manifest = write_artifact(out, src, format="openvino", precision=precision, scheme=scheme,
                                  max_length=max_length, model_files=[MODEL_FILE, WEIGHTS_FILE], backend=backend)
    return finish(out, manifest, src, validate=validate, data=data, max_drop=max_drop,
                  reference_dtype=reference_dtype, max_pairs=max_pairs, progress=progress)


def openvino_properties(precision: str) -> dict[str, str]:
    """The CPU plugin's properties that change numbers, fixed per artifact (runtime/openvino.py).

    Always f32 compute (the plugin's bf16 default moves P(yes) visibly) and an f32 KV cache. Compressed
    weights also get int8 activations per token in groups of 32, which the SmoothQuant / AWQ folding makes
    safe and which is much faster (README, "Quantization"). No per-shape executors kept: the plugin keeps
    those it builds for every input length it meets (up to 5000) with their memory, which took workload A's
    peak RSS to 3.2-4.0 GiB on the 0.6B int8 artifact against 1.9-2.0 GiB without; it also moves int8 scores
    by about 1e-3 (another kernel path), hence here, where validation sees it (README, "Load time and memory").
    """
    properties = dict(DEFAULT_PROPERTIES)
    if precision in ("int8", "int4"):
        properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = "32"
    properties["CPU_RUNTIME_CACHE_CAPACITY"] = "0"
    return properties
