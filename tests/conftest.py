"""Shared fixtures: a tiny Qwen3 stand-in checkpoint, exported once per session at fp32 and int8.

Everything is built in-process from code in this repository: no network, no ../shared.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from qrr.runtime.onnxruntime import gqa_supported

try:  # the fuzz tests' budgets: bounded in CI, QRR_FUZZ=long for a long run (README, Development)
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("QRR_FUZZ", "ci"))
except ImportError:
    pass


@pytest.fixture(scope="session", autouse=True)
def reference_cache(tmp_path_factory):
    """Keep the reference-score cache of validation inside the test session."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("QRR_CACHE")
    os.environ["QRR_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("QRR_CACHE", None)
    else:
        os.environ["QRR_CACHE"] = old


QWEN3_TOKENIZER = os.environ.get("QRR_QWEN3_TOKENIZER")  # the real tokenizer folder, for optional checks


def needs_export():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnx")


@pytest.fixture(scope="session")
def standin(tmp_path_factory) -> Path:
    needs_export()
    from qrr.export.standin import make_standin

    # briefly trained as a reranker, so that its scores spread out as a real reranker's do (no near-ties)
    return make_standin(tmp_path_factory.mktemp("ckpt") / "tiny", shape="tiny", seed=0, train_steps=40)


@pytest.fixture(scope="session")
def outlier_standin(tmp_path_factory) -> Path:
    """A tiny stand-in trained briefly as a reranker, then given 100× activation outliers."""
    needs_export()
    from qrr.export.standin import make_standin

    return make_standin(tmp_path_factory.mktemp("trained") / "ckpt", seed=1, outliers=100.0, train_steps=60)


def _export(tmp_path_factory, standin: Path, quant: str, **options) -> Path:
    """The stand-in exported to ONNX at `quant`, without validation."""
    from qrr.export import export_onnx
    from qrr.export.progress import Progress

    out = tmp_path_factory.mktemp(f"artifact-{quant}") / "artifact"
    export_onnx(str(standin), out, quant=quant, validate=False, progress=Progress(enabled=False), **options)
    return out


@pytest.fixture(scope="session")
def fp32_artifact(tmp_path_factory, standin) -> Path:
    return _export(tmp_path_factory, standin, "fp32")


@pytest.fixture(scope="session")
def int8_artifact(tmp_path_factory, standin) -> Path:
    return _export(tmp_path_factory, standin, "int8")


GQA_SKIP = "GroupQueryAttention with query_seqlens needs onnxruntime 1.32 (onnxruntime-gpu's newest is 1.31)"
needs_gqa = pytest.mark.skipif(not gqa_supported(), reason=GQA_SKIP)


@pytest.fixture(scope="session")
def gqa_artifact(tmp_path_factory, standin) -> Path:
    """int8 with onnxruntime's GroupQueryAttention (export --attention gqa)."""
    if not gqa_supported():
        pytest.skip(GQA_SKIP)
    return _export(tmp_path_factory, standin, "int8", attention="gqa")


@pytest.fixture
def artifact_copy(tmp_path, fp32_artifact) -> Path:
    """A per-test copy of the fp32 artifact that the test may damage."""
    return Path(shutil.copytree(fp32_artifact, tmp_path / "artifact"))


def rewrite_in_place(folder: Path) -> None:
    """Truncate every file of an artifact in place (same inodes), as `cp` or a re-export into the folder does."""
    for path in folder.iterdir():
        with open(path, "r+b") as f:
            f.truncate(0)


@pytest.fixture(scope="session")
def server_url(fp32_artifact):
    """A real `qrr serve` app of the fp32 artifact on loopback (uvicorn in a thread), for clients and adapters."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from test_server import Server  # its loopback server: started, waited for, stopped

    from qrr.runtime import Reranker
    from qrr.server import create_app

    with Server(create_app(Reranker(fp32_artifact, threads=1))) as url:
        yield url


class FakeServer:
    """A loopback HTTP server whose `respond(method, path, body) -> (status, headers, data)` makes every answer;
    it records each request as "METHOD path". `with FakeServer(respond) as url: …`"""

    def __init__(self, respond: Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]) -> None:
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                path = unquote(urlparse(self.path).path)
                owner.requests.append(f"{self.command} {path}")
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, headers, data = respond(self.command, path, body)
                self.send_response(status)
                for key, value in {"content-length": str(len(data)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def reference(standin):
    from qrr.export.checkpoint import resolve
    from qrr.export.reference import ReferenceScorer

    return ReferenceScorer(resolve(str(standin)))


QUERY = "what is the capital of China?"
DOCS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "Paris est la capitale de la France. 🇫🇷 Ça va?",
    "def capital(country):\n    return {'China': 'Beijing'}[country]\n",
    " ".join(["Beijing has been the capital for centuries, and its history is long."] * 40),
    "yes",
]
