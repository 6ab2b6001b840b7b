"""The onnxruntime backend: ONNX artifacts on onnxruntime's CPU, CUDA or DirectML provider."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .cache import cpu_fingerprint, warn
from .errors import ArtifactError, DeviceError, InputError, first_line
from .session import GraphInput, SessionSpec

# device kind → (execution provider, how to install it)
PROVIDERS = {
    "cpu": ("CPUExecutionProvider", None),
    "cuda": (
        "CUDAExecutionProvider",
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu "
        "(both ship the module onnxruntime: keep only the GPU one)",
    ),
    "dml": ("DmlExecutionProvider", "pip uninstall -y onnxruntime && pip install onnxruntime-directml"),
}
AUTO_ORDER = ("cuda", "dml", "cpu")
# GroupQueryAttention's query_seqlens input (the 17th), which lets a batch continue a shared past, is in
# onnxruntime's schema from 1.32; 1.31 refuses the graph (and onnxruntime-gpu's newest is 1.31.1)
GQA_MIN_VERSION = (1, 32)


def version_tuple(version: str) -> tuple[int, ...]:
    """'1.31.1' → (1, 31, 1); a suffix such as '.dev20261101' or '+cu13' is ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def gqa_supported(version: str | None = None) -> bool:
    """Whether onnxruntime `version` (default: this one) runs the GroupQueryAttention graph."""
    return version_tuple(version or ort.__version__) >= GQA_MIN_VERSION


def check_gqa_support(what: str, version: str | None = None) -> None:
    """Refuse, with what to do, a GroupQueryAttention graph on an onnxruntime whose schema lacks query_seqlens."""
    version = version or ort.__version__
    if not gqa_supported(version):
        need = ".".join(map(str, GQA_MIN_VERSION))
        raise DeviceError(
            f"{what} computes attention with onnxruntime's GroupQueryAttention and its query_seqlens input, which "
            f"onnxruntime {need} or newer runs; this is onnxruntime {version}. Upgrade it "
            f"(pip install 'onnxruntime>={need}'), or export with --attention ops, which every version runs"
        )


def parse_device(device: str, available: Sequence[str]) -> tuple[str, int]:
    """'cpu', 'cuda', 'cuda:N', 'dml', 'dml:N' or 'auto' → (kind, index); 'auto' takes the first GPU there is."""
    if not isinstance(device, str):
        raise InputError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    text = device.strip().lower()
    if text == "auto":
        kind = next(k for k in AUTO_ORDER if PROVIDERS[k][0] in available)
        return kind, 0
    match = re.fullmatch(r"(cpu|cuda|dml)(?::(\d+))?", text)
    if not match:
        raise InputError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N', 'dml', 'dml:N' or 'auto'")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu" and index is not None:
        raise InputError(f"unknown device {device!r}; the CPU device takes no index, use 'cpu'")
    provider, install = PROVIDERS[kind]
    if provider not in available:
        raise DeviceError(
            f"device {device!r} needs onnxruntime's {provider}, which this installation lacks "
            f"(available: {', '.join(available)}); install it with: {install}"
        )
    return kind, int(index or 0)


