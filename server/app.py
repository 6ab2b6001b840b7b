"""The rerank HTTP server: Cohere/Jina-shaped `/v1/rerank` (and `/rerank`), `/v1/score`, health, metrics.

Requests are tokenized off the event loop, then a micro-batcher groups the pairs of concurrent requests by
token budget (waiting a few milliseconds for company) and scores them on one worker thread, so the event loop
stays free and onnxruntime's threads are never oversubscribed. Everything is bounded: documents per request,
tokens per document, requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Match

from qrr.runtime import Reranker

log = logging.getLogger("qrr.server")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"  # the path label of every request no route matches: one series, whatever the path


@dataclass
class ServerConfig:
    max_documents: int = 1000  # per request
    max_in_flight: int = 64  # requests queued or being scored; more get 503
    batch_wait_ms: float = 5.0  # how long the batcher waits for more requests to join a batch
    gather_tokens: int = 16384  # tokens the batcher gathers before it stops waiting
    shutdown_grace_s: float = 30.0


class Document(BaseModel):
    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    query: str
    documents: list[str | Document]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    instruction: str | None = None
    truncate: bool = Field(default=True, description="truncate long documents as the model card does; false: 413")


class Pair(BaseModel):
    query: str
    document: str


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    pairs: list[Pair]
    instruction: str | None = None
    truncate: bool = True


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class _Job:
    ids: list[list[int]]
    future: asyncio.Future


class Metrics:
    """The server's Prometheus metrics, in a registry of its own: two apps in one process never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qrr_requests_total", "HTTP requests by path and status.", ["path", "status"], registry=r)
        self.pairs = Counter("qrr_pairs_total", "(query, document) pairs scored.", registry=r)
        self.tokens = Counter("qrr_tokens_total", "Prompt tokens scored.", registry=r)
        self.batches = Counter("qrr_batches_total", "Micro-batches run.", registry=r)
        self.latency = Histogram("qrr_request_seconds", "Request latency.", buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("qrr_in_flight", "Requests queued or being scored.", registry=r)
        self.queue_depth = Gauge("qrr_queue_depth", "Requests waiting for the batcher.", registry=r)

    def observe(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path=path, status=str(status)).inc()
        self.latency.observe(seconds)

    def watch(self, batcher: MicroBatcher) -> None:
        """The gauges read the batcher's state when scraped."""
        self.in_flight.set_function(lambda: batcher.in_flight)
        self.queue_depth.set_function(batcher.queue.qsize)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(app: FastAPI, scope: dict[str, Any]) -> str:
    """The template of the route a request matches ("/v1/rerank"), or UNMATCHED: label values stay bounded."""
    partial = None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route.path
        if match == Match.PARTIAL and partial is None:  # the path is a route's, the method is not (405)
            partial = route.path
    return partial or UNMATCHED


class MicroBatcher:
    """Groups the pairs of concurrent requests into shared batches, scored on one worker thread."""

    def __init__(self, reranker: Reranker, config: ServerConfig, metrics: Metrics) -> None:
        self.reranker, self.config, self.metrics = reranker, config, metrics
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.in_flight = 0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="qrr-score")
        self.task: asyncio.Task | None = None

    async def score(self, ids: list[list[int]]) -> list[float]:
        if not ids:
            return []
        if self.in_flight >= self.config.max_in_flight:
            raise HTTPProblem(503, f"server busy: {self.in_flight} requests in flight; retry shortly", {"Retry-After": "1"})
        self.in_flight += 1
        try:
            future = asyncio.get_running_loop().create_future()
            await self.queue.put(_Job(ids, future))
            return await future
        finally:
            self.in_flight -= 1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            tokens = sum(map(len, jobs[0].ids))
            deadline = loop.time() + self.config.batch_wait_ms / 1000
            while tokens < self.config.gather_tokens:
                try:
                    job = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                tokens += sum(map(len, job.ids))
            flat = [seq for job in jobs for seq in job.ids]
            group_keys = [n for n, job in enumerate(jobs) for _ in job.ids]  # a request's documents share a prefix
            try:
                scores = await loop.run_in_executor(self.executor, self.reranker.score_ids, flat, group_keys)
            except Exception as exc:  # reported to each waiting request, never swallowed
                log.exception("scoring failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.metrics.batches.inc()
            self.metrics.pairs.inc(len(flat))
            self.metrics.tokens.inc(tokens)
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(scores[start : start + len(job.ids)].tolist())
                start += len(job.ids)

    async def drain(self, grace_s: float) -> None:
        """Wait (bounded) for the requests in flight, then stop the worker."""
        end = time.monotonic() + grace_s
        while self.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)


