"""Real clients against `qrr serve`'s app on loopback: the cohere SDK (ClientV2 and the v1 Client) and
LangChain's CohereRerank (the [clients] extra; each test skips when its package is missing)."""

from __future__ import annotations

import pytest
from conftest import DOCS, QUERY

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serving import Server  # noqa: E402

from qrr.runtime import Reranker  # noqa: E402
from qrr.server import create_app  # noqa: E402

MODEL = "qwen3-rr-tiny"


@pytest.fixture(scope="module")
def rr(fp32_artifact):
    return Reranker(fp32_artifact, max_length=256)


@pytest.fixture(scope="module")
def url(rr):
    with Server(create_app(rr, name=MODEL)) as base:
        yield base


@pytest.fixture(scope="module")
def expected(rr):
    scores = rr.score(QUERY, DOCS)
    return scores, sorted(range(len(DOCS)), key=lambda i: (-scores[i], i))


def test_cohere_client_v2(url, expected):
    cohere = pytest.importorskip("cohere")
    scores, order = expected
    client = cohere.ClientV2(api_key="unused", base_url=url)
    response = client.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in response.results] == order[:3]
    assert [r.relevance_score for r in response.results] == pytest.approx([scores[i] for i in order[:3]], abs=1e-6)
    assert response.meta.api_version.version == "2" and response.id
    response = client.rerank(model=MODEL, query=QUERY, documents=DOCS, max_tokens_per_doc=3)
    assert len(response.results) == len(DOCS) and response.meta.warnings  # every document cut to 3 tokens
    with pytest.raises(cohere.errors.NotFoundError) as e:
        client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)
    assert MODEL in e.value.body["error"]


def test_cohere_client_v1(url, expected):
    cohere = pytest.importorskip("cohere")
    scores, order = expected
    client = cohere.Client(api_key="unused", base_url=url)
    response = client.rerank(model=MODEL, query=QUERY, documents=[{"text": d} for d in DOCS], top_n=2,
                             return_documents=True)
    assert [r.index for r in response.results] == order[:2]
    assert [r.document.text for r in response.results] == [DOCS[i] for i in order[:2]]
    assert [r.relevance_score for r in response.results] == pytest.approx([scores[i] for i in order[:2]], abs=1e-6)
    with pytest.raises(cohere.errors.UnprocessableEntityError):
        client.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=0)


def test_langchain_cohere_rerank(url, expected):
    pytest.importorskip("langchain_cohere")
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    scores, order = expected
    reranker = CohereRerank(model=MODEL, base_url=url, cohere_api_key="unused", top_n=3)
    docs = [Document(page_content=d, metadata={"n": i}) for i, d in enumerate(DOCS)]
    compressed = reranker.compress_documents(docs, QUERY)
    assert [d.metadata["n"] for d in compressed] == order[:3]
    assert [d.metadata["relevance_score"] for d in compressed] == pytest.approx([scores[i] for i in order[:3]],
                                                                                abs=1e-6)
    ranked = reranker.rerank(DOCS, QUERY, top_n=None)
    assert [r["index"] for r in ranked] == order
