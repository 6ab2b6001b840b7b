"""The framework adapters in the real frameworks, on a local artifact and on a running `qrr serve` URL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import DOCS, QUERY

from qrr.runtime import Reranker

TOP = 3
os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"  # read when haystack is imported: no usage reports from tests


@pytest.fixture(params=["folder", "url"])
def model(request, fp32_artifact):
    return str(fp32_artifact) if request.param == "folder" else request.getfixturevalue("server_url")


@pytest.fixture(scope="module")
def expected(fp32_artifact):
    return Reranker(fp32_artifact, threads=1).rerank(QUERY, DOCS, top_k=TOP)


def test_langchain_compressor_in_a_retriever(model, expected):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from qrr.integrations.langchain import QrrRerank

    docs = [Document(page_content=d, metadata={"n": i}, id=f"d{i}") for i, d in enumerate(DOCS)]
    out = QrrRerank(model=model, top_n=TOP).compress_documents(docs, QUERY)
    assert [(d.metadata["n"], d.id) for d in out] == [(e.index, f"d{e.index}") for e in expected]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx([e.score for e in expected], abs=1e-6)
    assert "relevance_score" not in docs[expected[0].index].metadata  # the retrieved documents are left as they were

    retrievers = pytest.importorskip("langchain_classic.retrievers")

    class Retrieved(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return docs

    retriever = retrievers.ContextualCompressionRetriever(
        base_compressor=QrrRerank(model=model, top_n=2), base_retriever=Retrieved())
    assert [d.page_content for d in retriever.invoke(QUERY)] == [e.document for e in expected[:2]]


def test_llama_index_postprocessor(model, expected):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from qrr.integrations.llama_index import QrrRerank

    nodes = [NodeWithScore(node=TextNode(text=d, id_=f"n{i}"), score=0.5) for i, d in enumerate(DOCS)]
    rerank = QrrRerank(model=model, top_n=TOP)
    out = rerank.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    assert [n.node.node_id for n in out] == [f"n{e.index}" for e in expected]
    assert [n.score for n in out] == pytest.approx([e.score for e in expected], abs=1e-6)
    assert [n.node.node_id for n in rerank.postprocess_nodes(nodes, query_str=QUERY)] == [n.node.node_id for n in out]
    with pytest.raises(ValueError, match="query"):
        rerank.postprocess_nodes(nodes)


def test_haystack_ranker_in_a_pipeline(model, expected):
    pytest.importorskip("haystack")
    from haystack import Document, Pipeline

    from qrr.integrations.haystack import QrrRanker

    docs = [Document(content=d, id=f"h{i}") for i, d in enumerate(DOCS)]
    ranker = QrrRanker(model=model, top_k=TOP)
    assert ranker._scorer is None  # nothing loads before warm_up
    ranker.warm_up()
    assert ranker._scorer is not None
    out = ranker.run(query=QUERY, documents=docs)["documents"]
    assert [d.id for d in out] == [f"h{e.index}" for e in expected]
    assert [d.score for d in out] == pytest.approx([e.score for e in expected], abs=1e-6)
    assert docs[expected[0].index].score is None  # the input documents are left as they were
    assert len(ranker.run(query=QUERY, documents=docs, top_k=1)["documents"]) == 1

    pipeline = Pipeline()
    pipeline.add_component("ranker", QrrRanker(model=model, top_k=2))
    # serialized and rebuilt, as a saved pipeline is (Haystack 3 loads only modules the caller allows)
    reloaded = Pipeline.loads(pipeline.dumps(), allowed_modules=["qrr.integrations.haystack"])
    result = reloaded.run({"ranker": {"query": QUERY, "documents": docs}})
    assert [d.id for d in result["ranker"]["documents"]] == [f"h{e.index}" for e in expected[:2]]


ADAPTERS = {  # framework: a use of its adapter, ART the artifact folder
    "langchain_core": "from langchain_core.documents import Document\nfrom qrr.integrations.langchain import QrrRerank\n"
                      "print(QrrRerank(model=ART).compress_documents([Document(page_content='d')], 'q'))",
    "llama_index.core": "from llama_index.core.schema import NodeWithScore, TextNode\n"
                        "from qrr.integrations.llama_index import QrrRerank\n"
                        "print(QrrRerank(model=ART).postprocess_nodes([NodeWithScore(node=TextNode(text='d'))], "
                        "query_str='q'))",
    "haystack": "from haystack import Document\nfrom qrr.integrations.haystack import QrrRanker\n"
                "print(QrrRanker(model=ART).run(query='q', documents=[Document(content='d')]))",
}
NO_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ImportError(name + ' is blocked in this test')
sys.meta_path.insert(0, NoTorch())
"""


@pytest.mark.parametrize("framework", list(ADAPTERS))
def test_adapters_need_no_torch(fp32_artifact, framework):
    pytest.importorskip(framework)
    # torch blocked, as where it is not installed: the adapter imports and scores
    code = f"{NO_TORCH}\nART = {str(fp32_artifact)!r}\n{ADAPTERS[framework]}"
    subprocess.run([sys.executable, "-c", code], check=True)
    # torch installed: importing the adapter loads no torch that the framework itself did not load
    module = ADAPTERS[framework].split("from qrr.integrations.")[1].split()[0]
    code = (f"import sys, {framework}\nbefore = 'torch' in sys.modules\nimport qrr.integrations.{module}\n"
            "assert ('torch' in sys.modules) == before, 'the adapter imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
