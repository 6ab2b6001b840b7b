"""`qrr serve --ray`: the rerank server's FastAPI app (qrr.server.create_app, the same app, not a copy) as a
Ray Serve deployment, one Reranker per replica with as many threads as the replica has CPUs.

Each replica runs the app whole, its micro-batcher included, so a replica batches its own requests as
`qrr serve` does. In a Serve config file: `import_path: qrr.distributed.serve:app_builder` with `args` the
keywords of build_app (artifact, replicas or min_replicas/max_replicas, num_cpus, name, config, options).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from ray import serve

from qrr.server import ServerConfig, create_app


@serve.ingress()
class RerankReplica:
    def __init__(self, artifact: str, threads: int, config: dict[str, Any], name: str | None,
                 options: dict[str, Any]) -> None:
        from qrr.runtime import Reranker

        # a long-running replica reads its weights into memory, as `qrr serve` does
        self.rr = Reranker(artifact, threads=threads, copy_weights=True, **options)
        self.config, self.name = ServerConfig(**config), name

    def __serve_build_asgi_app__(self):
        return create_app(self.rr, self.config, name=self.name)


def build_app(artifact: str | os.PathLike[str], *, replicas: int = 1, min_replicas: int | None = None,
              max_replicas: int | None = None, num_cpus: int = 1, name: str | None = None,
              config: ServerConfig | dict[str, Any] | None = None, options: dict[str, Any] | None = None,
              target_ongoing_requests: float = 8) -> serve.Application:
    """The Serve application: `replicas` fixed, or autoscaled between `min_replicas` and `max_replicas` on
    the requests each replica has queued or in flight (`target_ongoing_requests`)."""
    config = config if isinstance(config, ServerConfig) else ServerConfig(**(config or {}))
    scaling: dict[str, Any] = {"num_replicas": replicas}
    if min_replicas is not None or max_replicas is not None:
        low = 1 if min_replicas is None else min_replicas
        scaling = {"autoscaling_config": {"min_replicas": low, "max_replicas": max(low, max_replicas or low),
                                          "target_ongoing_requests": target_ongoing_requests}}
    deployment = serve.deployment(RerankReplica, name="qrr-rerank", ray_actor_options={"num_cpus": num_cpus},
                                  max_ongoing_requests=config.max_in_flight, **scaling)
    return deployment.bind(str(artifact), num_cpus, asdict(config), name, options or {})


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For Serve config files and `serve run qrr.distributed.serve:app_builder artifact=PATH`."""
    return build_app(**args)
