"""Faults under a running server: deadlines, clients that leave, a session that raises, SIGTERM, files changed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import DOCS, QUERY

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serving import Server, Wrapped, free_port  # noqa: E402

from qrr.runtime import Reranker  # noqa: E402
from qrr.server import ServerConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def rr(fp32_artifact):
    return Reranker(fp32_artifact, max_length=256)


class Gate:
    """A model session that blocks until opened, recording every batch it was given."""

    def __init__(self, rr) -> None:
        self.rr, self.open, self.batches = rr, threading.Event(), []

    def __call__(self, ids, group_keys=None, raw=False):
        self.batches.append(len(ids))
        self.open.wait(20)
        return self.rr.score_ids(ids, group_keys, raw=raw)


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def counted(base: str, status: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
        if line.startswith("qrr_requests_total{") and f'status="{status}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_deadline_is_504_and_the_late_request_is_dropped(rr):
    gate = Gate(rr)
    with Server(create_app(Wrapped(rr, gate), ServerConfig(timeout_s=0.5))) as base:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, base + "/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=30)
            wait_for(lambda: gate.batches)  # the worker holds the first request
            late = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["b", "c"]}, timeout=30)
            assert late.status_code == 504 and "deadline" in late.json()["error"] and late.json()["detail"] == []
            assert first.result().status_code == 504
            gate.open.set()
        ok = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["d", "e", "f"]}, timeout=30)
        assert ok.status_code == 200
        assert gate.batches == [1, 3]  # the late request's two pairs never reached the model


def test_client_disconnect_mid_request(rr):
    """A client that leaves while its request waits: the request is cancelled (499), its pairs dropped."""
    gate = Gate(rr)
    with Server(create_app(Wrapped(rr, gate))) as base:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, base + "/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=30)
            wait_for(lambda: gate.batches)
            with pytest.raises(httpx.ReadTimeout):  # this client gives up after 0.5 s and closes its connection
                httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["b", "c"]}, timeout=0.5)
            wait_for(lambda: counted(base, "499") == 1)
            gate.open.set()
            assert first.result().status_code == 200
        assert httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["d"] * 3}, timeout=30).status_code == 200
        assert gate.batches == [1, 3]


def test_a_session_that_raises_fails_only_its_request(rr):
    """A batch that raises inside the session is retried per request: the request that fails alone gets 503,
    the ones batched with it are scored, and the server goes on."""
    poison = "a poisoned document"
    calls = []

    def flaky(ids, group_keys=None, raw=False):
        calls.append(len(ids))
        time.sleep(0.2)  # long enough for concurrent requests to share the next batch
        if poisoned in ids:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : simulated")
        return rr.score_ids(ids, group_keys, raw=raw)

    poisoned = rr.tokenizer.encode([("q", poison)])[0]
    with Server(create_app(Wrapped(rr, flaky), ServerConfig(batch_wait_ms=300))) as base:
        bodies = [{"query": "q", "documents": [poison]}] + [{"query": "q", "documents": [d]} for d in DOCS[:3]]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda b: httpx.post(base + "/v1/rerank", json=b, timeout=30), bodies))
        assert answers[0].status_code == 503 and "inside the model session" in answers[0].json()["error"]
        assert answers[0].headers["retry-after"] == "1"
        assert [a.status_code for a in answers[1:]] == [200, 200, 200]
        assert max(calls) > 1  # they did share a batch, and were retried one by one
        r = httpx.post(base + "/v1/rerank", json={"query": QUERY, "documents": DOCS[:2]}, timeout=30)
        assert r.status_code == 200


def test_artifact_files_changed_under_a_running_server(artifact_copy):
    """Rewritten in place, then removed: the server keeps serving what it loaded (weights copied, as qrr serve
    loads them)."""
    rr = Reranker(artifact_copy, max_length=256, copy_weights=True)
    with Server(create_app(rr)) as base:
        body = {"query": QUERY, "documents": DOCS}
        before = httpx.post(base + "/v1/rerank", json=body, timeout=30).json()["results"]
        for path in artifact_copy.iterdir():
            path.write_bytes(b"\0" * 10)
        assert httpx.post(base + "/v1/rerank", json=body, timeout=30).json()["results"] == before
        for path in artifact_copy.iterdir():
            path.unlink()
        assert httpx.post(base + "/v1/rerank", json=body, timeout=30).json()["results"] == before
        assert httpx.get(base + "/v1/models", timeout=30).status_code == 200


SLOW_SERVE = """
import sys, time
from qrr.runtime import Reranker
score_ids = Reranker.score_ids
def slow(self, *args, **kwargs):
    time.sleep(1.0)
    return score_ids(self, *args, **kwargs)
Reranker.score_ids = slow
from qrr.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_lets_requests_in_flight_finish(fp32_artifact):
    """`qrr serve` (a real process, each batch slowed to 1 s) gets SIGTERM with requests in flight: they all
    finish with 200, then the process exits without a traceback."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVE, "serve", str(fp32_artifact), "--port", str(port),
                             "--threads", "1"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "qrr serve did not start"
                time.sleep(0.2)
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(httpx.post, base + "/v1/rerank", json={"query": f"q{i}", "documents": DOCS[:2]},
                                   timeout=60) for i in range(4)]
            time.sleep(0.5)  # all four are in the server, the first batch is being scored
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert [a.status_code for a in answers] == [200] * 4
        assert all(len(json.loads(a.text)["results"]) == 2 for a in answers)
        # after its graceful shutdown uvicorn re-raises the signal, so the exit status is SIGTERM's
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stderr.read()
        with pytest.raises(httpx.TransportError):
            httpx.get(base + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_overload_is_refused_at_once_not_after_the_deadline():
    """The batcher measures its speed and answers 503 with Retry-After when the queued work could not be
    scored within the deadline, instead of letting every request wait for a 504."""
    import asyncio
    import time

    import numpy as np

    from qrr.server.batcher import MicroBatcher
    from qrr.server.errors import HTTPProblem

    class SlowModel:  # 1 ms per prompt token
        def score_ids(self, flat, keys, raw=False):
            time.sleep(0.001 * sum(map(len, flat)))
            return np.zeros(len(flat))

    async def scenario():
        batcher = MicroBatcher(SlowModel(), max_in_flight=64, batch_wait_ms=1, gather_tokens=10, max_wait_s=0.5)
        batcher.task = asyncio.create_task(batcher.run())
        await batcher.logits([[1] * 100])  # the first batch measures the speed
        assert 500 < batcher.tokens_per_s < 1100
        results = await asyncio.gather(*[batcher.logits([[1] * 200]) for _ in range(10)], return_exceptions=True)
        batcher.task.cancel()
        return results

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, HTTPProblem)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert refused and all(r.status == 503 and int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert "deadline" in refused[0].message and 2 <= len(served) <= 4  # ~0.5 s of work admitted, at 0.2 s each
