"""The server's Prometheus metrics, labelled by route template so that label values stay bounded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"  # the path label of every request no route matches: one series, whatever the path


class Metrics:
    """In a registry of its own: two apps in one process never collide."""

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

    def watch(self, in_flight: Callable[[], float], queue_depth: Callable[[], float]) -> None:
        """The gauges read the batcher's state when scraped."""
        self.in_flight.set_function(in_flight)
        self.queue_depth.set_function(queue_depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(routes: list[Any], scope: dict[str, Any]) -> str:
    """The template of the route a request matches ("/v1/rerank"), or UNMATCHED."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route.path
        if match == Match.PARTIAL and partial is None:  # the path is a route's, the method is not (405)
            partial = route.path
    return partial or UNMATCHED
