"""The HTTP server, driven over loopback: a real uvicorn server in a thread, real HTTP clients."""

from __future__ import annotations

import random
import socket
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import DOCS, QUERY

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

import uvicorn  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from qrr.runtime import Reranker  # noqa: E402
from qrr.server import ServerConfig, create_app  # noqa: E402
from qrr.server.app import LATENCY_BUCKETS  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """/metrics parsed as Prometheus text: sample name → {sorted labels: value}; a malformed page raises."""
    r = httpx.get(url + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


class Server:
    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def rr(fp32_artifact):
    return Reranker(fp32_artifact, max_length=256)


@pytest.fixture(scope="module")
def url(rr):
    with Server(create_app(rr, ServerConfig(max_documents=20))) as base:
        yield base


def test_rerank_cohere_shape(url, rr):
    expected = rr.score(QUERY, DOCS)
    body = {"model": "x", "query": QUERY, "documents": [{"text": d} for d in DOCS[:4]] + DOCS[4:], "top_n": 3,
            "return_documents": True}
    for path in ("/v1/rerank", "/rerank"):
        r = httpx.post(url + path, json=body, timeout=30)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["index"] for x in results] == sorted(range(len(DOCS)), key=lambda i: (-expected[i], i))[:3]
        for x in results:
            assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-6)
            assert x["document"]["text"] == DOCS[x["index"]]


def test_score_pairs_and_empty(url, rr):
    pairs = [{"query": QUERY, "document": d} for d in DOCS[:3]] + [{"query": "other", "document": DOCS[3]}]
    r = httpx.post(url + "/v1/score", json={"pairs": pairs}, timeout=30)
    assert r.status_code == 200
    expected = rr.score_pairs([(p["query"], p["document"]) for p in pairs])
    assert r.json()["scores"] == pytest.approx(expected, abs=1e-6)
    r = httpx.post(url + "/v1/rerank", json={"query": QUERY, "documents": []}, timeout=30)
    assert r.status_code == 200 and r.json()["results"] == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"documents": ["a"]}, "query"),
        ({"query": "q", "documents": "not a list"}, "documents"),
        ({"query": "q", "documents": ["a", 3]}, "documents.1"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "q", "documents": [{"txt": "a"}]}, "documents.0"),
    ],
)
def test_validation_errors_name_the_field(url, body, field):
    r = httpx.post(url + "/v1/rerank", json=body, timeout=30)
    assert r.status_code == 422
    assert field in r.json()["error"] and "Traceback" not in r.text


def test_malformed_json_and_limits(url):
    r = httpx.post(url + "/v1/rerank", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422 and "Traceback" not in r.text
    r = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["d"] * 21}, timeout=30)
    assert r.status_code == 413 and "at most 20" in r.json()["error"]
    long_doc = "Beijing " * 400
    r = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["ok", long_doc], "truncate": False}, timeout=30)
    assert r.status_code == 413 and "[1]" in r.json()["error"]
    r = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["ok", long_doc]}, timeout=30)
    assert r.status_code == 200


def test_concurrent_clients_get_their_own_scores(url, rr):
    queries = [f"query number {i} about Beijing" for i in range(12)]
    expected = {q: rr.score(q, DOCS[:3]) for q in queries}

    def call(q):
        r = httpx.post(url + "/v1/rerank", json={"query": q, "documents": DOCS[:3]}, timeout=60)
        r.raise_for_status()
        return q, {x["index"]: x["relevance_score"] for x in r.json()["results"]}

    with ThreadPoolExecutor(12) as pool:
        for q, got in pool.map(call, queries):
            assert [got[i] for i in range(3)] == pytest.approx(expected[q], abs=1e-6)
    metrics = httpx.get(url + "/metrics", timeout=30).text
    assert "qrr_pairs_total" in metrics and 'qrr_requests_total{path="/v1/rerank",status="200"}' in metrics
    samples = scrape(url)
    batches, pairs = samples["qrr_batches_total"][()], samples["qrr_pairs_total"][()]
    assert batches < pairs  # requests were scored together


def test_metrics_label_routes_not_paths(url):
    """Label values are route templates: 50 unknown paths add one series, not 50, and the page stays valid."""
    before = scrape(url)
    rng = random.Random(0)
    junk = [
        "/" + "".join(rng.choices(string.ascii_letters + string.digits + '"\\{}=,', k=12))
        for _ in range(48)
    ] + ["/v1/rerank/x", "/%22%0Aqrr_pairs_total%201e9"]  # a quote and a newline, decoded by the server
    for path in junk:
        assert httpx.get(url + path, timeout=30).status_code == 404
    assert httpx.get(url + "/v1/rerank", timeout=30).status_code == 405  # a route's path, not its method
    after = scrape(url)
    added = set(after["qrr_requests_total"]) - set(before["qrr_requests_total"])
    assert added <= {(("path", "unmatched"), ("status", "404")), (("path", "/v1/rerank"), ("status", "405"))}
    unmatched = (("path", "unmatched"), ("status", "404"))
    assert after["qrr_requests_total"][unmatched] - before["qrr_requests_total"].get(unmatched, 0) == len(junk)
    paths = {dict(labels)["path"] for labels in after["qrr_requests_total"]}
    assert paths <= {"/v1/rerank", "/rerank", "/v1/score", "/health", "/metrics", "/v1/models", "/openapi.json",
                     "unmatched"}
    assert after["qrr_pairs_total"] == before["qrr_pairs_total"]  # the injected line is not a sample
    bounds = [dict(labels)["le"] for labels in after["qrr_request_seconds_bucket"]]
    assert bounds == [*map(str, map(float, LATENCY_BUCKETS)), "+Inf"]
    for name in ("qrr_tokens_total", "qrr_batches_total", "qrr_request_seconds_count", "qrr_in_flight",
                 "qrr_queue_depth"):
        assert name in after


def test_health_models_openapi(url):
    assert httpx.get(url + "/health", timeout=30).json() == {"status": "ok"}
    model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]
    assert model["precision"] == "fp32" and model["max_length"] == 256
    spec = httpx.get(url + "/openapi.json", timeout=30).json()
    assert {"/v1/rerank", "/rerank", "/v1/score"} <= set(spec["paths"])


def test_busy_server_answers_503(rr):
    slow = threading.Event()
    original = rr.score_ids

    def blocking(ids, group_keys=None):
        slow.wait(10)
        return original(ids, group_keys)

    class Slow:
        def __getattr__(self, name):
            return blocking if name == "score_ids" else getattr(rr, name)

    with Server(create_app(Slow(), ServerConfig(max_in_flight=1), name="slow")) as base:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, base + "/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=30)
            time.sleep(0.5)
            r = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["b"]}, timeout=30)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            slow.set()
            assert first.result().status_code == 200  # graceful: the request in flight finishes
