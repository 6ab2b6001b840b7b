"""The OpenVINO backend: the same scoring graph as OpenVINO IR, behind the session interface (session.py).

OpenVINO's CPU plugin changes numbers unless told otherwise: it computes in bf16 on CPUs with AVX512-BF16
or AMX, quantizes activations to int8 in groups of 32 for compressed weights, and keeps KV caches in u8.
Every property that changes numbers is set explicitly, from the artifact's manifest (chosen at export by
measurement), and reported back in `OpenVinoSession.properties`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .cache import cpu_fingerprint, warn
from .errors import ArtifactError, DeviceError, InputError, first_line
from .session import GraphInput, SessionSpec

EXTRA = "OpenVINO artifacts need the openvino extra: pip install -e '.[openvino]' in the qrr clone (or pip install openvino)"
# What an artifact gets when its manifest names no compile properties (an fp32 graph computed in fp32).
DEFAULT_PROPERTIES = {
    "INFERENCE_PRECISION_HINT": "f32",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
    "KV_CACHE_PRECISION": "f32",
}
# Properties the plugin takes but does not report back
WRITE_ONLY = ("CPU_RUNTIME_CACHE_CAPACITY",)
_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)", "i32": "tensor(int32)"}


def parse_openvino_device(device: str, available: list[str]) -> str:
    """'cpu', 'gpu', 'gpu.N', 'npu' or 'auto' (any case) → OpenVINO's device name; refused when not present."""
    if not isinstance(device, str):
        raise InputError(f"device must be a string such as 'CPU' or 'GPU', got {type(device).__name__}")
    text = device.strip().upper()
    if not re.fullmatch(r"CPU|GPU(\.\d+)?|NPU|AUTO", text):
        raise InputError(f"unknown OpenVINO device {device!r}; use 'CPU', 'GPU', 'GPU.N', 'NPU' or 'AUTO'")
    if text != "AUTO":
        present = text in available or (text == "GPU" and any(d.startswith("GPU") for d in available))
        if not present:
            raise DeviceError(
                f"OpenVINO has no {text} device on this machine (available: {', '.join(available) or 'none'}); "
                "install the device's driver (Intel GPU: compute runtime; NPU: the NPU driver) or use 'CPU'"
            )
    return text


def _graph_input(port) -> GraphInput:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    type_name = port.get_element_type().get_type_name()
    return GraphInput(port.get_any_name(), shape, _TYPES.get(type_name, str(port.get_element_type())))


def _loaded_from_cache(compiled) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except Exception:  # a plugin that does not say: its import did not fail
        return True


class OpenVinoSession:
    """`model_file` compiled for `device`, with the manifest's compile `properties` and a performance `hint`.

    With a load cache (spec.cache), the compiled model is kept in an entry of it (OpenVINO's CACHE_DIR) and
    later loads import it instead of compiling. OpenVINO names its blobs by the model file's path and the
    compile options, not by the files' contents (a rewritten model.bin still hits the old blob), so the entry
    is named by our key, which does follow the files.
    """

    def __init__(self, model_file: Path, spec: SessionSpec) -> None:
        device, threads, outputs, properties, hint = spec.device, spec.threads, spec.outputs, spec.properties, spec.hint
        try:
            import openvino as ov
        except ImportError:
            raise ArtifactError(EXTRA) from None
        core = ov.Core()
        # read the weights when asked (a mapped file rewritten in place kills the scorer with SIGBUS), else map them
        core.set_property({"ENABLE_MMAP": not spec.copy_weights})
        self.device = parse_openvino_device(device, list(core.available_devices))
        config: dict[str, Any] = dict(properties or DEFAULT_PROPERTIES)
        config["PERFORMANCE_HINT"] = hint.upper()
        config["INFERENCE_NUM_THREADS"] = threads
        if self.device != "CPU":  # the numeric properties above are the CPU plugin's; others choose their own
            config = {k: v for k, v in config.items() if k in ("PERFORMANCE_HINT",)}
        self.compiled = self._compile(core, model_file, config, spec, ov.get_version())
        self.properties = {k: str(self.compiled.get_property(k)) for k in config if k not in WRITE_ONLY}
        self.request = self.compiled.create_infer_request()
        self.inputs = [_graph_input(p) for p in self.compiled.inputs]
        self._ports = {p.get_any_name(): p for p in self.compiled.outputs}
        self._outputs = list(outputs)

    def _compile(self, core, model_file: Path, config: dict[str, Any], spec: SessionSpec, version: str):
        """The compiled model, from the load cache when it has it; read and compiled (and cached) when not."""
        self.load_cache = "off"
        if spec.cache is not None and not spec.copy_weights:
            entry = spec.cache.entry(backend="openvino", version=version, device=self.device, cpu=cpu_fingerprint(),
                                     config={k: str(v) for k, v in config.items()})
            if entry.ready():
                try:
                    compiled = core.compile_model(str(model_file), self.device, {**config, "CACHE_DIR": str(entry.path)})
                except Exception as exc:
                    entry.discard(first_line(exc))
                else:
                    if _loaded_from_cache(compiled):
                        self.load_cache = "used"
                        return compiled
                    entry.discard("OpenVINO compiled the model instead of importing the entry's blob")
                    return compiled
            try:
                with entry.writing() as folder:
                    compiled = core.compile_model(str(model_file), self.device, {**config, "CACHE_DIR": str(folder)})
                self.load_cache = "written" if entry.ready() else "off"  # a device that cannot export writes none
                return compiled
            except Exception as exc:  # the artifact, or the cache folder: the plain load says which
                compiled = self._compile_plainly(core, model_file, config)
                warn(f"could not write the load cache entry {entry.path} ({first_line(exc)}); loaded without it")
                return compiled
        return self._compile_plainly(core, model_file, config)

    def _compile_plainly(self, core, model_file: Path, config: dict[str, Any]):
        try:
            model = core.read_model(str(model_file))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            raise ArtifactError(
                f"OpenVINO cannot read {model_file}: {first_line(exc)}; the artifact may be corrupted, re-export it"
            ) from None
        try:
            return core.compile_model(model, self.device, config)
        except Exception as exc:
            raise DeviceError(f"OpenVINO could not compile the model for {self.device}: {first_line(exc)}") from None

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer(feeds, share_inputs=True)
        logits, present = (result[self._ports[name]] for name in self._outputs)
        return logits, present

