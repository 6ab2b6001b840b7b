"""LangChain: `QrrRerank`, a document compressor that reranks retrieved documents (scores in metadata).

    from langchain_classic.retrievers import ContextualCompressionRetriever
    retriever = ContextualCompressionRetriever(base_compressor=QrrRerank(model="qwen3-rr-0.6b-int8", top_n=5),
                                               base_retriever=vectorstore.as_retriever())
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qrr.runtime.scorer import Scorer, open_scorer

from . import INSTALL

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import ConfigDict, PrivateAttr
except ImportError as exc:
    raise ImportError(f"qrr.integrations.langchain needs langchain-core: {INSTALL} ({exc})") from exc


class QrrRerank(BaseDocumentCompressor):
    """The `top_n` documents most relevant to the query, best first, each with metadata["relevance_score"] = P(yes).

    `model`: an artifact folder, a hub repo id, a `qrr serve` URL or a scorer; `options` go to its constructor
    (e.g. {"threads": 2} for a folder, {"timeout": 10} for a URL).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    model: Any
    top_n: int | None = 3
    instruction: str | None = None
    options: dict[str, Any] = {}
    _scorer: Scorer = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._scorer = open_scorer(self.model, **self.options)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        docs = list(documents)
        results = self._scorer.rerank(query, [d.page_content for d in docs], top_k=self.top_n,
                                      instruction=self.instruction)
        return [docs[r.index].model_copy(update={"metadata": {**docs[r.index].metadata, "relevance_score": r.score}})
                for r in results]
