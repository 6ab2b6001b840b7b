"""Published artifacts as Hugging Face hub model repos: download one into the hub cache and hand back its folder.

Only the files the artifact's manifest lists come (and its card and validation report), never the rest of the
repo. huggingface_hub is the `hub` extra: the runtime does not need it for local artifacts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ArtifactError, QrrError, first_line
from .manifest import MANIFEST_NAME, VALIDATION_NAME, read_json_object

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CARD_NAME = "README.md"
HUB_EXTRA = ("downloading from the Hugging Face hub needs huggingface_hub (the hub extra): in the qrr clone run "
             "pip install -e '.[hub]'")


def snapshot(repo_id: str, revision: str | None, patterns: list[str], *, error: type[QrrError] = ArtifactError,
             cache_dir: str | os.PathLike[str] | None = None, token: str | bool | None = None) -> Path:
    """The repo's files matching `patterns` in the hub cache (HF_HUB_OFFLINE=1: from the cache alone); the folder
    is snapshots/<commit>, named by the commit the revision resolved to."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise error(HUB_EXTRA) from None
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=patterns,
                                      cache_dir=cache_dir, token=token))
    except Exception as exc:  # the hub client raises many types: offline, 404, gated, auth, disk
        at = f" at revision {revision}" if revision else ""
        raise error(
            f"cannot download {repo_id}{at} from the Hugging Face hub ({type(exc).__name__}: {first_line(exc)}); "
            "check the id and your network (HF_HUB_OFFLINE=1 uses what is cached), or pass a local folder"
        ) from None


def download_artifact(repo_id: str, revision: str | None = None, **hub: object) -> Path:
    """A published artifact's folder in the hub cache: its manifest first, then the files the manifest lists, at
    the same commit. The caller's load_manifest checks their sizes."""
    folder = snapshot(repo_id, revision, [MANIFEST_NAME], **hub)  # type: ignore[arg-type]
    if not (folder / MANIFEST_NAME).is_file():
        raise ArtifactError(f"{repo_id} is not a qrr artifact: the repo has no {MANIFEST_NAME} (upload the folder "
                            "qrr-export wrote)")
    files = read_json_object(folder / MANIFEST_NAME, ArtifactError, "re-upload the artifact").get("files")
    if not isinstance(files, dict) or not all(isinstance(name, str) for name in files):
        raise ArtifactError(f"{repo_id}: {MANIFEST_NAME} has no valid file list; re-upload the artifact")
    return snapshot(repo_id, folder.name, [MANIFEST_NAME, VALIDATION_NAME, CARD_NAME, *files], **hub)  # type: ignore[arg-type]


def resolve_artifact(name_or_path: str | os.PathLike[str], revision: str | None = None, **hub: object) -> Path:
    """A local artifact folder as it is; a hub repo id ("org/name") that is not a local path, downloaded."""
    local = Path(name_or_path).expanduser()
    if local.exists() or not HUB_ID.match(str(name_or_path)):
        if revision is not None:
            raise ArtifactError(f"{name_or_path} is a local path, not a hub repo id; a revision applies to repo ids only")
        return local
    return download_artifact(str(name_or_path), revision, **hub)
