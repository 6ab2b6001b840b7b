"""RerankClient against a real `qrr serve` on loopback, and its timeouts and retries against a scripted server."""

from __future__ import annotations

import json
import socket
import time

import pytest
from conftest import DOCS, QUERY, FakeServer

from qrr.runtime import InputError, RerankClient, Reranker, ServerError, open_scorer

PAIRS = [(QUERY, DOCS[0]), ("who wrote Faust?", "Goethe wrote Faust."), (QUERY, DOCS[3])]


def test_client_scores_as_the_local_reranker(server_url, fp32_artifact):
    rr, client = Reranker(fp32_artifact, threads=1), RerankClient(server_url, timeout=60)
    assert client.score(QUERY, DOCS) == pytest.approx(rr.score(QUERY, DOCS), abs=1e-6)
    assert client.score_pairs(PAIRS, instruction="Find the answer") == pytest.approx(
        rr.score_pairs(PAIRS, instruction="Find the answer"), abs=1e-6)
    top = client.rerank(QUERY, DOCS, top_k=3)
    assert [(r.index, r.document) for r in top] == [(r.index, r.document) for r in rr.rerank(QUERY, DOCS, top_k=3)]
    assert [r["corpus_id"] for r in client.rank(QUERY, DOCS, top_k=2)] == [r.index for r in top[:2]]
    assert client.predict(PAIRS).tolist() == pytest.approx(rr.predict(PAIRS).tolist(), abs=1e-6)
    assert client.rerank(QUERY, []) == [] and client.score_pairs([]) == []
    assert isinstance(open_scorer(server_url), RerankClient)


def test_client_errors_name_the_cause(server_url):
    with pytest.raises(InputError, match=r"refused the request \(404\)"):
        RerankClient(server_url + "/no/such/prefix").score(QUERY, DOCS[:1])
    with pytest.raises(InputError, match="documents must be a list"):
        RerankClient(server_url).score(QUERY, "one string")
    with pytest.raises(InputError, match="http"):
        RerankClient("localhost:8080")


def scripted(script: list[tuple[int, dict, float]]) -> FakeServer:
    """A server answering its n-th POST with script[n] (the last one again after the end): (status, JSON, delay)."""

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        status, answer, delay = script[min(len(fake.requests) - 1, len(script) - 1)]
        time.sleep(delay)
        return status, {"content-type": "application/json", "Retry-After": "0"}, json.dumps(answer).encode()

    fake = FakeServer(respond)
    return fake


BUSY = (503, {"error": "server busy"}, 0.0)
OK = (200, {"results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.2}]}, 0.0)


def test_retries_a_busy_server_then_gives_up():
    fake = scripted([BUSY, BUSY, OK])
    with fake as url:
        results = RerankClient(url, retries=3, backoff=0.01).rerank("q", ["a", "b"])
    assert [(r.index, r.score, r.document) for r in results] == [(1, 0.9, "b"), (0, 0.2, "a")]
    assert len(fake.requests) == 3
    fake = scripted([BUSY])
    with fake as url, pytest.raises(ServerError, match=r"stayed busy \(503: server busy\) in 3 tries"):
        RerankClient(url, retries=2, backoff=0.01).score("q", ["a"])
    assert len(fake.requests) == 3


def test_unreachable_and_slow_servers_fail_in_bounded_time():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ServerError, match="could not be reached .* in 3 tries"):
        RerankClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.01).score("q", ["a"])
    assert time.monotonic() - start < 5
    fake = scripted([(200, OK[1], 2.0)])
    with fake as url:
        start = time.monotonic()
        with pytest.raises(ServerError, match="did not answer within 0.3 s"):
            RerankClient(url, timeout=0.3, retries=2).score("q", ["a", "b"])
        assert time.monotonic() - start < 1.5 and len(fake.requests) == 1  # a timeout is not retried
    with scripted([(200, {"results": [{"index": 7}]}, 0.0)]) as url, pytest.raises(ServerError, match="Cohere"):
        RerankClient(url).score("q", ["a"])
