"""What every scorer offers — the local `Reranker` and the HTTP `RerankClient` — and sentence-transformers'
calling convention on top of it (`predict`, `rank`), so code written for a `CrossEncoder` runs unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import InputError, QrrError
from .prompt import check_documents, check_text


@dataclass(frozen=True)
class RerankResult:
    index: int
    score: float
    document: str


@runtime_checkable
class Scorer(Protocol):
    """P(yes) for (query, document) pairs; what the framework adapters need from a scorer."""

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> list[float]: ...

    def score_pairs(self, pairs: Iterable[tuple[str, str]], *, instruction: str | None = None) -> list[float]: ...

    def rerank(self, query: str, documents: Sequence[str], *, top_k: int | None = None,
               instruction: str | None = None) -> list[RerankResult]: ...


def open_scorer(model: Any, **options: Any) -> Scorer:
    """A scorer from what a user hands an adapter: a running `qrr serve` URL, an artifact folder, a hub repo id of
    a published artifact, or a scorer already made (returned as it is). `options` go to the constructor."""
    if isinstance(model, Scorer):
        return model
    if isinstance(model, str) and model.startswith(("http://", "https://")):
        from .client import RerankClient

        return RerankClient(model, **options)
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(f"model must be an artifact folder, a hub repo id or a qrr serve URL, got {type(model).__name__}")
    from .reranker import Reranker

    return Reranker.from_pretrained(model, **options)


def check_top_k(top_k: object) -> None:
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise InputError(f"top_k must be a non-negative integer or None, got {top_k!r}")


def ranked(scores: Sequence[float], top_k: int | None = None) -> list[int]:
    """Indexes by score, best first (ties in input order), the first `top_k` when given."""
    check_top_k(top_k)
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top_k]


def _is_single_pair(inputs: object) -> bool:
    """One (query, document) pair rather than a list of them, as CrossEncoder.predict decides."""
    return isinstance(inputs, (list, tuple)) and len(inputs) > 0 and not isinstance(inputs[0], (list, tuple))


def _refuse(**options: object) -> None:
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise InputError(
            f"{', '.join(given)}: not supported by qrr (scores are the model's P(yes); the device is chosen when the "
            "scorer is made); leave them out"
        )


class CrossEncoderCalls:
    """sentence-transformers' `CrossEncoder.predict` and `.rank`, over the scorer's own `score_pairs`.

    `prompt` is the Qwen3 task instruction (same as `instruction`). Options that change what a score is
    (`activation_fn`, `apply_softmax`) or where it runs (`device`, `pool`, `chunk_size`, `prompt_name`) are refused
    with an error rather than ignored.
    """

    def predict(self, inputs, prompt_name=None, prompt=None, batch_size=32, show_progress_bar=None,
                activation_fn=None, apply_softmax=False, convert_to_numpy=True, convert_to_tensor=False,
                device=None, pool=None, chunk_size=None, *, instruction=None):
        """P(yes) of each (query, document) pair in input order; one pair gives one score.

        `batch_size` pairs are scored per call (the runtime batches by tokens within them); the result is a float32
        numpy array, a torch tensor with `convert_to_tensor`, else a list of floats.
        """
        _refuse(prompt_name=prompt_name, activation_fn=activation_fn, apply_softmax=apply_softmax or None,
                device=device, pool=pool, chunk_size=chunk_size)
        if prompt is not None and instruction is not None and prompt != instruction:
            raise InputError("give the instruction once: prompt and instruction differ")
        instruction = instruction if instruction is not None else prompt
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        single = _is_single_pair(inputs)
        pairs = [inputs] if single else list(inputs)
        scores: list[float] = []
        bar = _progress_bar(show_progress_bar, len(pairs))
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            scores += self.score_pairs(chunk, instruction=instruction)  # type: ignore[attr-defined]
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        if convert_to_tensor:
            try:
                import torch
            except ImportError:
                raise QrrError("convert_to_tensor needs torch; use convert_to_numpy (the default)") from None
            out: Any = torch.tensor(scores, dtype=torch.float32)
        elif convert_to_numpy:
            out = np.asarray(scores, dtype=np.float32)
        else:
            out = scores
        return out[0] if single else out

    def rank(self, query, documents, top_k=None, return_documents=False, prompt_name=None, prompt=None,
             batch_size=32, show_progress_bar=None, activation_fn=None, device=None, pool=None, chunk_size=None,
             *, instruction=None):
        """[{"corpus_id", "score", ("text")}] sorted by score, best first; the first `top_k` when given."""
        check_text(query, "query")
        docs = check_documents(documents)
        scores = self.predict([(query, d) for d in docs], prompt_name=prompt_name, prompt=prompt,
                              batch_size=batch_size, show_progress_bar=show_progress_bar, activation_fn=activation_fn,
                              convert_to_numpy=False, device=device, pool=pool, chunk_size=chunk_size,
                              instruction=instruction)
        results = []
        for i in ranked(scores, top_k):
            results.append({"corpus_id": i, "score": scores[i], **({"text": docs[i]} if return_documents else {})})
        return results


def _progress_bar(show: bool | None, total: int):
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise QrrError("show_progress_bar needs tqdm: pip install tqdm") from None
    return tqdm(total=total, desc="scoring", unit="pair")
