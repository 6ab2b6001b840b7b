"""Find a checkpoint (local folder or hub id), check it is a Qwen3 reranker, load it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrr.runtime.errors import QrrError, first_line
from qrr.runtime.hub import HUB_ID, snapshot
from qrr.runtime.manifest import read_json_object

HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


class CheckpointError(QrrError):
    """The source is missing, unreachable, or not a Qwen3 reranker checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    source: str  # what the user gave: a folder or a hub id
    path: Path  # the local folder holding config.json, weights and tokenizer
    revision: str | None  # the hub commit the requested revision resolved to, when downloaded
    config: dict[str, Any]


def resolve(source: str, revision: str | None = None) -> Checkpoint:
    """A local folder as it is, or a hub id downloaded into the usual Hugging Face cache."""
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise CheckpointError(f"{source} is a file; give the checkpoint folder that holds config.json")
        return Checkpoint(source, local, revision, read_config(local))
    if not HUB_ID.match(source):
        raise CheckpointError(
            f"checkpoint not found: {source!r} is neither a local folder nor a hub id such as Qwen/Qwen3-Reranker-0.6B"
        )
    path = download(source, revision)
    # snapshots/<commit>/ is the layout of the hub cache: the folder name is the commit the revision resolved to
    return Checkpoint(source, path, path.name, read_config(path))


def download(repo_id: str, revision: str | None) -> Path:
    return snapshot(repo_id, revision, HUB_FILES, error=CheckpointError)


def read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
    config = read_json_object(config_file, CheckpointError, "fix or re-download the checkpoint")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or ["Qwen3ForCausalLM"]
    if model_type != "qwen3" or "Qwen3ForCausalLM" not in architectures:
        raise CheckpointError(
            f"{path} is a {model_type or 'unknown'} checkpoint ({', '.join(architectures)}), not a Qwen3 causal LM; "
            "qrr exports Qwen3-Reranker checkpoints (model_type qwen3, Qwen3ForCausalLM)"
        )
    if config.get("use_sliding_window"):
        raise CheckpointError(f"{path} enables sliding-window attention; Qwen3-Reranker checkpoints do not")
    return config


def load_tokenizer(checkpoint: Checkpoint, padding_side: str = "left"):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, padding_side=padding_side)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer of {checkpoint.source}: {first_line(exc)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"{checkpoint.source} has no fast tokenizer (tokenizer.json); qrr needs one")
    return tokenizer


def yes_no_ids(tokenizer, source: str) -> tuple[int, int]:
    """The ids of the single tokens 'yes' and 'no' (9693 and 2152 in Qwen3's vocabulary)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in ("yes", "no") if t not in vocab]
    if missing:
        raise CheckpointError(
            f"the tokenizer of {source} has no {' or '.join(repr(t) for t in missing)} token; "
            "a Qwen3 reranker scores with the single tokens 'yes' and 'no'"
        )
    return vocab["yes"], vocab["no"]


def load_model(checkpoint: Checkpoint, attn_implementation: str | None = None, dtype: str = "float32"):
    """The whole model in `dtype` (float32 or bfloat16: weights and compute), for inference."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(checkpoint.path, **kwargs)
    except Exception as exc:
        raise CheckpointError(f"cannot load the weights of {checkpoint.source}: {first_line(exc)}") from None
    return model.eval()


INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
ROWS_PER_READ = 4096  # embedding rows read at once when gathering the used ones


class SafetensorsWeights:
    """A checkpoint's tensors, each read from its safetensors file when asked for; no file stays open."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        from safetensors import safe_open

        path = checkpoint.path
        if (path / INDEX_FILE).is_file():
            weight_map = read_json_object(path / INDEX_FILE, CheckpointError, "fix or re-download the checkpoint")
            if not isinstance(weight_map.get("weight_map"), dict):
                raise CheckpointError(f"{path / INDEX_FILE} has no weight_map; fix or re-download the checkpoint")
            self.files = {name: path / file for name, file in weight_map["weight_map"].items()}
        elif (path / SINGLE_FILE).is_file():
            with safe_open(path / SINGLE_FILE, framework="pt") as f:
                self.files = {name: path / SINGLE_FILE for name in f.keys()}
        else:
            raise CheckpointError(
                f"{checkpoint.source} has neither {SINGLE_FILE} nor {INDEX_FILE}: the streamed export and reference "
                "read safetensors checkpoints; re-download it, or save it with save_pretrained(safe_serialization=True)"
            )
        self.source = checkpoint.source
        self.reads: list[str] = []  # the names read, in order: what a test checks the streaming by

    def _file(self, name: str) -> Path:
        if name not in self.files:
            raise CheckpointError(f"{self.source} has no tensor {name}; fix or re-download the checkpoint")
        return self.files[name]

    def tensor(self, name: str):
        from safetensors import safe_open

        with safe_open(self._file(name), framework="pt") as f:
            tensor = f.get_tensor(name)
        self.reads.append(name)
        return tensor

    def rows(self, name: str, ids):
        """Rows `ids` (a 1-D tensor) of the matrix `name`, in that order, reading only the stretches that hold them."""
        import torch
        from safetensors import safe_open

        wanted, order = torch.unique(ids, return_inverse=True)
        parts = []
        with safe_open(self._file(name), framework="pt") as f:
            matrix = f.get_slice(name)
            for block in torch.unique(wanted // ROWS_PER_READ):
                pick = wanted[wanted // ROWS_PER_READ == block]
                first = int(pick[0])
                parts.append(matrix[first : int(pick[-1]) + 1][pick - first])
        self.reads.append(name)
        return torch.cat(parts)[order]

    def parameters(self) -> int:
        """The number of weights in the files (headers only: nothing is loaded)."""
        import math

        from safetensors import safe_open

        total = 0
        for file in sorted(set(self.files.values())):
            with safe_open(file, framework="pt") as f:
                total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
        return total

    def shape(self, name: str) -> list[int]:
        from safetensors import safe_open

        with safe_open(self._file(name), framework="pt") as f:
            return list(f.get_slice(name).get_shape())

    def nbytes(self, dtype_size: int) -> int:
        """The memory the weights take at `dtype_size` bytes each."""
        return self.parameters() * dtype_size
