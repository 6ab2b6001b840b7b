"""The artifact manifest `qrr.json`: the contract between export and runtime.

It records everything the runtime needs and nothing it must guess. A runtime refuses a manifest it does
not understand instead of guessing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .session import BACKENDS

MANIFEST_NAME = "qrr.json"
VALIDATION_NAME = "validation.json"
# Bump when the meaning of a field changes; a runtime refuses manifests newer than it knows.
# 2: the graph takes a shared past (past_key_values, present_length) for prefix reuse.
FORMAT_VERSION = 2
FORMATS = tuple(BACKENDS)  # the formats a backend reads
REQUIRED = (
    "format_version",
    "format",
    "precision",
    "model_file",
    "tokenizer_file",
    "inputs",
    "outputs",
    "prompt",
    "max_length",
    "yes_token_id",
    "no_token_id",
    "pad_token_id",
    "files",
)
PROMPT_KEYS = ("prefix", "suffix", "template", "default_instruction")


def qrr_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qrr")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check `qrr.json` in an artifact folder; every problem becomes a one-line ArtifactError."""
    folder = Path(folder)
    if not folder.exists():
        raise ArtifactError(f"artifact folder not found: {folder}")
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is a file, not an artifact folder (the folder that holds qrr.json)")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a qrr artifact: it has no {MANIFEST_NAME} (make one with qrr-export)")
    manifest = read_json_object(path, ArtifactError, "re-export the artifact")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{path} has no valid format_version; re-export the artifact")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{folder} was made by a newer qrr (manifest version {version}, this qrr {qrr_version()} reads up to "
            f"{FORMAT_VERSION}); upgrade qrr (git pull in the qrr clone, then pip install -e .)"
        )
    if version < FORMAT_VERSION:
        raise ArtifactError(
            f"{folder} was made by an older qrr (manifest version {version}; this qrr {qrr_version()} reads "
            f"version {FORMAT_VERSION}, whose graph reuses shared prefixes); re-export it with qrr-export"
        )
    missing = [key for key in REQUIRED if key not in manifest]
    missing += [f"prompt.{key}" for key in PROMPT_KEYS if key not in manifest.get("prompt", {})]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}; re-export the artifact")
    if manifest["format"] not in FORMATS:
        raise ArtifactError(
            f"{folder} holds a {manifest['format']!r} model; this runtime reads {', '.join(FORMATS)} artifacts"
        )
    check_files(folder, manifest["files"])
    return manifest


def read_json_object(path: Path, error: type[Exception], fix: str) -> dict[str, Any]:
    """The JSON object in `path`; anything else is one `error` that says how to `fix` it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is corrupted ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path} is corrupted (not a JSON object); {fix}")
    return data


def check_files(folder: Path, files: dict[str, int]) -> None:
    """Every file the manifest lists must be there with the size it had when exported."""
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"artifact file {path} is missing; re-export the artifact")
        actual = path.stat().st_size
        if actual != size:
            raise ArtifactError(
                f"artifact file {path} is corrupted: {actual} bytes, the manifest says {size}; re-export the artifact"
            )


def file_sizes(folder: Path, names: list[str]) -> dict[str, int]:
    return {name: (folder / name).stat().st_size for name in names}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