class OnnxRuntimeSession:
    """An onnxruntime InferenceSession on one device; on a GPU it runs with I/O binding.

    `properties` and `hint` are OpenVINO's: onnxruntime takes neither.
    """

    def __init__(self, model_file: Path, spec: SessionSpec) -> None:
        device, outputs = spec.device, spec.outputs
        kind, index = parse_device(device, ort.get_available_providers())
        provider = PROVIDERS[kind][0]
        providers: list[Any] = ["CPUExecutionProvider"]
        # set for GPU devices: inputs copied there once per run, outputs allocated there
        self.io_device: tuple[str, int] | None = None
        if kind != "cpu":
            # CPU stays listed for the few nodes a GPU provider does not implement (shape arithmetic)
            providers.insert(0, (provider, {"device_id": index}))
            self.io_device = (kind, index)
        try:
            self.session = self._open(model_file, spec, providers, kind)
        except Exception as exc:  # onnxruntime raises its own exception types for every load failure
            raise ArtifactError(
                f"onnxruntime cannot load {model_file}: {first_line(exc)}; the artifact may be corrupted, re-export it"
            ) from None
        if provider not in self.session.get_providers():  # onnxruntime falls back to CPU with only a log line
            raise DeviceError(
                f"onnxruntime could not start {provider} for device {device!r} (driver, CUDA or cuDNN libraries "
                "missing?); it would have run on the CPU. Fix the GPU setup, or ask for device='cpu'"
            )
        self.device = kind
        self.inputs = [
            GraphInput(i.name, tuple(d if isinstance(d, int) else None for d in i.shape), i.type)
            for i in self.session.get_inputs()
        ]
        self._outputs = list(outputs)

    @staticmethod
    def _options(spec: SessionSpec, level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = spec.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = level
        # onnxruntime plans one block per distinct input shape and keeps each: off, workload B's peak fell from
        # 1710 to 1502 MiB at the same speed (README, "Load time and memory")
        so.enable_mem_pattern = False
        so.log_severity_level = 3
        return so

    def _open(self, model_file: Path, spec: SessionSpec, providers: list[Any], kind: str) -> ort.InferenceSession:
        """The session, through the load cache where it applies (the CPU device, memory-mapped weights).

        The cache entry is onnxruntime's own optimized graph at ORT_ENABLE_ALL, saved by the session that
        optimized it, with the weights it pre-packed for this CPU's kernels in its external data; loaded with
        the graph optimizations off, it skips them and maps the packed weights instead of allocating them.
        """
        self.load_cache = "off"
        so = self._options(spec, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if spec.cache is None or kind != "cpu" or spec.copy_weights:
            return ort.InferenceSession(self._load(model_file, so, spec.copy_weights), sess_options=so, providers=providers)
        entry = spec.cache.entry(backend="onnxruntime", version=ort.__version__, cpu=cpu_fingerprint(),
                                 level="ORT_ENABLE_ALL", prepacked=True)
        if entry.ready():
            try:
                cached = self._options(spec, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
                session = ort.InferenceSession(str(entry.path / model_file.name), sess_options=cached, providers=providers)
                self.load_cache = "used"
                return session
            except Exception as exc:
                entry.discard(first_line(exc))
        try:
            # the optimized graph with the original and the pre-packed weights: about 2.2x the artifact's data
            # (0.6B int8 1.4 GB for 634 MiB, 4B int8 8.1 GB for 3.9 GiB)
            data = model_file.with_name(model_file.name + ".data")
            room = 3 * (model_file.stat().st_size + (data.stat().st_size if data.is_file() else 0))
            with entry.writing(room) as folder:
                so.optimized_model_filepath = str(folder / model_file.name)
                so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                            model_file.name + ".data")
                so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
                so.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
                session = ort.InferenceSession(str(model_file), sess_options=so, providers=providers)
            self.load_cache = "written"
            return session
        except Exception as exc:  # the artifact, or the cache folder (not writable, disk full): load it plainly
            so = self._options(spec, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            session = ort.InferenceSession(str(model_file), sess_options=so, providers=providers)
            warn(f"could not write the load cache entry {entry.path} ({first_line(exc)}); loaded without it")
            return session

    def _load(self, model_file: Path, so: ort.SessionOptions, copy: bool) -> bytes | str:
        """The model for InferenceSession: its path (the weights memory-mapped), or with `copy` its bytes, the
        weights read into memory that the session owns.

        Memory-mapped weights cost the least resident memory, but a running scorer dies of SIGBUS when the
        artifact's files are rewritten in place (cp, a re-export into the same folder). Read, the weights
        are held once (the session uses this buffer, no copy) and the files can change freely.
        """
        data = model_file.with_name(model_file.name + ".data")  # what qrr's exporters write
        if not copy or not data.is_file():
            return str(model_file)
        self._weights = np.fromfile(data, dtype=np.uint8)  # kept alive as long as the session
        so.add_external_initializers_from_files_in_memory([data.name], [self._weights], [self._weights.size])
        so.add_session_config_entry("session.use_external_initializer_file_buffers_directly", "1")
        return model_file.read_bytes()

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.io_device is not None:
            logits, present = self._run_bound(feeds)
        else:
            logits, present = self.session.run(self._outputs, feeds)
        return logits, present

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run with I/O binding: inputs copied to the device once, the outputs allocated there."""
        kind, index = self.io_device  # onnxruntime's device names are ours: cpu, cuda, dml
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, kind, index))
        for name in self._outputs:
            binding.bind_output(name, kind, index)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