def create_app(reranker: Reranker, config: ServerConfig | None = None, name: str | None = None) -> FastAPI:
    config = config or ServerConfig()
    metrics = Metrics()
    model_name = name or reranker.path.name
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(reranker, config, metrics)
        batcher.task = asyncio.create_task(batcher.run())
        state["batcher"] = batcher
        metrics.watch(batcher)
        yield
        await batcher.drain(config.shutdown_grace_s)

    app = FastAPI(title="qrr rerank server", version=reranker.manifest.get("qrr_version", "0"), lifespan=lifespan)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        path = route_template(app, request.scope)
        try:
            response = await call_next(request)
        except Exception:  # no traceback ever reaches a client
            log.exception("unhandled error on %s", request.url.path)
            response = JSONResponse({"error": "internal server error"}, status_code=500)
        metrics.observe(path, response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, exc: HTTPProblem):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        where = lambda e: ".".join(str(p) for p in e["loc"] if p != "body") or "body"  # noqa: E731
        message = "; ".join(f"{where(e)}: {e['msg']}" for e in errors[:5])
        return JSONResponse({"error": message, "detail": [{"field": where(e), "message": e["msg"]} for e in errors]},
                            status_code=422)

    async def encode(pairs: list[tuple[str, str]], instruction: str | None, truncate: bool) -> list[list[int]]:
        ids = await asyncio.to_thread(reranker.tokenizer.encode, pairs, instruction, truncate=truncate)
        if not truncate:
            over = [i for i, seq in enumerate(ids) if len(seq) > reranker.max_length]
            if over:
                raise HTTPProblem(413, f"documents {over[:10]} exceed {reranker.max_length} tokens with the prompt; "
                                       "shorten them or send truncate=true")
        return ids

    async def rerank(body: RerankRequest) -> dict[str, Any]:
        if len(body.documents) > config.max_documents:
            raise HTTPProblem(413, f"{len(body.documents)} documents; this server takes at most {config.max_documents} "
                                   "per request")
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        ids = await encode([(body.query, t) for t in texts], body.instruction, body.truncate)
        scores = await state["batcher"].score(ids)
        order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))[: body.top_n]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if body.return_documents:
                item["document"] = {"text": texts[i]}
            results.append(item)
        return {"model": model_name, "results": results, "usage": {"total_tokens": sum(map(len, ids))}}

    app.post("/v1/rerank", summary="Rerank documents for a query (Cohere/Jina request shape)")(rerank)
    app.post("/rerank", summary="Same as /v1/rerank (the path llama.cpp and TEI clients call)")(rerank)

    @app.post("/v1/score", summary="P(yes) for explicit (query, document) pairs, in order")
    async def score(body: ScoreRequest) -> dict[str, Any]:
        if len(body.pairs) > config.max_documents:
            raise HTTPProblem(413, f"{len(body.pairs)} pairs; this server takes at most {config.max_documents} per request")
        ids = await encode([(p.query, p.document) for p in body.pairs], body.instruction, body.truncate)
        scores = await state["batcher"].score(ids)
        return {"model": model_name, "scores": scores, "usage": {"total_tokens": sum(map(len, ids))}}

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
