"""Haystack 2: `QrrRanker`, a ranker component; `warm_up` (called by the pipeline, or by the first run) loads the
artifact or opens the client.

    pipeline.add_component("ranker", QrrRanker(model="qwen3-rr-0.6b-int8", top_k=5))
    pipeline.connect("retriever.documents", "ranker.documents")
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from qrr.runtime.scorer import Scorer, open_scorer

from . import INSTALL

try:
    from haystack import Document, component, default_from_dict, default_to_dict
except ImportError as exc:
    raise ImportError(f"qrr.integrations.haystack needs haystack-ai: {INSTALL} ({exc})") from exc


@component
class QrrRanker:
    """The `top_k` documents most relevant to the query, best first, each with `score` = P(yes).

    `model`: an artifact folder, a hub repo id, a `qrr serve` URL or a scorer; `options` go to its constructor.
    """

    def __init__(self, model: Any, top_k: int = 10, instruction: str | None = None,
                 options: dict[str, Any] | None = None) -> None:
        if top_k <= 0:
            raise ValueError(f"top_k must be > 0, got {top_k}")
        self.model, self.top_k, self.instruction, self.options = model, top_k, instruction, options or {}
        self._scorer: Scorer | None = None

    def warm_up(self) -> None:
        self._load()

    def _load(self) -> Scorer:
        if self._scorer is None:
            self._scorer = open_scorer(self.model, **self.options)
        return self._scorer

    def to_dict(self) -> dict[str, Any]:
        if not isinstance(self.model, (str, os.PathLike)):
            raise TypeError("a QrrRanker made from a scorer object cannot be serialized; give model as a folder, "
                            "repo id or URL")
        return default_to_dict(self, model=os.fspath(self.model), top_k=self.top_k, instruction=self.instruction,
                               options=self.options)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QrrRanker:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, list[Document]]:
        top_k = self.top_k if top_k is None else top_k
        if top_k <= 0:
            raise ValueError(f"top_k must be > 0, got {top_k}")
        if not documents:
            return {"documents": []}
        results = self._load().rerank(query, [d.content or "" for d in documents], top_k=top_k,
                                      instruction=self.instruction)
        return {"documents": [replace(documents[r.index], score=r.score) for r in results]}
