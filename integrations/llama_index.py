"""LlamaIndex: `QrrRerank`, a node postprocessor that keeps the `top_n` nodes most relevant to the query.

    query_engine = index.as_query_engine(similarity_top_k=20,
                                         node_postprocessors=[QrrRerank(model="qwen3-rr-0.6b-int8", top_n=5)])
"""

from __future__ import annotations

from typing import Any

from qrr.runtime.scorer import Scorer, open_scorer

from . import INSTALL

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:
    raise ImportError(f"qrr.integrations.llama_index needs llama-index-core: {INSTALL} ({exc})") from exc


class QrrRerank(BaseNodePostprocessor):
    """The `top_n` nodes most relevant to the query, best first, each node's score set to P(yes).

    `model`: an artifact folder, a hub repo id, a `qrr serve` URL or a scorer; `options` go to its constructor.
    """

    model: Any = Field(description="artifact folder, hub repo id, qrr serve URL, or a scorer")
    top_n: int = Field(default=2, description="nodes to keep")
    instruction: str | None = Field(default=None, description="Qwen3 task instruction (default: the model card's)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the scorer")
    _scorer: Scorer = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._scorer = open_scorer(self.model, **self.options)

    @classmethod
    def class_name(cls) -> str:
        return "QrrRerank"

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
                           ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("QrrRerank needs the query: pass query_bundle or query_str")
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        results = self._scorer.rerank(query_bundle.query_str, texts, top_k=self.top_n, instruction=self.instruction)
        for r in results:
            nodes[r.index].score = r.score
        return [nodes[r.index] for r in results]
