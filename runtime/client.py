"""A small client of a running `qrr serve` (or any Cohere-shaped rerank server), standard library only.

`RerankClient(url)` offers what the local `Reranker` offers (`score`, `score_pairs`, `rerank`, and
sentence-transformers' `predict` / `rank`), so the framework adapters take either. Requests time out; a busy
server (503) or a refused or dropped connection is retried a bounded number of times with growing waits.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import InputError, QrrError
from .prompt import check_documents, check_text
from .scorer import CrossEncoderCalls, RerankResult, check_top_k

RETRY_AFTER_CAP_S = 10.0  # the most a Retry-After header makes the client wait


class ServerError(QrrError):
    """The rerank server could not be reached, answered with an error, or did not answer in time."""


class RerankClient(CrossEncoderCalls):
    """Scores through a rerank server: POST {url}/v1/rerank (Cohere's shape) and {url}/v1/score (qrr's).

    >>> rr = RerankClient("http://127.0.0.1:8080")
    >>> rr.rerank("what is the capital of China?", ["Beijing is the capital.", "Gravity."], top_k=1)
    """

    def __init__(self, url: str, *, timeout: float = 60.0, retries: int = 3, backoff: float = 0.5,
                 api_key: str | None = None, model: str | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InputError(f"url must start with http:// or https://, got {url!r}")
        if not timeout > 0 or not isinstance(retries, int) or retries < 0 or backoff < 0:
            raise InputError("timeout must be positive, retries a non-negative integer, backoff non-negative")
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.model = model

    def rerank(self, query: str, documents: Sequence[str], *, top_k: int | None = None,
               instruction: str | None = None) -> list[RerankResult]:
        """Documents sorted by P(yes), best first; the first `top_k` when given."""
        check_text(query, "query")
        check_top_k(top_k)
        docs = check_documents(documents)
        if not docs or top_k == 0:
            return []
        body = {"model": self.model, "query": query, "documents": docs, "top_n": top_k, "return_documents": False,
                "instruction": instruction}
        results = self._post("/v1/rerank", body).get("results")
        try:
            return [RerankResult(int(r["index"]), float(r["relevance_score"]), docs[int(r["index"])]) for r in results]
        except (TypeError, KeyError, ValueError, IndexError):
            raise ServerError(f"{self.url}/v1/rerank answered without Cohere-shaped results") from None

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> list[float]:
        """P(yes) for each document, in input order."""
        scores = [0.0] * len(check_documents(documents))
        for r in self.rerank(query, documents, instruction=instruction):
            scores[r.index] = r.score
        return scores

    def score_pairs(self, pairs: Iterable[tuple[str, str]], *, instruction: str | None = None) -> list[float]:
        """P(yes) for each (query, document) pair, in input order; queries may differ."""
        body_pairs = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InputError(f"pairs[{i}] must be a (query, document) tuple, got {type(pair).__name__}")
            body_pairs.append({"query": check_text(pair[0], f"pairs[{i}][0] (query)"),
                               "document": check_text(pair[1], f"pairs[{i}][1] (document)")})
        if not body_pairs:
            return []
        scores = self._post("/v1/score", {"pairs": body_pairs, "instruction": instruction}).get("scores")
        if not isinstance(scores, list) or len(scores) != len(body_pairs):
            raise ServerError(f"{self.url}/v1/score answered without one score per pair")
        return [float(s) for s in scores]

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON, retrying a busy server or a lost connection; 4xx answers are the caller's error."""
        url = self.url + path
        body = {key: value for key, value in body.items() if value is not None}  # servers may refuse nulls
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        wait = self.backoff
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(wait)
                wait = self.backoff * 2**attempt
            try:
                request = urllib.request.Request(url, data=data, headers=self.headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if 400 <= exc.code < 500:
                    raise InputError(f"{url} refused the request ({exc.code}): {message}") from None
                if exc.code != 503:
                    raise ServerError(f"{url} answered {exc.code}: {message}") from None
                failure = f"stayed busy (503: {message})"
                wait = min(_retry_after(exc, wait), RETRY_AFTER_CAP_S)
            except OSError as exc:  # refused, reset or timed out; urllib wraps some in URLError(reason)
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, TimeoutError):
                    raise ServerError(f"{url} did not answer within {self.timeout:g} s; raise the client's timeout "
                                      "or lighten the server's load") from None
                failure = f"could not be reached ({reason})"
            except http.client.HTTPException as exc:  # a broken response: retried like a dropped connection
                failure = f"gave a broken answer ({type(exc).__name__})"
            except (ValueError, UnicodeDecodeError):
                raise ServerError(f"{url} answered with something that is not JSON") from None
            else:
                if not isinstance(answer, dict):
                    raise ServerError(f"{url} answered with JSON that is not an object")
                return answer
        raise ServerError(f"{url} {failure} in {self.retries + 1} tries; is a qrr server running there?")


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The server's {"error": …} (qrr) or {"message"/"detail": …} (others), else the status's reason."""
    try:
        body = json.loads(exc.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return str(exc.reason)
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if isinstance(body.get(key), str):
                return body[key]
    return str(exc.reason)


def _retry_after(exc: urllib.error.HTTPError, default: float) -> float:
    try:
        return max(0.0, float(exc.headers.get("Retry-After", default)))
    except (TypeError, ValueError):
        return default
