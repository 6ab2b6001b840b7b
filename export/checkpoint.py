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


class WeightReader:
    """A checkpoint's tensors by name, read one at a time from its safetensors files (the streamed export's
    source: memory holds the tensors asked for, never the model)."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        path = checkpoint.path
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json_object(index, CheckpointError, "fix or re-download the checkpoint").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no weight_map; fix or re-download the checkpoint")
            self.files = {name: path / file for name, file in weight_map.items()}
        elif (path / "model.safetensors").is_file():
            self.files = {name: path / "model.safetensors" for name in self._keys(path / "model.safetensors")}
        else:
            raise CheckpointError(
                f"{checkpoint.source} has no safetensors weights (model.safetensors or model.safetensors.index.json); "
                "the streamed export reads safetensors: re-save the checkpoint with save_pretrained()"
            )
        self.source = checkpoint.source
        missing = sorted({f for f in self.files.values() if not f.is_file()})
        if missing:
            raise CheckpointError(f"{checkpoint.source} lacks the weight file {missing[0].name} its index lists")

    @staticmethod
    def _keys(file: Path) -> list[str]:
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                return list(f.keys())
        except Exception as exc:
            raise CheckpointError(f"cannot read {file}: {first_line(exc)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str, rows: tuple[int, int] | None = None):
        """The tensor `name` in fp32 (or only its rows start:stop)."""
        import torch
        from safetensors import safe_open

        if name not in self.files:
            raise CheckpointError(f"{self.source} has no tensor {name!r}; is it a Qwen3 checkpoint?")
        try:
            with safe_open(str(self.files[name]), framework="pt") as f:
                tensor = f.get_tensor(name) if rows is None else f.get_slice(name)[rows[0] : rows[1]]
        except Exception as exc:
            raise CheckpointError(f"cannot read {name} from {self.files[name]}: {first_line(exc)}") from None
        return tensor.to(torch.float32)

    def rows(self, name: str, ids: list[int]):
        """Rows `ids` of the 2-D tensor `name`, in fp32, stacked in that order."""
        import torch
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as f:
            part = f.get_slice(name)
            return torch.stack([part[i : i + 1][0] for i in ids]).to(torch.float32)

    def shape(self, name: str) -> list[int]:
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as f:
            return list(f.get_slice(name).get_shape())
