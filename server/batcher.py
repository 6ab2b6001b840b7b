"""The micro-batcher: the pairs of concurrent requests scored together on one worker thread.

Requests wait a few milliseconds for company, up to a token budget; a request whose client has gone or
whose deadline passed is dropped before it reaches the model. When a batch fails inside the session, each
of its requests is retried alone, so only the one that fails again gets its 503 and the server goes on.

Admission: the batcher measures its own speed (prompt tokens scored per second, averaged over recent
batches) and refuses a request, 503 with Retry-After, when the work already queued plus this request could
not be scored within `max_wait_s` (the request deadline). Under overload callers then hear "busy" at once
instead of waiting out the deadline for a 504 while the server scores requests nobody waits for any more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from qrr.runtime import Reranker
from qrr.runtime.errors import first_line

from .errors import HTTPProblem

log = logging.getLogger("qrr.server")
RETRY = {"Retry-After": "1"}


@dataclass
class _Job:
    ids: list[list[int]]
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, reranker: Reranker, *, max_in_flight: int, batch_wait_ms: float, gather_tokens: int,
                 max_wait_s: float = float("inf"), on_batch=None) -> None:
        self.reranker = reranker
        self.max_in_flight, self.batch_wait_ms, self.gather_tokens = max_in_flight, batch_wait_ms, gather_tokens
        self.max_wait_s = max_wait_s
        self.queued_tokens = 0  # prompt tokens of the requests admitted and not yet answered
        self.tokens_per_s: float | None = None  # measured on the batches scored so far
        self.on_batch = on_batch  # called with (pairs, tokens) after each batch scored
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.in_flight = 0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="qrr-score")
        self.task: asyncio.Task | None = None

    async def logits(self, ids: list[list[int]]) -> np.ndarray:
        """The score logits of already tokenized prompts, in order."""
        if not ids:
            return np.empty(0)
        if self.in_flight >= self.max_in_flight:
            raise HTTPProblem(503, f"server busy: {self.in_flight} requests in flight; retry shortly", headers=RETRY)
        tokens = sum(map(len, ids))
        wait = self.expected_wait_s(tokens)
        if self.in_flight and wait > self.max_wait_s:
            retry = {"Retry-After": str(max(1, round((wait - tokens / self.tokens_per_s) / 2)))}
            raise HTTPProblem(503, f"server busy: the queued work takes about {wait:.0f} s, more than the "
                                   f"{self.max_wait_s:g} s deadline; retry shortly", headers=retry)
        self.in_flight += 1
        self.queued_tokens += tokens
        try:
            future = asyncio.get_running_loop().create_future()
            await self.queue.put(_Job(ids, future))
            return await future
        finally:
            self.in_flight -= 1
            self.queued_tokens -= tokens

    def expected_wait_s(self, tokens: int) -> float:
        """Seconds until a request of `tokens` more tokens would be scored, at the measured speed (0 unmeasured)."""
        if not self.tokens_per_s:
            return 0.0
        return (self.queued_tokens + tokens) / self.tokens_per_s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            tokens = sum(map(len, jobs[0].ids))
            deadline = loop.time() + self.batch_wait_ms / 1000
            while tokens < self.gather_tokens:
                try:
                    job = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                tokens += sum(map(len, job.ids))
            jobs = [job for job in jobs if not job.future.done()]  # cancelled: client gone or deadline passed
            if not jobs:
                continue
            try:
                await self._score(jobs)
            except Exception as exc:
                log.error("scoring a batch of %d requests failed: %s", len(jobs), first_line(exc))
                if len(jobs) == 1:
                    self._fail(jobs[0], exc)
                    continue
                for job in jobs:  # alone, so that only a request that fails by itself gets the 503
                    try:
                        await self._score([job])
                    except Exception as again:
                        self._fail(job, again)

    async def _score(self, jobs: list[_Job]) -> None:
        flat = [seq for job in jobs for seq in job.ids]
        keys = [n for n, job in enumerate(jobs) for _ in job.ids]  # a request's documents share a prefix
        start = time.perf_counter()
        logits = await asyncio.get_running_loop().run_in_executor(
            self.executor, lambda: self.reranker.score_ids(flat, keys, raw=True))
        rate = sum(map(len, flat)) / max(time.perf_counter() - start, 1e-6)
        self.tokens_per_s = rate if self.tokens_per_s is None else 0.7 * self.tokens_per_s + 0.3 * rate
        if self.on_batch:
            self.on_batch(len(flat), sum(map(len, flat)))
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(logits[start : start + len(job.ids)])
            start += len(job.ids)

    @staticmethod
    def _fail(job: _Job, exc: Exception) -> None:
        if not job.future.done():
            message = f"scoring failed inside the model session ({first_line(exc)}); retry, and report it if it persists"
            job.future.set_exception(HTTPProblem(503, message, headers=RETRY))

    async def drain(self, grace_s: float) -> None:
        """Wait (bounded) for the requests in flight, then stop the worker."""
        end = time.monotonic() + grace_s
        while self.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)
