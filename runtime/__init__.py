"""qrr.runtime: score (query, document) pairs with an exported artifact. No torch, no transformers."""

from .client import RerankClient, ServerError
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
