"""The HTTP server, driven over loopback: a real uvicorn server in a thread, real HTTP clients."""

from __future__ import annotations

import json
import math
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

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from serving import Server, Wrapped  # noqa: E402

from qrr.runtime import Reranker  # noqa: E402
from qrr.server import ServerConfig, create_app  # noqa: E402
from qrr.server.metrics import LATENCY_BUCKETS  # noqa: E402


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """/metrics parsed as Prometheus text: sample name → {sorted labels: value}; a malformed page raises."""
    r = httpx.get(url + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def assert_error(r, status: int, field: str | None = None, words: str = "") -> None:
    """The one error shape: {"error": one line, "detail": [{"field", "message"}]}, the field named."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str) and "\n" not in body["error"]
    assert all(set(d) == {"field", "message"} for d in body["detail"])
    if field is not None:
        assert field in [d["field"] for d in body["detail"]], body
    assert words in body["error"] and "Traceback" not in r.text


def post_raw(url: str, body: bytes, content_type: str = "application/json"):
    return httpx.post(url, content=body, headers={"content-type": content_type}, timeout=30)


@pytest.fixture(scope="module")
def rr(fp32_artifact):
    return Reranker(fp32_artifact, max_length=256)


@pytest.fixture(scope="module")
def url(rr):
    with Server(create_app(rr, ServerConfig(max_documents=20), name="tiny")) as base:
        yield base


def test_rerank_cohere_and_jina_shapes(url, rr):
    expected = rr.score(QUERY, DOCS)
    best = sorted(range(len(DOCS)), key=lambda i: (-expected[i], i))
    body = {"model": "tiny", "query": QUERY, "documents": [{"text": d} for d in DOCS[:4]] + DOCS[4:], "top_n": 3}
    for path, documents in (("/v1/rerank", True), ("/v2/rerank", False)):  # Jina returns them by default
        r = httpx.post(url + path, json=body, timeout=30)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"] == "tiny" and out["meta"]["api_version"]["version"] == path[2]
        assert out["usage"]["total_tokens"] == out["meta"]["tokens"]["input_tokens"] > 0 and "warnings" not in out["meta"]
        assert [x["index"] for x in out["results"]] == best[:3]
        for x in out["results"]:
            assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-6)
            assert ("document" in x) == documents and "truncated" not in x
        r = httpx.post(url + path, json={**body, "return_documents": not documents}, timeout=30)
        assert all(("document" in x) != documents for x in r.json()["results"])
    r = httpx.post(url + "/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": True}, timeout=30)
    assert [x["document"]["text"] for x in r.json()["results"]] == [DOCS[i] for i in best]


def test_rerank_tei_shape(url, rr):
    """TEI: {"query", "texts", "raw_scores", "return_text", "truncate"} -> [{"index", "score", "text"}], best first."""
    expected = rr.score(QUERY, DOCS[:4])
    r = httpx.post(url + "/rerank", json={"query": QUERY, "texts": DOCS[:4], "return_text": True}, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert [x["index"] for x in out] == sorted(range(4), key=lambda i: (-expected[i], i))
    assert all(set(x) == {"index", "score", "text"} and x["text"] == DOCS[x["index"]] for x in out)
    assert {x["index"]: x["score"] for x in out} == pytest.approx(dict(enumerate(expected)), abs=1e-6)
    raw = httpx.post(url + "/rerank", json={"query": QUERY, "texts": DOCS[:4], "raw_scores": True}, timeout=30).json()
    p = {x["index"]: 1 / (1 + math.exp(-x["score"])) for x in raw}  # the logit log P(yes)/P(no)
    assert p == pytest.approx(dict(enumerate(expected)), abs=1e-6) and all("text" not in x for x in raw)
    long_doc = "Beijing " * 400
    r = httpx.post(url + "/rerank", json={"query": "q", "texts": ["ok", long_doc]}, timeout=30)
    assert_error(r, 413, "texts.1")  # TEI's default: truncate false
    r = httpx.post(url + "/rerank", json={"query": "q", "texts": ["ok", long_doc], "truncate": True}, timeout=30)
    assert r.status_code == 200
    r = httpx.post(url + "/rerank", json={"query": "q", "texts": ["ok"], "truncation_direction": "Left"}, timeout=30)
    assert_error(r, 422, "truncation_direction")
    r = httpx.post(url + "/rerank", json={"query": "q", "documents": ["ok"]}, timeout=30)
    assert_error(r, 422, "body", "/v1/rerank")


def test_truncated_documents_are_flagged(url, rr):
    """A query that nearly fills the window leaves documents a few tokens: results say so, meta warns."""
    tok = rr.tokenizer
    query = next(q for q in ("Beijing " * n for n in range(1, 80))
                 if 0 < tok.pair_budget - tok.count(tok.pair_text(q, "")) <= 5)
    assert 0 < max(t.kept for t in rr.truncation(query, DOCS[:3])) < 8
    for path in ("/v1/rerank", "/v2/rerank"):
        out = httpx.post(url + path, json={"query": query, "documents": DOCS[:3]}, timeout=30).json()
        flagged = {x["index"] for x in out["results"] if x.get("truncated")}
        assert flagged == {0, 1} and "kept fewer than 8" in out["meta"]["warnings"][0]  # DOCS[2] is empty
    out = httpx.post(url + "/rerank", json={"query": query, "texts": DOCS[:3], "truncate": True}, timeout=30).json()
    assert {x["index"] for x in out if x.get("truncated")} == {0, 1}
    out = httpx.post(url + "/v2/rerank", json={"query": QUERY, "documents": DOCS[:2], "max_tokens_per_doc": 3},
                     timeout=30).json()
    assert all(x.get("truncated") for x in out["results"]) and out["meta"]["warnings"]
    cut = rr.tokenizer.encode_report([(QUERY, d) for d in DOCS[:2]], max_document_tokens=3)[0]
    scores = {x["index"]: x["relevance_score"] for x in out["results"]}
    assert scores == pytest.approx(dict(enumerate(rr.score_ids(cut).tolist())), abs=1e-6)


def test_score_pairs_and_empty(url, rr):
    pairs = [{"query": QUERY, "document": d} for d in DOCS[:3]] + [{"query": "other", "document": DOCS[3]}]
    r = httpx.post(url + "/v1/score", json={"pairs": pairs}, timeout=30)
    assert r.status_code == 200
    expected = rr.score_pairs([(p["query"], p["document"]) for p in pairs])
    assert r.json()["scores"] == pytest.approx(expected, abs=1e-6)
    for path, body in (("/v1/rerank", {"query": QUERY, "documents": []}), ("/v2/rerank", {"query": QUERY, "documents": []})):
        r = httpx.post(url + path, json=body, timeout=30)
        assert r.status_code == 200 and r.json()["results"] == []
    assert httpx.post(url + "/rerank", json={"query": QUERY, "texts": []}, timeout=30).json() == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"documents": ["a"]}, "query"),
        ({"query": "q", "documents": "not a list"}, "documents"),
        ({"query": "q", "documents": ["a", 3]}, "documents.1"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "q", "documents": [{"txt": "a"}]}, "documents.0"),
        # strict: no string, boolean or float is coerced
        ({"query": "q", "documents": ["a"], "top_n": "2"}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": True}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": 2.0}, "top_n"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
        ({"query": "q", "documents": ["a"], "truncate": 1}, "truncate"),
        ({"query": 5, "documents": ["a"]}, "query"),
    ],
)
def test_validation_errors_name_the_field(url, body, field):
    assert_error(httpx.post(url + "/v1/rerank", json=body, timeout=30), 422, field)


@pytest.mark.parametrize("path, body, field", [
    ("/v1/rerank", {"query": "q\ud800", "documents": ["a"]}, "query"),
    ("/v2/rerank", {"query": "q", "documents": ["a", {"text": "b\udfff"}]}, "documents.1"),
    ("/rerank", {"query": "q", "texts": ["\ud83d"]}, "texts.0"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "instruction": "\udc80"}, "instruction"),
    ("/v1/score", {"pairs": [{"query": "q", "document": "ok"}, {"query": "\ud800", "document": "d"}]}, "pairs.1.query"),
])
def test_lone_surrogates_are_422_naming_the_field(url, path, body, field):
    r = post_raw(url + path, json.dumps(body).encode())  # ensure_ascii: the surrogate travels as a \u escape
    assert_error(r, 422, field, "lone surrogate")


def test_every_failure_has_one_shape(url):
    assert_error(post_raw(url + "/v1/rerank", b"{not json"), 400, "body", "not valid JSON")
    assert_error(post_raw(url + "/v1/rerank", b'{"query": "caf\xe9", "documents": []}'), 400, "body", "not valid UTF-8")
    assert_error(post_raw(url + "/v1/rerank", b"[" * 50000 + b"]" * 50000), 400, "body")
    assert_error(post_raw(url + "/v1/rerank", b'{"query": "q", "documents": []}', "text/plain"), 415)
    assert_error(post_raw(url + "/v1/rerank", b""), 422, "body")
    assert_error(post_raw(url + "/v1/rerank", b"[1, 2]"), 422)
    assert_error(httpx.get(url + "/no/such/route", timeout=30), 404, words="no route GET /no/such/route")
    r = httpx.get(url + "/v1/rerank", timeout=30)
    assert_error(r, 405, words="use POST")
    assert r.headers["allow"] == "POST"
    assert_error(httpx.delete(url + "/health", timeout=30), 405)
    r = httpx.post(url + "/v2/rerank", json={"model": "rerank-v3.5", "query": "q", "documents": ["a"]}, timeout=30)
    assert_error(r, 404, "model", "serves: tiny")


def test_limits(url):
    r = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["d"] * 21}, timeout=30)
    assert_error(r, 413, "documents", "at most 20")
    long_doc = "Beijing " * 400
    r = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["ok", long_doc], "truncate": False}, timeout=30)
    assert_error(r, 413, "documents.1", "[1]")
    r = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["ok", long_doc]}, timeout=30)
    assert r.status_code == 200
    r = httpx.post(url + "/v1/rerank", json={"query": "Beijing " * 400, "documents": ["ok"]}, timeout=30)
    assert_error(r, 413, "query", "no room for a document")  # every document would be cut to nothing
    r = httpx.post(url + "/v1/score", json={"pairs": [{"query": "q", "document": "d"}], "instruction": "x " * 400},
                   timeout=30)
    assert_error(r, 413, "instruction")


def test_bounds_of_a_strict_server(rr):
    config = ServerConfig(max_body_bytes=2000, max_request_tokens=300)
    with Server(create_app(rr, config, name="tiny")) as base:
        r = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["x" * 3000]}, timeout=30)
        assert_error(r, 413, words="at most 2000")
        r = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["a", "b", "c", "d"]}, timeout=30)
        assert_error(r, 413, "documents", "at most 300")
        r = httpx.post(base + "/v1/rerank", json={"query": "q" * 40, "documents": [""] * 300}, timeout=30)
        assert_error(r, 413, "query", "characters repeated in 300 pairs")
        assert httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=30).status_code == 200


def read_head(sock: socket.socket, data: bytes = b"") -> bytes:
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_oversize_bodies_are_refused_before_they_are_read(rr):
    """A Content-Length over the limit is answered at once; a chunked body as soon as its count passes it."""
    limit = 64 * 1024
    with Server(create_app(rr, ServerConfig(max_body_bytes=limit))) as base:
        address = ("127.0.0.1", int(base.rsplit(":", 1)[1]))
        request = b"POST /v1/rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        with socket.create_connection(address, timeout=30) as sock:
            sock.sendall(request + b"content-length: 20000000\r\n\r\n")  # and not one byte of the 20 MB
            response = read_head(sock)
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        sent, response = 0, b""
        with socket.create_connection(address, timeout=30) as sock:
            sock.sendall(request + b"transfer-encoding: chunked\r\n\r\n")
            sock.setblocking(False)
            chunk = b"1000\r\n" + b" " * 4096 + b"\r\n"
            while sent < 20_000_000 and not response:
                try:
                    sock.sendall(chunk)
                    sent += 4096
                except BlockingIOError:
                    time.sleep(0.01)
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    response = sock.recv(65536)
                except BlockingIOError:
                    pass
            sock.setblocking(True)
            response = read_head(sock, response)
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert sent < 8 * 1024 * 1024  # refused at about the limit (plus what the socket buffers held), not 20 MB


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
    assert paths <= {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/health", "/metrics", "/v1/models", "/openapi.json",
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
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/score"} <= set(spec["paths"])


def test_busy_server_answers_503(rr):
    slow = threading.Event()

    def blocking(ids, group_keys=None, raw=False):
        slow.wait(10)
        return rr.score_ids(ids, group_keys, raw=raw)

    with Server(create_app(Wrapped(rr, blocking), ServerConfig(max_in_flight=1), name="slow")) as base:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, base + "/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=30)
            time.sleep(0.5)
            r = httpx.post(base + "/v1/rerank", json={"query": "q", "documents": ["b"]}, timeout=30)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            slow.set()
            assert first.result().status_code == 200  # graceful: the request in flight finishes
