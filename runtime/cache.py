"""The load cache: what a backend derives from an artifact on this machine, kept so that later loads skip it.

onnxruntime keeps its optimized graph with the weights pre-packed for this CPU's kernels; OpenVINO keeps its
compiled model. Both live in the user's cache folder ($QRR_CACHE, else $XDG_CACHE_HOME/qrr or ~/.cache/qrr):

  <root>/load/<hash of the artifact folder's path>/<hash of everything the entry depends on>/

An entry's name hashes everything its content depends on: each artifact file's size and modification time,
the manifest's bytes, the backend and its version, the CPU (model and instruction-set flags) and the load
settings. Change any of them and the name changes, so an entry is never stale, only unused; entries of
the same artifact folder that were derived from other versions of its files are removed when a new one is
written. An entry is written into a temporary folder and renamed into place whole, so a reader sees a
complete entry or none; its files' sizes are recorded and checked on every load. Anything that goes wrong
with the cache (a folder that cannot be written, a damaged entry) costs a warning and the uncached load,
never the load itself.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LoadCacheWarning

CACHE_VERSION = 1  # bump when what an entry holds changes meaning
ENTRY_FILE = "entry.json"  # written last: a folder without it is not an entry
ABANDONED_S = 3600  # a temporary folder this old was left by a process that died while writing


def cache_root() -> Path:
    """$QRR_CACHE, else $XDG_CACHE_HOME/qrr, else ~/.cache/qrr (validation keeps its reference scores there too)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("QRR_CACHE") or Path(base) / "qrr")


@functools.cache
def cpu_fingerprint() -> str:
    """The CPU's model name and instruction-set flags: the kernels a backend picks (and packs weights for)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags", "Features", "CPU part") and key not in fields:
                fields[key] = " ".join(sorted(value.split())) if key in ("flags", "Features") else value.strip()
    except OSError:
        pass
    return json.dumps(fields or {"processor": platform.processor(), "machine": platform.machine()}, sort_keys=True)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]


def warn(message: str) -> None:
    warnings.warn(message, LoadCacheWarning, stacklevel=2)


class NoRoom(OSError):
    """The cache's file system cannot hold an entry."""


@dataclass(frozen=True)
class LoadCache:
    """One artifact's place in the load cache: `folder` is named by the artifact folder's path, `artifact` is
    the hash of its files (sizes, modification times) and its manifest, which changes whenever they do."""

    folder: Path
    artifact: str
    source: str = ""  # the artifact folder, recorded in its entries: an entry whose folder is gone is removed

    @classmethod
    def of(cls, artifact: Path, files: list[str], manifest: str = "qrr.json", root: Path | None = None) -> LoadCache:
        """The cache place of the artifact folder `artifact`, whose model files are `files` (its manifest's)."""
        artifact = artifact.resolve()
        stats = []
        for name in sorted({*files, manifest}):
            try:
                st = (artifact / name).stat()
                stats.append([name, st.st_size, st.st_mtime_ns])
            except OSError:
                stats.append([name, None, None])
        try:
            stats.append(hashlib.sha256((artifact / manifest).read_bytes()).hexdigest())
        except OSError:
            pass
        folder = (root or cache_root()) / "load" / _digest(str(artifact))
        return cls(folder, _digest([CACHE_VERSION, stats]), str(artifact))

    def entry(self, **settings: Any) -> Entry:
        """The entry of this artifact for a backend's `settings` (backend, its version, CPU, load options)."""
        return Entry(self.folder / _digest([self.artifact, settings]), self.artifact, self.source)


@dataclass(frozen=True)
class Entry:
    """A folder of files a backend derived from one version of an artifact, with one set of settings."""

    path: Path
    artifact: str
    source: str = ""

    def ready(self) -> bool:
        """Whether the entry is complete: its record is there and every file it lists has its recorded size."""
        try:
            record = json.loads((self.path / ENTRY_FILE).read_text())
            return all((self.path / name).stat().st_size == size for name, size in record["files"].items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def discard(self, why: str) -> None:
        """Warn that the entry is unusable (`why`) and remove it, so that the next load writes it again."""
        warn(f"the load cache entry {self.path} is unusable ({why}); it is removed and written again")
        shutil.rmtree(self.path, ignore_errors=True)

    @contextmanager
    def writing(self, room: int = 0) -> Iterator[Path]:
        """A temporary folder to write the entry's files into; published as the entry when the block succeeds.

        A block that writes nothing (a device that cannot export its compiled model) publishes nothing. Another
        process may publish the same entry meanwhile: then its copy stays and this one is dropped. Entries of the
        same artifact folder derived from other versions of its files are removed. When the cache's file system
        has less than `room` bytes free, NoRoom is raised before anything is written (the backend's own write
        would fail late, after its work, with its own message).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.path.parent).free
        if free < room:
            raise NoRoom(f"{free / 1e9:.1f} GB free in {self.path.parent}, the entry needs about {room / 1e9:.1f} GB; "
                         "set QRR_CACHE to a folder with room, or load with load_cache=False")
        tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            yield tmp
            files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
            if files:
                record = {"artifact": self.artifact, "source": self.source, "files": files}
                (tmp / ENTRY_FILE).write_text(json.dumps(record, indent=1))
                try:
                    tmp.rename(self.path)
                except OSError:  # published meanwhile by another process
                    pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune()

    def _prune(self) -> None:
        """Remove the entries of this artifact folder derived from other versions of its files, and the temporary
        folders of writers that died."""
        for other in self.path.parent.iterdir():
            if other.name.startswith("."):
                try:
                    if time.time() - other.stat().st_mtime > ABANDONED_S:
                        shutil.rmtree(other, ignore_errors=True)
                except OSError:
                    pass
                continue
            if other == self.path:
                continue
            try:
                stale = json.loads((other / ENTRY_FILE).read_text()).get("artifact") != self.artifact
            except (OSError, ValueError, AttributeError):
                stale = False  # being written, or not ours: leave it
            if stale:
                shutil.rmtree(other, ignore_errors=True)
        self._prune_orphans()

    def _prune_orphans(self) -> None:
        """Remove the entries of artifact folders that no longer exist: a deleted 8B artifact would otherwise
        leave its 10 GB entry behind for good. Entries that do not record their folder are left alone."""
        for folder in self.path.parent.parent.iterdir():
            if folder == self.path.parent or not folder.is_dir():
                continue
            for entry in folder.iterdir():
                try:
                    source = json.loads((entry / ENTRY_FILE).read_text()).get("source")
                except (OSError, ValueError, AttributeError):
                    continue
                if source and not Path(source).exists():
                    shutil.rmtree(entry, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when nothing is left in it
