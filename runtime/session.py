"""The session interface the Reranker scores through, and the table that opens one for an artifact's format.

A backend is one module with one class that implements `Session`; adding one is that file plus a line in
`BACKENDS`. Backends are imported only when an artifact of their format is opened, so the OpenVINO module
(and openvino itself) is never imported for ONNX artifacts.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from .errors import ArtifactError

if TYPE_CHECKING:
    from .cache import LoadCache

# the manifest's format → (module in qrr.runtime, class)
BACKENDS = {
    "onnx": ("onnxruntime", "OnnxRuntimeSession"),
    "openvino": ("openvino", "OpenVinoSession"),
}
# the backends' native calls that do the long part of a load with the GIL released (onnxruntime's session
# initialization, OpenVINO's compilation): open_session_while starts its own work once the loader is in one
NATIVE_LOADS = frozenset({"initialize_session", "compile_model"})
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


T = TypeVar("T")


def open_session(model_file: Path, format: str, spec: SessionSpec) -> Session:
    """Open `model_file` with the backend of `format`, as `spec` asks."""
    return backend_of(model_file, format)(model_file, spec)


def open_session_while(model_file: Path, format: str, spec: SessionSpec, work: Callable[[], T]) -> tuple[Session, T]:
    """open_session(...) in a second thread and `work()` in this one, overlapped: (the session, work's result).

    A load spends most of its time in native code that releases the GIL (NATIVE_LOADS), but it holds the GIL
    before that (onnxruntime parses the model file in its constructor), and so does the tokenizer's load, for
    its whole length. Started together, whichever takes the GIL first runs alone, so `work` starts only once the
    loader is inside a native load; if the loader never reaches one, `work` runs after it, as in sequence.
    Errors are raised as in sequence: work's first, then the load's.
    """
    backend = backend_of(model_file, format)  # imported here: an import holds the GIL and would delay `work`
    inside = threading.Event()
    outcome: dict[str, Any] = {}

    def watch(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__name__", None) in NATIVE_LOADS:
            sys.setprofile(None)
            inside.set()

    def load() -> None:
        sys.setprofile(watch)  # this thread's only
        try:
            outcome["session"] = backend(model_file, spec)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            outcome["error"] = exc
        finally:
            sys.setprofile(None)
            inside.set()

    loader = threading.Thread(target=load, name="qrr-load", daemon=True)
    loader.start()
    inside.wait()
    try:
        result = work()
    finally:
        loader.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["session"], result


def backend_of(model_file: Path, format: str) -> Callable[[Path, SessionSpec], Session]:
    if format not in BACKENDS:
        raise ArtifactError(
            f"{model_file}: no backend reads the format {format!r}; this runtime reads {', '.join(BACKENDS)} artifacts"
        )
    module, name = BACKENDS[format]
    return getattr(importlib.import_module(f".{module}", __package__), name)
