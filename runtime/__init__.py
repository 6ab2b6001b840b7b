"""qrr.runtime: score (query, document) pairs with an exported artifact. No torch, no transformers."""

from .errors import ArtifactError, DeviceError, InputError, QrrError
from .manifest import load_manifest
from .prompt import DEFAULT_INSTRUCTION, PromptTokenizer
from .reranker import Reranker, RerankResult

__all__ = [
    "ArtifactError",
    "DEFAULT_INSTRUCTION",
    "DeviceError",
    "InputError",
    "PromptTokenizer",
    "QrrError",
    "Reranker",
    "RerankResult",
    "load_manifest",
]
