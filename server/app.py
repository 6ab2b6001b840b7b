"""The rerank HTTP server: the request shapes rerank clients already send, `/v1/score`, health, metrics.

- `POST /v1/rerank`: Cohere v1 and Jina; `POST /v2/rerank`: Cohere v2; `POST /rerank`: Hugging Face TEI.
- Requests are tokenized off the event loop, then the micro-batcher (batcher.py) scores the pairs of
  concurrent requests together on one worker thread. Everything is bounded: body bytes, documents and
  tokens per request, the prompt text a query expands to, requests in flight, time per request.
- Every failure has one shape (errors.py); the guard (guard.py) enforces the body limit and the deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from qrr.runtime import Reranker
from qrr.runtime.prompt import MIN_DOCUMENT_TOKENS, Truncation
from qrr.runtime.reranker import sigmoid

from . import errors
from .batcher import MicroBatcher
from .errors import HTTPProblem, field_problem
from .guard import Guard
from .metrics import Metrics, route_template
from .schemas import RerankRequest, RerankRequestV2, ScoreRequest, TEIRequest


@dataclass
class ServerConfig:
    max_documents: int = 1000  # per request
    max_in_flight: int = 64  # requests queued or being scored; more get 503
    max_body_bytes: int = 4 << 20  # larger bodies get 413 before they are read
    max_request_tokens: int = 1 << 18  # prompt tokens per request, after truncation
    timeout_s: float = 60.0  # per request; 504 after it
    batch_wait_ms: float = 5.0  # how long the batcher waits for more requests to join a batch
    gather_tokens: int = 16384  # tokens the batcher gathers before it stops waiting
    shutdown_grace_s: float = 30.0

    @property
    def max_prompt_chars(self) -> int:
        """Characters of pair text one request may make: a query is repeated in every pair it is scored with."""
        return 8 * self.max_body_bytes


def create_app(reranker: Reranker, config: ServerConfig | None = None, name: str | None = None) -> FastAPI:
    config = config or ServerConfig()
    metrics = Metrics()
    model_name = name or reranker.path.name
    tokenizer = reranker.tokenizer
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(reranker, max_in_flight=config.max_in_flight, batch_wait_ms=config.batch_wait_ms,
                               gather_tokens=config.gather_tokens, max_wait_s=config.timeout_s,
                               on_batch=batch_done)
        batcher.task = asyncio.create_task(batcher.run())
        state["batcher"] = batcher
        metrics.watch(lambda: batcher.in_flight, batcher.queue.qsize)
        yield
        await batcher.drain(config.shutdown_grace_s)

    def batch_done(pairs: int, tokens: int) -> None:
        metrics.batches.inc()
        metrics.pairs.inc(pairs)
        metrics.tokens.inc(tokens)

    app = FastAPI(title="qrr rerank server", version=reranker.manifest.get("qrr_version", "0"), lifespan=lifespan)
    errors.install(app)
    app.add_middleware(Guard, max_body_bytes=config.max_body_bytes, timeout_s=config.timeout_s,
                       label=lambda scope: route_template(app.router.routes, scope), observe=metrics.observe)

    def check_model(model: str | None) -> None:
        if model is not None and model != model_name:
            raise HTTPProblem(404, f"model {model!r} is not served here; this server serves: {model_name}",
                              [{"field": "model", "message": f"not served here; served: {model_name}"}])

    async def check_room(query: str, instruction: str | None, repeats: int) -> None:
        """A query (and instruction) repeated in every pair must leave the documents room, and must not
        multiply into more text than the server tokenizes for one request."""
        head = tokenizer.pair_text(query, "", instruction)
        field = "query" if query else "instruction"
        if len(head) * repeats > config.max_prompt_chars:
            raise field_problem(413, field, f"{len(head)} characters repeated in {repeats} pairs exceed the "
                                            f"{config.max_prompt_chars} this server tokenizes per request")
        tokens = await asyncio.to_thread(tokenizer.count, head)
        if tokens >= tokenizer.pair_budget:
            raise field_problem(413, field, f"{tokens} tokens with the template leave no room for a document "
                                            f"in the {reranker.max_length}-token window; shorten it")

    async def encode(pairs: list[tuple[str, str]], instruction: str | None, truncate: bool, field: str,
                     max_document_tokens: int | None = None) -> tuple[list[list[int]], list[Truncation]]:
        if len(pairs) > config.max_documents:
            raise field_problem(413, field, f"{len(pairs)} items; this server takes at most {config.max_documents} "
                                            "per request")
        ids, report = await asyncio.to_thread(tokenizer.encode_report, pairs, instruction, truncate=truncate,
                                              max_document_tokens=max_document_tokens)
        if not truncate:
            over = [i for i, seq in enumerate(ids) if len(seq) > reranker.max_length]
            if over:
                raise HTTPProblem(413, f"{field} {over[:10]} exceed {reranker.max_length} tokens with the prompt; "
                                       "shorten them or send truncate=true",
                                  [{"field": f"{field}.{i}", "message": "too long"} for i in over[:10]])
        total = sum(map(len, ids))
        if total > config.max_request_tokens:
            raise field_problem(413, field, f"{total} prompt tokens; this server takes at most "
                                            f"{config.max_request_tokens} per request")
        return ids, report

    def warnings(report: list[Truncation], what: str) -> list[str]:
        starved = [i for i, t in enumerate(report) if t.starved]
        if not starved:
            return []
        return [f"{len(starved)} {what} kept fewer than {MIN_DOCUMENT_TOKENS} of their tokens after truncation to "
                f"the {reranker.max_length}-token window (indices {starved[:20]}): their scores say little; "
                "shorten the query or instruction"]

    async def rank(body: RerankRequest, version: str) -> dict[str, Any]:
        check_model(body.model)
        await check_room(body.query, body.instruction, len(body.documents))
        ids, report = await encode([(body.query, d) for d in body.documents], body.instruction, body.truncate,
                                   "documents", body.max_tokens_per_doc)
        scores = sigmoid(await state["batcher"].logits(ids)).tolist()
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], i))[: body.top_n]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if body.return_documents:
                item["document"] = {"text": body.documents[i]}
            if report[i].starved:
                item["truncated"] = True
            results.append(item)
        tokens = sum(map(len, ids))
        meta: dict[str, Any] = {"api_version": {"version": version}, "tokens": {"input_tokens": tokens}}
        if warned := warnings(report, "documents"):
            meta["warnings"] = warned
        return {"id": str(uuid.uuid4()), "model": model_name, "results": results, "usage": {"total_tokens": tokens},
                "meta": meta}

    @app.post("/v1/rerank", summary="Rerank documents (Cohere v1 and Jina request and response shapes)")
    async def rerank_v1(body: RerankRequest) -> dict[str, Any]:
        return await rank(body, "1")

    @app.post("/v2/rerank", summary="Rerank documents (Cohere v2 request and response shapes)")
    async def rerank_v2(body: RerankRequestV2) -> dict[str, Any]:
        return await rank(body, "2")

    @app.post("/rerank", summary="Rerank texts (Hugging Face text-embeddings-inference shape)")
    async def rerank_tei(body: TEIRequest) -> list[dict[str, Any]]:
        if body.truncation_direction.lower() == "left":
            raise field_problem(422, "truncation_direction", "only Right: the model card truncates the end of the pair")
        await check_room(body.query, body.instruction, len(body.texts))
        ids, report = await encode([(body.query, t) for t in body.texts], body.instruction, body.truncate, "texts")
        logits = await state["batcher"].logits(ids)
        scores = (logits if body.raw_scores else sigmoid(logits)).tolist()
        results = []
        for i in sorted(range(len(ids)), key=lambda i: (-scores[i], i)):
            item: dict[str, Any] = {"index": i, "score": scores[i]}
            if body.return_text:
                item["text"] = body.texts[i]
            if report[i].starved:
                item["truncated"] = True
            results.append(item)
        return results

    @app.post("/v1/score", summary="P(yes) for explicit (query, document) pairs, in order")
    async def score(body: ScoreRequest) -> dict[str, Any]:
        await check_room("", body.instruction, len(body.pairs))
        ids, report = await encode([(p.query, p.document) for p in body.pairs], body.instruction, body.truncate,
                                   "pairs")
        scores = sigmoid(await state["batcher"].logits(ids)).tolist()
        meta = {"warnings": warned} if (warned := warnings(report, "pairs' documents")) else {}
        return {"model": model_name, "scores": scores, "usage": {"total_tokens": sum(map(len, ids))}, "meta": meta}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        m = reranker.manifest
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "format": m["format"], "precision": m["precision"],
            "max_length": reranker.max_length, "source": m.get("source"), "quantization": m.get("quantization"),
            "validation": m.get("validation"), "qrr_version": m.get("qrr_version"),
        }]}

    return app
