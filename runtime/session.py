"""The session interface the Reranker scores through, and the table that opens one for an artifact's format.

A backend is one module with one class that implements `Session`; adding one is that file plus a line in
`BACKENDS`. Backends are imported only when an artifact of their format is opened, so the OpenVINO module
(and openvino itself) is never imported for ONNX artifacts.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .errors import ArtifactError

if TYPE_CHECKING:
    from .cache import LoadCache

# the manifest's format → (module in qrr.runtime, class)
BACKENDS = {
    "onnx": ("onnxruntime", "OnnxRuntimeSession"),
    "openvino": ("openvino", "OpenVinoSession"),
}
HINTS = ("latency", "throughput")  # performance hints open_session takes; backends without them ignore them


@dataclass(frozen=True)
class GraphInput:
    name: str
    shape: tuple[int | None, ...]  # None for a dynamic dimension
    type: str  # ONNX's type names: 'tensor(float)', 'tensor(float16)', 'tensor(int64)' ...


class Session(Protocol):
    """A compiled scoring graph on one device."""

    device: str  # the device kind it resolved to (onnxruntime: 'cpu', 'cuda', 'dml'; OpenVINO: 'CPU', 'GPU' ...)
    inputs: Sequence[GraphInput]
    load_cache: str  # 'used' (loaded from the load cache), 'written' (loaded, and the entry written) or 'off'

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(score logits, present keys and values) for the graph inputs in `feeds`."""
        ...


@dataclass(frozen=True)
class SessionSpec:
    """What a backend is asked for: where and how to run the graph.

    `outputs` are the graph's (score logits, present) output names, from the manifest; `properties` are the
    backend's compile properties, from the manifest; `hint` is a performance hint ('latency' or 'throughput');
    `cache` is the artifact's place in the load cache (cache.py), None to load without it.
    """

    device: str
    threads: int
    outputs: tuple[str, ...]
    properties: dict[str, str] | None = None
    hint: str = "latency"
    copy_weights: bool = False  # read the weights into memory instead of memory-mapping the files
    cache: LoadCache | None = None


def open_session(model_file: Path, format: str, spec: SessionSpec) -> Session:
    """Open `model_file` with the backend of `format`, as `spec` asks."""
    if format not in BACKENDS:
        raise ArtifactError(
            f"{model_file}: no backend reads the format {format!r}; this runtime reads {', '.join(BACKENDS)} artifacts"
        )
    module, name = BACKENDS[format]
    backend = getattr(importlib.import_module(f".{module}", __package__), name)
    return backend(model_file, spec)
