"""qrr.server: an HTTP rerank server over qrr.runtime (the [server] extra: FastAPI and uvicorn)."""

from .app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
