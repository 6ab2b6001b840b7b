"""qrr.runtime: score (query, document) pairs with an exported artifact. No torch, no transformers."""

from .errors import ArtifactError, DeviceError, InputError, QrrError
from .manifest import load_manifest
from .prompt import DEFAULT_INSTRUCTION, PromptTokenizer
from .reranker import Reranker
from .scorer import RerankResult, Scorer, open_scorer

__all__ = [
    "ArtifactError",
    "DEFAULT_INSTRUCTION",
    "DeviceError",
    "InputError",
    "PromptTokenizer",
    "QrrError",
    "RerankClient",
    "Reranker",
    "RerankResult",
    "Scorer",
    "ServerError",
    "load_manifest",
    "open_scorer",
]


def __getattr__(name: str):
    """RerankClient and ServerError, imported on first use: the HTTP client's modules (http.client, ssl, urllib)
    stay out of the scoring path's import time."""
    if name in ("RerankClient", "ServerError"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
